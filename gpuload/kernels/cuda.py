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
count_row = cuda.jit(device=True)(arithmetic.count_row)
fill_row = cuda.jit(device=True)(arithmetic.fill_row)

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


@cuda.jit
def count_rows(indptr, indices, local_rows, col_mod, counts):
    """Sparse output, pass 1 (one thread per batch row)."""
    for r in range(cuda.grid(1), local_rows.size, cuda.gridsize(1)):
        count_row(r, local_rows[r], indptr, indices, col_mod, counts)


# fmt: off
@cuda.jit
def fill_rows(indptr, indices, data, local_rows, col_mod, col_out, mod_code, mod_threshold, row_scale,
              col_weight, cursor, out_indices, out_values, present, status):
    """Sparse output, pass 2 (one thread per batch row, so columns stay in order)."""
    for r in range(cuda.grid(1), local_rows.size, cuda.gridsize(1)):
        err = fill_row(r, local_rows[r], indptr, indices, data, col_mod, col_out, mod_code, mod_threshold,
                       row_scale, col_weight, cursor, out_indices, out_values, present)
        if err != OK:
            status[0] = err
            status[1] = r
# fmt: on


def launch(kernel, stream, n_rows: int, *args, threads: int = THREADS_PER_ROW) -> None:
    """Launch one of this module's kernels over ``n_rows`` batch rows (``stream=None``: the
    default stream, as in the simulator)."""
    # gather_rows takes a block per row; the sparse passes take a thread per row.
    blocks = max(1, min(n_rows, 65535)) if kernel is gather_rows else max(1, -(-n_rows // threads))
    (kernel[blocks, threads] if stream is None else kernel[blocks, threads, stream])(*args)
