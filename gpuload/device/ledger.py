"""A ledger of the device operations a backend issued: which kind, on which stream, by which thread.

Every device operation of the loader goes through its backend (:mod:`gpuload.device.backend`),
and the backend writes one entry per operation here. On the ``cuda`` face the stream is the one
torch reports as current when the operation is issued, which is the stream the operation really
runs on; on the ``cudasim`` face it is the simulated current stream that
:meth:`Backend.on_stream` sets for the calling thread, so CI can check the same discipline
without a GPU. Counting is always on (a dict increment per operation); keeping every entry is
for tests and benchmarks (``record=True``).

Kinds: ``alloc`` (device memory; outputs with their address), ``h2d``/``d2h`` (copies),
``launch`` (a kernel), ``sync`` (the host waits for the device), ``event`` (recorded on a
stream), ``wait`` (a stream waits on an event), ``record_stream`` (a tensor is marked in use by
a stream), ``pinned`` (page-locked host memory allocated, or released: a negative size).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

KINDS = ("alloc", "h2d", "d2h", "launch", "sync", "event", "wait", "record_stream", "pinned")


@dataclass(frozen=True)
class DeviceOp:
    """One operation: its kind, a name saying what it was for, the stream, the thread."""

    kind: str
    name: str
    stream: str  # "loader", "default", or "consumer" (the stream a batch was handed to)
    thread: str
    size: int = 0  # bytes, where that says something (allocations, copies)
    address: int = 0  # where an output buffer starts (to check that batches are views of it)


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

    def add(self, kind: str, name: str, stream: str, size: int = 0, address: int = 0) -> None:
        with self._lock:
            self.counts[kind] += 1
            if kind == "pinned":
                self.pinned_bytes += size
                self.pinned_peak = max(self.pinned_peak, self.pinned_bytes)
            if self.record:
                self.ops.append(DeviceOp(kind, name, stream, threading.current_thread().name, size, address))

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
        """Operations of the loader's threads that did not run on the loader's stream."""
        return [
            op
            for op in self.ops
            if op.thread.startswith("gpuload-") and op.stream != "loader" and op.kind != "pinned"
        ]
