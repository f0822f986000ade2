"""A happens-before checker over a recorded device ledger: races the simulator cannot show.

The CUDA simulator runs every operation at once, in the order it is issued, so a missing
event wait or a reused buffer never shows up as a wrong value on a CPU machine. This checker
replays the ledger (:mod:`gpuload.device.ledger`) under CUDA's real ordering rules instead, with
vector clocks, and reports every access that is not ordered after the one it depends on:

- a stream runs its operations in order, each after what the issuing thread did before it;
  ``event`` captures a stream's progress, ``wait`` orders a stream after an event, ``sync``
  orders a thread after one;
- threads are ordered by ``spawn``/``joined`` and by the queues they hand items through
  (``put``/``get``: one lock per queue);
- memory is an allocation (``alloc``, ``pinned``): a read must be ordered after the last write;
  a write after the last write and every read since; a new allocation over memory still in use
  must be ordered after those uses, unless the use was on a stream the memory was
  ``record_stream``-ed to (torch's caching allocator then delays the reuse itself) or the memory
  was allocated on another stream (the allocator never hands a block to another stream's
  allocation without synchronizing the device); and a stream
  other than the allocating one may use device memory only once it is ``record_stream``-ed
  there (otherwise the allocator may hand it out again under that stream's work).

It checks the protocol the loader states, with the strictest reading of each rule: an access it
accepts is ordered on a real GPU whatever the timing. What it cannot see is work that bypasses
the backend (``tests/test_architecture.py`` forbids device calls outside ``gpuload/device``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from gpuload.device.ledger import HOST_KINDS, DeviceOp

Clock = dict[str, int]


@dataclass(frozen=True)
class Violation:
    """One access (or reuse) that is not ordered after what it depends on."""

    rule: str  # "read-after-write", "write-after-access", "reuse", "foreign-stream", "unknown-event"
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


@dataclass
class _Access:
    actor: str
    time: int
    what: str  # the operation, for the message


@dataclass
class _Allocation:
    start: int
    stop: int
    stream: str  # the allocating stream ("host" for page-locked memory)
    name: str
    last_write: _Access | None = None
    reads: dict[str, _Access] = field(default_factory=dict)
    uses: dict[str, _Access] = field(default_factory=dict)  # the latest access per actor, ever
    recorded: set[str] = field(default_factory=set)  # streams it was record_stream-ed to


def _join(into: Clock, other: Clock) -> None:
    for actor, t in other.items():
        if into.get(actor, 0) < t:
            into[actor] = t


def _before(access: _Access, clock: Clock) -> bool:
    return clock.get(access.actor, 0) >= access.time


class HappensBefore:
    """Replays ledger operations and collects :class:`Violation` s (see the module docstring)."""

    def __init__(self) -> None:
        self.clocks: dict[str, Clock] = {}  # per thread and per stream
        self.events: dict[int, Clock] = {}
        self.queues: dict[str, Clock] = {}
        self.allocations: list[_Allocation] = []  # sorted by start, disjoint
        self.violations: list[Violation] = []

    # -- clocks -------------------------------------------------------------------------------
    def _clock(self, actor: str) -> Clock:
        return self.clocks.setdefault(actor, {})

    def _tick(self, actor: str) -> Clock:
        clock = self._clock(actor)
        clock[actor] = clock.get(actor, 0) + 1
        return clock

    def _event(self, op: DeviceOp) -> Clock:
        if op.event not in self.events:
            self.violations.append(
                Violation("unknown-event", f"{op.thread} {op.kind} on event #{op.event}, never recorded")
            )
            return {}
        return self.events[op.event]

    # -- memory -------------------------------------------------------------------------------
    def _find(self, address: int) -> _Allocation | None:
        i = bisect.bisect_right([a.start for a in self.allocations], address) - 1
        if i >= 0 and address < self.allocations[i].stop:
            return self.allocations[i]
        return None

    def _allocate(self, op: DeviceOp, stream: str, clock: Clock) -> None:
        start, stop = op.address, op.address + max(1, op.size)
        for old in [a for a in self.allocations if a.start < stop and start < a.stop]:
            # torch's caching allocator keeps a freed block in the pool of the stream it was
            # allocated on; memory moves to another stream only through cudaFree, which waits for
            # the whole device. The simulator's host memory has no such pools: not a reuse there.
            crosses = old.stream not in ("host", stream)
            for actor, access in [] if crosses else old.uses.items():
                if actor not in old.recorded and not _before(access, clock):
                    self.violations.append(
                        Violation(
                            "reuse",
                            f"{op.name} ({op.thread}) reuses the memory of {old.name} while "
                            f"{access.what} on {actor} may still run",
                        )
                    )
            self._check_foreign(old)
            self.allocations.remove(old)
        bisect.insort(self.allocations, _Allocation(start, stop, stream, op.name), key=lambda a: a.start)

    def _free(self, op: DeviceOp, clock: Clock) -> None:
        """Page-locked memory given back: every use of it must be ordered before."""
        if (a := self._find(op.address)) is None:
            return
        for access in a.uses.values():
            if not _before(access, clock):
                self.violations.append(
                    Violation(
                        "reuse", f"{a.name} is released ({op.thread}) while {access.what} may still run"
                    )
                )
        self.allocations.remove(a)

    def _check_foreign(self, allocation: _Allocation) -> None:
        """Device memory used by a stream it was never ``record_stream``-ed to."""
        if allocation.stream == "host":
            return
        for actor, access in allocation.uses.items():
            if actor in self.streams and actor != allocation.stream and actor not in allocation.recorded:
                self.violations.append(
                    Violation(
                        "foreign-stream",
                        f"{access.what} uses {allocation.name} (allocated on {allocation.stream}) on "
                        f"{actor} without record_stream",
                    )
                )

    def _access(self, op: DeviceOp, actor: str, clock: Clock) -> None:
        what = f"{op.kind} {op.name!r} ({op.thread})"
        now = _Access(actor, clock.get(actor, 0), what)
        for address, _size in op.reads:
            a = self._find(address)
            if a is None:
                continue
            if a.last_write is not None and not _before(a.last_write, clock):
                self.violations.append(
                    Violation(
                        "read-after-write",
                        f"{what} reads {a.name} on {actor} before {a.last_write.what} "
                        f"on {a.last_write.actor} is ordered",
                    )
                )
            a.reads[actor] = a.uses[actor] = now
        for address, _size in op.writes:
            a = self._find(address)
            if a is None:
                continue
            earlier = [a.last_write] if a.last_write is not None else []
            for other in [*earlier, *a.reads.values()]:
                if other.actor != actor and not _before(other, clock):
                    self.violations.append(
                        Violation(
                            "write-after-access",
                            f"{what} writes {a.name} on {actor} while {other.what} on {other.actor} "
                            "may still run",
                        )
                    )
            a.last_write, a.reads = now, {}
            a.uses[actor] = now

    # -- replay -------------------------------------------------------------------------------
    @property
    def streams(self) -> set[str]:
        return self._streams

    def run(self, ops: Iterable[DeviceOp]) -> list[Violation]:
        self._streams: set[str] = set()
        for op in ops:
            if op.kind in HOST_KINDS:
                self._host(op)
            else:
                self._streams.add(op.stream)
                self._device(op)
        for allocation in self.allocations:
            self._check_foreign(allocation)
        return self.violations

    def _host(self, op: DeviceOp) -> None:
        actor = op.thread
        clock = self._tick(actor)
        if op.kind == "spawn":
            _join(self._clock(op.peer), clock)
        elif op.kind == "joined":
            _join(clock, self._clock(op.peer))
        elif op.kind in ("put", "get"):  # the queue's lock: each operation after the ones before
            queue = self.queues.setdefault(op.peer, {})
            _join(clock, queue)
            self.queues[op.peer] = dict(clock)
        elif op.kind == "sync":
            _join(clock, self._event(op))
        elif op.kind == "pinned" and op.size > 0:
            self._allocate(op, "host", clock)
        elif op.kind == "pinned":
            self._free(op, clock)
        self._access(op, actor, clock)

    def _device(self, op: DeviceOp) -> None:
        stream = op.stream
        clock = self._clock(stream)
        _join(clock, self._clock(op.thread))  # issued after what the thread did before
        clock = self._tick(stream)
        if op.kind == "event":
            self.events[op.event] = dict(clock)
        elif op.kind == "wait":
            _join(clock, self._event(op))
        elif op.kind == "alloc":
            self._allocate(op, stream, clock)
        elif op.kind == "record_stream":
            for address, _size in op.reads:
                if (a := self._find(address)) is not None:
                    a.recorded.add(stream)
            return
        self._access(op, stream, clock)


def check(ops: Iterable[DeviceOp]) -> list[Violation]:
    """Every ordering violation in ``ops`` (a recorded :class:`~gpuload.device.DeviceLedger`'s)."""
    return HappensBefore().run(ops)


def drains(ops: Iterable[DeviceOp]) -> list[DeviceOp]:
    """The host waits in ``ops`` on the latest event of a stream: waits that last until that
    stream has run out of work (a thread that does this per item stalls the pipeline)."""
    latest: dict[str, int] = {}  # stream -> its last event
    stream_of: dict[int, str] = {}
    found = []
    for op in ops:
        if op.kind == "event":
            latest[op.stream] = op.event
            stream_of[op.event] = op.stream
        elif op.kind == "sync" and latest.get(stream_of.get(op.event, ""), 0) == op.event:
            found.append(op)
    return found
