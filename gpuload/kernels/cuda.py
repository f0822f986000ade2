"""CUDA assembly kernels over a super-batch.

- :func:`gather_rows` (dense): a 2-D grid of (rows x column tiles). Block (r, t) zeroes tile t
  of row r's output and writes the row's stored values that fall in it, so even a handful of
  wide rows fill every SM; block (r, 0) also reports the row's presence bits, its status and
  copies its obs values.
- :func:`fill_rows` (sparse): a warp (a 32-thread block) per row; each round of 32 stored values
  is compacted per modality with a shared-memory scan, so columns stay in file order.

Imported only by the backend when a GPU (or the CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``) is in
use, so a CPU-only install never compiles it. The simulator has no warp intrinsics, hence the
block-level ``syncthreads_or`` and shared-memory scans, which it runs as the GPU would.
"""

from __future__ import annotations

from numba import cuda, int32, int64

from gpuload.kernels import arithmetic
from gpuload.kernels.arithmetic import (
    COLUMN_OUT_OF_RANGE,
    DEST_MASK,
    DEST_SHIFT,
    MAX_MODALITIES,
    OK,
    OUT_OF_RANGE,
    checked_value,
    destination,
    row_width,
)

zero_tile = cuda.jit(device=True)(arithmetic.zero_tile)
scatter_tile = cuda.jit(device=True)(arithmetic.scatter_tile)
copy_obs = cuda.jit(device=True)(arithmetic.copy_obs)

THREADS = 256  # per block of the dense kernel
COLUMNS_PER_THREAD = 16  # a dense tile is THREADS * COLUMNS_PER_THREAD output columns
WARP = 32


@cuda.jit(device=True)
def report_row(r, verdict, err, bits, n_mod, present, status):
    """The block's verdict on row ``r``: the highest error code any thread saw and, per
    modality, whether any thread saw a nonzero value. ``verdict`` is the block's zeroed shared
    [bits, error] pair; every thread of the block must call this (it ends with a barrier, then
    thread 0 writes)."""
    cuda.atomic.or_(verdict, 0, bits)
    cuda.atomic.max(verdict, 1, err)
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        for m in range(n_mod):
            present[m, r] = (verdict[0] >> m) & 1
        status[r] = verdict[1]


# fmt: off
@cuda.jit
def gather_rows(indptr, indices, data, local_rows, global_rows, col_dest, mod_prefix, mod_width, mod_code,
                mod_threshold, row_scale, col_weight, row_out, out, present, status, obs_f, obs_f_out, obs_i,
                obs_i_out, obs_u, obs_u_out, tile):
    """Same contract as :func:`gpuload.kernels.cpu.gather_rows`; launch on a
    (rows, ceil(width / tile)) grid."""
    r, t = cuda.blockIdx.x, cuda.blockIdx.y
    tid, step = cuda.threadIdx.x, cuda.blockDim.x
    verdict = cuda.shared.array(2, int64)  # the row's present bits and error code
    if tid == 0:
        verdict[0] = 0
        verdict[1] = OK
    lo = t * tile
    hi = min(lo + tile, row_width(mod_prefix, mod_width))
    zero_tile(r, lo, hi, tid, step, row_out, mod_prefix, mod_width, out)
    cuda.syncthreads()
    row, grow = local_rows[r], global_rows[r]
    err, bits = scatter_tile(r, row, grow, lo, hi, tid, step, t == 0, indptr, indices, data, col_dest,
                             mod_prefix, mod_code, mod_threshold, row_scale, col_weight, row_out, out)
    if t == 0:  # the block is uniform in t: all of its threads take this branch or none
        report_row(r, verdict, err, bits, mod_width.size, present, status)
        copy_obs(r, grow, tid, step, obs_f, obs_f_out, obs_i, obs_i_out, obs_u, obs_u_out)


@cuda.jit
def fill_rows(indptr, indices, data, local_rows, global_rows, col_dest, mod_code, mod_threshold, row_scale,
              col_weight, cursor, out_indices, out_values, present, status, obs_f, obs_f_out, obs_i,
              obs_i_out, obs_u, obs_u_out):
    """Same contract as :func:`gpuload.kernels.cpu.fill_rows`; launch one block of WARP threads
    (a warp) per row."""
    r = cuda.blockIdx.x
    lane, lanes_n = cuda.threadIdx.x, cuda.blockDim.x
    n_mod = present.shape[0]
    lanes = cuda.shared.array(WARP, int32)  # the modality of each lane's value this round (-1: none)
    start = cuda.shared.array(MAX_MODALITIES, int64)  # where each modality's next entry goes
    verdict = cuda.shared.array(2, int64)  # the row's present bits and error code
    row, grow = local_rows[r], global_rows[r]
    if lane < n_mod:
        start[lane] = cursor[r, lane]
    if lane == 0:
        verdict[0] = 0
        verdict[1] = OK
    cuda.syncthreads()
    err = OK
    bits = 0
    lo, hi = indptr[row], indptr[row + 1]
    for base in range(lo, hi, lanes_n):
        k = base + lane
        d = -1
        j = 0
        if k < hi:
            j = indices[k]
            d = destination(j, col_dest)
            if d == OUT_OF_RANGE:
                err = COLUMN_OUT_OF_RANGE
        m = d >> DEST_SHIFT if d >= 0 else -1
        lanes[lane] = m
        cuda.syncthreads()
        if m >= 0:
            rank = 0  # lanes before this one with a value of the same modality
            for other in range(lane):
                if lanes[other] == m:
                    rank += 1
            x = data[k]
            if x != 0:
                bits |= 1 << m
            value, e = checked_value(x, mod_code[m], row_scale[grow, m], col_weight, j, mod_threshold[m])
            if e != OK:
                err = e
            out_indices[start[m] + rank] = d & DEST_MASK
            out_values[start[m] + rank] = value
        cuda.syncthreads()
        if lane < n_mod:
            taken = 0
            for other in range(lanes_n):
                if lanes[other] == lane:
                    taken += 1
            start[lane] += taken
        cuda.syncthreads()
    report_row(r, verdict, err, bits, n_mod, present, status)
    copy_obs(r, grow, lane, lanes_n, obs_f, obs_f_out, obs_i, obs_i_out, obs_u, obs_u_out)
# fmt: on


def launch(kernel, stream, n_rows: int, width: int, args: tuple, *, threads: int = THREADS) -> None:
    """Launch one of this module's kernels over ``n_rows`` super-batch rows (``stream=None``: the
    default stream, as in the simulator). ``args`` end with the tile for :func:`gather_rows`."""
    grid: int | tuple[int, int]
    if kernel is gather_rows:
        grid = (n_rows, max(1, -(-width // args[-1])))
    else:
        grid, threads = n_rows, WARP  # fewer lanes would mean more barrier rounds, also simulated
    (kernel[grid, threads] if stream is None else kernel[grid, threads, stream])(*args)
