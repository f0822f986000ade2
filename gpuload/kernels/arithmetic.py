"""The per-value arithmetic of batch assembly, written once.

``@register_jitable`` functions compile for whichever numba target calls them, as do the
:func:`inlined` ones: the step every kernel takes per stored value, dense or sparse, is two of
them (:func:`locate`: where the value goes; :func:`entry_value`: its transform and check, its
present bit) and a sparse entry is written by one (:func:`write_entry`). Each face walks a row
around that step in the way its hardware wants: the CUDA dense kernel gives a thread block one row,
zeroes it (:func:`zero_row`) and strides its threads over the row's values (:func:`scatter_row`,
``first=threadIdx, step=blockDim``); the CPU twin (:mod:`gpuload.kernels.cpu`) gives a thread
whole rows and zeroes each just ahead of its values. The functions here are plain Python,
compiled by each face: inlined ``@njit`` on the CPU (as real calls, passing a dozen arrays per
stored value costs far more) and ``@cuda.jit`` device functions for the CUDA kernels
(:mod:`gpuload.kernels.cuda`, also run by the simulator).

Output layout (see :mod:`gpuload.assembly`): modality ``m`` of super-batch row ``r`` is the
``mod_width[m]`` values starting at ``row_out[r, m]`` of the flat output. Full-width column ``j``
goes where ``col_dest[j]`` says: -1 for no requested modality, else ``m << DEST_SHIFT | c`` for
column ``c`` of modality ``m``. One int32 lookup per stored value: one table of 4 bytes a column
instead of two int64 ones (16 bytes a column), fewer cache lines touched at full width.

Arithmetic runs in the output's precision: a stored value is cast to the type of the per-cell
scale (float32 for float32 output) before the transform, so no float64 instruction runs for a
float32 batch.
"""

from __future__ import annotations

import math

from numba.extending import overload, register_jitable

# Transform codes (see gpuload.plan.transforms for what each means and how its inputs are prepared).
IDENTITY = 0
BINARIZE = 1  # 1[x > threshold]
SCALE = 2  # x * row_scale
SCALE_LOG1P = 3  # ln(1 + x * row_scale)
TFIDF_LOGTF_LOGIDF = 4  # ln(1 + x * row_scale) * col_weight  (muon; col_weight = ln(1 + idf))
TFIDF_LOG_TFIDF = 5  # ln(1 + x * row_scale * col_weight)  (Signac method 1; col_weight = idf)

# Error codes a kernel reports in ``status[r]`` for super-batch row ``r``.
OK = 0
NOT_FINITE = 1
NEGATIVE_UNDER_LOG = 2
COLUMN_OUT_OF_RANGE = 3

# Modalities a kernel can route (present bits, shared-memory cursors).
MAX_MODALITIES = 8


def cast_like(x, like):
    """``x`` as the scalar type of ``like`` (the simulator runs this Python version)."""
    return type(like)(x)


@overload(cast_like, target="generic")
def _cast_like(x, like):
    target = like  # a numba type, callable as a cast in compiled code

    def impl(x, like):
        return target(x)

    return impl


def inlined(function):
    """``function`` compiled into the kernels that call it, on each face: inlined at numba-IR
    level on the CPU (as a call, it made the CPU twin several times slower), ``alwaysinline`` in
    NVVM on CUDA (numba-cuda 0.30 fails to inline an overload at IR level); the simulator
    runs it as it is."""

    def template(*args):
        return function

    overload(function, target="cpu", inline="always", strict=False)(template)
    overload(function, target="cuda", jit_options={"forceinline": True}, strict=False)(template)
    return function


@register_jitable
def transform_value(x, code, row_scale, col_weight, j, threshold):
    """One stored value after the modality's transform (``x`` already in the output precision);
    ``col_weight[j]`` is read only by the transforms that use it."""
    if code == BINARIZE:  # 1 and 0 in x's precision: a literal 1.0 would be float64
        return cast_like(1, row_scale) if x > threshold else cast_like(0, row_scale)
    if code == SCALE:
        return x * row_scale
    if code == SCALE_LOG1P:
        return math.log1p(x * row_scale)
    if code == TFIDF_LOGTF_LOGIDF:
        return math.log1p(x * row_scale) * col_weight[j]
    if code == TFIDF_LOG_TFIDF:
        return math.log1p(x * row_scale * col_weight[j])
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
def checked_value(stored, code, row_scale, col_weight, j, threshold):
    """(transformed value, error code) of a stored value: a value that fails its check becomes
    0, since the simulator's ``math`` would raise on it; the caller reports the row."""
    x = cast_like(stored, row_scale)
    err = check_value(x, code)
    zero = cast_like(0, row_scale)
    return transform_value(x if err == OK else zero, code, row_scale, col_weight, j, threshold), err


