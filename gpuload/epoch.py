"""One epoch's background work: a reader thread and an assembler thread, one group apart.

The reader reads group k+1 from the file (and copies it to the device) while the assembler runs
the kernels on group k's super-batches: double buffering. Both hand their items over through
bounded queues, so memory is O(window + prefetch); an exception in either thread reaches the
consumer, after the batches assembled before it; however the consumer leaves (end, break,
exception, garbage collection), both threads stop. Each batch is handed to the consumer's stream
in the consumer's thread (:meth:`~gpuload.device.Backend.hand_off`), just before it is yielded.

A ``batch_transform`` runs in the assembler thread, batch by batch, on the loader's stream; the
super-batch is then handed off with an event recorded after the transforms (not the kernels'),
together with the tensors the transforms returned, so the consumer's stream waits for the
transforms' work and the allocator keeps their outputs until the consumer is done with them.
"""

from __future__ import annotations

import atexit
import queue
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numba
import torch

from gpuload.assembly import Assembled, BatchAssembler
from gpuload.batch_columns import LazyColumns
from gpuload.device import Backend
from gpuload.errors import ArgumentError, GpuloadError
from gpuload.fetch import BlockFetcher
from gpuload.sampler import LoadRequest

_END = object()
_POLL_SECONDS = 0.1
_RUNNING: weakref.WeakSet[EpochRun] = weakref.WeakSet()


@atexit.register
def _stop_running_epochs() -> None:
    """At interpreter exit, end the threads of epochs nobody finished: a daemon thread still
    inside a parallel numba kernel while the process tears down aborts it."""
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
    prefetch
        Super-batches the assembler may hold ready (besides the one being handed out).
    num_threads
        Threads of the CPU kernel.
    batch_transform
        Applied to every batch in the assembler thread (see the module docstring), or None.
    """

    def __init__(
        self,
        requests: Sequence[LoadRequest],
        fetcher: BlockFetcher,
        assembler: BatchAssembler,
        *,
        prefetch: int,
        num_threads: int,
        batch_transform: Callable[[dict], dict] | None = None,
    ) -> None:
        self.requests, self.fetcher, self.assembler = requests, fetcher, assembler
        self.prefetch, self.num_threads, self.batch_transform = prefetch, num_threads, batch_transform
        self.stopped = threading.Event()
        self.stages: list[Background] = []

    def stop(self) -> None:
        """End the threads at their next item (a new iteration ends an abandoned one)."""
        self.stopped.set()

    def join(self) -> None:
        for stage in self.stages:
            stage.join()

    def __iter__(self) -> Iterator[dict]:
        backend, assembler = self.assembler.backend, self.assembler

        def read_groups() -> Iterator:
            with backend.device_context():
                yield from self.fetcher.blocks(self.requests)

        def assemble_batches(groups: Background) -> Iterator[Assembled]:
            numba.set_num_threads(min(self.num_threads, numba.config.NUMBA_NUM_THREADS))
            with backend.device_context():
                for block, request in groups:
                    for batches in assembler.super_batches(block, request.batches):
                        assembled = assembler.assemble(block, batches)
                        if self.batch_transform is not None:
                            assembled = yield from transformed(assembled, self.batch_transform, backend)
                        yield assembled

        groups = Background(read_groups(), 1, "gpuload-reader", self.stopped)
        ready = Background(assemble_batches(groups), self.prefetch, "gpuload-assembler", self.stopped)
        self.stages = [ready, groups]
        _RUNNING.add(self)
        try:
            for assembled in ready:  # a super-batch at a time: one queue hand-over, not one per batch
                for batch in assembled.batches:
                    backend.hand_off(assembled.fence, assembled.buffers)
                    yield batch
                if assembled.error is not None:  # raised after the batches before the bad row's
                    raise assembled.error
        except KeyboardInterrupt:
            # Ctrl-C reaches the consumer at once: a thread inside a numba compilation (the first
            # batch's, seconds long) or a kernel ends after it; the exit handler joins it.
            self.stopped.set()
            raise
        except BaseException:
            self._finish()
            raise
        self._finish()

    def _finish(self) -> None:
        self.stopped.set()
        self.join()
        _RUNNING.discard(self)


def transformed(assembled: Assembled, transform: Callable[[dict], dict], backend: Backend):
    """``assembled`` with ``transform`` applied to each batch on the loader's stream, fenced
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


@dataclass
class _Failure:
    error: BaseException


class Background:
    """Runs an iterator in a daemon thread and hands its items over through a bounded queue.

    An exception in the thread is re-raised in the consumer; setting ``stop`` ends the thread
    at its next item (every wait polls it, so nothing blocks forever).
    """

    def __init__(self, items: Iterator, maxsize: int, name: str, stop: threading.Event) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._stop = stop
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(_Failure(e))
        finally:
            items.close()  # a generator's own cleanup (with-blocks) runs in its thread

    def __iter__(self) -> Iterator:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise GpuloadError(f"{self._thread.name} thread ended without a result") from None
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def join(self) -> None:
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            warnings.warn(
                f"{self._thread.name} thread did not stop within 30 s", RuntimeWarning, stacklevel=3
            )
