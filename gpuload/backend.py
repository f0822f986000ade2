"""The one place that knows where arrays live and which kernel runs.

Three faces compute the same batches:

- ``cpu``: numpy arrays, the ``@njit`` CPU twin, pandas frames, torch CPU tensors.
- ``cuda``: row blocks are read into pinned host buffers and copied asynchronously to the
  device on the backend's own stream; the ``@cuda.jit`` kernel writes straight into torch CUDA
  memory (zero-copy: the kernel sees the tensor through ``__cuda_array_interface__``); obs lives
  in a cuDF frame and per-cell arrays in cupy.
- ``cudasim``: the ``cuda`` orchestration with the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``)
  and numpy standing in for device memory, so CI runs the GPU code without a GPU.

A GPU is detected by asking the driver (``cupy.cuda.is_available()`` and
``numba.cuda.is_available()``), never by whether a package imports: the GPU packages import
fine on machines without one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import torch

from gpuload.errors import ArgumentError, DeviceError

GPU_INSTALL_HINT = (
    "install the GPU extra: pip install 'gpuload[gpu-cu12]' (or gpu-cu13), "
    "or create the conda environment in environment.yml"
)
# The simulator runs every CUDA thread as a Python thread: keep blocks small there.
SIMULATOR_THREADS = 4


def simulator_enabled() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


@functools.cache
def gpu_available() -> bool:
    """True when a real CUDA device is usable by cupy and numba (never under the simulator)."""
    if simulator_enabled():
        return False
    try:
        import cupy
        from numba import cuda

        return bool(cupy.cuda.is_available() and cuda.is_available())
    except ImportError:
        return False


class HostBufferPool:
    """Recycles host output buffers once nothing references them any more.

    A fresh 100 MB buffer per batch costs a page fault per 4 KB (measured: 5x slower than a
    reused one at B=256, full width). Each buffer is a numpy array wrapped by
    ``torch.from_numpy``; every torch tensor or view built on it keeps a reference to that
    array, so a refcount at its baseline means no batch the user still holds shares its memory.
    """

    def __init__(self, max_buffers: int = 16) -> None:
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


@dataclass(frozen=True)
class Backend:
    """Array module, kernel and hand-off for one face (see the module docstring)."""

    name: str  # "cpu", "cuda" or "cudasim"
    torch_device: torch.device
    xp: ModuleType  # numpy or cupy: where per-cell arrays and row blocks live
    stream: object | None = None  # cupy stream of the cuda face
    host_pool: HostBufferPool = field(default_factory=HostBufferPool)

    @property
    def on_gpu(self) -> bool:
        return self.name == "cuda"

    # -- memory -----------------------------------------------------------------------------
    def host_empty(self, n: int, dtype) -> np.ndarray:
        """A host buffer for file reads: pinned on the cuda face, so copies can be async."""
        if self.on_gpu:
            import cupyx

            return cupyx.empty_pinned(n, dtype=dtype)
        return np.empty(n, dtype=dtype)

    def to_device(self, host: np.ndarray):
        """Copy a host array to where the kernels read it (no copy on the CPU faces)."""
        if not self.on_gpu:
            return host
        out = self.xp.empty(host.shape, dtype=host.dtype)
        out.set(host, stream=self.stream)
        return out

    def empty_output(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """An output buffer no batch the user still holds shares: torch's caching allocator
        on the GPU, the recycling host pool on the CPU faces."""
        if not self.on_gpu:
            return self.host_pool.take(n, dtype)
        with self.torch_stream():
            return torch.empty(n, dtype=dtype, device=self.torch_device)

    def to_torch(self, array) -> torch.Tensor:
        """Hand an xp array to torch without copying (DLPack on the GPU)."""
        if self.on_gpu:
            return torch.from_dlpack(array)
        return torch.from_numpy(np.ascontiguousarray(array))

    def device_context(self):
        """Make this backend's GPU current in the calling thread (cupy's device is per thread)."""
        if not self.on_gpu:
            return contextlib.nullcontext()
        return self.xp.cuda.Device(self.torch_device.index)

    def torch_stream(self):
        if not self.on_gpu:
            return contextlib.nullcontext()
        return torch.cuda.stream(torch.cuda.ExternalStream(self.stream.ptr, device=self.torch_device))

    def synchronize(self) -> None:
        if self.on_gpu:
            self.stream.synchronize()

    def frame(self, pandas_frame):
        """The obs frame in the face's frame library (cuDF on the GPU)."""
        if self.on_gpu:
            import cudf

            return cudf.DataFrame.from_pandas(pandas_frame)
        return pandas_frame

    def free_memory(self) -> int:
        """Free bytes where a preloaded matrix would live."""
        if self.on_gpu:
            free, _total = self.xp.cuda.runtime.memGetInfo()
            return int(free)
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))

    # -- kernels ----------------------------------------------------------------------------
    def _kernel_view(self, tensor: torch.Tensor):
        """The kernel's view of a torch buffer: no copy on any face."""
        if self.on_gpu:
            from numba import cuda

            return cuda.as_cuda_array(tensor)
        return tensor.numpy()

    def _launch(self, kernel: str, n_rows: int, *args) -> None:
        """Run ``kernel`` of this face: the CPU twin, or the CUDA kernel (simulated or real)."""
        if self.name == "cpu":
            from gpuload.kernels import cpu

            getattr(cpu, kernel)(*args)
            return
        from gpuload.kernels import cuda as cuda_kernels

        if self.name == "cudasim":
            cuda_kernels.launch(getattr(cuda_kernels, kernel), None, n_rows, *args, threads=SIMULATOR_THREADS)
            return
        from numba import cuda

        cuda_kernels.launch(
            getattr(cuda_kernels, kernel), cuda.external_stream(self.stream.ptr), n_rows, *args
        )

    def _status(self, status) -> np.ndarray:
        return status.get(stream=self.stream) if self.on_gpu else status

    def gather(
        self, block, local_rows, layout, row_scale, out: torch.Tensor, present: torch.Tensor
    ) -> np.ndarray:
        """Densify ``local_rows`` of a device CSR block into ``out`` and mark ``present``
        ([rows, modalities], zeroed by the caller); return the kernel's (error, row) status."""
        status = self.xp.zeros(2, dtype=np.int64)
        self._launch(
            "gather_rows",
            int(local_rows.shape[0]),
            block.indptr,
            block.indices,
            block.data,
            local_rows,
            layout.col_mod,
            layout.col_out,
            layout.mod_base,
            layout.mod_width,
            layout.mod_code,
            layout.mod_threshold,
            row_scale,
            layout.col_weight,
            self._kernel_view(out),
            self._kernel_view(present),
            status,
        )
        return self._status(status)

    def gather_sparse(self, block, local_rows, layout, row_scale, present: torch.Tensor, dtype) -> tuple:
        """The same rows as CSR entries per modality: (offsets [modalities * rows + 1], column
        indices, values, status). Modality ``m``'s row ``r`` spans
        ``offsets[m * rows + r] : offsets[m * rows + r + 1]``."""
        xp, n = self.xp, int(local_rows.shape[0])
        counts = xp.zeros((len(layout.names), n), dtype=np.int64)
        self._launch("count_rows", n, block.indptr, block.indices, local_rows, layout.col_mod, counts)
        offsets = xp.zeros(counts.size + 1, dtype=np.int64)
        xp.cumsum(counts.ravel(), out=offsets[1:])
        cursor = offsets[:-1].reshape(counts.shape).copy()
        total = int(offsets[-1])
        indices, values = xp.empty(total, dtype=np.int64), xp.empty(total, dtype=dtype)
        status = xp.zeros(2, dtype=np.int64)
        self._launch(
            "fill_rows",
            n,
            block.indptr,
            block.indices,
            block.data,
            local_rows,
            layout.col_mod,
            layout.col_out,
            layout.mod_code,
            layout.mod_threshold,
            row_scale,
            layout.col_weight,
            cursor,
            indices,
            values,
            self._kernel_view(present),
            status,
        )
        return offsets, indices, values, self._status(status)


