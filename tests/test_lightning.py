"""examples/lightning_datamodule.py trains through gpuload.lightning.MultiomeDataModule."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("lightning")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_datamodule.py"


def test_lightning_datamodule_example_trains(small_h5ad, tmp_path):
    spec = importlib.util.spec_from_file_location("lightning_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    trainer = example.fit(
        str(small_h5ad),
        max_epochs=1,
        default_root_dir=tmp_path,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    assert trainer.state.finished
    assert trainer.global_step == len(trainer.datamodule.train_dataloader())
    assert trainer.callback_metrics["val_loss"].isfinite()
