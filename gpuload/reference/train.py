"""Train the reference :class:`~gpuload.reference.models.MultiomeVAE` through
:class:`~gpuload.MultiomeLoader` and score it on held-out cells with the three NeurIPS 2021
multimodal tasks (:mod:`gpuload.reference.metrics`).

Held-out cells are the competition's test batches when the file has the competition's batch
names, else a seeded random 20%.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gpuload.bmmc import schema
from gpuload.device import gpu_available
from gpuload.errors import ArgumentError, ObsKeyError, SchemaError
from gpuload.formats import MultiomeStore, open_multiome
from gpuload.loader import MultiomeLoader
from gpuload.plan.obs import find_column
from gpuload.reference.metrics import evaluate
from gpuload.reference.models import SIZE_FACTOR_KEYS, MultiomeVAE, log_normalize, size_factors_of
from gpuload.reference.report import plot_embedding, write_report

TEST_FRACTION = 0.2
LEARNING_RATE = 1e-3


def split_cells(
    batches: np.ndarray, seed: int, max_cells: int | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Row indices of the training and held-out cells, and how they were chosen.

    ``batches`` is the obs ``batch`` column as strings. ``max_cells`` first keeps a seeded
    random subset of the file.
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(batches.size)
    if max_cells is not None and max_cells < rows.size:
        rows = np.sort(rng.choice(rows, max_cells, replace=False))
    is_train = np.isin(batches[rows], schema.SPLITS["train"])
    is_test = np.isin(batches[rows], schema.SPLITS["test"])
    if is_train.any() and is_test.any():
        return rows[is_train], rows[is_test], "competition split by batch; val batches unused"
    held_out = rng.random(rows.size) < TEST_FRACTION
    return rows[~held_out], rows[held_out], f"seeded random {TEST_FRACTION:.0%} of cells"


class _FeatureMeans:
    """Running per-feature sums of the training targets: the mean-per-feature baseline."""

    def __init__(self) -> None:
        self.gex = self.atac = 0.0
        self.n_cells = 0

    def add(self, batch: dict) -> None:
        self.gex = self.gex + log_normalize(batch["GEX"], size_factors_of(batch)).sum(0)
        self.atac = self.atac + batch["ATAC"].sum(0)
        self.n_cells += batch["GEX"].shape[0]

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gex / self.n_cells, self.atac / self.n_cells

    def all_reduce(self) -> None:
        """Sum over data-parallel ranks, so every rank holds the whole training set's means."""
        if _world_size() > 1:
            count = torch.tensor(float(self.n_cells), device=self.gex.device)
            for tensor in (self.gex, self.atac, count):
                torch.distributed.all_reduce(tensor)
            self.n_cells = int(count.item())


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _average_gradients(model: torch.nn.Module) -> None:
    """Data parallelism by hand: each rank saw its own shard; average what they learned."""
    world = _world_size()
    if world == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


def _init_distributed(device: str) -> tuple[bool, str]:
    """Join the process group when launched by torchrun (RANK and WORLD_SIZE set); returns
    whether it did and the device this rank trains on. On GPUs rank r takes ``cuda:LOCAL_RANK``
    with NCCL; on the CPU the ranks use gloo."""
    dist = torch.distributed
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return False, device
    if device in ("auto", "cuda") and gpu_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)  # this process's GPU, for torch, NCCL and the loader
        device = f"cuda:{local_rank}"
    elif device == "auto":
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True, device


