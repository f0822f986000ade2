"""A row reader opened at its first use: a file of several is opened only by a rank that reads it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gpuload.formats.types import Encoding, RowBlock, RowReader


class LazyReader:
    """Opens the reader ``open_reader()`` builds at the first read or size query."""

    def __init__(self, open_reader: Callable[[], RowReader], encoding: Encoding) -> None:
        self.open_reader, self.encoding = open_reader, encoding
        self.reader: RowReader | None = None

    @property
    def opened(self) -> bool:
        return self.reader is not None

    @property
    def sidecar(self):
        return None if self.reader is None else self.reader.sidecar

    def _open(self) -> RowReader:
        if self.reader is None:
            self.reader = self.open_reader()
        return self.reader

    def read(self, rows: np.ndarray, empty=np.empty) -> RowBlock:
        return self._open().read(rows, empty)

    def stored_values(self, rows: np.ndarray) -> int | None:
        if self.encoding.kind == "dense":  # known without opening: only a read can tell
            return None
        return self._open().stored_values(rows)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
