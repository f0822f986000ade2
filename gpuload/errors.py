"""The errors gpuload raises: one hierarchy, each message naming the file, key or argument.

Catching ``GpuloadError`` catches everything the library reports about bad input; anything
else escaping gpuload is a bug.
"""

from __future__ import annotations


class GpuloadError(Exception):
    """Base class of every error gpuload raises on purpose."""


class InputFileError(GpuloadError):
    """The input path is missing, not a file, not HDF5, or truncated."""


class SchemaError(GpuloadError):
    """The file is HDF5 but not the AnnData layout gpuload expects (missing X, bad encoding, ...)."""


class ObsKeyError(GpuloadError):
    """An obs column that was asked for does not exist."""


class DataValueError(GpuloadError):
    """Values in the file cannot be used as asked (NaN size factors, negative counts for log1p, ...)."""


class ArgumentError(GpuloadError, ValueError):
    """A function argument is out of range or of the wrong kind."""


class DeviceError(GpuloadError):
    """The requested device cannot be used (no GPU, GPU extra not installed)."""
