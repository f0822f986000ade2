"""A generator run in a daemon thread, its items handed over through a bounded queue.

The loader's reader and assembler are two of these (:mod:`gpuload.epoch`). Every start, join
and hand-over is written to the backend's ledger, so the happens-before checker
(:mod:`gpuload.device.happens_before`) knows how the threads are ordered.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from gpuload.device import Backend
from gpuload.errors import GpuloadError

_END = object()
_POLL_SECONDS = 0.1
_JOIN_SECONDS = 30


@dataclass
class _Failure:
    error: BaseException


class _Handover:
    """A bounded queue of items between two threads, in C: the items in one ``SimpleQueue`` and
    the free places in another (a ``queue.Queue`` would run some 40 Python calls per item, each
    one paid again when the thread wakes up with cold caches). The backend's ledger sees every
    hand-over: a ``put`` once a place is free and before the item is there, a ``get`` once the
    item is taken and before its place is freed, so a ``put`` that had to wait for a place
    follows, in the ledger too, the ``get`` that freed it."""

    def __init__(self, maxsize: int, name: str, backend: Backend) -> None:
        self.name, self.backend = name, backend
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self.places: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(maxsize):
            self.places.put(None)

    def put(self, item, timeout: float) -> None:
        """Hand ``item`` over once a place is free (``queue.Empty`` after ``timeout`` seconds)."""
        self.places.get(timeout=timeout)
        self.backend.note_host("put", "item", peer=self.name)
        self.items.put(item)

    def get(self, timeout: float):
        """The next item (``queue.Empty`` after ``timeout`` seconds)."""
        item = self.items.get(timeout=timeout)
        self.backend.note_host("get", "item", peer=self.name)
        self.places.put(None)
        return item

    def drop(self) -> None:
        """Drop the items waiting, freeing their places (a thread waiting for one sees it at once)."""
        while True:
            try:
                self.items.get_nowait()
            except queue.Empty:
                return
            self.places.put(None)


class Background:
    """Runs a generator in a daemon thread and hands its items over through a bounded queue.

    An exception in the thread is re-raised in the consumer; setting ``stop`` ends the thread
    at its next item (every wait polls it, so nothing blocks forever). The thread starts at
    :meth:`start`; its start and join are written to the backend's ledger.
    """

    def __init__(
        self, items: Generator, maxsize: int, name: str, stop: threading.Event, backend: Backend
    ) -> None:
        self._queue = _Handover(maxsize, name, backend)
        self._stop, self._backend = stop, backend
        self.thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)

    def start(self) -> None:
        self._backend.note_host("spawn", "thread", peer=self.thread.name)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Empty:  # no free place yet
                continue
        return False

    def _run(self, items: Generator) -> None:
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
                if not self.thread.is_alive() and self._queue.items.empty():
                    raise GpuloadError(f"{self.thread.name} thread ended without a result") from None
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def drain(self) -> None:
        """Drop the items waiting in the queue (after a stop: nobody will take them)."""
        self._queue.drop()

    def join(self) -> bool:
        """Wait for the thread to end (True), at most ``_JOIN_SECONDS`` (False, with a warning)."""
        if self.thread.ident is None:  # never started
            return True
        self.thread.join(timeout=_JOIN_SECONDS)
        if self.thread.is_alive():
            warnings.warn(
                f"{self.thread.name} thread did not stop within {_JOIN_SECONDS} s",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        self._backend.note_host("joined", "thread", peer=self.thread.name)
        return True
