"""The per-value arithmetic of batch assembly, written once.

``@register_jitable`` functions compile for whichever numba target calls them. ``scatter_value``
is plain Python, compiled by each face: inlined ``@njit`` for the CPU twin
(:mod:`gpuload.kernels.cpu`; as a real call, passing 14 arrays per stored value costs ~6x) and a
``@cuda.jit`` device function for the CUDA kernel (:mod:`gpuload.kernels.cuda`, also run by the
simulator). The two kernels only differ in how they walk rows and values.

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


def scatter_value(
    k,
    r,
    indices,
    data,
    col_mod,
    col_out,
    mod_base,
    mod_width,
    mod_code,
    mod_threshold,
    row_scale,
    col_weight,
    out,
    present,
):
    """Write stored value ``k`` (of batch row ``r``) into the output; return an error code.

    ``present[r, m]`` is set when row ``r`` has a nonzero value in modality ``m`` (a cell with
    none is missing that modality). A value that fails its check is written as 0 (the
    simulator's ``math`` would raise on it); the caller raises for the whole batch. The store
    itself is unconditional: a branch around it makes the CPU loop ~5x slower.
    """
    j = indices[k]
    if j < 0 or j >= col_mod.size:
        return COLUMN_OUT_OF_RANGE
    m = col_mod[j]
    if m < 0:
        return OK
    x = data[k]
    code = mod_code[m]
    if x != 0:
        present[r, m] = 1
    err = check_value(x, code)
    safe = x if err == OK else 0.0
    out[mod_base[m] + r * mod_width[m] + col_out[j]] = transform_value(
        safe, code, row_scale[r, m], col_weight[j], mod_threshold[m]
    )
    return err
