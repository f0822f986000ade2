"""CPU twin of the gather kernel: rows in parallel (``prange``), values in order."""

from __future__ import annotations

from numba import njit, prange

from gpuload.kernels import arithmetic
from gpuload.kernels.arithmetic import OK

scatter_value = njit(inline="always")(arithmetic.scatter_value)


@njit(parallel=True, nogil=True, cache=True)
def gather_rows(
    indptr,
    indices,
    data,
    local_rows,
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
    status,
):
    """Densify ``local_rows`` of a CSR block into ``out`` (zeroing it first), transformed.

    ``status`` gets (error code, batch row) of a value that cannot be transformed.
    """
    for r in prange(local_rows.size):
        for m in range(mod_base.size):
            start = mod_base[m] + r * mod_width[m]
            out[start : start + mod_width[m]] = 0
        row = local_rows[r]
        err = OK  # kept in a register: storing to ``status`` inside the loop is slow
        for k in range(indptr[row], indptr[row + 1]):
            e = scatter_value(
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
            )
            if e != OK:
                err = e
        if err != OK:
            status[0] = err
            status[1] = r
