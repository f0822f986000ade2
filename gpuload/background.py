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


class _LedgerQueue(queue.Queue):
    """A bounded queue whose hand-overs the backend's ledger sees, inside the queue's lock (so
    the ledger's order of puts and gets is the queue's)."""

    def __init__(self, maxsize: int, name: str, backend: Backend) -> None:
        super().__init__(maxsize)
        self.name, self.backend = name, backend

    def _put(self, item) -> None:
        self.backend.note_host("put", "item", peer=self.name)
        super()._put(item)

    def _get(self):
        self.backend.note_host("get", "item", peer=self.name)
        return super()._get()


class Background:
    """Runs a generator in a daemon thread and hands its items over through a bounded queue.

    An exception in the thread is re-raised in the consumer; setting ``stop`` ends the thread
    at its next item (every wait polls it, so nothing blocks forever). The thread starts at
    :meth:`start`; its start and join are written to the backend's ledger.
    """

    def __init__(
        self, items: Generator, maxsize: int, name: str, stop: threading.Event, backend: Backend
    ) -> None:
        self._queue = _LedgerQueue(maxsize, name, backend)
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
            except queue.Full:
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
                if not self.thread.is_alive() and self._queue.empty():
                    raise GpuloadError(f"{self.thread.name} thread ended without a result") from None
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def drain(self) -> None:
        """Drop the items waiting in the queue (after a stop: nobody will take them)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

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
