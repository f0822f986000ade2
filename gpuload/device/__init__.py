"""Where arrays live and kernels run: the faces (``backend``), choosing one (``select``), the
ledger of device operations (``ledger``), the page-locked read buffers (``pinned``) and obs
frames of a face (``frames``: cuDF on a GPU)."""

from gpuload.device.backend import Backend, CudaBackend, HostBufferPool, SimulatedCudaBackend
from gpuload.device.frames import ObsFrames
from gpuload.device.ledger import DeviceLedger, DeviceOp
from gpuload.device.pinned import Carver, PinnedRing
from gpuload.device.select import GPU_INSTALL_HINT, get_backend, gpu_available, simulator_enabled

__all__ = [
    "GPU_INSTALL_HINT",
    "Backend",
    "Carver",
    "CudaBackend",
    "DeviceLedger",
    "DeviceOp",
    "HostBufferPool",
    "ObsFrames",
    "PinnedRing",
    "SimulatedCudaBackend",
    "get_backend",
    "gpu_available",
    "simulator_enabled",
]
