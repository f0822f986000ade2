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


def test_lightning_moves_a_batch_without_making_its_obs_columns(small_h5ad):
    """Lightning's transfer calls ``to`` on the lazy obs columns: none is made by the move (28
    columns made per batch cost ~20x the rest of a hand-off), each is right when read."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from gpuload import MultiomeLoader

    batch = next(iter(MultiomeLoader(small_h5ad, device="cpu", shuffle=False, batch_size=16)))
    moved = move_data_to_device(batch, "cpu")
    assert type(moved["obs"]).__name__ == "LazyColumns" and moved["obs"].made() == []
    assert moved["obs"]["cell_type"] == batch["obs"]["cell_type"]
    assert moved["obs"]["GEX_n_genes"].equal(batch["obs"]["GEX_n_genes"])
    assert moved["obs_codes"]["batch"].equal(batch["obs_codes"]["batch"])
