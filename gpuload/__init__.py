"""gpuload: a GPU-accelerated PyTorch data loader for multimodal (GEX + ATAC) single-cell data.

>>> loader = gpuload.MultiomeLoader("bmmc.h5ad", batch_size=32, layer="counts",
...                                 transform={"GEX": "log1p_size_factor", "ATAC": "binarize"})
>>> for batch in loader:
...     batch["GEX"], batch["ATAC"], batch["obs"]["cell_type"]

``import gpuload`` loads the readers and the loader only: the synthetic writer (anndata's
writers, tqdm) loads on first use of :func:`write_synthetic`, and the integrations
(``gpuload.lightning``, ``gpuload.scvi``, DALI) and the reference model on their own import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuload.errors import (
    ArgumentError,
    DataValueError,
    DeviceError,
    GpuloadError,
    InputFileError,
    ObsKeyError,
    SchemaError,
)
from gpuload.formats import DataSource, Modality, MultiomeStore, open_multiome
from gpuload.handoff import Handoff, register_handoff
from gpuload.loader import MultiomeLoader
from gpuload.options import LoaderOptions

if TYPE_CHECKING:
    from gpuload.bmmc.synth import write_synthetic

__version__ = "0.1.0"
__all__ = [
    "ArgumentError",
    "DataSource",
    "DataValueError",
    "DeviceError",
    "GpuloadError",
    "Handoff",
    "InputFileError",
    "LoaderOptions",
    "Modality",
    "MultiomeLoader",
    "MultiomeStore",
    "ObsKeyError",
    "SchemaError",
    "open_multiome",
    "register_handoff",
    "write_synthetic",
]


def _dali_handoff() -> Handoff:
    """``pipeline="dali"``: the DALI integration, imported when the name is chosen (DALI itself
    when the first run starts)."""
    from gpuload.integrations.dali import DaliHandoff

    return DaliHandoff()


register_handoff("dali", _dali_handoff)


def __getattr__(name: str) -> Any:
    """``gpuload.write_synthetic`` imports the generator (anndata's writers, tqdm) when first asked for."""
    if name == "write_synthetic":
        from gpuload.bmmc.synth import write_synthetic

        return write_synthetic
    raise AttributeError(f"module 'gpuload' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
