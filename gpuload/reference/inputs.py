"""What ``gpuload train`` needs from a file as it is shipped, found whatever its naming.

Real files rarely carry BMMC's extras. The trainer needs, by role: the gene-expression and
chromatin modalities (BMMC's ``GEX``/``ATAC``, 10x's ``Gene Expression``/``Peaks``, muon's
``rna``/``atac``), raw counts (``layers["counts"]``, or integer-valued ``X``), and per cell a
batch (else every cell is one batch), a cell type (else the label-based metrics are not
available) and GEX size factors (else library sizes over their mean). A column may sit in the
global obs or only inside a modality (``GEX:batch`` in an ``.h5mu`` written by mudata 0.3).
These names are facts of BMMC, 10x and muon, so they live here, not in the product.

:class:`TrainingInputs` says what was chosen and why (the report prints it), and
:meth:`TrainingInputs.roles` is the ``batch_transform`` that gives every batch the keys the
model reads: ``batch["obs"]["batch"]`` / ``["cell_type"]`` / ``["size_factors"]`` and
``batch["obs_codes"]["batch"]``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from gpuload.bmmc import schema
from gpuload.errors import ArgumentError, SchemaError
from gpuload.formats import MultiomeStore, open_multiome
from gpuload.reference.models import SIZE_FACTOR_KEYS

# The names each role goes by, in the order they are looked for: BMMC's, 10x's, muon's.
ROLE_NAMES = {"GEX": ("GEX", "Gene Expression", "rna"), "ATAC": ("ATAC", "Peaks", "atac")}
BATCH_KEYS = ("batch",)
CELL_TYPE_KEYS = ("cell_type", "celltype", "cell_types")
COUNTS_LAYER = "counts"
SAMPLE_ROWS = 1000  # cells checked for integer values when X may hold the raw counts
ONE_BATCH = "all cells"


@dataclass
class TrainingInputs:
    """What training reads from ``store`` (opened on the chosen counts), and how it was chosen."""

    store: MultiomeStore
    modalities: dict[str, str]  # role ("GEX", "ATAC") -> the data's modality name
    batch_key: str | None
    cell_type_key: str | None
    size_factor_key: str | None
    size_factors: np.ndarray | None  # [n_cells], computed where the file has none
    choices: list[str] = field(default_factory=list)  # what was chosen, in words
    _tables: dict = field(default_factory=dict, repr=False)  # device -> size_factors there

    @property
    def obs_keys(self) -> list[str]:
        return [k for k in (self.batch_key, self.cell_type_key, self.size_factor_key) if k]

    def batches(self) -> np.ndarray | None:
        """The batch of every cell as text, None without a batch column."""
        return None if self.batch_key is None else self.store.obs[self.batch_key].astype(str).to_numpy()

    def roles(self, batch: dict) -> dict:
        """The ``batch_transform``: the batch under the keys the model and metrics read."""
        obs, codes = batch["obs"], batch["obs_codes"]
        n = batch["index"].shape[0]
        if self.batch_key is None:
            obs["batch"] = [ONE_BATCH] * n
            codes["batch"] = torch.zeros(n, dtype=torch.int64, device=batch["index"].device)
        elif self.batch_key != "batch":
            obs["batch"], codes["batch"] = obs[self.batch_key], codes[self.batch_key]
        obs["cell_type"] = obs[self.cell_type_key] if self.cell_type_key else None
        if self.size_factor_key is not None:
            obs["size_factors"] = obs[self.size_factor_key]
        else:
            obs["size_factors"] = self._size_factor_table(batch["index"].device)[batch["index"]]
        return batch

    def _size_factor_table(self, device: torch.device) -> torch.Tensor:
        """The computed size factors on ``device``, moved there once."""
        if device not in self._tables:
            self._tables[device] = torch.as_tensor(self.size_factors, device=device)
        return self._tables[device]

    def batch_categories(self, categories) -> list[str]:
        return [ONE_BATCH] if self.batch_key is None else list(categories(self.batch_key))


def open_training_inputs(
    data, *, gex: str | None = None, atac: str | None = None, layer: str | None = None
) -> TrainingInputs:
    """Open ``data`` (whatever :func:`~gpuload.formats.open_multiome` opens) on its raw counts and
    find each role; clear errors, naming the file and what it has, where one is missing."""
    store, counts_choice = _open_counts(data, layer)
    try:
        where = str(data)
        modalities = {
            role: _modality(store, role, given, where) for role, given in (("GEX", gex), ("ATAC", atac))
        }
        if counts_choice is None:  # X, unless its GEX values say they are not counts
            counts_choice = _integer_x(store, modalities["GEX"], where)
        return _with_obs(store, modalities, counts_choice)
    except BaseException:
        store.close()
        raise


def _open_counts(data, layer: str | None) -> tuple[MultiomeStore, str | None]:
    """The store on the raw counts: ``layer`` where given (``"X"``: X), else ``layers["counts"]``,
    else X (None: whether X holds counts is still to be checked)."""
    if layer is not None:
        chosen = None if layer == "X" else layer
        return open_multiome(
            data, layer=chosen
        ), f"{'X' if chosen is None else f'layers[{layer!r}]'} (--layer)"
    try:
        return open_multiome(data, layer=COUNTS_LAYER), f"layers[{COUNTS_LAYER!r}]"
    except (SchemaError, ArgumentError) as no_counts:
        store = open_multiome(data)
        if COUNTS_LAYER in store.layers:  # the layer is there but cannot be read: say why
            store.close()
            raise no_counts
        return store, None


def _modality(store: MultiomeStore, role: str, given: str | None, where: str) -> str:
    have = list(store.modalities)
    flag = f"--{role.lower()}"
    if given is not None:
        if given not in store.modalities:
            raise ArgumentError(f"{where}: {flag} {given!r} is not a modality of the data; it has {have}")
        return given
    found = [name for name in ROLE_NAMES[role] if name in store.modalities]
    if not found:
        raise SchemaError(
            f"{where}: training needs paired GEX + ATAC; found no {role} modality among {have} "
            f"(looked for {list(ROLE_NAMES[role])}); name it with {flag} NAME"
        )
    return found[0]


def _integer_x(store: MultiomeStore, gex: str, where: str) -> str:
    """Why X is taken as the raw counts, or a SchemaError where its GEX values are not integers."""
    rows = np.unique(np.linspace(0, store.n_cells - 1, min(SAMPLE_ROWS, store.n_cells)).astype(np.int64))
    block = store.read_rows(rows)[gex]
    values = np.asarray(block.data if sp.issparse(block) else block)
    if np.all(np.mod(values, 1) == 0) and np.all(values >= 0):
        checked = f"{rows.size} cells checked"
        return f"X: no layers['counts'], and X's {gex} values are non-negative integers ({checked})"
    raise SchemaError(
        f"{where}: training needs raw GEX counts: there is no layers['counts'] (layers: {store.layers}) "
        f"and X's {gex} values are not integers; name the layer that holds them with --layer NAME"
    )


def _column(store: MultiomeStore, names: tuple[str, ...], modalities: dict[str, str]) -> str | None:
    """The first obs column under one of ``names``: global, or inside a modality (``GEX:batch``),
    the gene-expression modality first."""
    own = [f"{m}:{n}" for m in modalities.values() for n in names]
    return next((c for c in (*names, *own) if c in store.obs.columns), None)


def _with_obs(store: MultiomeStore, modalities: dict[str, str], counts_choice: str) -> TrainingInputs:
    choices = [
        f"modalities: GEX = {modalities['GEX']!r}, ATAC = {modalities['ATAC']!r}",
        f"raw counts: {counts_choice}",
    ]
    batch_key = _column(store, BATCH_KEYS, modalities)
    cell_type_key = _column(store, CELL_TYPE_KEYS, modalities)
    size_factor_key = _column(store, SIZE_FACTOR_KEYS, {"GEX": modalities["GEX"]})
    choices.append(
        f"batch: obs {batch_key!r}" if batch_key else "batch: no obs 'batch' column; every cell is one batch"
    )
    choices.append(
        f"cell type: obs {cell_type_key!r}"
        if cell_type_key
        else "cell type: no obs 'cell_type' column; the label-based metrics are not available"
    )
    size_factors = None
    if size_factor_key:
        choices.append(f"GEX size factors: obs {size_factor_key!r}")
    else:
        size_factors = library_size_factors(store, modalities["GEX"])
        choices.append("GEX size factors: none in the file; each cell's GEX total over the mean total")
    return TrainingInputs(store, modalities, batch_key, cell_type_key, size_factor_key, size_factors, choices)


def library_size_factors(store: MultiomeStore, gex: str, block: int = 4096) -> np.ndarray:
    """Each cell's GEX counts over the mean of the cells that have any (1 for a cell without)."""
    totals = np.zeros(store.n_cells)
    for start in range(0, store.n_cells, block):
        rows = np.arange(start, min(start + block, store.n_cells))
        totals[rows] = np.asarray(store.read_rows(rows)[gex].sum(axis=1)).reshape(-1)
    positive = totals > 0
    mean = totals[positive].mean() if positive.any() else 1.0
    return np.where(positive, totals / mean, 1.0).astype(np.float32)


