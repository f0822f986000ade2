"""gpuload.lightning.MultiomeDataModule under real Lightning: splits, exact mid-epoch resume
from a checkpoint, and DDP shards from the process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

L = pytest.importorskip("lightning")
from gpuload import ArgumentError  # noqa: E402
from gpuload.bmmc import schema  # noqa: E402
from gpuload.lightning import MultiomeDataModule  # noqa: E402

WORKER = Path(__file__).with_name("lightning_ddp_worker.py")
LOADER = {"modalities": "GEX", "obs_keys": ["batch"], "num_threads": 1, "device": "cpu"}
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cells(synthetic):
    return synthetic("lightning-cells.h5ad", n_cells=600, n_genes=200, n_peaks=300, seed=4)


def test_split_modes(cells):
    import anndata as ad

    batches = ad.read_h5ad(cells, backed="r").obs["batch"].astype(str).to_numpy()
    auto = MultiomeDataModule(cells, batch_size=50, **LOADER)
    assert "competition" in auto.split_description
    for stage, rows in auto.subsets.items():
        assert rows.tolist() == np.flatnonzero(np.isin(batches, schema.SPLITS[stage])).tolist()

    random = MultiomeDataModule(
        cells, batch_size=50, split="random", fractions=(0.5, 0.25, 0.25), seed=7, **LOADER
    )
    sizes = {stage: rows.size for stage, rows in random.subsets.items()}
    assert sizes == {"train": 300, "val": 150, "test": 150}
    assert np.sort(np.concatenate(list(random.subsets.values()))).tolist() == list(range(600))
    again = MultiomeDataModule(
        cells, batch_size=50, split="random", fractions=(0.5, 0.25, 0.25), seed=7, **LOADER
    )
    assert all(np.array_equal(random.subsets[s], again.subsets[s]) for s in sizes)

    everything = MultiomeDataModule(cells, batch_size=50, split=None, **LOADER)
    assert len(everything.train_dataloader()) == 12 and everything.val_dataloader() == []
    given = MultiomeDataModule(
        cells, batch_size=50, split={"train": "batch == 's1d1'", "val": [0, 1]}, **LOADER
    )
    assert set(given.loaders) == set() and len(given.val_dataloader()) == 1

    features = MultiomeDataModule(cells, batch_size=50, features={"top": 20}, **LOADER)
    features.setup()
    names = features.loaders["train"].var_names("GEX")
    assert len(names) == 20 and all(loader.var_names("GEX") == names for loader in features.loaders.values())


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"split": "by_donor"}, "split"),
        ({"split": {"validation": [0]}}, "split"),
        ({"split": "random", "fractions": (0.5, 0.6, 0.1)}, "fractions"),
        ({"subset": [0, 1]}, "subset"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_argument_names_it(cells, kwargs, argument):
    with pytest.raises(ArgumentError, match=argument):
        MultiomeDataModule(cells, **{"batch_size": 50, **LOADER, **kwargs})


class Recorder(L.LightningModule):
    """Records the file rows of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.rows: list[list[int]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.rows.append(batch["index"].tolist())
        return self.layer(batch["GEX"].sum(1, keepdim=True)).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-6)


def _fit(cells, root: Path, ckpt_path=None, **trainer_kwargs) -> list[list[int]]:
    data = MultiomeDataModule(cells, batch_size=64, split="random", **LOADER)
    module = Recorder()
    trainer = L.Trainer(
        max_epochs=2, default_root_dir=root, num_sanity_val_steps=0, **QUIET, **trainer_kwargs
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module.rows


def test_checkpoint_resumes_with_exactly_the_remaining_batches(cells, tmp_path):
    """Checkpoints after every step of an uninterrupted 2-epoch run; a fresh Trainer resumed from
    step 3 (mid-epoch) or step 8 (the end of epoch 0) trains on exactly the batches that followed."""
    every_step = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1
    )
    full = _fit(cells, tmp_path, callbacks=[every_step])
    per_epoch = len(full) // 2
    assert per_epoch == 8 and full[:per_epoch] != full[per_epoch:]  # 480 training cells, reshuffled
    for step in (3, per_epoch):
        resumed = _fit(
            cells, tmp_path, ckpt_path=tmp_path / "ckpt" / f"step={step}.ckpt", enable_checkpointing=False
        )
        assert resumed == full[step:], f"resumed from step {step}"


def test_ddp_ranks_see_disjoint_complete_shards(cells, tmp_path):
    """``Trainer(strategy="ddp", devices=2, accelerator="cpu")``, no other flag: the ranks'
    training rows are disjoint and cover the training cells once (plus DistributedSampler-style
    padding to an even count); validation likewise."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, str(WORKER), str(cells), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    for stage in ("train", "val"):
        expected = ranks[0]["subsets"][stage]
        shards = [r[stage] for r in ranks]
        assert len(shards[0]) == len(shards[1]) == -(-len(expected) // 2)
        assert set(shards[0]) | set(shards[1]) == set(expected)
        repeated = len(shards[0]) + len(shards[1]) - len(expected)
        assert len(set(shards[0]) & set(shards[1])) == repeated <= 1, stage
