"""The ``cudasim`` face: the cuda orchestration on host memory, with simulated streams.

CI has no GPU: this face runs the loader's GPU code path (two streams, events, page-locked rings,
the hand-off) with host memory standing in for device memory and numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) running the kernels, and writes the same ledger the ``cuda`` face
does, which :mod:`gpuload.device.happens_before` checks.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch

from gpuload.device.backend import StreamFace, span

# The simulator runs every CUDA thread as a Python thread: keep blocks small there.
SIMULATOR_THREADS = 2
# numba's simulator keeps its thread and block indices in module state: kernels of two loader
# threads (two live iterators, two loaders) must not run in it at once. A GPU needs no such lock.
_SIMULATOR_LOCK = threading.Lock()


class _OnStream(contextlib.AbstractContextManager):
    """``which`` made the current stream of the calling thread (``current``: the face's
    thread-local) until the block ends, the one before restored then (what ``on_stream`` returns)."""

    __slots__ = ("current", "which", "previous")

    def __init__(self, current: threading.local, which: str) -> None:
        self.current, self.which, self.previous = current, which, None

    def __enter__(self) -> None:
        self.previous = getattr(self.current, "stream", None)
        self.current.stream = self.which

    def __exit__(self, *exc) -> None:
        self.current.stream = self.previous


class SimulatedCudaBackend(StreamFace):
    """The ``cudasim`` face: the cuda orchestration on host memory with simulated streams.

    ``kernels="simulator"`` runs the CUDA kernels in numba's simulator (what the tests check);
    ``kernels="cpu"`` runs their CPU twins instead, for measuring the orchestration's own host
    cost without the simulator's (benchmarks/orchestration.py). Streams are names: the
    simulator runs every operation at once, which is why the ordering is checked on the ledger
    (:mod:`gpuload.device.happens_before`), not by values.
    """

    name = "cudasim"

    def __init__(self, kernels: str = "simulator") -> None:
        if kernels not in ("simulator", "cpu"):
            raise ValueError(f"kernels must be 'simulator' or 'cpu', got {kernels!r}")
        self.kernels = kernels
        super().__init__(torch.device("cpu"))
        self._current = threading.local()

    def on_stream(self, which: str = "compute") -> contextlib.AbstractContextManager:
        return _OnStream(self._current, which)

    def stream_name(self) -> str:
        return getattr(self._current, "stream", None) or "default"

    _receiver = stream_name  # the hand-off's per-batch check: one call, not two

    def pinned(self, nbytes: int) -> np.ndarray:
        buffer = np.empty(nbytes, dtype=np.uint8)
        self.ledger.add("pinned", "host buffer", "host", nbytes, span(buffer)[0])
        return buffer

    def _run_kernel(self, kernel: str, n_rows: int, width: int, args: tuple) -> None:
        if self.kernels == "cpu":
            return super()._run_kernel(kernel, n_rows, width, args)
        from gpuload.kernels import cuda as cuda_kernels

        with _SIMULATOR_LOCK:
            cuda_kernels.launch(
                getattr(cuda_kernels, kernel), None, n_rows, width, args, threads=SIMULATOR_THREADS
            )
