"""var read once per distinct var: the files of an atlas share their features, so the second and
every later file with the same var costs a digest, not a frame.

A var is known by a digest of what defines the loader's columns: its names, its column order and
the modality column's raw values (read with h5py, without building a frame; nothing for a file
already seen, known by its inode, size and modification time). A hit hands back the same frame
and modality arrays, so a thousand files of one atlas hold one var in memory, not a thousand.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable

import h5py
import numpy as np
import pandas as pd

from gpuload.formats.types import Modality

KEPT = 8  # distinct vars remembered (a process rarely opens more kinds of file at once)
FILES_KEPT = 1 << 16  # files' digests remembered: a few dozen bytes each, more than an atlas has files
_by_digest: OrderedDict[tuple, tuple[pd.DataFrame, dict[str, Modality]]] = OrderedDict()
_digest_of_file: OrderedDict[tuple, bytes | None] = OrderedDict()


def shared_var(
    group: h5py.Group,
    feature_type_key: str | None,
    read: Callable[[], tuple[pd.DataFrame, dict[str, Modality]]],
) -> tuple[pd.DataFrame, dict[str, Modality]]:
    """``read()``'s (var, modalities) of the AnnData ``group``, or the ones already read for a var
    with the same digest (``feature_type_key``: the column modalities come from, None: one
    modality of every column)."""
    digest = _digest(group, feature_type_key)
    if digest is None:
        return read()
    key = (digest, feature_type_key)
    if key in _by_digest:
        _by_digest.move_to_end(key)
        return _by_digest[key]
    _by_digest[key] = found = read()
    while len(_by_digest) > KEPT:
        _by_digest.popitem(last=False)
    return found


def _digest(group: h5py.Group, feature_type_key: str | None) -> bytes | None:
    """The var's digest (None: a layout this does not read raw; then var is read as it is)."""
    try:
        stat = os.stat(group.file.filename)
    except OSError:
        return None
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, group.name, feature_type_key)
    if identity not in _digest_of_file:
        _digest_of_file[identity] = _raw_digest(group, feature_type_key)
        while len(_digest_of_file) > FILES_KEPT:
            _digest_of_file.popitem(last=False)
    return _digest_of_file[identity]


def _raw_digest(group: h5py.Group, feature_type_key: str | None) -> bytes | None:
    var = group.get("var")
    if not isinstance(var, h5py.Group) or var.attrs.get("encoding-type") != "dataframe":
        return None
    index_key, order = var.attrs.get("_index"), var.attrs.get("column-order", ())
    index = var.get(index_key) if isinstance(index_key, str) else None
    if not isinstance(index, h5py.Dataset) or index.dtype.kind != "O":
        return None
    h = hashlib.blake2b(digest_size=20)
    h.update(b"\0".join(str(c).encode() for c in np.atleast_1d(order)))
    h.update(b"\1")
    h.update(b"\0".join(_text_bytes(v) for v in index[()]))
    if feature_type_key is not None:
        column = var.get(feature_type_key)
        if column is None:
            return None  # read as it is: the opener reports the missing column
        parts = (
            [column]
            if isinstance(column, h5py.Dataset)
            else [column[p] for p in ("codes", "categories") if p in column]
        )
        for part in parts:
            values = part[()]
            h.update(b"\2")
            h.update(
                b"\0".join(_text_bytes(v) for v in values) if values.dtype.kind == "O" else values.tobytes()
            )
    return h.digest()


def _text_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
