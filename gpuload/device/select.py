"""Which face a ``device=`` argument means, and whether this machine has a GPU.

A GPU is detected by asking the driver (``torch.cuda.is_available()`` and
``numba.cuda.is_available()``), never by whether a package imports: the GPU packages import
fine on machines without one. ``"cuda"`` and ``"auto"`` mean the caller's current device
(``torch.cuda.current_device()``, which torchrun scripts set from ``LOCAL_RANK``), ``"cuda:N"``
means GPU N; choosing one never changes the caller's current device.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from gpuload.device.backend import Backend
from gpuload.device.cuda_backend import CudaBackend
from gpuload.device.simulated import SimulatedCudaBackend
from gpuload.errors import ArgumentError, DeviceError

GPU_INSTALL_HINT = (
    "install the GPU extra: pip install 'gpuload[gpu-cu12]' (or gpu-cu13), "
    "or create the conda environment in environment.yml"
)
VALID = "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'cudasim'"


def simulator_enabled() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


@functools.cache
def gpu_available() -> bool:
    """True when torch and numba can reach a CUDA device (never under the simulator)."""
    if simulator_enabled() or importlib.util.find_spec("numba.cuda") is None:
        return False
    try:
        from numba import cuda

        return bool(torch.cuda.is_available() and cuda.is_available())
    except ImportError:
        return False


def get_backend(device: str | torch.device | Backend = "auto") -> Backend:
    """The backend for ``device``: ``"auto"`` (the current GPU if one is usable, else cpu),
    ``"cpu"``, ``"cuda"``/``"cuda:N"``, ``"cudasim"`` (tests: needs ``NUMBA_ENABLE_CUDASIM=1``),
    or a :class:`Backend` already made."""
    if isinstance(device, Backend):
        return device
    device = str(device)
    if device == "auto":
        device = "cuda" if gpu_available() else "cpu"
    if device == "cpu":
        return Backend()
    if device == "cudasim":
        if not simulator_enabled():
            raise DeviceError("device='cudasim' needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported")
        return SimulatedCudaBackend()
    if device == "cuda" or device.startswith("cuda:"):
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ArgumentError(f"{VALID}, got {device!r}") from None
        return CudaBackend(_gpu_index(parsed))
    raise ArgumentError(f"{VALID}, got {device!r}")


def _gpu_index(device: torch.device) -> int:
    """The GPU ``device`` names, after checking that it can be used."""
    needed = (("cupy", "cupy"), ("numba.cuda", "numba-cuda"))
    missing = [name for module, name in needed if importlib.util.find_spec(module) is None]
    if missing:
        raise DeviceError(
            f"device={str(device)!r} needs {', '.join(missing)}, which is not installed; {GPU_INSTALL_HINT}"
        )
    if torch.version.cuda is None:
        raise DeviceError(
            f"device={str(device)!r}: this torch build has no CUDA support; install a CUDA build of torch "
            "(pip: the index https://download.pytorch.org/whl/cu128; conda: pytorch-gpu from conda-forge)"
        )
    if not gpu_available():
        raise DeviceError(
            f"device={str(device)!r} but no usable NVIDIA GPU was found (torch/numba cannot reach a CUDA "
            f"driver); use device='cpu' or 'auto', or {GPU_INSTALL_HINT}"
        )
    index = torch.cuda.current_device() if device.index is None else device.index
    if not 0 <= index < torch.cuda.device_count():
        raise DeviceError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return index
