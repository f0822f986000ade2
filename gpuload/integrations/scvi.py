"""scvi-tools models trained on gpuload batches streamed from the file: ``ScviDataModule``.

scvi-tools 1.4 and 1.5 train from any ``LightningDataModule`` that describes the data in a
``registry`` (its annbatch, TileDB and lamindb datamodules in
``scvi/dataloaders/_custom_dataloaders.py`` are the templates). What it reads, in 1.4.2 and 1.5.1:

- ``SCVI(registry=dm.registry)`` / ``SCANVI(registry=..., datamodule=dm)`` size the module from
  the registry's summary stats (``n_vars``, ``n_batch``, ``n_labels``) and read its
  ``setup_args`` and ``extra_categorical_covs`` entries; SCANVI reads ``dm.labels_`` (one label
  per cell, ``unlabeled_category`` for missing ones) to find the labelled cells.
- ``model.train(datamodule=dm, max_epochs=...)`` runs ``Trainer.fit(plan, dm)``; each batch goes
  through ``dm.on_before_batch_transfer``, which turns a gpuload batch into scvi's tensor keys
  (``X``, ``batch``, ``labels``, ``extra_categorical_covs``, ``extra_continuous_covs``;
  SCANVI's plan checks that order).
- ``model.get_latent_representation(dataloader=...)`` iterates any iterable of those dicts;
  :meth:`ScviDataModule.inference_dataloader` yields every cell once, in file order.
- 1.5 only: ``model.train(batch_size=, train_size=, validation_size=, shuffle_set_split=)`` reach
  the datamodule through ``set_batch_size`` and ``set_split`` (1.4 ignores them with a
  datamodule). ``model.save(dir, datamodule=dm)`` reads ``n_samples``, ``n_batch``,
  ``n_labels``, ``n_vars`` and ``batch_labels``; ``Model.load(dir, datamodule=dm)`` rebuilds
  the module from them.

MULTIVI and TOTALVI cannot use this route in 1.4.2 or 1.5.1: their ``__init__`` takes no
``registry=`` and reads an AnnData/MuData manager (see the README).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from math import ceil, floor

import numpy as np
import pandas as pd
import scvi
import torch
from scvi.model.base import BaseModelClass
from scvi.train import SemiSupervisedTrainingPlan

from gpuload.checks import positive_int
from gpuload.errors import ArgumentError
from gpuload.formats import MultiomeStore
from gpuload.integrations.lightning import MultiomeDataModule
from gpuload.loader import MultiomeLoader

# Options this datamodule sets itself.
OWN_OPTIONS = ("modalities", "obs_keys")
# Options of training order only: the inference loader reads every cell once, in file order.
ORDER_OPTIONS = ("shuffle", "drop_last", "rank", "world_size")
# What scvi-tools 1.5's train() passes to set_split when the caller gives no split of its own
# (it turns train_size=None into 0.9): a datamodule built with its own split= keeps that split.
SCVI_DEFAULT_SPLITS = ((0.9, None, True), (None, None, True))


def scvi_split(
    n: int, train_size: float | None, validation_size: float | None, shuffle: bool, seed: int
) -> tuple[dict[str, np.ndarray], str]:
    """Validation, training and test rows as scvi-tools' ``DataSplitter`` cuts them: ``ceil(
    train_size * n)`` training cells, the rest (or ``floor(validation_size * n)``) validation,
    any remainder test; from a seeded permutation when ``shuffle``, else in file order."""
    if train_size is None:
        train_size = 0.9 if validation_size is None else 1.0 - validation_size
    if not 0.0 < train_size <= 1.0:
        raise ArgumentError(f"train_size must be in (0, 1], got {train_size!r}")
    if validation_size is not None and not (validation_size >= 0.0 and train_size + validation_size <= 1):
        raise ArgumentError(
            f"validation_size must be >= 0 with train_size + validation_size <= 1; got "
            f"train_size={train_size}, validation_size={validation_size}"
        )
    n_train = ceil(train_size * n)
    n_val = n - n_train if validation_size is None else floor(validation_size * n)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    parts = {"val": order[:n_val], "train": order[n_val : n_val + n_train], "test": order[n_val + n_train :]}
    rows = {stage: np.sort(part) for stage, part in parts.items() if part.size}
    how = "shuffled" if shuffle else "in file order"
    return rows, (
        f"scvi-tools' split: {n_train} training, {n_val} validation cells of {n}, {how} (seed {seed})"
    )


class ScviDataModule(MultiomeDataModule):
    """A LightningDataModule that scvi-tools' SCVI and SCANVI train from.

    Parameters
    ----------
    data
        Path to an ``.h5ad`` (or an open :class:`~gpuload.MultiomeStore`).
    modality
        The modality scvi models as ``X`` (``"GEX"``: the genes).
    layer
        Where the counts are (``"counts"``; ``None`` for X). SCVI's likelihoods need raw counts.
    batch_key
        Categorical obs column of the batch covariate, or ``None`` (one batch).
    labels_key, unlabeled_category
        Categorical obs column of the labels (SCANVI), or ``None``; cells without a label are
        ``unlabeled_category`` (SCANVI trains its classifier on the other cells only).
    features
        The columns scvi sees (a mask, var names, a boolean var column or ``{"top": k}``, see
        :mod:`gpuload.plan.features`), chosen once over every selected cell.
    batch_size
        Cells per training batch; scvi-tools 1.5's ``model.train(batch_size=)`` replaces it.
    split
        ``None`` (default): scvi-tools decides, as it does for an AnnData: 90% of the cells train
        and 10% validate (shuffled, seeded), and scvi-tools 1.5's ``model.train(train_size=,
        validation_size=, shuffle_set_split=)`` choose another split. Anything else is as
        :class:`~gpuload.lightning.MultiomeDataModule` (``"random"``, ``{stage: subset}``, ...),
        and a ``model.train`` asking for another split then raises :class:`ArgumentError`.
    model_name
        The scvi-tools model class the registry is for (``Model.load`` checks it); default
        ``"SCANVI"`` with ``labels_key``, else ``"SCVI"``.
    **loader_options
        Passed to the loaders (``device``, ``seed``, ``shuffle``, ``transform``, ...).
    """

    def __init__(
        self,
        data: str | os.PathLike | MultiomeStore,
        *,
        modality: str = "GEX",
        layer: str | None = "counts",
        batch_key: str | None = "batch",
        labels_key: str | None = None,
        unlabeled_category: str = "Unknown",
        features=None,
        batch_size: int = 128,
        split=None,
        model_name: str | None = None,
        **loader_options,
    ) -> None:
        taken = [key for key in OWN_OPTIONS if key in loader_options]
        if taken:
            raise ArgumentError(
                f"ScviDataModule sets {taken} itself (from modality=, batch_key=, labels_key=)"
            )
        if not isinstance(modality, str) or modality == "all":
            raise ArgumentError(f"modality must be one modality's name such as 'GEX', got {modality!r}")
        self.modality, self.batch_key, self.labels_key = modality, batch_key, labels_key
        self.unlabeled_category = unlabeled_category
        self.model_name = model_name or ("SCANVI" if labels_key else "SCVI")
        keys = [key for key in (batch_key, labels_key) if key is not None]
        options = {**loader_options, "modalities": modality, "layer": layer, "obs_keys": keys}
        # One shard of every cell (rank 0 of 1, whatever the process group), in file order.
        self.inference_options = {k: v for k, v in options.items() if k not in ORDER_OPTIONS}
        self.inference_options.update(shuffle=False, rank=0, world_size=1)
        self.inference_loader = MultiomeLoader(
            data, batch_size=batch_size, features=features, **self.inference_options
        )
        self.var_names = self.inference_loader.var_names(modality)
        chosen = self.inference_loader.feature_masks  # the same columns in every loader
        self.inference_options["features"] = chosen
        self.split_given = split is not None
        if not self.split_given:
            split, how = scvi_split(self.n_obs, None, None, True, loader_options.get("seed", 0))
        super().__init__(data, batch_size=batch_size, split=split, features=chosen, **options)
        if not self.split_given:
            self.split_description = how
        self.batch_labels = np.array(["0"], dtype=object)
        if batch_key is not None:
            self.batch_labels = self._categories(batch_key, "batch_key")
            if pd.isna(self.inference_loader.obs_values(batch_key)).any():
                raise ArgumentError(
                    f"batch_key={batch_key!r}: some cells have no batch; scvi needs one per cell"
                )
        self._labels_setup(labels_key)

    def _categories(self, key: str, argument: str) -> np.ndarray:
        try:
            return np.asarray(self.inference_loader.categories(key), dtype=object)
        except ArgumentError as e:
            raise ArgumentError(f"{argument}={key!r}: scvi needs a categorical obs column ({e})") from e

    def _labels_setup(self, labels_key: str | None) -> None:
        """The label mapping (the file's categories, ``unlabeled_category`` last, as SCANVI
        expects), each file code's place in it, and ``labels_``: every cell's label."""
        n_cells = self.inference_loader.positions.size
        if labels_key is None:
            self.labels_mapping = np.array(["0"], dtype=object)
            self.label_lookup = torch.zeros(1, dtype=torch.int64)
            self.labels_ = np.full(n_cells, "0", dtype=object)
            return
        categories = list(self._categories(labels_key, "labels_key"))
        mapping = [c for c in categories if c != self.unlabeled_category] + [self.unlabeled_category]
        self.labels_mapping = np.asarray(mapping, dtype=object)
        # file code -> mapping index; the last entry serves code -1 (a missing label)
        self.label_lookup = torch.tensor([mapping.index(c) for c in categories] + [len(mapping) - 1])
        column = self.inference_loader.obs_values(labels_key).astype(object)
        self.labels_ = np.where(pd.isna(column), self.unlabeled_category, column)

    # -- what scvi-tools 1.5's train() sets ---------------------------------------------------
    def set_batch_size(self, batch_size: int | None = None) -> None:
        """``model.train(batch_size=)``: the training and validation loaders' batch size (scvi
        passes ``None`` for its default, 128, which therefore cannot override another size)."""
        if batch_size is None or batch_size == self.batch_size:
            return
        self.batch_size = positive_int("batch_size", batch_size)
        self.loaders = {}  # rebuilt by setup() with the new size

    def set_split(
        self,
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        batch_size: int | None = None,
    ) -> None:
        """``model.train(train_size=, validation_size=, shuffle_set_split=)``: the cells of each
        stage, cut as scvi-tools cuts an AnnData's; refused when ``split=`` was given here."""
        self.set_batch_size(batch_size)
        if self.split_given:
            if (train_size, validation_size, shuffle_set_split) not in SCVI_DEFAULT_SPLITS:
                raise ArgumentError(
                    f"model.train(train_size={train_size}, validation_size={validation_size}, "
                    f"shuffle_set_split={shuffle_set_split}) cannot be honoured: this ScviDataModule "
                    f"was built with its own split ({self.split_description}); build it with "
                    "split=None to let train() choose"
                )
            return
        self.subsets, self.split_description = scvi_split(
            self.n_obs, train_size, validation_size, bool(shuffle_set_split), self.seed
        )
        self.loaders = {}

    # -- what scvi-tools reads -----------------------------------------------------------------
    @property
    def n_obs(self) -> int:
        return int(self.inference_loader.positions.size)

    @property
    def n_vars(self) -> int:
        return len(self.var_names)

    @property
    def n_batch(self) -> int:
        return len(self.batch_labels)

    @property
    def n_labels(self) -> int:
        """The classes SCANVI's classifier has: the labels, less ``unlabeled_category`` when a
        cell is unlabelled (``model.save(..., datamodule=)`` records it, and load builds the
        module from it; the registry counts ``unlabeled_category`` always)."""
        unlabelled = bool((self.labels_ == self.unlabeled_category).any())
        return len(self.labels_mapping) - int(unlabelled and self.labels_key is not None)

    @property
    def n_samples(self) -> int:
        """One sample: ``model.save(..., datamodule=)`` records it (scvi's sample covariate)."""
        return 1

    @property
    def label_keys(self) -> list[str] | None:
        """The labels' obs column (``model.save(..., datamodule=)`` records it)."""
        return None if self.labels_key is None else [self.labels_key]

    @property
    def registry(self) -> dict:
        """What ``SCVI(registry=...)`` and ``SCANVI(registry=...)`` are built from."""
        empty: dict[str, dict] = {"data_registry": {}, "state_registry": {}}
        return {
            "scvi_version": scvi.__version__,
            "model_name": self.model_name,
            "setup_args": {
                "layer": None,
                "batch_key": self.batch_key,
                "labels_key": self.labels_key,
                "size_factor_key": None,
                "categorical_covariate_keys": None,
                "continuous_covariate_keys": None,
            },
            "field_registries": {
                "X": {
                    "data_registry": {"attr_name": "X", "attr_key": None},
                    "state_registry": {
                        "n_obs": self.n_obs,
                        "n_vars": self.n_vars,
                        "column_names": self.var_names,
                    },
                    "summary_stats": {"n_vars": self.n_vars, "n_cells": self.n_obs},
                },
                "batch": {
                    "data_registry": {"attr_name": "obs", "attr_key": "_scvi_batch"},
                    "state_registry": {
                        "categorical_mapping": self.batch_labels,
                        "original_key": self.batch_key,
                    },
                    "summary_stats": {"n_batch": self.n_batch},
                },
                "labels": {
                    "data_registry": {"attr_name": "obs", "attr_key": "_scvi_labels"},
                    "state_registry": {
                        "categorical_mapping": self.labels_mapping,
                        "original_key": self.labels_key,
                        "unlabeled_category": self.unlabeled_category,
                    },
                    "summary_stats": {"n_labels": len(self.labels_mapping)},
                },
                "size_factor": {**empty, "summary_stats": {}},
                "extra_categorical_covs": {**empty, "summary_stats": {"n_extra_categorical_covs": 0}},
                "extra_continuous_covs": {**empty, "summary_stats": {"n_extra_continuous_covs": 0}},
            },
            "setup_method_name": "setup_datamodule",
        }

    def scvi_tensors(self, batch: dict) -> dict[str, torch.Tensor | None]:
        """A gpuload batch under scvi's tensor keys (``ind_x``: the cells' file rows)."""
        index = batch["index"]
        codes = batch["obs_codes"]
        batch_index = torch.zeros_like(index) if self.batch_key is None else codes[self.batch_key]
        if self.labels_key is None:
            labels = torch.zeros_like(index)
        else:
            labels = self.label_lookup.to(index.device)[codes[self.labels_key]]
        return {
            "X": batch[self.modality],
            "batch": batch_index[:, None],
            "labels": labels[:, None],
            "extra_categorical_covs": None,
            "extra_continuous_covs": None,
            "ind_x": index[:, None],
        }

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int):
        """Lightning's hook: scvi's tensors. A semi-supervised plan (SCANVI) takes (every cell,
        the labelled cells) when a batch has unlabelled ones, ``None`` for the second when none
        is labelled; its classifier must not see the unlabelled code."""
        tensors = self.scvi_tensors(batch)
        plan = getattr(self.trainer, "lightning_module", None)
        labels = tensors["labels"]
        if self.labels_key is None or labels is None or not isinstance(plan, SemiSupervisedTrainingPlan):
            return tensors
        labelled = labels[:, 0] != len(self.labels_mapping) - 1
        if bool(labelled.all()):
            return tensors
        if not bool(labelled.any()):
            return tensors, None
        return tensors, {k: None if v is None else v[labelled] for k, v in tensors.items()}

    def load_model(self, model_cls: type[BaseModelClass], dir_path: str | os.PathLike) -> BaseModelClass:
        """A model saved with ``model.save(dir_path, datamodule=self)``, loaded back. scvi-tools
        (1.4.2 and 1.5.1) hands ``load(datamodule=)`` to the model's ``__init__``: SCANVI takes
        it (and needs it), SCVI and PEAKVI take none and load from their saved registry."""
        if "datamodule" in inspect.signature(model_cls).parameters:
            return model_cls.load(str(dir_path), datamodule=self)
        return model_cls.load(str(dir_path), adata=False)

    def inference_dataloader(self, batch_size: int | None = None) -> InferenceBatches:
        """Every selected cell once, in file order, as scvi's tensors (for
        ``get_latent_representation(dataloader=...)`` and the other ``dataloader=`` methods)."""
        loader = self.inference_loader
        if batch_size is not None and batch_size != loader.batch_size:
            loader = MultiomeLoader(self.data, batch_size=batch_size, **self.inference_options)
        return InferenceBatches(loader, self.scvi_tensors)


class InferenceBatches:
    """An iterable over a loader's batches as scvi's tensors, with the loader's ``len``."""

    def __init__(self, loader: MultiomeLoader, convert) -> None:
        self.loader, self.convert = loader, convert

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield self.convert(batch)
