"""The one folder where gpuload keeps what it builds for a user: CSC sidecars
(:mod:`gpuload.formats.csc`) and compiled kernels (:mod:`gpuload.kernels.compile_cache`)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$GPULOAD_CACHE_DIR``, or ~/.cache/gpuload."""
    return Path(os.environ.get("GPULOAD_CACHE_DIR", Path.home() / ".cache" / "gpuload"))