def get_backend(device: str | torch.device = "auto") -> Backend:
    """The backend for ``device``: ``"auto"`` (cuda if a GPU is usable, else cpu), ``"cpu"``,
    ``"cuda"``/``"cuda:N"``, or ``"cudasim"`` (tests: needs ``NUMBA_ENABLE_CUDASIM=1``)."""
    device = str(device)
    if device == "auto":
        device = "cuda" if gpu_available() else "cpu"
    if device == "cpu":
        return Backend("cpu", torch.device("cpu"), np)
    if device == "cudasim":
        if not simulator_enabled():
            raise DeviceError("device='cudasim' needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported")
        return Backend("cudasim", torch.device("cpu"), np)
    valid = f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'cudasim', got {device!r}"
    if device == "cuda" or device.startswith("cuda:"):
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ArgumentError(valid) from None
        return _cuda_backend(parsed)
    raise ArgumentError(valid)


def _cuda_backend(device: torch.device) -> Backend:
    missing = []
    for module in ("cupy", "numba.cuda"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module.split(".")[0] if module == "cupy" else "numba-cuda")
    if missing:
        raise DeviceError(
            f"device={str(device)!r} needs {', '.join(missing)}, which is not installed; {GPU_INSTALL_HINT}"
        )
    if not gpu_available():
        raise DeviceError(
            f"device={str(device)!r} but no usable NVIDIA GPU was found "
            "(cupy/numba cannot reach a CUDA driver); "
            f"use device='cpu' or 'auto', or {GPU_INSTALL_HINT}"
        )
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device={str(device)!r}: this torch build has no CUDA support; install a CUDA build of torch"
        )
    import cupy

    index = device.index if device.index is not None else 0
    cupy.cuda.Device(index).use()
    return Backend("cuda", torch.device("cuda", index), cupy, cupy.cuda.Stream(non_blocking=True))
