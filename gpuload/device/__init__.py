"""Where arrays live and kernels run: the faces (``backend``, ``cuda_backend``, ``simulated``),
choosing one (``select``), the ledger of device operations (``ledger``) and its happens-before
checker (``happens_before``), the page-locked rings (``pinned``) and obs frames of a face
(``frames``: cuDF on a GPU)."""

from gpuload.device.backend import Backend, Fence, StreamFace, moved, span
from gpuload.device.cuda_backend import CudaBackend
from gpuload.device.frames import ObsFrames
from gpuload.device.happens_before import Violation, check
from gpuload.device.host_pool import HostBufferPool
from gpuload.device.ledger import DeviceLedger, DeviceOp
from gpuload.device.pinned import Carver, PinnedRing, RingPool, RunRings
from gpuload.device.select import GPU_INSTALL_HINT, get_backend, gpu_available, simulator_enabled
from gpuload.device.simulated import SimulatedCudaBackend

__all__ = [
    "GPU_INSTALL_HINT",
    "Backend",
    "Carver",
    "CudaBackend",
    "DeviceLedger",
    "DeviceOp",
    "Fence",
    "HostBufferPool",
    "ObsFrames",
    "PinnedRing",
    "RingPool",
    "RunRings",
    "SimulatedCudaBackend",
    "StreamFace",
    "Violation",
    "check",
    "get_backend",
    "moved",
    "gpu_available",
    "simulator_enabled",
    "span",
]
