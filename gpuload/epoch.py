"""One run of the loader (one ``iter()``): a reader thread and an assembler thread, one group apart.

The reader reads group k+1 from the file (and copies it to the device on the copy stream) while
the assembler runs the kernels on group k's super-batches on the compute stream: double
buffering. Once a loader has preloaded its rows there is nothing to read: a run then has no
reader thread, and the assembler takes the preloaded block for each group itself (a third thread
would only wake up to contend for the GIL). Both hand their items over through bounded queues,
so memory is O(window + prefetch); an exception in either thread reaches the consumer, after the
batches assembled before it. Each batch is handed to the consumer's stream in the consumer's
thread (:meth:`~gpuload.device.Backend.hand_off`), just before it is yielded.

Runs are independent, as ``torch.utils.data.DataLoader``'s iterators are: each writes only into
the page-locked rings it leased (:class:`~gpuload.device.RunRings`) and into fresh device
memory, and shares only what is read-only (the plan, the assembler's inputs, a preloaded block).
However a run ends (its epoch done, ``close()``, its iterator dropped, an error), its threads
are stopped *and joined* before its rings go back to the loader, so nothing it wrote can be
handed out by another run. What a live run holds: two threads (one once preloaded), two read
groups of page-locked memory plus ``prefetch + 2`` super-batches' rows and status (see
:class:`~gpuload.device.RunRings`), and up to ``prefetch + 2`` super-batches of device output.

A ``batch_transform`` runs in the assembler thread, batch by batch, on the compute stream, once
the super-batch's status is read (a transform sees only checked values); the super-batch is then
handed off with an event recorded after the transforms, together with the tensors the
transforms returned, so the consumer's stream waits for the transforms' work and the allocator
keeps their outputs until the consumer is done with them.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from functools import partial

import torch

from gpuload.assembly import Assembled, BatchAssembler
from gpuload.background import Background
from gpuload.batch_columns import LazyColumns
from gpuload.device import Backend, RunRings
from gpuload.errors import ArgumentError, GpuloadError
from gpuload.fetch import BlockFetcher
from gpuload.kernels import threads as kernel_threads
from gpuload.sampler import LoadRequest

_RUNNING: weakref.WeakSet[EpochRun] = weakref.WeakSet()
_RUN_IDS = itertools.count(1)  # names each run's threads apart in the ledger


@atexit.register
def _stop_running_epochs() -> None:
    """At interpreter exit, end the threads of runs nobody finished: a daemon thread still
    inside a numba kernel while the process tears down aborts it."""
    for run in list(_RUNNING):
        run.stop()
        run.join()


class EpochRun:
    """The batches of ``requests``, assembled in the background.

    Parameters
    ----------
    requests
        What to read, group by group, and the batches cut from each group.
    fetcher, assembler
        The reader's and the assembler's work.
    rings
        The page-locked memory this run writes into (None on the CPU); the run owns it until
        :meth:`close`, which hands it to ``give_back`` once the threads have been joined.
    prefetch
        Super-batches the assembler may hold ready (besides the one being handed out).
    num_threads
        Threads of the CPU kernel.
    batch_transform
        Applied to every batch in the assembler thread (see the module docstring), or None.
    give_back
        Called with ``rings`` when the run has been joined.
    """

    def __init__(
        self,
        requests: Iterable[LoadRequest],
        fetcher: BlockFetcher,
        assembler: BatchAssembler,
        *,
        rings: RunRings | None,
        prefetch: int,
        num_threads: int,
        batch_transform: Callable[[dict], dict] | None = None,
        give_back: Callable[[RunRings | None], None] = lambda rings: None,
    ) -> None:
        self.requests, self.fetcher, self.assembler = requests, fetcher, assembler
        self.rings, self.give_back = rings, give_back
        self.prefetch, self.num_threads, self.batch_transform = prefetch, num_threads, batch_transform
        self.stopped = threading.Event()
        self.stages: list[Background] = []
        self.number = next(_RUN_IDS)
        self.closed = False
        self._closing = threading.Lock()

    def stop(self) -> None:
        """Ask the threads to end at their next item (they poll; see :meth:`close`)."""
        self.stopped.set()

    def join(self) -> bool:
        """Wait for the threads to end; False if one did not within its time."""
        return all([stage.join() for stage in self.stages])

    def close(self) -> None:
        """Stop and join the threads, then give the rings back (idempotent). From one of the
        run's own threads (a garbage collection there) it only stops them: the consumer joins.
        A thread that does not end keeps its rings: they are never given to another run."""
        self.stop()
        if threading.current_thread() in {s.thread for s in self.stages}:
            return
        with self._closing:
            if self.closed:
                return
            for stage in self.stages:
                stage.drain()  # a thread waiting to hand over an item sees the stop at once
            joined = self.join()
            self.closed = True
        _RUNNING.discard(self)
        if joined:
            self.give_back(self.rings)

    def __iter__(self) -> Iterator[dict]:
        backend, assembler, rings = self.assembler.backend, self.assembler, self.rings

        def read_groups() -> Generator:
            with backend.device_context():
                yield from self.fetcher.blocks(
                    self.requests, rings.reads if rings is not None else None, self.stopped
                )

        def assemble_batches(groups: Iterable) -> Generator[Assembled, None, None]:
            kernel_threads.use_threads(self.num_threads)
            with backend.device_context():
                for block, request in groups:
                    assembler.take_block(block)
                    for batches in assembler.super_batches(block, request.batches):
                        if self.stopped.is_set():
                            return
                        assembled = assembler.assemble(block, batches, rings)
                        if self.batch_transform is not None:
                            assembled = assembler.settle(assembled)
                            assembled = yield from transformed(assembled, self.batch_transform, backend)
                        yield assembled

        if self.fetcher.preloaded is None:
            reader = Background(read_groups(), 1, f"gpuload-reader-{self.number}", self.stopped, backend)
            groups: Iterable = reader
            self.stages = [reader]
        else:  # nothing left to read: the assembler takes its groups itself, no thread between
            groups = self.fetcher.blocks(self.requests, None, self.stopped)
        ready = Background(
            assemble_batches(groups), self.prefetch, f"gpuload-assembler-{self.number}", self.stopped, backend
        )
        self.stages = [ready, *self.stages]
        _RUNNING.add(self)
        for stage in reversed(self.stages):
            stage.start()
        try:
            for assembled in ready:  # a super-batch at a time: one queue hand-over, not one per batch
                assembled = assembler.settle(assembled)
                receiver = None
                for batch in assembled.batches:
                    receiver = backend.hand_off(assembled.fence, assembled.buffers, receiver)
                    yield batch
                if assembled.error is not None:  # raised after the batches before the bad row's
                    raise assembled.error
        except KeyboardInterrupt:
            # Ctrl-C reaches the consumer at once: a thread inside a numba compilation (the first
            # batch's, seconds long) or a kernel ends after it; the exit handler joins it.
            self.stop()
            raise
        except BaseException:
            self.close()
            raise
        self.close()


# How an iterator starts its run: (epoch, first batch) -> the run and its batches.
StartRun = Callable[[int, int], tuple[EpochRun, Iterator[dict]]]


class LoaderIterator:
    """What ``iter(loader)`` returns: the batches of one epoch from ``first``, independent of
    every other iterator of the same loader (as ``DataLoader``'s are).

    Its run starts at the first ``next()`` (``start_run(epoch, first)`` returns the run and its
    batches) and is closed, threads joined, when the epoch ends, on :meth:`close`, when the
    iterator is garbage collected, or by its loader (``loader.close()``, or a loader with too
    many live runs closing its oldest; ``next()`` then raises instead of handing out anything).
    While it is ``position``'s latest iterator (``position.latest == number``) it moves the
    position: every batch it yields, and its end.
    """

    def __init__(self, start_run: StartRun, epoch: int, first: int, position: Position, number: int) -> None:
        self.epoch, self.batches_done, self.number = epoch, first, number
        self._start_run, self._position = start_run, position
        self.run: EpochRun | None = None
        self._batches: Iterator[dict] | None = None
        self.closed_because: str | None = None

    def __iter__(self) -> LoaderIterator:
        return self

    def __next__(self) -> dict:
        if self.closed_because is not None:
            raise GpuloadError(f"this iterator of the loader was closed: {self.closed_because}")
        if self._batches is None:
            self.run, self._batches = self._start_run(self.epoch, self.batches_done)
        try:
            batch = next(self._batches)
        except StopIteration:
            self.closed_because = "its epoch ended"
            self._position.ended(self)
            raise
        self.batches_done += 1
        position = self._position
        if position.latest == self.number:  # an attribute write per batch, not a call
            position.batches_done = self.batches_done
        return batch

    @property
    def started(self) -> bool:
        return self.run is not None and self.closed_because is None

    def close(self, because: str = "close() was called") -> None:
        """End the run now: its threads stopped and joined, its rings given back (idempotent)."""
        if self.closed_because is None:
            self.closed_because = because
        if self._batches is not None and self.run is not None:  # both set by the first next()
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()
            self.run.close()

    def __del__(self) -> None:
        self.close("it was garbage collected")


class Position:
    """Where a loader is, and its iterators (see the loader module's docstring for the rules):
    the epoch and batches done of the latest iterator, which alone moves it; a resume point
    waiting for the next iterator; the live iterators, at most ``limit`` of them running (a run
    beyond that closes the oldest first). It holds no reference to its loader, so a loader
    nobody holds is freed at once (no reference cycle waiting for the garbage collector)."""

    def __init__(self, limit: int) -> None:
        self.epoch, self.batches_done, self.resume_requested = 0, 0, False
        self.limit = limit
        self.latest: int | None = None  # the number of the iterator that moves the position
        self._live: weakref.WeakValueDictionary[int, LoaderIterator] = weakref.WeakValueDictionary()
        self._created = itertools.count()

    def move_to(self, epoch: int, batches_done: int, *, resume: bool = False) -> None:
        """``set_epoch`` (``resume=False``) or ``load_state_dict``: the next iterator starts here;
        iterators made before no longer move the position."""
        self.epoch, self.batches_done, self.resume_requested = epoch, batches_done, resume
        self.latest = None

    def new_iterator(self, start_run: StartRun) -> LoaderIterator:
        """An iterator at the position, whose first ``next()`` calls ``start_run(epoch, first)``."""
        if self.resume_requested:
            self.resume_requested = False
        elif self.batches_done:  # the latest iterator left its epoch part-way: a fresh epoch
            self.epoch, self.batches_done = self.epoch + 1, 0
        number = next(self._created)
        iterator = LoaderIterator(
            partial(self._start, start_run), self.epoch, self.batches_done, self, number
        )
        self.latest = number
        self._live[number] = iterator
        return iterator

    def _start(self, start_run: StartRun, epoch: int, first: int) -> tuple[EpochRun, Iterator[dict]]:
        running = [it for _, it in sorted(self._live.items()) if it.started]
        for old in running[: max(0, len(running) - self.limit + 1)]:
            old.close(f"{self.limit} newer iterators of the same loader were started")
        return start_run(epoch, first)

    def ended(self, iterator: LoaderIterator) -> None:
        """``iterator`` yielded the last batch of its epoch: the position moves to the next
        epoch if it is the latest iterator (its batches moved it as they were yielded)."""
        if self.latest == iterator.number:
            self.epoch, self.batches_done = iterator.epoch + 1, 0

    def close_all(self, because: str) -> None:
        for iterator in list(self._live.values()):
            iterator.close(because)


def transformed(assembled: Assembled, transform: Callable[[dict], dict], backend: Backend):
    """``assembled`` with ``transform`` applied to each batch on the compute stream, fenced
    after the transforms and handing their tensors off too (a generator returning it: when the
    transform fails, the batches before yield first, then the exception propagates)."""
    out = []
    with backend.on_stream():
        try:
            for batch in assembled.batches:
                result = transform(batch)
                if result is None:
                    raise ArgumentError(
                        "batch_transform returned None; it must return the batch (e.g. `return batch` "
                        "after changing it in place)"
                    )
                out.append(result)
        except Exception:
            if out:
                fence = backend.fence("batch transform")
                yield Assembled(out, fence, handed_off(assembled, out, backend))
            raise
        fence = backend.fence("batch transform")
    return Assembled(out, fence, handed_off(assembled, out, backend), assembled.error)


def handed_off(assembled: Assembled, batches: list, backend: Backend) -> tuple[torch.Tensor, ...]:
    """The super-batch's buffers and, on the stream faces, the tensors of its transformed batches."""
    return (*assembled.buffers, *(tensors_of(batches) if backend.streams else ()))


def tensors_of(item) -> list[torch.Tensor]:
    """The tensors inside ``item`` (dicts, lists, tuples, a batch's obs columns made so far;
    a sparse tensor as its component tensors, which ``record_stream`` takes)."""
    if isinstance(item, torch.Tensor):
        if item.layout in (torch.sparse_csr, torch.sparse_bsr):
            return [item.crow_indices(), item.col_indices(), item.values()]
        if item.layout in (torch.sparse_csc, torch.sparse_bsc):
            return [item.ccol_indices(), item.row_indices(), item.values()]
        if item.layout == torch.sparse_coo:  # torch raises for an uncoalesced one: coalesce() it first
            return [item.indices(), item.values()]
        return [item]
    if isinstance(item, LazyColumns):  # columns not made yet view buffers handed off already
        return [t for value in item.made() for t in tensors_of(value)]
    if isinstance(item, dict):
        return [t for value in item.values() for t in tensors_of(value)]
    if isinstance(item, list | tuple):
        return [t for value in item for t in tensors_of(value)]
    return []
