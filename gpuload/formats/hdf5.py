"""Opening an HDF5 file read-only and finding a matrix in it, with errors that name the file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from gpuload.errors import GpuloadError, InputFileError, SchemaError
from gpuload.formats.encoding import encoding_of, shape_of
from gpuload.formats.types import Encoding

# What h5py raises on a corrupt file (bad metadata, a truncated dataset, an odd attribute).
H5PY_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


def open_hdf5(path: Path, expected: str) -> h5py.File:
    """``h5py.File(path, "r")``, or an InputFileError saying why not (``expected``: the format)."""
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory; expected an {expected} file")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: the file is empty; expected an {expected} (HDF5) file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        kind = "is not an HDF5 file" if not h5py.is_hdf5(path) else "cannot be opened (truncated?)"
        raise InputFileError(f"{path}: {kind} ({e})") from e


@contextmanager
def closed_on_error(file: h5py.File, what: str) -> Iterator[None]:
    """Close ``file`` when the block raises; h5py's own errors become an InputFileError that says
    ``what`` could not be read and why."""
    try:
        yield
    except BaseException as e:
        file.close()
        if isinstance(e, H5PY_ERRORS) and not isinstance(e, GpuloadError):
            raise InputFileError(f"{what} ({e}); the file is corrupt") from e
        raise


def find_matrix(
    group: h5py.Group, layer: str | None, where: str
) -> tuple[str, h5py.Group | h5py.Dataset, Encoding, tuple[int, int]]:
    """(key, node, encoding, shape) of ``X`` (``layer=None``) or ``layers/<layer>`` in ``group``."""
    key = "X" if layer is None else f"layers/{layer}"
    if key not in group:
        if layer is None:
            raise SchemaError(f"{where}: no 'X' in the file; keys are {list(group.keys())}")
        found = list(group["layers"].keys()) if "layers" in group else []
        raise SchemaError(f"{where}: no layer {layer!r}; layers are {found}")
    node = group[key]
    encoding = encoding_of(node, f"{where}:{key}")
    return key, node, encoding, shape_of(node, encoding, f"{where}:{key}")


def layers_of(group: h5py.Group) -> list[str]:
    return list(group["layers"].keys()) if "layers" in group else []
