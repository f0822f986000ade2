"""CUDA gather kernel: one thread block per batch row, threads striding over the row.

Imported only by the backend when a GPU (or the CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``)
is in use, so a CPU-only install never compiles it.
"""

from __future__ import annotations

from numba import cuda

from gpuload.kernels import arithmetic
from gpuload.kernels.arithmetic import OK

scatter_value = cuda.jit(device=True)(arithmetic.scatter_value)

THREADS_PER_ROW = 128


@cuda.jit
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
    """Same contract as :func:`gpuload.kernels.cpu.gather_rows`; launch with one block per row."""
    tid = cuda.threadIdx.x
    for r in range(cuda.blockIdx.x, local_rows.size, cuda.gridDim.x):
        for m in range(mod_base.size):
            start = mod_base[m] + r * mod_width[m]
            for c in range(tid, mod_width[m], cuda.blockDim.x):
                out[start + c] = 0
        cuda.syncthreads()
        row = local_rows[r]
        err = OK  # kept in a register: storing to ``status`` inside the loop is slow
        for k in range(indptr[row] + tid, indptr[row + 1], cuda.blockDim.x):
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


def launch_gather(stream, n_rows: int, *args) -> None:
    """Launch :func:`gather_rows` over ``n_rows`` batch rows on ``stream``."""
    blocks = max(1, min(n_rows, 65535))
    gather_rows[blocks, THREADS_PER_ROW, stream](*args)
