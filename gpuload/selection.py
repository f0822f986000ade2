"""What a loader delivers, as the code above it reads it: the selected cells, each modality's
columns, the cells' obs values and category lists.

:class:`~gpuload.loader.MultiomeLoader` is a :class:`Selection`. Applications and integrations
(the reference trainer, Lightning, scvi-tools) read these accessors, never the plan or the store
behind them (``tests/test_architecture.py`` checks), so the plan can change without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gpuload.errors import ObsKeyError

if TYPE_CHECKING:
    from pathlib import Path

    from gpuload.formats import Modality, MultiomeStore
    from gpuload.plan import LoaderPlan, Transform


class Selection:
    """The accessors over a loader's ``plan`` (decided once) and ``store`` (the open dataset)."""

    store: MultiomeStore
    plan: LoaderPlan

    @property
    def positions(self) -> np.ndarray:
        """The selected file rows, sorted."""
        return self.plan.positions

    @property
    def files(self) -> tuple[Path | str, ...]:
        """The dataset's files: ``batch["file"]`` (a list of files) indexes this."""
        return self.store.files

    @property
    def modalities(self) -> tuple[Modality, ...]:
        """The delivered modalities, their columns after feature selection."""
        return self.plan.modalities

    @property
    def transforms(self) -> dict[str, Transform]:
        return self.plan.transforms

    @property
    def feature_masks(self) -> dict[str, np.ndarray]:
        """Each delivered modality's columns as a boolean mask over all of its columns: a
        ``features=`` that makes another loader deliver the same columns (held-out cells on the
        features chosen on the training cells, say)."""
        return self.plan.feature_masks

    def var_names(self, modality: str) -> list[str]:
        """The var names of ``batch[modality]``'s columns, in output order."""
        return self.plan.var_names_of(modality)

    def categories(self, key: str) -> list[str]:
        """The category list behind ``batch["obs_codes"][key]``."""
        return self.plan.categories_of(key)

    def obs_values(self, key: str) -> np.ndarray:
        """obs column ``key`` (any of the dataset's, delivered or not) for the selected cells, in
        :attr:`positions` order, as the file holds it (categories as their values, a missing
        value as NaN or None)."""
        obs = self.store.obs
        if key not in obs.columns:
            raise ObsKeyError(
                f"{self.store.path}: obs has no column {key!r}; its columns are {list(obs.columns)}"
            )
        return obs[key].to_numpy()[self.positions]
