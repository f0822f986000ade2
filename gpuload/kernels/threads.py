"""The CPU twin's kernels run on a few threads of gpuload's own, each taking every T-th row.

numba's ``parallel=True`` runs on its threading layer's pool: with OpenMP (what it picks when
TBB is absent) the workers spin after each kernel, waiting for the next, on the cores the reader,
the assembler and the training loop need; and each new assembler thread (one per iterator) gets
a team of its own. Here the kernels are plain ``nogil`` functions over rows ``first, first + step,
...``, called once per thread: the calling thread takes one share, a shared pool's threads the
others, and they block, not spin, between kernels. How many threads a kernel uses is set per
calling thread (:func:`use_threads`), as ``numba.set_num_threads`` does.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

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
    """``kernel(*args, first, step)`` over ``n_rows`` rows, split over the calling thread's
    threads (:func:`use_threads`); returns once every share has finished, raising the first
    error only then (no share may still write into the outputs when the caller moves on)."""
    threads = min(getattr(_local, "threads", 1), n_rows)
    if threads <= 1:
        kernel(*args, 0, 1)
        return
    pool = _shared_pool()
    shares: list[Future] = [pool.submit(kernel, *args, first, threads) for first in range(1, threads)]
    try:
        kernel(*args, 0, threads)
    finally:
        errors = [share.exception() for share in shares]  # waits for each
    for error in errors:
        if error is not None:
            raise error
