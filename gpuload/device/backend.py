"""The one place that knows where arrays live, which kernel runs, and on which stream.

Three faces compute the same batches (this module holds the first and what the two stream faces
share, :class:`StreamFace`; :mod:`gpuload.device.cuda_backend` and
:mod:`gpuload.device.simulated` hold the others):

- ``cpu`` (:class:`Backend`): numpy arrays and torch CPU tensors, the ``@njit`` CPU twin.
- ``cuda`` (:class:`~gpuload.device.cuda_backend.CudaBackend`): torch CUDA memory (one
  allocator: torch's caching allocator serves every device buffer the loader uses),
  ``@cuda.jit`` kernels viewing that memory through ``__cuda_array_interface__``, two
  non-blocking streams per loader (``copy`` for reads going to the device, ``compute`` for
  kernels, ordered by events, as PyTorch's CUDA prefetchers do), page-locked host buffers.
- ``cudasim`` (:class:`~gpuload.device.simulated.SimulatedCudaBackend`): the cuda
  orchestration with host memory standing in for device memory, the CUDA simulator
  (``NUMBA_ENABLE_CUDASIM=1``) running the kernels and simulated streams, so CI runs the GPU
  code, and checks its ordering, without a GPU.

Every device operation the loader issues is a method here and is written to :attr:`ledger`
with the stream it was issued on and, when recording, the memory it reads and writes, the event
it records or waits on, and the host-side ordering around it (thread starts and joins, queue
hand-overs): what :mod:`gpuload.device.happens_before` checks. Operations run on the calling
thread's *current* stream, as torch's do; the loader's threads make one of the loader's streams
current with :meth:`on_stream`, so an operation issued outside it shows up in the ledger on the
default stream. A batch is handed to the consumer with the event recorded after its last
operation (:meth:`fence`): the consumer's stream waits on it and every tensor is
``record_stream``-ed there (:meth:`hand_off`), so the caching allocator never gives a batch's
memory to the loader while the consumer may still use it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from gpuload.device.host_pool import HostBufferPool
from gpuload.device.ledger import DeviceLedger

_EVENT_IDS = itertools.count(1)  # every fence of every backend, numbered for the ledger
READ_ROUNDING = 1 << 23  # bytes: a pooled read buffer grows in 8 MiB steps


class Fence(NamedTuple):
    """An event recorded on one of the loader's streams: ``number`` names it in the ledger,
    ``event`` is the ``torch.cuda.Event`` on the cuda face (None elsewhere). A named tuple:
    two are made per super-batch, each in one call."""

    number: int
    event: Any = None  # torch.cuda.Event (the cuda face) or None


def span(array) -> tuple[int, int]:
    """(address, bytes) of a tensor, numpy array or CUDA array: what the ledger records."""
    if isinstance(array, torch.Tensor):
        return array.data_ptr(), array.numel() * array.element_size()
    if isinstance(array, np.ndarray):
        return array.__array_interface__["data"][0], array.nbytes
    interface = getattr(array, "__cuda_array_interface__", None) or array.__array_interface__
    size = int(np.prod(interface["shape"], dtype=np.int64)) * np.dtype(interface["typestr"]).itemsize
    return interface["data"][0], size


def moved(value, *args, **kwargs):
    """``value.to(*args, **kwargs)`` for a tensor, ``value`` itself otherwise (obs strings)."""
    return value.to(*args, **kwargs) if isinstance(value, torch.Tensor) else value


def spans(arrays: Iterable) -> tuple[tuple[int, int], ...]:
    """The non-empty memory of ``arrays`` (an empty tensor has no memory to order)."""
    return tuple(s for s in (span(a) for a in arrays if hasattr(a, "shape")) if s[1] > 0)


class Backend:
    """The ``cpu`` face: no device, no streams; the kernels are the CPU twin."""

    name = "cpu"
    on_gpu = False  # device memory is a real GPU's
    streams = False  # work is ordered on streams (the cuda faces)
    allocation_errors: tuple[type[BaseException], ...] = (MemoryError,)

    def __init__(self, torch_device: torch.device | None = None) -> None:
        self.torch_device = torch_device or torch.device("cpu")
        self.ledger = DeviceLedger()
        self.host_pool = HostBufferPool()  # batch outputs
        # reads on faces without rings: a run has up to three read groups in flight, and each
        # epoch's first window is read in growing groups of other sizes
        self.read_pool = HostBufferPool(max_buffers=8, round_to=READ_ROUNDING)
        self.pageable = False  # page-locking failed once: staging buffers are pageable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.torch_device})"

    # -- streams and devices ----------------------------------------------------------------
    def on_stream(self, which: str = "compute") -> contextlib.AbstractContextManager:
        """Make the loader's ``"copy"`` or ``"compute"`` stream current in the calling thread (a
        no-op on the CPU)."""
        return contextlib.nullcontext()

    def device_context(self) -> contextlib.AbstractContextManager:
        """Make this backend's GPU current in the calling thread, restoring the caller's after."""
        return contextlib.nullcontext()

    def stream_name(self) -> str:
        """The calling thread's current stream, as the ledger names it."""
        return "host"

    def note(self, kind: str, name: str, size: int = 0, address: int = 0, **detail) -> None:
        """Write an operation on the current stream to the ledger (``detail``: see
        :class:`~gpuload.device.ledger.DeviceOp`; computed by callers only when recording), or
        only count it when the ledger does not record (the stream is not asked then)."""
        if self.ledger.record:
            self.ledger.add(kind, name, self.stream_name(), size, address, **detail)
        else:
            self.ledger.count(kind)

    def note_host(self, kind: str, name: str, peer: str = "", arrays: Sequence = ()) -> None:
        """A host-side ordering or access for the checker: ``spawn``/``joined`` a thread,
        ``put``/``get`` on a queue (``peer``), ``host_write``/``host_read`` of page-locked
        ``arrays``. Recorded only when the ledger records; nothing is counted."""
        if self.ledger.record:
            access = spans(arrays)
            detail: dict[str, Any] = {"writes": access} if kind == "host_write" else {"reads": access}
            self.ledger.add(kind, name, "host", peer=peer, **detail)

    # -- memory -----------------------------------------------------------------------------
    def empty(self, shape: int | Sequence[int], dtype: torch.dtype, name: str) -> torch.Tensor:
        """Device memory for ``name`` (a fresh tensor: no batch the user holds shares it)."""
        return self._allocated(torch.empty(shape, dtype=dtype, device=self.torch_device), name)

    def _allocated(self, out: torch.Tensor, name: str) -> torch.Tensor:
        if not self.ledger.record:
            if out.numel():
                self.ledger.count("alloc")
            return out
        address, size = span(out)
        if size:  # an empty tensor has no memory (and no address of its own)
            self.note("alloc", name, size, address)
        return out

    def output(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """A flat output buffer that batches will view: recycled once unreferenced on the CPU
        (see :class:`HostBufferPool`), fresh from the caching allocator on a GPU."""
        return self._allocated(self._output(n, dtype), "output")

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
        self._copy_note("h2d", name, host, target)
        target.copy_(torch.from_numpy(host))

    def _copy_note(self, kind: str, name: str, source, target) -> None:
        if not self.ledger.record:
            self.ledger.count(kind)
            return
        read = span(source)
        self.note(kind, name, read[1], reads=(read,), writes=(span(target),))

    def cast(self, tensor: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
        """``tensor`` as ``dtype`` (a device kernel on the GPU)."""
        out = self.empty(tensor.shape, dtype, name)
        self._launch_note(name, (tensor,), (out,))
        return out.copy_(tensor)

    def take_rows(self, matrix: torch.Tensor, rows: torch.Tensor, name: str) -> torch.Tensor:
        """Rows ``rows`` (int64, on the device) of the device ``matrix``: one gather kernel."""
        out = self.empty((rows.numel(), *matrix.shape[1:]), matrix.dtype, name)
        self._launch_note(name, (matrix, rows), (out,))
        return torch.index_select(matrix, 0, rows, out=out)

    def _launch_note(self, name: str, reads: Sequence, writes: Sequence) -> None:
        detail: dict[str, Any] = (
            {"reads": spans(reads), "writes": spans(writes)} if self.ledger.record else {}
        )
        self.note("launch", name, **detail)

    def status_to_host(self, status: torch.Tensor, slot: np.ndarray | None) -> np.ndarray:
        """The kernel's row status where the host can read it once the super-batch's fence has
        passed: copied asynchronously into the page-locked ``slot`` (stream faces), or the
        buffer itself (the CPU, where kernels have finished when they return)."""
        return status.numpy()

    def pinned(self, nbytes: int) -> np.ndarray:
        """A host buffer for reads that copies can leave from asynchronously."""
        return np.empty(nbytes, dtype=np.uint8)

    def staging(self, nbytes: int) -> np.ndarray:
        """A page-locked buffer (:meth:`pinned`) or, once page-locking has failed, a pageable one
        (said once per backend: copies from it wait for the host, which is slower, not wrong)."""
        if not self.pageable:
            try:
                return self.pinned(nbytes)
            except MemoryError as e:
                self.pageable = True
                warnings.warn(
                    f"gpuload: page-locking {nbytes} bytes failed ({e}); copies go through pageable "
                    "memory instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
        buffer = np.empty(nbytes, dtype=np.uint8)
        self.ledger.add("pinned", "pageable buffer", "host", nbytes, span(buffer)[0])
        return buffer

    def read_empty(self, n: int, dtype: npt.DTypeLike) -> np.ndarray:
        """``np.empty(n, dtype)`` for a read where nothing orders the memory's reuse but its
        references (the CPU face): a recycled buffer, so a read group does not page-fault fresh
        memory (see :class:`HostBufferPool`)."""
        dtype = np.dtype(dtype)
        return self.read_pool.take_array(n * dtype.itemsize, np.dtype(np.uint8)).view(dtype)

    def release_pinned(self, buffer: np.ndarray) -> None:
        """Forget a buffer from :meth:`pinned` (its memory goes when the last view does)."""

    def free_memory(self) -> int:
        """Bytes a preload could use where the kernels read."""
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))

    # -- kernels ----------------------------------------------------------------------------
    def kernel_view(self, tensor: torch.Tensor):
        """The kernels' view of a buffer: no copy on any face."""
        return tensor.numpy()

    def launch(self, kernel: str, n_rows: int, width: int, args: tuple, writes: Sequence = ()) -> None:
        """Run ``kernel`` (see :mod:`gpuload.kernels`) over ``n_rows`` super-batch rows of
        ``width`` output columns; ``writes`` are the arguments it writes (the other array
        arguments are read). The ledger counts it and the CPU time the launching thread spent in
        it (CPU time, not wall time: a thread that is preempted inside a CPU kernel has not
        spent the wait on the kernel)."""
        if self.ledger.record:
            written = {id(w) for w in writes}
            self._launch_note(kernel, [a for a in args if id(a) not in written], writes)
        else:
            self.note("launch", kernel)
        start = time.thread_time()
        self._run_kernel(kernel, n_rows, width, args)
        self.ledger.add_launch_time(time.thread_time() - start)

    def _run_kernel(self, kernel: str, n_rows: int, width: int, args: tuple) -> None:
        from gpuload.kernels import cpu, threads

        threads.run_rows(getattr(cpu, kernel), args, n_rows)

    # -- ordering and hand-off --------------------------------------------------------------
    def fence(self, name: str) -> Fence | None:
        """An event recorded on the current stream after the work issued so far (None here)."""
        return None

    def wait_stream(self, fence: Fence | None) -> None:
        """Order the current stream's later work after ``fence`` (no host wait)."""

    def wait_host(self, fence: Fence | None) -> None:
        """Block the calling thread until ``fence`` has passed (no wait where it has)."""

    def mark_in_use(self, tensors: Sequence[torch.Tensor], name: str) -> None:
        """Mark ``tensors`` in use by the current stream: the caching allocator keeps their memory
        from reuse until that stream's work issued so far is done."""

    def hand_off(self, fence: Fence | None, tensors: Sequence[torch.Tensor], receiver=None):
        """Give ``tensors`` to the calling thread's current stream once ``fence`` has passed, and
        return that stream. ``receiver``: the stream the same super-batch was last handed to;
        when it is the current one, its wait and ``record_stream`` already cover this batch
        (stream order), so nothing more is issued: one hand-off per super-batch, not per batch."""
        return None


class StreamFace(Backend):
    """What the two stream faces share: events, waits and the hand-off, as ledger entries."""

    streams = True

    def upload(self, host: np.ndarray, name: str) -> torch.Tensor:
        """A copy of ``host`` in fresh device memory (on the cudasim face, host memory that is
        not the host buffer)."""
        dtype = torch.from_numpy(host[:0]).dtype
        out = self._allocated(torch.empty(host.shape, dtype=dtype, device=self.torch_device), name)
        self.upload_into(out, host, name)
        return out

    def status_to_host(self, status: torch.Tensor, slot: np.ndarray | None) -> np.ndarray:
        assert slot is not None, "a stream face copies the status into a page-locked slot"
        host = slot[: status.numel() * 4].view(np.int32)
        self._copy_note("d2h", "status", status, host)
        torch.from_numpy(host).copy_(status, non_blocking=True)  # page-locked: no host wait
        return host

    def release_pinned(self, buffer: np.ndarray) -> None:
        self.ledger.add("pinned", "host buffer", "host", -buffer.nbytes, span(buffer)[0])

    def fence(self, name: str) -> Fence:
        fence = Fence(next(_EVENT_IDS), self._record_event())
        self.note("event", name, event=fence.number)
        return fence

    def _record_event(self):
        return None

    def wait_stream(self, fence: Fence | None) -> None:
        if fence is not None:
            self._stream_wait(fence)
            self.note("wait", "event", event=fence.number)

    def _stream_wait(self, fence: Fence) -> None:
        """The current stream waits on ``fence`` (the device's part)."""

    def wait_host(self, fence: Fence | None) -> None:
        if fence is None:
            return
        if not self._passed(fence):  # counted only when the host really waits
            self.ledger.counts["sync_wait"] += 1
            self._host_wait(fence)
        if self.ledger.record:
            self.ledger.add("sync", "event", "host", event=fence.number)
        else:
            self.ledger.count("sync")

    def _passed(self, fence: Fence) -> bool:
        return True

    def _host_wait(self, fence: Fence) -> None:
        """Block until ``fence`` has passed (the device's part)."""

    def mark_in_use(self, tensors: Sequence[torch.Tensor], name: str) -> None:
        self._record_on(tensors, self._current_stream())
        self.note("record_stream", name, len(tensors), reads=spans(tensors) if self.ledger.record else ())

    def _current_stream(self):
        return None

    def _record_on(self, tensors: Sequence[torch.Tensor], stream) -> None:
        """Mark ``tensors`` in use by ``stream`` in the allocator (the device's part)."""

    def hand_off(self, fence: Fence | None, tensors: Sequence[torch.Tensor], receiver=None):
        current = self._receiver()
        if current != receiver:
            self.wait_stream(fence)
            self.mark_in_use(tensors, "batch")
        if self.ledger.record:
            self.note("use", "batch", reads=spans(tensors))
        return current

    def _receiver(self):
        """The calling thread's current stream, comparable between calls."""
        return self.stream_name()
