"""The one place that knows where arrays live, which kernel runs, and on which stream.

Three faces compute the same batches:

- ``cpu`` (:class:`Backend`): numpy arrays and torch CPU tensors, the ``@njit`` CPU twin.
- ``cuda`` (:class:`CudaBackend`): torch CUDA memory (one allocator: torch's caching allocator
  serves every device buffer the loader uses), ``@cuda.jit`` kernels viewing that memory through
  ``__cuda_array_interface__``, one non-blocking stream per loader, page-locked host buffers
  for reads.
- ``cudasim`` (:class:`SimulatedCudaBackend`): the cuda orchestration with host memory standing
  in for device memory, the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) running the kernels and a
  simulated stream, so CI runs the GPU code, and checks its stream discipline, without a GPU.

Every device operation the loader issues is a method here and is written to :attr:`ledger`
with the stream it was issued on. Operations run on the calling thread's *current* stream, as
torch's do; the loader's threads make the loader's stream current with :meth:`on_stream`, so an
operation issued outside it shows up in the ledger on the default stream. A batch is handed to
the consumer with the event recorded after its last operation (:meth:`fence`): the consumer's
stream waits on it and every tensor is ``record_stream``-ed there (:meth:`hand_off`), so the
caching allocator never gives a batch's memory to the loader while the consumer may still use it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from gpuload.device.ledger import DeviceLedger

# The simulator runs every CUDA thread as a Python thread: keep blocks small there.
SIMULATOR_THREADS = 2


class HostBufferPool:
    """Recycles host output buffers once nothing references them any more.

    A fresh 100 MB buffer per batch costs a page fault per 4 KB (measured: 5x slower than a
    reused one at B=256, full width). Each buffer is a numpy array wrapped by
    ``torch.from_numpy``; every torch tensor or view built on it keeps a reference to that
    array, so a refcount at its baseline means no batch the user still holds shares its memory.
    """

    def __init__(self, max_buffers: int = 6) -> None:
        self.max_buffers = max_buffers
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        with self._lock:
            for buf in self._buffers:
                # References: the pool's list, the loop variable and getrefcount's argument.
                if buf.size == n and buf.dtype == np_dtype and sys.getrefcount(buf) <= 3:
                    return torch.from_numpy(buf)
            buf = np.empty(n, dtype=np_dtype)
            if len(self._buffers) >= self.max_buffers:
                self._buffers.pop(0)
            self._buffers.append(buf)
            return torch.from_numpy(buf)


class Backend:
    """The ``cpu`` face: no device, no streams; the kernels are the CPU twin."""

    name = "cpu"
    on_gpu = False  # device memory is a real GPU's
    streams = False  # work is ordered on streams (the cuda faces)
    allocation_errors: tuple[type[BaseException], ...] = (MemoryError,)

    def __init__(self, torch_device: torch.device | None = None) -> None:
        self.torch_device = torch_device or torch.device("cpu")
        self.ledger = DeviceLedger()
        self.host_pool = HostBufferPool()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.torch_device})"

    # -- streams and devices ----------------------------------------------------------------
    def on_stream(self) -> contextlib.AbstractContextManager:
        """Make the loader's stream current in the calling thread (a no-op on the CPU)."""
        return contextlib.nullcontext()

    def device_context(self) -> contextlib.AbstractContextManager:
        """Make this backend's GPU current in the calling thread, restoring the caller's after."""
        return contextlib.nullcontext()

    def stream_name(self) -> str:
        """The calling thread's current stream, as the ledger names it."""
        return "host"

    def note(self, kind: str, name: str, size: int = 0, address: int = 0) -> None:
        self.ledger.add(kind, name, self.stream_name(), size, address)

    # -- memory -----------------------------------------------------------------------------
    def empty(self, shape: int | Sequence[int], dtype: torch.dtype, name: str) -> torch.Tensor:
        """Device memory for ``name`` (a fresh tensor: no batch the user holds shares it)."""
        out = torch.empty(shape, dtype=dtype, device=self.torch_device)
        self.note("alloc", name, out.numel() * out.element_size())
        return out

    def output(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """A flat output buffer that batches will view: recycled once unreferenced on the CPU
        (see :class:`HostBufferPool`), fresh from the caching allocator on a GPU."""
        out = self._output(n, dtype)
        self.note("alloc", "output", out.numel() * out.element_size(), out.data_ptr())
        return out

    def _output(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        if self.on_gpu:  # the caching allocator: record_stream keeps a batch's memory from reuse
            return torch.empty(n, dtype=dtype, device=self.torch_device)
        return self.host_pool.take(n, dtype)  # host memory: recycled once no batch views it

    def upload(self, host: np.ndarray, name: str) -> torch.Tensor:
        """``host`` where the kernels read it (no copy on the CPU)."""
        self.note("h2d", name, host.nbytes)
        return torch.from_numpy(host)

    def upload_into(self, target: torch.Tensor, host: np.ndarray, name: str) -> None:
        """Copy ``host`` into the device tensor ``target`` (same size)."""
        self.note("h2d", name, host.nbytes)
        target.copy_(torch.from_numpy(host))

    def cast(self, tensor: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
        """``tensor`` as ``dtype`` (a device kernel on the GPU)."""
        self.note("launch", name)
        return tensor.to(dtype)

    def take_rows(self, matrix: torch.Tensor, rows: torch.Tensor, name: str) -> torch.Tensor:
        """Rows ``rows`` (int64, on the device) of the device ``matrix``: one gather kernel."""
        self.note("launch", name)
        return torch.index_select(matrix, 0, rows)

    def to_host(self, tensor: torch.Tensor, name: str) -> np.ndarray:
        """``tensor``'s values on the host: the one place the host waits for the device."""
        self.note("d2h", name, tensor.numel() * tensor.element_size())
        self.note("sync", name)
        return tensor.numpy()

    def pinned(self, nbytes: int) -> np.ndarray:
        """A host buffer for reads that copies can leave from asynchronously."""
        return np.empty(nbytes, dtype=np.uint8)

    def release_pinned(self, buffer: np.ndarray) -> None:
        """Forget a buffer from :meth:`pinned` (its memory goes when the last view does)."""

    def free_memory(self) -> int:
        """Bytes a preload could use where the kernels read."""
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))

    # -- kernels ----------------------------------------------------------------------------
    def kernel_view(self, tensor: torch.Tensor):
        """The kernels' view of a buffer: no copy on any face."""
        return tensor.numpy()

    def launch(self, kernel: str, n_rows: int, width: int, args: tuple) -> None:
        """Run ``kernel`` (see :mod:`gpuload.kernels`) over ``n_rows`` super-batch rows of
        ``width`` output columns; the ledger counts it and the CPU time the launching thread
        spent in it (CPU time, not wall time: a thread that is preempted inside a CPU kernel
        has not spent the wait on the kernel)."""
        self.note("launch", kernel)
        start = time.thread_time()
        self._run_kernel(kernel, n_rows, width, args)
        self.ledger.add_launch_time(time.thread_time() - start)

    def _run_kernel(self, kernel: str, n_rows: int, width: int, args: tuple) -> None:
        from gpuload.kernels import cpu

        getattr(cpu, kernel)(*args)

    # -- hand-off ---------------------------------------------------------------------------
    def fence(self, name: str):
        """An event recorded on the loader's stream after the work issued so far (None here)."""
        return None

    def wait_host(self, fence) -> None:
        """Block the calling thread until ``fence`` has passed."""

    def hand_off(self, fence, tensors: Sequence[torch.Tensor]) -> None:
        """Give ``tensors`` to the calling thread's current stream once ``fence`` has passed."""


class SimulatedCudaBackend(Backend):
    """The ``cudasim`` face: the cuda orchestration on host memory with simulated streams.

    ``kernels="simulator"`` runs the CUDA kernels in numba's simulator (what the tests check);
    ``kernels="cpu"`` runs their CPU twins instead, for measuring the orchestration's own host
    cost without the simulator's (benchmarks/orchestration.py).
    """

    name = "cudasim"
    streams = True

    def __init__(self, kernels: str = "simulator") -> None:
        if kernels not in ("simulator", "cpu"):
            raise ValueError(f"kernels must be 'simulator' or 'cpu', got {kernels!r}")
        self.kernels = kernels
        super().__init__(torch.device("cpu"))
        self._current = threading.local()
        self._events = itertools.count(1)
        self._recorded = 0  # the last event recorded on the loader's stream
        self._passed = 0  # the last event the host knows has passed (it waited for the stream since)

    @contextlib.contextmanager
    def on_stream(self):
        previous = getattr(self._current, "stream", None)
        self._current.stream = "loader"
        try:
            yield
        finally:
            self._current.stream = previous

    def stream_name(self) -> str:
        return getattr(self._current, "stream", None) or "default"

    def upload(self, host: np.ndarray, name: str) -> torch.Tensor:
        self.note("h2d", name, host.nbytes)
        return torch.from_numpy(host.copy())  # device memory is not the host buffer

    def to_host(self, tensor: torch.Tensor, name: str) -> np.ndarray:
        self._passed = self._recorded  # the wait for the stream passes every event before it
        return super().to_host(tensor, name).copy()

    def pinned(self, nbytes: int) -> np.ndarray:
        self.ledger.add("pinned", "host buffer", "host", nbytes)
        return np.empty(nbytes, dtype=np.uint8)

    def release_pinned(self, buffer: np.ndarray) -> None:
        self.ledger.add("pinned", "host buffer", "host", -buffer.nbytes)

    def _run_kernel(self, kernel: str, n_rows: int, width: int, args: tuple) -> None:
        if self.kernels == "cpu":
            return super()._run_kernel(kernel, n_rows, width, args)
        from gpuload.kernels import cuda as cuda_kernels

        kernel_function = getattr(cuda_kernels, kernel)
        cuda_kernels.launch(kernel_function, None, n_rows, width, args, threads=SIMULATOR_THREADS)

    def fence(self, name: str) -> int:
        event = self._recorded = next(self._events)
        self.note("event", f"{name} #{event}")
        return event

    def wait_host(self, fence) -> None:
        if fence <= self._passed:  # as CudaBackend: an event that has passed costs no wait
            return
        self.note("sync", f"event #{fence}")
        self._passed = max(self._passed, fence)

    def hand_off(self, fence, tensors: Sequence[torch.Tensor]) -> None:
        self.note("wait", f"event #{fence}")
        self.note("record_stream", "batch", len(tensors))


class CudaBackend(Backend):
    """The ``cuda`` face on GPU ``index``: one non-blocking stream, torch's allocator, numba kernels."""

    name = "cuda"
    on_gpu = True
    streams = True
    allocation_errors = (MemoryError, torch.cuda.OutOfMemoryError)

    def __init__(self, index: int) -> None:
        from numba import cuda

        super().__init__(torch.device("cuda", index))
        self.index = index
        with self.device_context():
            self.stream = torch.cuda.Stream(device=self.torch_device)  # torch's streams are non-blocking
            self.kernel_stream = cuda.external_stream(self.stream.cuda_stream)

    @property
    def stream_handle(self) -> int:
        """The loader stream's ``cudaStream_t`` (for DALI's ``cuda_stream``)."""
        return self.stream.cuda_stream

    def on_stream(self):
        return torch.cuda.stream(self.stream)

    @contextlib.contextmanager
    def device_context(self):
        from numba import cuda

        with torch.cuda.device(self.index), cuda.gpus[self.index]:
            yield

    def stream_name(self) -> str:
        current = torch.cuda.current_stream(self.torch_device)
        return "loader" if current == self.stream else "default" if current.cuda_stream == 0 else "other"

    def upload(self, host: np.ndarray, name: str) -> torch.Tensor:
        out = torch.empty(host.shape, dtype=torch.from_numpy(host[:0]).dtype, device=self.torch_device)
        self.upload_into(out, host, name)
        return out

    def upload_into(self, target: torch.Tensor, host: np.ndarray, name: str) -> None:
        self.note("h2d", name, host.nbytes)
        target.copy_(torch.from_numpy(host), non_blocking=True)

    def to_host(self, tensor: torch.Tensor, name: str) -> np.ndarray:
        self.note("d2h", name, tensor.numel() * tensor.element_size())
        self.note("sync", name)
        return tensor.cpu().numpy()  # a copy on the current stream, then a wait for that stream

    def pinned(self, nbytes: int) -> np.ndarray:
        """Exactly ``nbytes`` of page-locked memory (cupy's pinned pool would round up to a power
        of two and never free); an allocation failure is a MemoryError, so callers fall back."""
        import cupy

        try:
            memory = cupy.cuda.PinnedMemoryPointer(cupy.cuda.PinnedMemory(nbytes), 0)
        except cupy.cuda.runtime.CUDARuntimeError as e:
            raise MemoryError(f"cannot page-lock {nbytes} bytes of host memory ({e})") from e
        self.ledger.add("pinned", "host buffer", "host", nbytes)
        return np.ndarray(nbytes, dtype=np.uint8, buffer=memory)

    def release_pinned(self, buffer: np.ndarray) -> None:
        self.ledger.add("pinned", "host buffer", "host", -buffer.nbytes)

    def free_memory(self) -> int:
        """Free device memory, counting what torch's caching allocator holds but does not use."""
        free, _total = torch.cuda.mem_get_info(self.torch_device)
        cached = torch.cuda.memory_reserved(self.torch_device) - torch.cuda.memory_allocated(
            self.torch_device
        )
        return int(free + cached)

    def kernel_view(self, tensor: torch.Tensor):
        from numba import cuda

        return cuda.as_cuda_array(tensor)

    def _run_kernel(self, kernel: str, n_rows: int, width: int, args: tuple) -> None:
        from gpuload.kernels import cuda as cuda_kernels

        cuda_kernels.launch(getattr(cuda_kernels, kernel), self.kernel_stream, n_rows, width, args)

    def fence(self, name: str) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(self.stream)
        self.note("event", name)
        return event

    def wait_host(self, fence) -> None:
        if fence.query():  # passed already (the host waited for the stream since): no wait
            return
        self.note("sync", "event")
        fence.synchronize()

    def hand_off(self, fence, tensors: Sequence[torch.Tensor]) -> None:
        consumer = torch.cuda.current_stream(self.torch_device)
        consumer.wait_event(fence)
        for tensor in tensors:
            if tensor.is_cuda:  # a batch_transform may return host tensors too
                tensor.record_stream(consumer)
        self.note("wait", "event")
        self.note("record_stream", "batch", len(tensors))
