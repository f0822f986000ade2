"""gpuload inside a Lightning ``LightningDataModule``: the loaders are returned where a
``torch.utils.data.DataLoader`` would be, and Lightning iterates them as usual.

    python examples/lightning_datamodule.py bmmc.h5ad

Under ``Trainer(strategy="ddp")`` each process's loader takes its shard from
``torch.distributed`` (set ``use_distributed_sampler=False``: gpuload shards itself).
"""

from __future__ import annotations

import sys

import lightning as L
import torch

from gpuload import MultiomeLoader
from gpuload.reference.models import MultiomeVAE


class MultiomeDataModule(L.LightningDataModule):
    """Train on the competition's train batches, validate on its validation batches."""

    def __init__(self, path: str, batch_size: int = 128) -> None:
        super().__init__()
        self.path, self.batch_size = path, batch_size

    def _loader(self, split: str, shuffle: bool) -> MultiomeLoader:
        return MultiomeLoader(
            self.path,
            batch_size=self.batch_size,
            shuffle=shuffle,
            split=split,
            layer="counts",
            transform={"GEX": None, "ATAC": "binarize"},
            obs_keys=["batch", "cell_type", "GEX_size_factors"],
        )

    def train_dataloader(self) -> MultiomeLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> MultiomeLoader:
        return self._loader("val", shuffle=False)


class LitVAE(L.LightningModule):
    def __init__(self, n_genes: int, n_peaks: int, n_batches: int) -> None:
        super().__init__()
        self.model = MultiomeVAE(n_genes, n_peaks, n_batches)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self.model.loss(batch)
        self.log("train_loss", loss, batch_size=batch["GEX"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, _ = self.model.loss(batch)
        self.log("val_loss", loss, batch_size=batch["GEX"].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fit(path: str, max_epochs: int = 1, **trainer_kwargs) -> L.Trainer:
    data = MultiomeDataModule(path)
    probe = data.train_dataloader()
    widths = {m.name: m.width for m in probe.modalities}
    module = LitVAE(widths["GEX"], widths["ATAC"], len(probe.categories("batch")))
    trainer = L.Trainer(max_epochs=max_epochs, use_distributed_sampler=False, **trainer_kwargs)
    trainer.fit(module, datamodule=data)
    return trainer


if __name__ == "__main__":
    fit(sys.argv[1])
