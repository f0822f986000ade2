"""Throughput harness: time loaders delivering the same batches of the same file, in one run.

Every contender yields dicts with dense float32 torch tensors per modality (and the obs of
those cells); the harness times a fixed number of cells after a warm-up and reports cells/s,
time to first batch and peak RSS. ``gpuload bench FILE`` compares gpuload with the seed's
approach (one row per ``__getitem__`` through ``torch.utils.data.DataLoader``);
``benchmarks/compare.py`` adds the peer loaders.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import anndata as ad
import numpy as np
import torch

from gpuload.loader import MultiomeLoader


@dataclass
class Result:
    """One contender's measurement."""

    name: str
    batch_size: int
    cells: int
    seconds: float
    first_batch_s: float
    peak_rss_mb: float
    prepare_s: float = 0.0
    note: str = ""

    @property
    def cells_per_s(self) -> float:
        return self.cells / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "cells_per_s": self.cells_per_s}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_loader(
    name: str,
    make: Callable[[], Iterable[dict]],
    batch_size: int,
    *,
    cells: int,
    warmup_batches: int = 3,
    prepare_s: float = 0.0,
    note: str = "",
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Iterate ``make()`` until ``cells`` cells after ``warmup_batches`` batches; time it
    (``progress`` hears when the first batch, which waits for compilation, has come)."""
    start = time.perf_counter()
    iterator = _endless(make)
    first = next(iterator)
    first_batch_s = time.perf_counter() - start
    if progress is not None:
        progress(f"    first batch after {first_batch_s:.1f} s; timing ...")
    del first
    for _ in range(warmup_batches):
        next(iterator)
    seen = 0
    t0 = time.perf_counter()
    while seen < cells:
        batch = next(iterator)
        seen += _batch_cells(batch)
    seconds = time.perf_counter() - t0
    return Result(name, batch_size, seen, seconds, first_batch_s, peak_rss_mb(), prepare_s, note)


def _endless(make: Callable[[], Iterable[dict]]) -> Iterator[dict]:
    while True:
        yield from make()


def _batch_cells(batch) -> int:
    if isinstance(batch, dict):
        tensor = next(v for v in batch.values() if isinstance(v, torch.Tensor))
    else:
        tensor = batch[0] if isinstance(batch, list | tuple) else batch
    return int(tensor.shape[0])


class SeedRowDataset(torch.utils.data.Dataset):
    """The seed's approach: a map-style Dataset reading one backed h5ad row per item."""

    def __init__(self, path: str, modalities: tuple[str, ...] = ("GEX", "ATAC")) -> None:
        self.path = path
        adata = ad.read_h5ad(path, backed="r")
        types = adata.var["feature_types"].to_numpy()
        self.columns = {m: np.flatnonzero(types == m) for m in modalities}
        self.cell_type = adata.obs["cell_type"].astype(str).to_numpy()
        self.n = adata.n_obs
        adata.file.close()
        self._x: Any = None  # anndata's backed X

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if self._x is None:  # opened lazily, once per worker process
            self._x = ad.read_h5ad(self.path, backed="r").X
        row = self._x[i]
        row = np.asarray(row.toarray() if hasattr(row, "toarray") else row, dtype=np.float32).ravel()
        out = {m: torch.from_numpy(row[c]) for m, c in self.columns.items()}
        out["cell_type"] = self.cell_type[i]
        return out


def seed_loader(path: str, batch_size: int, num_workers: int = 0) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        SeedRowDataset(path), batch_size=batch_size, shuffle=True, num_workers=num_workers
    )


def run_bench(
    path: str,
    batch_sizes: Iterable[int] = (32, 256),
    *,
    cells: int = 4096,
    seed_cells: int = 512,
    device: str = "auto",
    contenders: tuple[str, ...] = ("seed", "gpuload"),
    progress: Callable[[str], None] = print,
) -> list[Result]:
    """gpuload (and the seed's approach) on ``path``, shuffled, both modalities, full width."""
    results = []
    for batch_size in batch_sizes:
        if "seed" in contenders:
            progress(f"  seed per-row Dataset, B={batch_size} ...")
            results.append(
                time_loader(
                    "seed (per-row Dataset)",
                    partial(seed_loader, path, batch_size),
                    batch_size,
                    cells=max(seed_cells, batch_size),
                )
            )
        if "gpuload" in contenders:
            progress(f"  gpuload ({device}), B={batch_size} ...")
            t0 = time.perf_counter()
            loader = MultiomeLoader(path, batch_size=batch_size, shuffle=True, device=device)
            prepare = time.perf_counter() - t0
            results.append(
                time_loader(
                    f"gpuload ({loader.backend.name})",
                    partial(iter, loader),  # a new epoch each call
                    batch_size,
                    cells=cells,
                    prepare_s=prepare,
                    progress=progress,
                )
            )
    return results


def format_table(results: list[Result], reference: str | None = None) -> str:
    """A plain-text table; ``reference`` names the contender ratios are taken against."""
    ref = {r.batch_size: r.cells_per_s for r in results if reference and r.name.startswith(reference)}
    lines = [f"{'loader':<34} {'B':>5} {'cells/s':>10} {'x ref':>7} {'1st batch s':>11} {'peak RSS MB':>11}"]
    for r in results:
        ratio = f"{r.cells_per_s / ref[r.batch_size]:.1f}" if ref.get(r.batch_size) else "-"
        lines.append(
            f"{r.name:<34} {r.batch_size:>5} {r.cells_per_s:>10.0f} {ratio:>7} "
            f"{r.first_batch_s:>11.2f} {r.peak_rss_mb:>11.0f}"
        )
    return "\n".join(lines)
