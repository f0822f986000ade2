"""CUDA assembly kernels over a super-batch.

- :func:`gather_rows` (dense): a block of ``THREADS`` threads per row, one pass over the row. Its
  threads first zero the row's output (consecutive threads, consecutive columns), then, after a
  barrier, take its stored values in turn (consecutive threads, consecutive values, so the reads
  of ``indices``, ``data`` and ``col_dest`` coalesce) and write each value's transform where its
  column goes. Each stored value is read once (a grid of column tiles, before 2026-12, had every
  tile's block rescan the row).
- :func:`fill_rows` (sparse): a warp per row, ``ROWS_PER_BLOCK`` rows per block (one warp per
  block capped occupancy at 50% on sm_90, by the limit on blocks per SM). Each round of 32 stored
  values is compacted per modality with a shared-memory rank, so columns stay in file order: a
  lane locates its value before the round's barrier and transforms and writes it, at its rank,
  after (the two halves of the step every kernel shares, :mod:`gpuload.kernels.arithmetic`).

Each kernel is a dispatcher per output dtype (:class:`PerOutputDtype`), under launch bounds that
cap its registers: float32 output reaches 75% theoretical occupancy in both kernels without a
spill, float64 output (which needs more registers) what it can without one (benchmarks/RESULTS.md,
2026-12-06 21:10 UTC, "Registers, spills, occupancy").

Imported only by the backend when a GPU (or the CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``) is in
use, so a CPU-only install never compiles it; compiled kernels are cached on disk
(:mod:`gpuload.kernels.compile_cache`). The simulator has no warp intrinsics, hence block-level
barriers, shared-memory atomics and ranks, which it runs as the GPU would; a block's warps run as
many rounds as its longest row needs, since every thread of a block must reach each barrier.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable

import numpy as np
from numba import cuda, int64, uint32
from numba.cuda.core import config

from gpuload.kernels import arithmetic
from gpuload.kernels.arithmetic import DEST_SHIFT, MAX_MODALITIES, OK, entry_value, locate, write_entry
from gpuload.kernels.compile_cache import cached

zero_row = cuda.jit(device=True)(arithmetic.zero_row)
scatter_row = cuda.jit(device=True)(arithmetic.scatter_row)
copy_obs = cuda.jit(device=True)(arithmetic.copy_obs)

THREADS = 256  # per block of the dense kernel
WARP = 32  # lanes per row of the sparse kernel
ROWS_PER_BLOCK = 4  # rows (warps) per block of the sparse kernel


class PerOutputDtype:
    """A kernel compiled as one dispatcher per output dtype, each under launch bounds of its own:
    numba applies a dispatcher's launch bounds to every specialization it compiles, and float64
    output needs more registers than float32 (libdevice's double ``log1p``), so bounds that give
    float32 75% occupancy make float64 spill. Each dispatcher compiles a copy of the function
    named ``<kernel>_<dtype>``, hence caches under a name of its own (numba's cache index keys
    on the function's name and the argument types, not on the launch bounds). The simulator takes
    no launch bounds; it runs the same Python either way."""

    def __init__(self, function: Callable, output: str, bounds: dict[str, tuple[int, int]]):
        self.__name__, self.__doc__ = function.__name__, function.__doc__
        self.output = list(inspect.signature(function).parameters).index(output)
        self.launch_bounds = {np.dtype(dtype): bound for dtype, bound in bounds.items()}
        self.dispatchers = {dtype: self._compile(function, dtype) for dtype in self.launch_bounds}

    def _compile(self, function: Callable, dtype: np.dtype):
        name = f"{function.__name__}_{dtype.name}"
        copy = types.FunctionType(function.__code__, function.__globals__, name, function.__defaults__)
        copy.__qualname__, copy.__doc__ = name, function.__doc__
        options = {} if config.ENABLE_CUDASIM else {"launch_bounds": self.launch_bounds[dtype]}
        return cached(cuda.jit, config, **options)(copy)

    def for_args(self, args: tuple):
        """The dispatcher for the output array among the kernel's ``args``."""
        return self.dispatchers[args[self.output].dtype]


def per_output_dtype(output: str, **bounds: tuple[int, int]) -> Callable[[Callable], PerOutputDtype]:
    """Decorate a kernel as a :class:`PerOutputDtype`: ``output`` names its output array,
    ``bounds`` maps each output dtype to (threads per block, blocks per SM), the launch bounds
    that cap the registers ptxas gives a thread at what that many blocks leave."""
    return lambda function: PerOutputDtype(function, output, bounds)


@cuda.jit(device=True)
def report_row(r, verdict, w, err, bits, leader, n_mod, present, status):
    """The verdict on row ``r`` of the threads that took it: the highest error code any of them
    saw and, per modality, whether any saw a nonzero value. ``verdict[w]`` is the row's zeroed
    shared [bits, error] pair. Every thread of the block must call this (it holds a barrier);
    then the row's ``leader`` writes."""
    cuda.atomic.or_(verdict, (w, 0), bits)
    cuda.atomic.max(verdict, (w, 1), err)
    cuda.syncthreads()
    if leader:
        for m in range(n_mod):
            present[m, r] = (verdict[w, 0] >> m) & 1
        status[r] = verdict[w, 1]


# Launch bounds: the most blocks per SM (highest occupancy) at which ptxas 13 neither spills nor
# keeps a stack frame on sm_80 and sm_90 (benchmarks/kernel_resources.py; benchmarks/RESULTS.md):
# float32 output (the default; float16 and bfloat16 compute in it) at 75% in both kernels,
# float64 output at 62.5% (gather_rows) and 56.25% (fill_rows); 75% for float64 spills 4-24 bytes.
# fmt: off
@per_output_dtype("out", float32=(THREADS, 6), float64=(THREADS, 5))
def gather_rows(indptr, indices, data, local_rows, global_rows, col_dest, mod_width, mod_code, mod_threshold,
                row_scale, col_weight, row_out, out, present, status, obs_f, obs_f_out, obs_i, obs_i_out,
                obs_u, obs_u_out):
    """Same contract as :func:`gpuload.kernels.cpu.gather_rows`; launch a block per row."""
    r = cuda.blockIdx.x
    tid, step = cuda.threadIdx.x, cuda.blockDim.x
    verdict = cuda.shared.array((1, 2), int64)  # the row's present bits and error code
    if tid == 0:
        verdict[0, 0] = 0
        verdict[0, 1] = OK
    # The obs first: the arrays it reads are not live across the row's loops (-7 registers).
    copy_obs(r, global_rows[r], tid, step, obs_f, obs_f_out, obs_i, obs_i_out, obs_u, obs_u_out)
    zero_row(r, tid, step, row_out, mod_width, out)
    cuda.syncthreads()  # every zero before any value: a value's column is another thread's zero
    err, bits = scatter_row(r, local_rows[r], global_rows[r], tid, step, indptr, indices, data, col_dest,
                            mod_code, mod_threshold, row_scale, col_weight, row_out, out)
    report_row(r, verdict, 0, err, bits, tid == 0, mod_width.size, present, status)


@per_output_dtype("out_values", float32=(WARP * ROWS_PER_BLOCK, 12), float64=(WARP * ROWS_PER_BLOCK, 9))
def fill_rows(indptr, indices, data, local_rows, global_rows, col_dest, mod_code, mod_threshold, row_scale,
              col_weight, cursor, out_indices, out_values, present, status, obs_f, obs_f_out, obs_i,
              obs_i_out, obs_u, obs_u_out):
    """Same contract as :func:`gpuload.kernels.cpu.fill_rows`; launch blocks of (lanes, rows):
    thread (lane, w) of block b takes lane ``lane`` of row ``b * blockDim.y + w``."""
    lane, lanes_n, w = cuda.threadIdx.x, cuda.blockDim.x, cuda.threadIdx.y
    r = cuda.blockIdx.x * cuda.blockDim.y + w
    active = r < local_rows.size  # the last block's surplus warps only meet the barriers
    n_mod = present.shape[0]
    # Per round, row and modality: the lanes holding a value of it (bit ``lane``), in two buffers
    # by round parity; a lane's rank among them (a popcount) is where its entry goes.
    lanes = cuda.shared.array((2, ROWS_PER_BLOCK, MAX_MODALITIES), uint32)
    start = cuda.shared.array((ROWS_PER_BLOCK, MAX_MODALITIES), int64)  # each modality's next entry
    verdict = cuda.shared.array((ROWS_PER_BLOCK, 2), int64)  # each row's present bits and error code
    longest = cuda.shared.array(1, int64)  # the most stored values of the block's rows
    lo, hi = 0, 0
    if active:
        copy_obs(r, global_rows[r], lane, lanes_n, obs_f, obs_f_out, obs_i, obs_i_out, obs_u, obs_u_out)
        row = local_rows[r]
        lo, hi = indptr[row], indptr[row + 1]
        if lane < n_mod:
            start[w, lane] = cursor[r, lane]
    if lane < n_mod:
        lanes[0, w, lane] = 0
    if lane == 0:
        verdict[w, 0] = 0
        verdict[w, 1] = OK
        if w == 0:
            longest[0] = 0
    cuda.syncthreads()
    if lane == 0:
        cuda.atomic.max(longest, 0, hi - lo)
    cuda.syncthreads()
    err = OK
    bits = 0
    bit = uint32(1) << uint32(lane)
    for i in range((longest[0] + lanes_n - 1) // lanes_n):
        p = i % 2
        k = lo + i * lanes_n + lane
        d = -1
        j = 0
        if k < hi:
            j, d, err = locate(k, indices, col_dest, err)
        m = d >> DEST_SHIFT if d >= 0 else -1
        if m >= 0:
            cuda.atomic.or_(lanes, (p, w, m), bit)
        cuda.syncthreads()
        if lane < n_mod:  # the next round's buffer: its last reader passed the barrier above
            lanes[1 - p, w, lane] = 0
        if m >= 0:
            value, err, bits = entry_value(k, j, d, global_rows[r], data, mod_code, mod_threshold, row_scale,
                                           col_weight, err, bits)
            at = start[w, m] + cuda.popc(lanes[p, w, m] & (bit - uint32(1)))
            write_entry(at, d, value, out_indices, out_values)
        # Every entry of the round is written, and the next round's buffer zeroed, before a
        # modality's start moves on; the next round's barrier orders that move before its reads.
        cuda.syncthreads()
        if lane < n_mod:
            start[w, lane] += cuda.popc(lanes[p, w, lane])
    report_row(r, verdict, w, err, bits, active and lane == 0, n_mod, present, status)
# fmt: on


def launch(
    kernel: PerOutputDtype, stream, n_rows: int, width: int, args: tuple, *, threads: int = THREADS
) -> None:
    """Launch one of this module's kernels over ``n_rows`` super-batch rows (``stream=None``: the
    default stream, as in the simulator), its dispatcher for the output's dtype. ``threads``: per
    block of :func:`gather_rows` (at most THREADS, its launch bounds), and the lanes per row of
    :func:`fill_rows` (at most a warp; the simulator takes fewer, so that its tests run several
    rounds per row; at least MAX_MODALITIES, a lane per modality's counters). The geometry does
    not depend on the row ``width``."""
    grid: int
    block: int | tuple[int, int]
    if kernel is gather_rows:
        grid, block = n_rows, threads
    else:
        lanes = min(max(threads, MAX_MODALITIES), WARP)
        grid, block = -(-n_rows // ROWS_PER_BLOCK), (lanes, ROWS_PER_BLOCK)
    dispatcher = kernel.for_args(args)
    (dispatcher[grid, block] if stream is None else dispatcher[grid, block, stream])(*args)
