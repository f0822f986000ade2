"""Run by tests/test_lightning_datamodule.py: ``Trainer(strategy="ddp", devices=2)`` over a
MultiomeDataModule, recording the file rows each rank trains and validates on.

    python tests/lightning_ddp_worker.py FILE OUT_DIR

Lightning re-runs this script for rank 1; each rank writes OUT_DIR/rank{r}.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from gpuload.lightning import MultiomeDataModule


class Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen = {"train": [], "val": []}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen["train"] += batch["index"].tolist()
        return self.layer(batch["GEX"].sum(1, keepdim=True)).mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.seen["val"] += batch["index"].tolist()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    path, out = sys.argv[1], Path(sys.argv[2])
    data = MultiomeDataModule(path, batch_size=32, modalities="GEX", obs_keys=[], num_threads=1, device="cpu")
    module = Recorder()
    trainer = L.Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    subsets = {stage: data.subsets[stage].tolist() for stage in ("train", "val")}
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "subsets": subsets,
        **module.seen,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
