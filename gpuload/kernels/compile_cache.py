"""Compiled kernels kept on disk between processes: only the first process compiles them (every
DDP rank and ``gpuload`` command did; a fresh process's first batch took 4.6 s without the cache
and 0.6 s with it, benchmarks/RESULTS.md 2026-12-06).

numba's cache trusts a kernel's defining file: it recompiles when that file's timestamp or size
changes, not when code the kernel inlines from another module does (all of
:mod:`~gpuload.kernels.arithmetic`, into :mod:`~gpuload.kernels.cpu` and
:mod:`~gpuload.kernels.cuda`), which it would serve stale. So the kernels cache into a folder of
their own named by a hash of every source file of this package: an edit to any of them starts
from an empty folder. The folder lies under ``$NUMBA_CACHE_DIR`` where the user set it, else
under gpuload's cache folder (:func:`gpuload.user_cache.default_cache_dir`), never in the
installed package, which may be read-only. Where it cannot be written the kernels are not
cached at all: numba's fallback folders are keyed by the defining file alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from gpuload.user_cache import default_cache_dir

SOURCES = Path(__file__).parent


@functools.cache
def sources_key() -> str:
    """A hash of this package's sources (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(SOURCES.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def kernel_cache_dir() -> Path:
    """Where the kernels of these sources are cached."""
    user_numba = os.environ.get("NUMBA_CACHE_DIR")
    base = Path(user_numba) if user_numba else default_cache_dir() / "numba"
    return base / f"gpuload-kernels-{sources_key()}"


@functools.cache
def writable_cache_dir() -> Path | None:
    """:func:`kernel_cache_dir`, created, or None where it cannot be written (the first answer
    holds for the process: every kernel caches in one place)."""
    path = kernel_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError:
        return None
    return path


def cached(jit: Callable, config: ModuleType, **options) -> Callable:
    """``jit(**options)`` as a decorator that caches the function in :func:`writable_cache_dir`.

    ``config`` is the numba config module whose ``CACHE_DIR`` the jit's cache reads: it is set
    only while the function is decorated (when numba picks the cache's folder), so numba
    functions outside gpuload keep theirs.
    """

    def decorate(function: Callable):
        path = writable_cache_dir()
        if path is None:
            return jit(**options)(function)
        previous = config.CACHE_DIR
        config.CACHE_DIR = str(path)  # type: ignore[attr-defined]  # numba's config is filled at import
        try:
            return jit(cache=True, **options)(function)
        finally:
            config.CACHE_DIR = previous  # type: ignore[attr-defined]

    return decorate
