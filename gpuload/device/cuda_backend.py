"""The ``cuda`` face: torch's caching allocator, a copy and a compute stream, numba kernels.

Every device buffer comes from torch's caching allocator; the kernels view it through
``__cuda_array_interface__``; cupy only page-locks host memory. Imported only when a GPU is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from gpuload.device.backend import Fence, StreamFace, span


class CudaBackend(StreamFace):
    """The ``cuda`` face on GPU ``index``: a copy and a compute stream, torch's allocator, numba kernels."""

    name = "cuda"
    on_gpu = True
    allocation_errors = (MemoryError, torch.cuda.OutOfMemoryError)

    def __init__(self, index: int) -> None:
        from numba import cuda

        super().__init__(torch.device("cuda", index))
        self.index = index
        with self.device_context():  # torch's streams are non-blocking
            self.stream = {
                which: torch.cuda.Stream(device=self.torch_device) for which in ("copy", "compute")
            }
            self.kernel_stream = cuda.external_stream(self.stream["compute"].cuda_stream)

    @property
    def stream_handle(self) -> int:
        """The compute stream's ``cudaStream_t`` (for DALI's ``cuda_stream``)."""
        return self.stream["compute"].cuda_stream

    def on_stream(self, which: str = "compute"):
        return torch.cuda.stream(self.stream[which])

    @contextlib.contextmanager
    def device_context(self):
        from numba import cuda

        with torch.cuda.device(self.index), cuda.gpus[self.index]:
            yield

    def _current_stream(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.torch_device)

    def _receiver(self) -> int:
        return self._current_stream().cuda_stream

    def stream_name(self) -> str:
        current = self._current_stream()
        for which, stream in self.stream.items():
            if current == stream:
                return which
        return "default" if current.cuda_stream == 0 else f"stream {current.cuda_stream:#x}"

    def upload_into(self, target: torch.Tensor, host: np.ndarray, name: str) -> None:
        self._copy_note("h2d", name, host, target)
        target.copy_(torch.from_numpy(host), non_blocking=True)

    def pinned(self, nbytes: int) -> np.ndarray:
        """Exactly ``nbytes`` of page-locked memory (cupy's pinned pool would round up to a power
        of two and never free); an allocation failure is a MemoryError, so callers fall back."""
        import cupy

        try:
            memory = cupy.cuda.PinnedMemoryPointer(cupy.cuda.PinnedMemory(nbytes), 0)
        except cupy.cuda.runtime.CUDARuntimeError as e:
            raise MemoryError(f"cannot page-lock {nbytes} bytes of host memory ({e})") from e
        buffer = np.ndarray(nbytes, dtype=np.uint8, buffer=memory)
        self.ledger.add("pinned", "host buffer", "host", nbytes, span(buffer)[0])
        return buffer

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

    def _record_event(self) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(self._current_stream())
        return event

    def _stream_wait(self, fence: Fence) -> None:
        self._current_stream().wait_event(fence.event)

    def _passed(self, fence: Fence) -> bool:
        return fence.event.query()

    def _host_wait(self, fence: Fence) -> None:
        fence.event.synchronize()

    def _record_on(self, tensors: Sequence[torch.Tensor], stream) -> None:
        for tensor in tensors:
            if tensor.is_cuda:  # a batch_transform may return host tensors too
                tensor.record_stream(stream)
