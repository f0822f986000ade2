"""The CPU twin's kernels run on a few threads of gpuload's own, taking blocks of rows in turn.

numba's ``parallel=True`` runs on its threading layer's pool: with OpenMP (what it picks when
TBB is absent) the workers spin after each kernel, waiting for the next, on the cores the reader,
the assembler and the training loop need; and each new assembler thread (one per iterator) gets
a team of its own. Here the kernels are plain ``nogil`` functions over rows ``start`` to
``stop``: a super-batch is cut into a few blocks per thread, the calling thread and a shared
pool's threads take the next block until none is left, and they block, not spin, between
kernels. Blocks taken in turn, not fixed shares, keep a busy machine from stalling a kernel on
a thread that gets no core: the threads that run take the blocks. How many threads a kernel
uses is set per calling thread (:func:`use_threads`), as ``numba.set_num_threads`` does.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

BLOCKS_PER_THREAD = 4  # blocks a super-batch is cut into, per thread
POOL_NAME = "gpuload-kernel-pool"  # its threads' names start with this
_local = threading.local()
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def use_threads(n: int) -> None:
    """Kernels launched from the calling thread use up to ``n`` threads (itself included)."""
    _local.threads = max(1, int(n))


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix=POOL_NAME)
        return _pool


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist (nor does a thread that held the
    lock at the fork): the child starts its own."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def run_rows(kernel: Callable, args: tuple, n_rows: int) -> None:
    """``kernel(*args, start, stop)`` over ``n_rows`` rows in blocks taken in turn by the calling
    thread's threads (:func:`use_threads`); returns once every block has finished, raising the
    first error only then (no block may still write into the outputs when the caller moves on)."""
    threads = min(getattr(_local, "threads", 1), n_rows)
    if threads <= 1:
        kernel(*args, 0, n_rows)
        return
    n_blocks = min(n_rows, BLOCKS_PER_THREAD * threads)
    edges = [n_rows * b // n_blocks for b in range(n_blocks + 1)]
    taken = itertools.count()  # next() on it is atomic: each block goes to one thread

    def take_blocks() -> None:
        while (b := next(taken)) < n_blocks:
            kernel(*args, edges[b], edges[b + 1])

    pool = _shared_pool()
    helpers: list[Future] = [pool.submit(take_blocks) for _ in range(threads - 1)]
    try:
        take_blocks()
    finally:
        # A helper not started yet has no block left to take; one started may still be writing.
        errors = [h.exception() for h in helpers if not h.cancel()]
    for error in errors:
        if error is not None:
            raise error
