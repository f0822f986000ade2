"""Real torch.distributed (gloo on the CPU, launched with torchrun): every rank gets the same
number of batches, shares are disjoint, and their union is every cell (plus documented padding);
weighted, the ranks' shares are contiguous pieces of one global draw."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import torchrun

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(nproc: int, *args: str) -> None:
    cmd = [*torchrun(nproc), str(WORKER), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.parametrize("nproc", [2, pytest.param(3, marks=pytest.mark.slow)])  # 3 ranks: test-all
@pytest.mark.parametrize("drop_last", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("source", ["file", "files"])  # one h5ad; the same cells in three files
def test_torchrun_shards(request, tmp_path, nproc, drop_last, source):
    data = (
        str(request.getfixturevalue("small_h5ad"))
        if source == "file"
        else ",".join(str(p) for p in request.getfixturevalue("parts"))
    )
    out = tmp_path / "ranks.json"
    _torchrun(nproc, data, str(out), "1" if drop_last else "0")
    ranks = json.loads(out.read_text())
    assert len({r["len"] for r in ranks}) == 1
    assert all(len(r["epoch"]) == r["len"] for r in ranks)
    rows = [[i for batch in r["epoch"] for i in batch] for r in ranks]
    n = 600
    if drop_last:
        per_rank = n // nproc
        assert all(len(r) == per_rank - per_rank % 32 for r in rows)
        flat = [i for r in rows for i in r]
        assert len(set(flat)) == len(flat)  # disjoint, nothing repeated
    else:
        flat = [i for r in rows for i in r]
        assert set(flat) == set(range(n))
        assert len(flat) - n == (-n) % nproc  # DistributedSampler-style padding
    assert all(r["resumed_ok"] for r in ranks)
    _check_weighted_shares([r["weighted"] for r in ranks], drop_last)


def _check_weighted_shares(ranks: list[dict], drop_last: bool) -> None:
    """``weights="cell_type", num_samples=601``: rank r delivers the r-th contiguous share of
    the single-process draw, padded or trimmed like any order (601 divides by neither 2 nor 3),
    and a resumed rank continues its share exactly."""
    single = ranks[0]["single"]
    assert len(single) == 601 and all(r["single"] == single for r in ranks)
    assert len(set(single)) < 601  # drawn with replacement: repeats
    world = len(ranks)
    per_rank = 601 // world if drop_last else -(-601 // world)
    padded = (single + single[: per_rank * world - 601])[: per_rank * world]
    assert len({r["len"] for r in ranks}) == 1
    for r, rank in enumerate(ranks):
        delivered = [i for batch in rank["epoch"] for i in batch]
        assert len(delivered) == (per_rank - per_rank % 32 if drop_last else per_rank)
        assert delivered == padded[r * per_rank : r * per_rank + len(delivered)]
    assert all(r["resumed_ok"] for r in ranks)


def test_torchrun_training(small_h5ad, tmp_path):
    """`torchrun -m gpuload train`: each rank trains on its shard, rank 0 reports."""
    out = tmp_path / "ddp-train"
    cmd = [
        *torchrun(2),
        "-m",
        "gpuload",
        "train",
        str(small_h5ad),
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-umap",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and (out / "report.md").exists()
    assert result.stdout.count("report:") == 1