def data_argument(text: str) -> str | dict[str, str]:
    """``DATA`` of ``gpuload train``: a path, or ``NAME=PATH,NAME=PATH`` for per-modality files."""
    if "=" not in text:
        return text
    pairs = [part.partition("=") for part in text.split(",")]
    if any(not name or not sep or not path for name, sep, path in pairs):
        raise argparse.ArgumentTypeError(f"expected a path or NAME=PATH,NAME=PATH, got {text!r}")
    return {name: path for name, _, path in pairs}


TEST_FRACTION = 0.2


def split_cells(
    batches: np.ndarray | None, seed: int, max_cells: int | None = None, n_cells: int | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Row indices of the training and held-out cells, and how they were chosen.

    ``batches`` is the obs ``batch`` column as strings (None: the file has none, ``n_cells``
    cells). ``max_cells`` first keeps a seeded random subset of the file.
    """
    rng = np.random.default_rng(seed)
    if batches is not None:
        total = batches.size
    elif n_cells is not None:
        total = n_cells
    else:
        raise ArgumentError("split_cells needs the batch column or the number of cells")
    rows = np.arange(total)
    if max_cells is not None and max_cells < rows.size:
        rows = np.sort(rng.choice(rows, max_cells, replace=False))
    if batches is not None:
        is_train = np.isin(batches[rows], schema.SPLITS["train"])
        is_test = np.isin(batches[rows], schema.SPLITS["test"])
        if is_train.any() and is_test.any():
            return rows[is_train], rows[is_test], "competition split by batch; val batches unused"
    held_out = rng.random(rows.size) < TEST_FRACTION
    return rows[~held_out], rows[held_out], f"seeded random {TEST_FRACTION:.0%} of cells"