@register_jitable
def _count(start, stop, step):
    """len(range(start, stop, step)) for step > 0: the strided loops run over range(count),
    a unit-step loop LLVM optimizes as such when the step turns out to be 1 (the CPU twin)."""
    return max(0, (stop - start + step - 1) // step)


@register_jitable
def row_width(mod_prefix, mod_width):
    """Width of a row's concatenated output (every modality)."""
    last = mod_prefix.size - 1
    return mod_prefix[last] + mod_width[last]


DEST_SHIFT = 24  # col_dest: modality << DEST_SHIFT | column
DEST_MASK = (1 << DEST_SHIFT) - 1
SKIP = -1  # destination: a column no modality requested
OUT_OF_RANGE = -2  # destination: a column index outside the matrix (a corrupt file)


@register_jitable
def destination(j, col_dest):
    """``col_dest[j]``, or OUT_OF_RANGE for an index outside the matrix."""
    if j < 0 or j >= col_dest.size:
        return OUT_OF_RANGE
    return col_dest[j]


@inlined
def locate(k, indices, col_dest, err):
    """Stored value ``k``'s column and destination (see :func:`destination`), and ``err``, its
    row's error code so far, set for a column outside the matrix: the first half of the one
    per-value step of every kernel, dense or sparse (the CUDA sparse kernel ranks its lanes'
    entries between the two halves)."""
    j = indices[k]
    d = destination(j, col_dest)
    if d == OUT_OF_RANGE:
        err = COLUMN_OUT_OF_RANGE
    return j, d, err


# fmt: off
@inlined
def entry_value(k, j, d, grow, data, mod_code, mod_threshold, row_scale, col_weight, err, bits):
    """The second half: stored value ``k`` (column ``j``, of file row ``grow``) going to
    destination ``d >= 0``, transformed, and its row's error code ``err`` and present bits
    ``bits`` so far, updated (the value's error; bit ``m`` for a nonzero value of modality
    ``m``). The row's verdict is threaded through, not returned per value: on CUDA, it keeps the
    sparse kernel under its register cap without a spill."""
    m = d >> DEST_SHIFT
    x = data[k]
    if x != 0:
        bits |= 1 << m
    value, e = checked_value(x, mod_code[m], row_scale[grow, m], col_weight, j, mod_threshold[m])
    if e != OK:
        err = e
    return value, err, bits
# fmt: on


@inlined
def write_entry(at, d, value, out_indices, out_values):
    """A sparse output's entry ``at``: destination ``d``'s column within its modality, and ``value``."""
    out_indices[at] = d & DEST_MASK
    out_values[at] = value


def zero_row(r, first, step, row_out, mod_width, out):
    """Zero row ``r``'s output in every modality (elements ``first``, ``first+step``, ... of each
    modality's run: consecutive threads write consecutive columns)."""
    for m in range(mod_width.size):
        start = row_out[r, m]
        if step == 1:  # one thread for the row: a memset
            out[start : start + mod_width[m]] = 0
        else:
            for i in range(_count(first, mod_width[m], step)):
                out[start + first + i * step] = 0


# fmt: off
def scatter_row(r, row, grow, first, step, indptr, indices, data, col_dest, mod_code, mod_threshold,
                row_scale, col_weight, row_out, out):
    """Write the stored values ``first``, ``first+step``, ... of block row ``row`` into super-batch
    row ``r`` (file row ``grow``), transformed: each value is read by one thread, once, and
    consecutive threads read consecutive values (and their ``col_dest`` entries).

    Returns (error code, present bits) over the values visited: bit ``m`` is set when one of
    them is a nonzero value of modality ``m``.
    """
    err = OK
    bits = 0
    k0 = indptr[row] + first
    for i in range(_count(k0, indptr[row + 1], step)):
        k = k0 + i * step
        j, d, err = locate(k, indices, col_dest, err)
        if d >= 0:
            value, err, bits = entry_value(k, j, d, grow, data, mod_code, mod_threshold, row_scale,
                                           col_weight, err, bits)
            out[row_out[r, d >> DEST_SHIFT] + (d & DEST_MASK)] = value
    return err, bits
# fmt: on


def copy_obs(r, grow, first, step, obs_f, obs_f_out, obs_i, obs_i_out, obs_u, obs_u_out):
    """Row ``r``'s obs columns (float32, int64 and uint8 matrices, one obs column per matrix
    row) from file row ``grow`` (matrix rows ``first``, ``first+step``, ...)."""
    for i in range(_count(first, obs_f.shape[0], step)):
        c = first + i * step
        obs_f_out[c, r] = obs_f[c, grow]
    for i in range(_count(first, obs_i.shape[0], step)):
        c = first + i * step
        obs_i_out[c, r] = obs_i[c, grow]
    for i in range(_count(first, obs_u.shape[0], step)):
        c = first + i * step
        obs_u_out[c, r] = obs_u[c, grow]
