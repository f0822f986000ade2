"""``gpuload.lightning.MultiomeDataModule``: see :mod:`gpuload.integrations.lightning`. Importing
this module imports Lightning (``import gpuload`` does not)."""

from gpuload.integrations.lightning import LightningLoader, MultiomeDataModule, split_subsets

__all__ = ["LightningLoader", "MultiomeDataModule", "split_subsets"]
