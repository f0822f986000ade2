"""CPU twin of the gather kernel: each thread takes whole rows (``prange``)."""

from __future__ import annotations

from numba import njit, prange

from gpuload.kernels import arithmetic
from gpuload.kernels.arithmetic import OK

# Inlined at numba-IR level: as real calls, passing 14 arrays per stored value costs ~6x.
zero_row = njit(inline="always")(arithmetic.zero_row)
scatter_row = njit(inline="always")(arithmetic.scatter_row)
count_row = njit(inline="always")(arithmetic.count_row)
fill_row = njit(inline="always")(arithmetic.fill_row)


# fmt: off
@njit(parallel=True, nogil=True)
def gather_rows(indptr, indices, data, local_rows, col_mod, col_out, mod_base, mod_width, mod_code,
                mod_threshold, row_scale, col_weight, out, present, status):
    """Densify ``local_rows`` of a CSR block into ``out`` (zeroing it first), transformed.

    ``status`` gets (error code, batch row) of a value that cannot be transformed.
    """
    for r in prange(local_rows.size):
        zero_row(r, 0, 1, mod_base, mod_width, out)
        err = scatter_row(r, local_rows[r], 0, 1, indptr, indices, data, col_mod, col_out, mod_base,
                          mod_width, mod_code, mod_threshold, row_scale, col_weight, out, present)
        if err != OK:
            status[0] = err
            status[1] = r
# fmt: on


@njit(parallel=True, nogil=True)
def count_rows(indptr, indices, local_rows, col_mod, counts):
    """Sparse output, pass 1: stored values per (modality, batch row); ``counts`` zeroed."""
    for r in prange(local_rows.size):
        count_row(r, local_rows[r], indptr, indices, col_mod, counts)


# fmt: off
@njit(parallel=True, nogil=True)
def fill_rows(indptr, indices, data, local_rows, col_mod, col_out, mod_code, mod_threshold, row_scale,
              col_weight, cursor, out_indices, out_values, present, status):
    """Sparse output, pass 2: the entries, at the row offsets in ``cursor``."""
    for r in prange(local_rows.size):
        err = fill_row(r, local_rows[r], indptr, indices, data, col_mod, col_out, mod_code, mod_threshold,
                       row_scale, col_weight, cursor, out_indices, out_values, present)
        if err != OK:
            status[0] = err
            status[1] = r
# fmt: on
