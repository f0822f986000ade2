"""Train the reference :class:`~gpuload.reference.models.MultiomeVAE` through
:class:`~gpuload.MultiomeLoader` and score it on held-out cells with the three NeurIPS 2021
multimodal tasks (:mod:`gpuload.reference.metrics`).

Held-out cells are the competition's test batches when the file has the competition's batch
names, else a seeded random 20%. Files as they are shipped work too: the modalities, raw counts
and obs columns are found by role (:mod:`gpuload.reference.inputs`), and the report says what
was chosen.

The run's settings are a :class:`~gpuload.reference.config.TrainConfig` (checked when made);
the features are chosen on the training cells, and the held-out cells are scored on the same.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gpuload.device import gpu_available
from gpuload.errors import ArgumentError
from gpuload.loader import MultiomeLoader
from gpuload.reference.config import (
    ALL_FEATURES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_FEATURES,
    DEFAULT_HIDDEN,
    DEFAULT_LATENT,
    INPUTS,
    TrainConfig,
)
from gpuload.reference.inputs import ROLE_NAMES, data_argument, open_training_inputs, split_cells
from gpuload.reference.metrics import evaluate
from gpuload.reference.models import MultiomeVAE, as_dense, log_normalize, size_factors_of
from gpuload.reference.report import PLOTS, plot_embedding, summary_lines, write_report

LEARNING_RATE = 1e-3


class _FeatureMeans:
    """Running per-feature sums of the training targets: the mean-per-feature baseline."""

    def __init__(self, n_genes: int, n_peaks: int, device: torch.device) -> None:
        self.gex = torch.zeros(n_genes, device=device)
        self.atac = torch.zeros(n_peaks, device=device)
        self.n_cells = 0

    def add(self, batch: dict) -> None:
        self.gex += log_normalize(as_dense(batch["GEX"]), size_factors_of(batch)).sum(0)
        self.atac += as_dense(batch["ATAC"]).sum(0)
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
    model: MultiomeVAE, loader: MultiomeLoader, epochs: int, progress: bool, distributed: bool
) -> tuple[list[float], _FeatureMeans, float]:
    """Adam over ``epochs``; returns the mean loss per epoch, the training feature means
    (summed during the first epoch, which visits every training cell once) and cells/s.

    Data-parallel ranks train through DistributedDataParallel: each rank's loader yields its
    shard, DDP averages the gradients."""
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    widths = {m.name: m.width for m in loader.modalities}
    baseline = _FeatureMeans(widths["GEX"], widths["ATAC"], loader.backend.torch_device)
    history, n_cells, start = [], 0, time.perf_counter()
    with tqdm(total=epochs * len(loader), desc="train", unit="batch", disable=not progress) as bar:
        model.train()
        for epoch in range(epochs):
            epoch_loss = 0.0
            for step, batch in enumerate(loader):
                if epoch == 0:
                    baseline.add(batch)
                loss, _ = net(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
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


def train(data_path, config: TrainConfig | None = None) -> dict:
    """Train a MultiomeVAE on ``data_path`` (whatever :func:`~gpuload.formats.open_multiome` opens)
    as ``config`` says (default: ``TrainConfig()``, ``gpuload train``'s defaults), and evaluate it
    on held-out cells.

    Launched by ``torchrun`` (RANK/WORLD_SIZE set), every rank trains on its shard of the
    training cells (the loader shards itself) under DistributedDataParallel; rank 0 alone
    evaluates and writes. Writes ``model.pt`` (``model_args``, ``state_dict``,
    ``batch_categories``, ``var_names``), ``metrics.json``, ``report.md``, ``embedding.png`` and
    (``config.umap``) ``umap.png`` to ``config.out_dir``, and returns the metrics with the run's
    settings.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise ArgumentError(f"train() takes a TrainConfig as config, got {config!r}")
    torch.manual_seed(config.seed)  # the same on every rank: identical initial weights
    distributed, device = _init_distributed(config.device)
    is_main = not distributed or torch.distributed.get_rank() == 0
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = open_training_inputs(data_path, gex=config.gex, atac=config.atac, layer=config.layer)
    with found.store as store:
        batches = found.batches()
        train_rows, test_rows, split = split_cells(batches, config.seed, config.max_cells, store.n_cells)
        # Raw GEX counts (the NB likelihood wants them) and binarized ATAC, on the device.
        common: dict[str, Any] = {
            "batch_size": config.batch_size,
            "seed": config.seed,
            "modalities": found.modalities,
            "transform": {"GEX": None, "ATAC": "binarize"},
            "obs_keys": found.obs_keys,
            "device": device,
            "output": config.inputs,
            "batch_transform": found.roles,
        }
        widths = {role: store.modalities[name].width for role, name in found.modalities.items()}
        selection = None if config.features == ALL_FEATURES else _at_most_width(config.features, widths)
        train_loader = MultiomeLoader(store, subset=train_rows, shuffle=True, features=selection, **common)
        # Evaluation runs on rank 0 over all held-out cells, not on a shard, on the same features.
        test_loader = MultiomeLoader(
            store,
            subset=test_rows,
            shuffle=False,
            rank=0,
            world_size=1,
            features=train_loader.feature_masks,
            **common,
        )
        widths = {m.name: m.width for m in train_loader.modalities}
        batch_categories = found.batch_categories(train_loader.categories)
        model_args: dict[str, Any] = {
            "n_genes": widths["GEX"],
            "n_peaks": widths["ATAC"],
            "n_batches": len(batch_categories),
            "latent_dim": config.latent_dim,
            "hidden": config.hidden,
            "gex_likelihood": "nb",
        }
        torch_device = train_loader.backend.torch_device
        model = MultiomeVAE(**model_args).to(torch_device)
        start = time.perf_counter()
        history, baseline, cells_per_second = _fit(
            model, train_loader, config.epochs, config.progress and is_main, distributed
        )
        train_seconds = time.perf_counter() - start
        if not is_main:
            return {"rank": torch.distributed.get_rank(), "train_seconds": train_seconds}
        scores, plot_data = evaluate(model, test_loader, baseline.means(), config.seed)
        var_names = {name: train_loader.var_names(name) for name in widths}
    metrics: dict[str, Any] = dict(
        scores,
        data=str(data_path),
        split=split,
        n_train=int(train_rows.size),
        n_test=int(test_rows.size),
        inputs_chosen=found.choices,
        features=_describe(config.features),
        n_genes=widths["GEX"],
        n_peaks=widths["ATAC"],
        inputs=config.inputs,
        epochs=config.epochs,
        batch_size=config.batch_size,
        hidden=config.hidden,
        device=str(torch_device),
        seed=config.seed,
        world_size=_world_size(),
        gex_likelihood=model_args["gex_likelihood"],
        latent_dim=config.latent_dim,
        loss_history=history,
        train_seconds=train_seconds,
        cells_per_second=cells_per_second,
    )
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    torch.save(
        {
            "model_args": model_args,
            "state_dict": state,
            "batch_categories": batch_categories,
            "var_names": var_names,
        },
        out / "model.pt",
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for stale in PLOTS.values():  # a plot of an earlier run must not pass for this one's
        (out / stale).unlink(missing_ok=True)
    plot_embedding(
        plot_data["embedding"], plot_data["cell_type"], plot_data["batch"], out, config.seed, config.umap
    )
    write_report(metrics, out / "report.md")
    return metrics


def _at_most_width(features, widths: dict[str, int]):
    """``{"top": k}`` specs capped at their modality's width (a default of 10,000 peaks on a
    narrow file means all of them); other specs unchanged."""
    if not isinstance(features, dict):
        return features
    return {
        name: {"top": min(spec["top"], widths[name])}
        if isinstance(spec, dict) and set(spec) == {"top"} and name in widths
        else spec
        for name, spec in features.items()
    }


def _describe(features) -> str:
    """The feature selection in words, for the report."""
    if features in ("all", None):
        return "all features"
    if isinstance(features, dict) and all(isinstance(v, dict) and "top" in v for v in features.values()):
        return ", ".join(f"top {v['top']} {m}" for m, v in features.items())
    return repr(features)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gpuload train`` options."""
    parser.add_argument(
        "data",
        metavar="DATA",
        type=data_argument,
        help="paired GEX + ATAC data: .h5ad, .h5mu or 10x .h5 (raw counts), or one file per modality "
        "as NAME=PATH,NAME=PATH (e.g. GEX=mod1.h5ad,ATAC=mod2.h5ad)",
    )
    for role in ROLE_NAMES:
        names = ", ".join(ROLE_NAMES[role])
        parser.add_argument(
            f"--{role.lower()}", metavar="NAME", help=f"the {role} modality (default: {names})"
        )
    parser.add_argument(
        "--layer",
        metavar="NAME",
        help="the layer of raw counts, or X (default: 'counts', else X where integer)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        help=f"passes over the training cells (default {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"cells per step (default {DEFAULT_BATCH_SIZE})",
    )
    genes, peaks = DEFAULT_FEATURES["GEX"]["top"], DEFAULT_FEATURES["ATAC"]["top"]
    parser.add_argument(
        "--top-genes",
        type=int,
        default=genes,
        help=f"train on the genes nonzero in the most training cells (default {genes}; 0: all)",
    )
    parser.add_argument(
        "--top-peaks",
        type=int,
        default=peaks,
        help=f"train on the peaks open in the most training cells (default {peaks}; 0: all)",
    )
    parser.add_argument(
        "--hidden", type=int, default=DEFAULT_HIDDEN, help=f"hidden width (default {DEFAULT_HIDDEN})"
    )
    parser.add_argument(
        "--latent", type=int, default=DEFAULT_LATENT, help=f"latent size (default {DEFAULT_LATENT})"
    )
    parser.add_argument(
        "--inputs", choices=INPUTS, default="dense", help="batches to the encoders as dense or sparse_csr"
    )
    parser.add_argument(
        "--no-umap", action="store_true", help="skip the UMAP plot (umap-learn compiles for ~20 s first)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--out", default="train_out", metavar="DIR", help="output folder (default train_out)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the order and the model")
    parser.add_argument("--max-cells", type=int, default=None, help="train and test on a random subset")


def run_train(args: argparse.Namespace) -> int:
    """``gpuload train``: train, then print where the report is and the headline numbers."""
    for flag, value in (("--top-genes", args.top_genes), ("--top-peaks", args.top_peaks)):
        if value < 0:
            raise ArgumentError(f"{flag} must be 0 (all features) or a positive count, got {value}")
    features = {m: {"top": k} for m, k in (("GEX", args.top_genes), ("ATAC", args.top_peaks)) if k}
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        features=features or ALL_FEATURES,
        hidden=args.hidden,
        latent_dim=args.latent,
        inputs=args.inputs,
        device=args.device,
        out_dir=args.out,
        seed=args.seed,
        max_cells=args.max_cells,
        umap=not args.no_umap,
        gex=args.gex,
        atac=args.atac,
        layer=args.layer,
    )
    m = train(args.data, config)
    if "rank" in m:  # a data-parallel worker: rank 0 reports
        return 0
    for line in m["inputs_chosen"]:
        print(line)
    print(f"report: {Path(config.out_dir) / 'report.md'}")
    for line in summary_lines(m):
        print(line)
    return 0
