"""A ledger of the device operations a backend issued: which kind, on which stream, by which thread.

Every device operation of the loader goes through its backend (:mod:`gpuload.device.backend`),
and the backend writes one entry per operation here. On the ``cuda`` face the stream is the one
torch reports as current when the operation is issued, which is the stream the operation really
runs on; on the ``cudasim`` face it is the simulated current stream that
:meth:`Backend.on_stream` sets for the calling thread, so CI can check the same discipline
without a GPU. Counting is always on (a dict increment per operation); keeping every entry is
for tests and benchmarks (``record=True``), and is what :mod:`gpuload.device.happens_before`
checks.

Device kinds: ``alloc`` (device memory, with its address and size), ``h2d``/``d2h`` (copies),
``launch`` (a kernel), ``event`` (recorded on a stream), ``wait`` (a stream waits on an event),
``record_stream`` (an allocation is marked in use by a stream), ``use`` (the consumer's stream
takes a batch's buffers), ``pinned`` (page-locked host memory allocated, or released: a
negative size). Host kinds: ``sync`` (the host waits for an event), ``host_write`` /
``host_read`` (a thread touches page-locked memory), ``spawn`` / ``joined`` (a thread starts
another / has joined it), ``put`` / ``get`` (a hand-over through a queue: every operation on
one queue holds its lock, so they are ordered in the ledger's order).

Each recorded operation may name the memory it reads and writes (``reads``/``writes``: tuples of
``(address, nbytes)``), the event it records or waits on (``event``), and the thread or queue
it synchronises with (``peer``).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

KINDS = (
    "alloc",
    "h2d",
    "d2h",
    "launch",
    "sync",
    "event",
    "wait",
    "record_stream",
    "use",
    "pinned",
    "host_write",
    "host_read",
    "spawn",
    "joined",
    "put",
    "get",
)
HOST_KINDS = ("sync", "host_write", "host_read", "spawn", "joined", "put", "get", "pinned")
LOADER_STREAMS = ("copy", "compute")

Span = tuple[int, int]  # (address, nbytes)


@dataclass(frozen=True)
class DeviceOp:
    """One operation: its kind, a name saying what it was for, the stream, the thread."""

    kind: str
    name: str
    stream: str  # "copy", "compute" (the loader's), "default", or another consumer stream
    thread: str
    size: int = 0  # bytes, where that says something (allocations, copies)
    address: int = 0  # where an allocation starts (to check that batches are views of it)
    reads: tuple[Span, ...] = ()
    writes: tuple[Span, ...] = ()
    event: int = 0  # the event recorded, waited on or synchronised with
    peer: str = ""  # the thread spawned or joined, the queue put to or taken from


@dataclass
class DeviceLedger:
    """Counts of operations per kind (always), and the operations themselves when recording."""

    record: bool = False
    counts: Counter = field(default_factory=Counter)
    ops: list[DeviceOp] = field(default_factory=list)
    pinned_bytes: int = 0  # page-locked host memory held now
    pinned_peak: int = 0
    launch_seconds: float = 0.0  # launching threads' CPU time in kernel launches (the kernels, on CPU faces)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, name: str, stream: str, size: int = 0, address: int = 0, **detail) -> None:
        """Count ``kind``; when recording, keep the operation with its ``detail`` (``reads``,
        ``writes``, ``event``, ``peer``: see :class:`DeviceOp`)."""
        with self._lock:
            self.counts[kind] += 1
            if kind == "pinned":
                self.pinned_bytes += size
                self.pinned_peak = max(self.pinned_peak, self.pinned_bytes)
            if self.record:
                thread = threading.current_thread().name
                self.ops.append(DeviceOp(kind, name, stream, thread, size, address, **detail))

    def count(self, kind: str) -> None:
        """Count ``kind`` only (what :meth:`add` does for it when not recording; not ``pinned``,
        whose bytes :meth:`add` keeps)."""
        with self._lock:
            self.counts[kind] += 1

    def add_launch_time(self, seconds: float) -> None:
        with self._lock:
            self.launch_seconds += seconds

    def reset(self) -> None:
        """Forget what was counted and recorded (the pinned memory still held stays)."""
        with self._lock:
            self.counts.clear()
            self.ops.clear()
            self.launch_seconds = 0.0

    def off_stream(self) -> list[DeviceOp]:
        """Device operations of the loader's threads that did not run on one of the loader's streams."""
        return [
            op
            for op in self.ops
            if op.thread.startswith("gpuload-")
            and op.stream not in LOADER_STREAMS
            and op.kind not in HOST_KINDS
        ]
