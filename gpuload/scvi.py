"""``gpuload.scvi.ScviDataModule``: see :mod:`gpuload.integrations.scvi`. Importing this module
imports scvi-tools and Lightning (``import gpuload`` does not)."""

from gpuload.integrations.scvi import InferenceBatches, ScviDataModule

__all__ = ["InferenceBatches", "ScviDataModule"]
