"""The reference VAE under Lightning: ``python examples/lightning_datamodule.py bmmc.h5ad``."""

import sys

import lightning as L
import torch

from gpuload.lightning import MultiomeDataModule
from gpuload.reference.models import MultiomeVAE


class LitVAE(L.LightningModule):
    def __init__(self, n_genes: int, n_peaks: int, n_batches: int) -> None:
        super().__init__()
        self.model = MultiomeVAE(n_genes, n_peaks, n_batches)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.model.loss(batch)[0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val_loss", self.model.loss(batch)[0], batch_size=batch["GEX"].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fit(path: str, max_epochs: int = 1, **trainer_kwargs) -> L.Trainer:
    transform, obs_keys = {"GEX": None, "ATAC": "binarize"}, ["batch", "cell_type", "GEX_size_factors"]
    data = MultiomeDataModule(path, batch_size=128, layer="counts", transform=transform, obs_keys=obs_keys)
    probe = data.train_dataloader()  # modalities=("GEX", "ATAC"): the widths in that order
    module = LitVAE(*(m.width for m in probe.modalities), len(probe.categories("batch")))
    trainer = L.Trainer(max_epochs=max_epochs, **trainer_kwargs)  # strategy="ddp" needs nothing more
    trainer.fit(module, datamodule=data)
    return trainer


if __name__ == "__main__":
    fit(sys.argv[1])