def _fit(
    model: MultiomeVAE, loader: MultiomeLoader, epochs: int, progress: bool
) -> tuple[list[float], _FeatureMeans, float]:
    """Adam over ``epochs``; returns the mean loss per epoch, the training feature means
    (summed during the first epoch, which visits every training cell once) and cells/s."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    baseline = _FeatureMeans()
    history, n_cells, start = [], 0, time.perf_counter()
    with tqdm(total=epochs * len(loader), desc="train", unit="batch", disable=not progress) as bar:
        model.train()
        for epoch in range(epochs):
            epoch_loss = 0.0
            for step, batch in enumerate(loader):
                if epoch == 0:
                    baseline.add(batch)
                loss, _ = model.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                _average_gradients(model)
                optimizer.step()
                epoch_loss += loss.detach()
                n_cells += batch["GEX"].shape[0]
                bar.update()
                if step % 10 == 0:  # reading the loss waits for the device; not every step
                    rate = n_cells / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{float(loss.detach()):.1f}", cells_s=f"{rate:.0f}")
            history.append(float(epoch_loss) / len(loader))
    baseline.all_reduce()
    return history, baseline, n_cells / (time.perf_counter() - start)


def _open_checked(data_path: str | os.PathLike) -> tuple[MultiomeStore, str]:
    """The counts layer of a paired file, and its size-factor column; clear errors otherwise."""
    store = open_multiome(data_path, layer="counts")
    try:
        missing = [m for m in ("GEX", "ATAC") if m not in store.modalities]
        if missing:
            raise SchemaError(
                f"{data_path}: training needs paired GEX + ATAC; it has no {missing[0]} features"
            )
        for column in ("batch", "cell_type"):
            if column not in store.obs.columns:
                raise ObsKeyError(f"{data_path}: training needs an obs {column!r} column")
        size_factor_key = find_column(store.obs, SIZE_FACTOR_KEYS)
        if size_factor_key is None:
            raise ObsKeyError(
                f"{data_path}: training needs GEX size factors, obs {' or '.join(SIZE_FACTOR_KEYS)}"
            )
    except BaseException:
        store.close()
        raise
    return store, size_factor_key


def train(
    data_path: str | os.PathLike,
    *,
    epochs: int = 5,
    batch_size: int = 256,
    device: str = "auto",
    out_dir: str | os.PathLike = "train_out",
    seed: int = 0,
    max_cells: int | None = None,
    progress: bool = True,
) -> dict:
    """Train a MultiomeVAE on ``data_path`` and evaluate it on held-out cells.

    Launched by ``torchrun`` (RANK/WORLD_SIZE set), every rank trains on its shard of the
    training cells (the loader shards itself) with gradients averaged across ranks; rank 0
    alone evaluates and writes. Writes ``model.pt`` (``model_args``, ``state_dict``, ``batch_categories``),
    ``metrics.json``, ``report.md`` and ``embedding.png`` to ``out_dir``, and returns the
    metrics (see the module docstring) together with the run's settings.
    """
    if epochs < 1:
        raise ArgumentError(f"epochs must be at least 1, got {epochs}")
    torch.manual_seed(seed)  # the same on every rank: identical initial weights
    distributed, device = _init_distributed(str(device))
    is_main = not distributed or torch.distributed.get_rank() == 0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store, size_factor_key = _open_checked(data_path)
    with store:
        train_rows, test_rows, split = split_cells(store.obs["batch"].astype(str).to_numpy(), seed, max_cells)
        # Raw GEX counts (the NB likelihood wants them) and binarized ATAC, on the device.
        common = {
            "batch_size": batch_size,
            "seed": seed,
            "modalities": ("GEX", "ATAC"),
            "transform": {"GEX": None, "ATAC": "binarize"},
            "obs_keys": ["batch", "cell_type", size_factor_key],
            "device": device,
        }
        train_loader = MultiomeLoader(store, subset=train_rows, shuffle=True, **common)
        # Evaluation runs on rank 0 over all held-out cells, not on a shard.
        test_loader = MultiomeLoader(store, subset=test_rows, shuffle=False, rank=0, world_size=1, **common)
        model_args = {
            "n_genes": store.modalities["GEX"].width,
            "n_peaks": store.modalities["ATAC"].width,
            "n_batches": len(train_loader.categories("batch")),
            "latent_dim": 16,
            "hidden": 256,
            "gex_likelihood": "nb",
        }
        torch_device = train_loader.backend.torch_device
        model = MultiomeVAE(**model_args).to(torch_device)
        start = time.perf_counter()
        history, baseline, cells_per_second = _fit(model, train_loader, epochs, progress and is_main)
        train_seconds = time.perf_counter() - start
        if not is_main:
            return {"rank": torch.distributed.get_rank(), "train_seconds": train_seconds}
        metrics, plot_data = evaluate(model, test_loader, baseline.means(), seed)
        batch_categories = train_loader.categories("batch")
    metrics.update(
        data=str(data_path),
        split=split,
        n_train=int(train_rows.size),
        n_test=int(test_rows.size),
        n_cell_types=int(np.unique(plot_data["cell_type"]).size),
        epochs=epochs,
        batch_size=batch_size,
        device=str(torch_device),
        seed=seed,
        world_size=_world_size(),
        gex_likelihood=model_args["gex_likelihood"],
        latent_dim=model_args["latent_dim"],
        loss_history=history,
        train_seconds=train_seconds,
        cells_per_second=cells_per_second,
    )
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    torch.save(
        {"model_args": model_args, "state_dict": state, "batch_categories": batch_categories},
        out / "model.pt",
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_embedding(plot_data["embedding"], plot_data["cell_type"], plot_data["batch"], out / "embedding.png")
    write_report(metrics, out / "report.md")
    return metrics


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gpuload train`` options."""
    parser.add_argument("data", metavar="DATA", help="paired GEX + ATAC .h5ad with layers['counts']")
    parser.add_argument("--epochs", type=int, default=5, help="passes over the training cells (default 5)")
    parser.add_argument("--batch-size", type=int, default=256, help="cells per step (default 256)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--out", default="train_out", metavar="DIR", help="output folder (default train_out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the order and the model")
    parser.add_argument("--max-cells", type=int, default=None, help="train and test on a random subset")


def run_train(args: argparse.Namespace) -> int:
    """``gpuload train``: train, then print where the report is and the headline numbers."""
    m = train(
        args.data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        out_dir=args.out,
        seed=args.seed,
        max_cells=args.max_cells,
    )
    if "rank" in m:  # a data-parallel worker: rank 0 reports
        return 0
    print(f"report: {Path(args.out) / 'report.md'}")
    print(f"GEX->ATAC RMSE {m['gex2atac_rmse']:.4f} (baseline {m['gex2atac_rmse_baseline']:.4f})")
    print(f"ATAC->GEX RMSE {m['atac2gex_rmse']:.4f} (baseline {m['atac2gex_rmse_baseline']:.4f})")
    print(f"matching {m['match_score']:.4f} (random {m['match_random']:.4f})")
    print(f"NMI {m['nmi']:.3f}  ARI {m['ari']:.3f}", end="  ")
    print(f"ASW cell type {m['asw_cell_type']:.3f}  batch {m['asw_batch']:.3f}")
    return 0
