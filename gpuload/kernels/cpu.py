"""CPU twin of the assembly kernels: a call assembles super-batch rows ``start`` to ``stop``
(:mod:`gpuload.kernels.threads` hands blocks of rows to its threads).

A dense row is zeroed tile by tile just ahead of the values written into it (:func:`fill_dense_row`):
a tile of ``ZERO_TILE`` elements is set to zero when the first value that falls in it (or past it)
arrives, so the values land in cache lines the zeroing has just touched. Zeroing the whole row and
then scattering into it walked the row twice: at BMMC's full width (a 520 KB row) the second walk
missed the cache it was written for. The per-value step, dense or sparse, is
:mod:`gpuload.kernels.arithmetic`'s, shared with the CUDA kernels. The kernels are cached on disk
(:mod:`gpuload.kernels.compile_cache`).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.core import config

from gpuload.kernels import arithmetic
from gpuload.kernels.arithmetic import (
    DEST_MASK,
    DEST_SHIFT,
    OK,
    destination,
    entry_value,
    locate,
    write_entry,
)
from gpuload.kernels.compile_cache import cached

# Inlined at numba-IR level: as real calls, passing a dozen arrays per stored value costs far more.
copy_obs = njit(inline="always")(arithmetic.copy_obs)

# Elements a dense row is zeroed by at a time: measured fastest of 16-16,384 on BMMC's width.
ZERO_TILE = 256


# fmt: off
@njit(inline="always")
def fill_dense_row(r, row, grow, indptr, indices, data, col_dest, mod_width, mod_code, mod_threshold,
                   row_scale, col_weight, row_out, out, zeroed):
    """Dense output: block row ``row``'s values, transformed, into super-batch row ``r`` (file row
    ``grow``), every other element of the row zero. ``zeroed[m]``: the columns of modality ``m``
    below it are zero or written; a value at or past it first zeroes up to the end of its tile. A
    value is written only below the frontier and zeroing only runs from the frontier up, so no
    value is ever zeroed over, whatever the column order. Returns (error code, present bits)."""
    for m in range(mod_width.size):
        zeroed[m] = 0
    err = OK
    bits = 0
    for k in range(indptr[row], indptr[row + 1]):
        j, d, err = locate(k, indices, col_dest, err)
        if d >= 0:
            value, err, bits = entry_value(k, j, d, grow, data, mod_code, mod_threshold, row_scale,
                                           col_weight, err, bits)
            m = d >> DEST_SHIFT
            c = d & DEST_MASK
            start = row_out[r, m]
            if c >= zeroed[m]:
                frontier = min((c // ZERO_TILE + 1) * ZERO_TILE, mod_width[m])
                out[start + zeroed[m] : start + frontier] = 0
                zeroed[m] = frontier
            out[start + c] = value
    for m in range(mod_width.size):
        start = row_out[r, m]
        out[start + zeroed[m] : start + mod_width[m]] = 0
    return err, bits


@njit(inline="always")
def fill_row(r, row, grow, indptr, indices, data, col_dest, mod_code, mod_threshold, row_scale, col_weight,
             cursor, out_indices, out_values):
    """Sparse output: block row ``row``'s values, transformed, as CSR entries of super-batch row
    ``r`` of each modality (from ``cursor[r, m]``, which advances), in file order.
    Returns (error code, present bits)."""
    err = OK
    bits = 0
    for k in range(indptr[row], indptr[row + 1]):
        j, d, err = locate(k, indices, col_dest, err)
        if d >= 0:
            value, err, bits = entry_value(k, j, d, grow, data, mod_code, mod_threshold, row_scale,
                                           col_weight, err, bits)
            m = d >> DEST_SHIFT
            at = cursor[r, m]
            write_entry(at, d, value, out_indices, out_values)
            cursor[r, m] = at + 1
    return err, bits


@cached(njit, config, nogil=True)
def gather_rows(indptr, indices, data, local_rows, global_rows, col_dest, mod_width, mod_code, mod_threshold,
                row_scale, col_weight, row_out, out, present, status, obs_f, obs_f_out, obs_i, obs_i_out,
                obs_u, obs_u_out, start, stop):
    """Dense output of super-batch rows ``start`` to ``stop``: row ``r`` from block
    row ``local_rows[r]`` (file row ``global_rows[r]``) into ``out`` at ``row_out[r]``,
    transformed; ``present[m, r]``, ``status[r]`` (OK or an error code) and the obs columns of
    the row."""
    zeroed = np.zeros(mod_width.size, np.int64)
    for r in range(start, stop):
        err, bits = fill_dense_row(r, local_rows[r], global_rows[r], indptr, indices, data, col_dest,
                                   mod_width, mod_code, mod_threshold, row_scale, col_weight, row_out, out,
                                   zeroed)
        for m in range(mod_width.size):
            present[m, r] = (bits >> m) & 1
        status[r] = err
        copy_obs(r, global_rows[r], 0, 1, obs_f, obs_f_out, obs_i, obs_i_out, obs_u, obs_u_out)


@cached(njit, config, nogil=True)
def fill_rows(indptr, indices, data, local_rows, global_rows, col_dest, mod_code, mod_threshold, row_scale,
              col_weight, cursor, out_indices, out_values, present, status, obs_f, obs_f_out, obs_i,
              obs_i_out, obs_u, obs_u_out, start, stop):
    """Sparse output of super-batch rows ``start`` to ``stop``: the entries at the row offsets in
    ``cursor``, plus the presence, status and obs of each row as :func:`gather_rows`."""
    for r in range(start, stop):
        err, bits = fill_row(r, local_rows[r], global_rows[r], indptr, indices, data, col_dest, mod_code,
                             mod_threshold, row_scale, col_weight, cursor, out_indices, out_values)
        for m in range(present.shape[0]):
            present[m, r] = (bits >> m) & 1
        status[r] = err
        copy_obs(r, global_rows[r], 0, 1, obs_f, obs_f_out, obs_i, obs_i_out, obs_u, obs_u_out)
# fmt: on


@cached(njit, config, nogil=True)
def count_modalities(indptr, indices, col_dest, n_mod):
    """Stored values per (block row, modality): where the sparse output's rows start, known on
    the host before any kernel runs (so no count pass and no device-to-host wait)."""
    counts = np.zeros((indptr.size - 1, n_mod), np.int64)
    for row in range(indptr.size - 1):
        for k in range(indptr[row], indptr[row + 1]):
            d = destination(indices[k], col_dest)
            if d >= 0:
                counts[row, d >> DEST_SHIFT] += 1
    return counts
