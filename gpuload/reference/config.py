"""How a ``gpuload train`` run is set up: :class:`TrainConfig`, every setting checked once, when the
config is made, each failure an ``ArgumentError`` naming the field.

The defaults: the genes and peaks nonzero in the most training cells (``DEFAULT_FEATURES``), as
the competition's entries and muon's workflows select features before training; chosen by
measurement on 3,000-5,000-cell synthetic files on a 2-core CPU (see the README).
``features="all"`` trains at full width (natural on a GPU).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuload.checks import non_negative_int, one_of, positive_int
from gpuload.errors import ArgumentError

DEFAULT_FEATURES = {"GEX": {"top": 2000}, "ATAC": {"top": 10000}}
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 128
DEFAULT_HIDDEN = 256
DEFAULT_LATENT = 16
INPUTS = ("dense", "sparse_csr")
ALL_FEATURES = "all"


@dataclass(frozen=True)
class TrainConfig:
    """A training run's settings (the data is :func:`~gpuload.reference.train.train`'s own argument).

    Parameters
    ----------
    epochs, batch_size
        Passes over the training cells; cells per optimizer step.
    features
        The loader's feature selection over the training cells, ``{modality role: spec}``
        (``{"GEX": {"top": 2000}}``), or ``"all"`` (full width; ``None`` means the same).
    hidden, latent_dim
        The VAE's hidden width and latent size.
    inputs
        How batches reach the encoders: ``"dense"`` or ``"sparse_csr"``.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or ``"cudasim"`` in tests).
    out_dir
        Where ``model.pt``, ``metrics.json``, ``report.md`` and the plots go.
    seed
        Seed of the held-out split, the loader's order and the model's initial weights.
    max_cells
        Train and test on a seeded random subset of this many cells (``None``: all).
    progress, umap
        Show a progress bar; draw the UMAP plot (umap-learn compiles for ~20 s first).
    gex, atac, layer
        The GEX and ATAC modalities' names and the layer of raw counts (``"X"``: X); ``None``
        finds each by role (:mod:`gpuload.reference.inputs`).
    """

    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    features: Mapping[str, Any] | str | None = field(default_factory=lambda: dict(DEFAULT_FEATURES))
    hidden: int = DEFAULT_HIDDEN
    latent_dim: int = DEFAULT_LATENT
    inputs: str = "dense"
    device: str = "auto"
    out_dir: str | os.PathLike = Path("train_out")
    seed: int = 0
    max_cells: int | None = None
    progress: bool = True
    umap: bool = True
    gex: str | None = None
    atac: str | None = None
    layer: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "hidden", "latent_dim"):
            positive_int(name, getattr(self, name))
        non_negative_int("seed", self.seed)
        if self.max_cells is not None:
            positive_int("max_cells", self.max_cells)
        one_of("inputs", self.inputs, INPUTS)
        if self.features is None:
            object.__setattr__(self, "features", ALL_FEATURES)
        if not (self.features == ALL_FEATURES or isinstance(self.features, Mapping)):
            raise ArgumentError(
                f"features must be 'all' or {{modality: spec}} such as {DEFAULT_FEATURES}, "
                f"got {self.features!r}"
            )
        if not (isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cudasim|cuda(:\d+)?", self.device)):
            raise ArgumentError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if not isinstance(self.out_dir, str | os.PathLike):
            raise ArgumentError(f"out_dir must be a folder path, got {self.out_dir!r}")
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        for name in ("progress", "umap"):
            if not isinstance(getattr(self, name), bool):
                raise ArgumentError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("gex", "atac", "layer"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ArgumentError(f"{name} must be a name or None, got {getattr(self, name)!r}")
