"""What a loader holds, by attribute path: the arrays, frames and large containers reachable from it.

``benchmarks/scale.py`` asks this of every loader it opens, so that bytes per cell can be read
against the objects that hold them (positions, orders, indptr, obs frames, ...). It walks the
object graph from the loader (attributes, dict values, list items) and counts each object once:

- numpy arrays and torch tensors: their buffer (a view counts nothing; its base is counted);
- pandas frames, series and indexes: ``memory_usage(deep=True)`` (Python strings included);
- a list, tuple or dict of more than ``LARGE`` items: ``sys.getsizeof`` of it and of its items,
  as one entry (Python objects per cell would show up here), not walked further.

It reads attributes generically (``vars``), as a memory profiler does: a diagnostic, not an API.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator

import numpy as np

LARGE = 10_000
SKIPPED = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)


def held_bytes(root: object, name: str = "loader", max_depth: int = 12) -> dict[str, int]:
    """{attribute path: bytes} of the buffers and large containers reachable from ``root``."""
    out: dict[str, int] = {}
    seen: set[int] = set()
    stack = [(name, root, 0)]
    while stack:
        path, obj, depth = stack.pop()
        if id(obj) in seen or depth > max_depth or isinstance(obj, SKIPPED):
            continue
        seen.add(id(obj))
        size = _buffer_bytes(obj, seen)
        if size is not None:
            if size:
                out[path] = size
            continue
        stack.extend((child_path, child, depth + 1) for child_path, child in _children(path, obj))
    return out


def _buffer_bytes(obj: object, seen: set[int]) -> int | None:
    """Bytes of a leaf (array, tensor, pandas object, large container); None: walk into it."""
    if isinstance(obj, np.ndarray):
        if obj.base is not None:  # a view: the owner is counted where it is found
            return 0
        return int(obj.nbytes)
    module = type(obj).__module__
    if module.startswith("torch") and hasattr(obj, "untyped_storage"):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return int(storage.nbytes())
    if module.startswith("pandas") and hasattr(obj, "memory_usage"):
        usage = obj.memory_usage(deep=True)
        return int(usage.sum() if hasattr(usage, "sum") else usage)
    if isinstance(obj, list | tuple | dict | set) and len(obj) > LARGE:
        items = obj.values() if isinstance(obj, dict) else obj
        return sys.getsizeof(obj) + sum(sys.getsizeof(x) for x in items)
    return None


def _children(path: str, obj: object) -> Iterator[tuple[str, object]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield f"{path}[{key!r}]", value
    elif isinstance(obj, list | tuple | set | frozenset):
        for i, value in enumerate(obj):
            yield f"{path}[{i}]", value
    else:
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            for key, value in attrs.items():
                yield f"{path}.{key}", value
        for key in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, key):
                yield f"{path}.{key}", getattr(obj, key)


def top_holders(held: dict[str, int], n: int = 20) -> list[tuple[str, int, int]]:
    """The ``n`` largest entries as (path, bytes, count), largest first; paths that differ only
    in an index (``stores[0].obs``, ``stores[1].obs``) are summed as one (``stores[*].obs``)."""
    groups: dict[str, list[int]] = {}
    for path, size in held.items():
        total = groups.setdefault(re.sub(r"\[\d+\]", "[*]", path), [0, 0])
        total[0] += size
        total[1] += 1
    return sorted(((p, b, c) for p, (b, c) in groups.items()), key=lambda t: -t[1])[:n]
