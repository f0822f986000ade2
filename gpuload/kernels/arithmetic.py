"""The per-value arithmetic of batch assembly, written once.

``@register_jitable`` functions compile for whichever numba target calls them. ``zero_row`` and
``scatter_row`` are plain Python, compiled by each face: inlined ``@njit`` for the CPU twin
(:mod:`gpuload.kernels.cpu`; as real calls, passing 14 arrays per stored value costs ~6x) and
``@cuda.jit`` device functions for the CUDA kernel (:mod:`gpuload.kernels.cuda`, also run by the
simulator). The kernels only differ in how they split the work: the CPU twin gives each thread
whole rows (``first=0, step=1``), the CUDA kernel gives each thread block a row and strides its
threads over it (``first=threadIdx, step=blockDim``).

Output layout: one flat buffer holds every modality's block back to back, so that each
modality's ``[B, width]`` view is contiguous. Modality ``m`` of batch row ``r`` starts at
``mod_base[m] + r * mod_width[m]``. A full-width column ``j`` belongs to modality
``col_mod[j]`` (``-1``: not requested) at output column ``col_out[j]``.
"""

from __future__ import annotations

import math

from numba.extending import register_jitable

# Transform codes (see gpuload.transforms for what each means and how its inputs are prepared).
IDENTITY = 0
BINARIZE = 1  # 1[x > threshold]
SCALE = 2  # x * row_scale
SCALE_LOG1P = 3  # ln(1 + x * row_scale)
TFIDF_LOGTF_LOGIDF = 4  # ln(1 + x * row_scale) * col_weight  (muon; col_weight = ln(1 + idf))
TFIDF_LOG_TFIDF = 5  # ln(1 + x * row_scale * col_weight)  (Signac method 1; col_weight = idf)

# Error codes a kernel reports in ``status[0]`` (``status[1]`` = the offending batch row).
OK = 0
NOT_FINITE = 1
NEGATIVE_UNDER_LOG = 2
COLUMN_OUT_OF_RANGE = 3


@register_jitable
def transform_value(x, code, row_scale, col_weight, threshold):
    """One stored value after the modality's transform."""
    if code == BINARIZE:
        return 1.0 if x > threshold else 0.0
    if code == SCALE:
        return x * row_scale
    if code == SCALE_LOG1P:
        return math.log1p(x * row_scale)
    if code == TFIDF_LOGTF_LOGIDF:
        return math.log1p(x * row_scale) * col_weight
    if code == TFIDF_LOG_TFIDF:
        return math.log1p(x * row_scale * col_weight)
    return x


@register_jitable
def check_value(x, code):
    """OK, or why ``x`` cannot go through ``code`` (NaN/inf anywhere, negatives under a log)."""
    if not math.isfinite(x):
        return NOT_FINITE
    if x < 0 and code >= SCALE_LOG1P:
        return NEGATIVE_UNDER_LOG
    return OK


@register_jitable
def checked_value(x, code, row_scale, col_weight, threshold):
    """(transformed value, error code): a value that fails its check becomes 0, since the
    simulator's ``math`` would raise on it; the caller raises for the whole batch."""
    err = check_value(x, code)
    return transform_value(x if err == OK else 0.0, code, row_scale, col_weight, threshold), err


@register_jitable
def _count(start, stop, step):
    """len(range(start, stop, step)) for step > 0: the strided loops run over range(count),
    a unit-step loop LLVM optimizes as such when the step turns out to be 1 (the CPU twin)."""
    return max(0, (stop - start + step - 1) // step)


def zero_row(r, first, step, mod_base, mod_width, out):
    """Zero batch row ``r`` of every modality block (elements ``first``, ``first+step``, ...)."""
    for m in range(mod_base.size):
        start = mod_base[m] + r * mod_width[m] + first
        if step == 1:  # one thread per row: a memset (the strided loop is ~3x slower on the CPU)
            out[start : start + mod_width[m] - first] = 0
        else:
            for i in range(_count(first, mod_width[m], step)):
                out[start + i * step] = 0


# fmt: off
def scatter_row(r, row, first, step, indptr, indices, data, col_mod, col_out, mod_base, mod_width, mod_code,
                mod_threshold, row_scale, col_weight, out, present):
    """Write stored values ``first``, ``first+step``, ... of block row ``row`` into batch row
    ``r``, transformed; return OK or the last error code.

    ``present[r, m]`` is set when the row has a nonzero value in modality ``m`` (a cell with
    none is missing that modality). A value that fails its check is written as 0 (the
    simulator's ``math`` would raise on it) and the caller raises for the whole batch. The store
    itself is unconditional and the error stays in a register: a branch around the store, or a
    store to the caller's status array inside this loop, makes the CPU loop ~5x slower.
    """
    err = OK
    lo = indptr[row] + first
    for i in range(_count(lo, indptr[row + 1], step)):
        k = lo + i * step
        j = indices[k]
        if j < 0 or j >= col_mod.size:
            err = COLUMN_OUT_OF_RANGE
            continue
        m = col_mod[j]
        if m < 0:
            continue
        x = data[k]
        code = mod_code[m]
        if x != 0:
            present[r, m] = 1
        value, e = checked_value(x, code, row_scale[r, m], col_weight[j], mod_threshold[m])
        if e != OK:
            err = e
        out[mod_base[m] + r * mod_width[m] + col_out[j]] = value
    return err
# fmt: on


# Sparse output: a count pass, a prefix sum (by the caller), then a fill pass. Each modality's
# entries of batch row r go to positions cursor[m, r], cursor[m, r] + 1, ... of flat arrays, so
# every modality is one CSR matrix. One thread per row keeps column order within a row.
def count_row(r, row, indptr, indices, col_mod, counts):
    """Count block row ``row``'s stored values per modality into ``counts[m, r]``."""
    for k in range(indptr[row], indptr[row + 1]):
        j = indices[k]
        if j >= 0 and j < col_mod.size and col_mod[j] >= 0:
            counts[col_mod[j], r] += 1


# fmt: off
def fill_row(r, row, indptr, indices, data, col_mod, col_out, mod_code, mod_threshold, row_scale, col_weight,
             cursor, out_indices, out_values, present):
    """Write block row ``row``'s values, transformed, as CSR entries of batch row ``r`` of each
    modality (at ``cursor[m, r]``, which advances); return OK or the last error code."""
    err = OK
    for k in range(indptr[row], indptr[row + 1]):
        j = indices[k]
        if j < 0 or j >= col_mod.size:
            err = COLUMN_OUT_OF_RANGE
            continue
        m = col_mod[j]
        if m < 0:
            continue
        x = data[k]
        code = mod_code[m]
        if x != 0:
            present[r, m] = 1
        value, e = checked_value(x, code, row_scale[r, m], col_weight[j], mod_threshold[m])
        if e != OK:
            err = e
        p = cursor[m, r]
        out_indices[p] = col_out[j]
        out_values[p] = value
        cursor[m, r] = p + 1
    return err
# fmt: on
