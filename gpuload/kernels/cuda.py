"""CUDA gather kernel: one thread block per batch row, its threads striding over the row.

Imported only by the backend when a GPU (or the CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``)
is in use, so a CPU-only install never compiles it.
"""

from __future__ import annotations

from numba import cuda

from gpuload.kernels import arithmetic
from gpuload.kernels.arithmetic import OK

zero_row = cuda.jit(device=True)(arithmetic.zero_row)
scatter_row = cuda.jit(device=True)(arithmetic.scatter_row)

THREADS_PER_ROW = 128


# fmt: off
@cuda.jit
def gather_rows(indptr, indices, data, local_rows, col_mod, col_out, mod_base, mod_width, mod_code,
                mod_threshold, row_scale, col_weight, out, present, status):
    """Same contract as :func:`gpuload.kernels.cpu.gather_rows`; launch with one block per row."""
    tid, step = cuda.threadIdx.x, cuda.blockDim.x
    for r in range(cuda.blockIdx.x, local_rows.size, cuda.gridDim.x):
        zero_row(r, tid, step, mod_base, mod_width, out)
        cuda.syncthreads()
        err = scatter_row(r, local_rows[r], tid, step, indptr, indices, data, col_mod, col_out, mod_base,
                          mod_width, mod_code, mod_threshold, row_scale, col_weight, out, present)
        if err != OK:
            status[0] = err
            status[1] = r
# fmt: on


def launch_gather(stream, n_rows: int, *args) -> None:
    """Launch :func:`gather_rows` over ``n_rows`` batch rows on ``stream``."""
    blocks = max(1, min(n_rows, 65535))
    gather_rows[blocks, THREADS_PER_ROW, stream](*args)
