"""gpuload: a GPU-accelerated PyTorch data loader for multimodal (GEX + ATAC) single-cell data.

>>> loader = gpuload.MultiomeLoader("bmmc.h5ad", batch_size=32, layer="counts",
...                                 transform={"GEX": "log1p_size_factor", "ATAC": "binarize"})
>>> for batch in loader:
...     batch["GEX"], batch["ATAC"], batch["obs"]["cell_type"]
"""

from gpuload.bmmc.synth import write_synthetic
from gpuload.errors import (
    ArgumentError,
    DataValueError,
    DeviceError,
    GpuloadError,
    InputFileError,
    ObsKeyError,
    SchemaError,
)
from gpuload.formats import MultiomeStore, open_multiome
from gpuload.loader import MultiomeLoader

__version__ = "0.1.0"
__all__ = [
    "ArgumentError",
    "DataValueError",
    "DeviceError",
    "GpuloadError",
    "InputFileError",
    "MultiomeLoader",
    "MultiomeStore",
    "ObsKeyError",
    "SchemaError",
    "open_multiome",
    "write_synthetic",
]
