"""Real-GPU tests (``pytest -m gpu``, run by benchmarks/gpu.sh); skipped without a GPU.

What the CUDA simulator cannot show: streams that really run concurrently, the caching
allocator reusing freed memory, a second GPU, page-locked memory, cuDF. Each test compares the
GPU batches with the CPU face's, exactly (same rows, masks, obs) and to float tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpuload import MultiomeLoader

from .conftest import torchrun

pytestmark = pytest.mark.gpu
KWARGS = dict(
    batch_size=64,
    shuffle=True,
    seed=3,
    layer="counts",
    transform={"GEX": "log1p_size_factor", "ATAC": "tfidf"},
    obs_keys=["cell_type", "GEX_size_factors", "GEX_n_genes", "batch"],
)
SLEEP_CYCLES = 20_000_000  # ~10 ms of a busy default stream before each batch


def assert_same_batch(cpu: dict, gpu: dict, dense: bool = True) -> None:
    assert torch.equal(cpu["index"], gpu["index"].cpu())
    for name in ("GEX", "ATAC"):
        got = gpu[name].cpu()
        got = got.to_dense() if not dense else got
        want = cpu[name].to_dense() if not dense else cpu[name]
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-5, atol=1e-6)
        assert torch.equal(cpu["mask"][name], gpu["mask"][name].cpu())
    assert cpu["obs"]["cell_type"] == gpu["obs"]["cell_type"]
    torch.testing.assert_close(cpu["obs"]["GEX_size_factors"], gpu["obs"]["GEX_size_factors"].cpu())
    assert torch.equal(cpu["obs"]["GEX_n_genes"], gpu["obs"]["GEX_n_genes"].cpu())
    assert torch.equal(cpu["obs_codes"]["batch"], gpu["obs_codes"]["batch"].cpu())


def cpu_batches(path, **kw) -> list[dict]:
    return list(MultiomeLoader(path, device="cpu", **{**KWARGS, **kw}))


@pytest.mark.parametrize("preload", [False, True])
@pytest.mark.parametrize("output", ["dense", "sparse_csr"])
def test_cuda_batches_equal_cpu_batches(small_h5ad, preload, output):
    cpu = cpu_batches(small_h5ad, output=output)
    gpu = list(MultiomeLoader(small_h5ad, device="cuda", preload=preload, output=output, **KWARGS))
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu, strict=True):
        assert b["GEX"].is_cuda and b["index"].is_cuda and b["mask"]["ATAC"].is_cuda
        assert_same_batch(a, b, dense=output == "dense")


def _slow_transform(batch: dict) -> dict:
    """Device work after the kernels' status copy (on the loader's compute stream): a sleep, then
    a write the consumer reads. Without the hand-off's wait the consumer's stream would read
    ``twice`` before it is written (the host's status read orders it after the kernel only)."""
    torch.cuda._sleep(SLEEP_CYCLES)
    return {**batch, "twice": batch["GEX"] * 2}


def test_a_busy_default_stream_and_kept_batches(small_h5ad):
    """The consumer's stream is busy when each batch is taken and every batch is kept: a batch
    used before the loader's work finished (a missing wait), or memory reused while still
    queued, would differ. Fails if ``StreamFace.hand_off`` skips ``wait_stream``."""
    cpu = cpu_batches(small_h5ad)
    kept = []
    loader = MultiomeLoader(
        small_h5ad,
        device="cuda",
        preload=True,
        dtype=torch.float16,
        batch_transform=_slow_transform,
        **KWARGS,
    )
    for batch in loader:
        torch.cuda._sleep(SLEEP_CYCLES // 10)  # the default stream is busy while the loader runs ahead
        kept.append({**batch, "GEX": batch["twice"] / 2, "ATAC": batch["ATAC"] * 1})
    torch.cuda.synchronize()
    for a, b in zip(cpu, kept, strict=True):
        torch.testing.assert_close(b["GEX"].float().cpu(), a["GEX"], rtol=1e-2, atol=1e-2)
        assert torch.equal(a["index"], b["index"].cpu())


def test_a_side_stream_consumer(small_h5ad):
    """A consumer on its own stream gets the batches once the loader's event passed (the wait is
    issued on the consumer's current stream, whichever it is)."""
    cpu = cpu_batches(small_h5ad)
    side = torch.cuda.Stream()
    got = []
    with torch.cuda.stream(side):
        for batch in MultiomeLoader(small_h5ad, device="cuda", batch_transform=_slow_transform, **KWARGS):
            got.append(batch["twice"].sum(1))
    side.synchronize()
    for a, s in zip(cpu, got, strict=True):
        torch.testing.assert_close(s.cpu(), 2 * a["GEX"].sum(1), rtol=1e-4, atol=1e-3)


def test_batches_dropped_at_once_are_not_overwritten_under_a_busy_stream(small_h5ad):
    """record_stream: a batch freed right after a queued read must not be overwritten by the next
    super-batch (one batch each, allocated while the read still waits) before that read ran.
    Fails if ``StreamFace.hand_off`` skips ``mark_in_use``."""
    cpu = cpu_batches(small_h5ad)
    sums = []
    for batch in MultiomeLoader(small_h5ad, device="cuda", super_batch_bytes=1, prefetch=1, **KWARGS):
        torch.cuda._sleep(SLEEP_CYCLES)
        sums.append(batch["ATAC"].sum(1))  # queued behind the sleep; the batch is dropped now
    torch.cuda.synchronize()
    for a, s in zip(cpu, sums, strict=True):
        torch.testing.assert_close(s.cpu(), a["ATAC"].sum(1), rtol=1e-5, atol=1e-4)


def test_the_ledger_of_a_real_run_is_ordered(small_h5ad):
    """The happens-before checker on the cuda face's own ledger (real streams and events)."""
    from gpuload.device import CudaBackend, check

    backend = CudaBackend(torch.cuda.current_device())
    backend.ledger.record = True
    loader = MultiomeLoader(small_h5ad, device=backend, obsm_keys=["GEX_X_umap"], **KWARGS)
    list(zip(loader, loader, strict=True))
    loader.close()
    assert check(backend.ledger.ops) == []


def test_cuda_means_the_current_device(small_h5ad):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    torch.cuda.set_device(1)
    try:
        loader = MultiomeLoader(small_h5ad, device="cuda", **KWARGS)
        batch = next(iter(loader))
        assert batch["GEX"].device == torch.device("cuda", 1)
        assert torch.cuda.current_device() == 1
        explicit = MultiomeLoader(small_h5ad, device="cuda:0", **KWARGS)
        assert next(iter(explicit))["GEX"].device == torch.device("cuda", 0)
        assert torch.cuda.current_device() == 1  # the loader never moves the caller
    finally:
        torch.cuda.set_device(0)


def test_loader_leaves_the_current_device_alone(small_h5ad):
    before = torch.cuda.current_device()
    next(iter(MultiomeLoader(small_h5ad, device=f"cuda:{torch.cuda.device_count() - 1}", **KWARGS)))
    assert torch.cuda.current_device() == before


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_outputs(small_h5ad, dtype):
    cpu = cpu_batches(small_h5ad)
    for a, b in zip(cpu, MultiomeLoader(small_h5ad, device="cuda", dtype=dtype, **KWARGS), strict=True):
        assert b["GEX"].dtype == dtype
        torch.testing.assert_close(b["ATAC"].float().cpu(), a["ATAC"], rtol=1e-2, atol=1e-2)


def test_without_cudf(small_h5ad, monkeypatch):
    monkeypatch.setitem(sys.modules, "cudf", None)  # import cudf now raises ImportError
    with pytest.warns(RuntimeWarning, match="cuDF is not installed"):
        loader = MultiomeLoader(small_h5ad, device="cuda", subset="batch in ['s1d1', 's2d1']", **KWARGS)
    want = MultiomeLoader(small_h5ad, device="cpu", subset="batch in ['s1d1', 's2d1']", **KWARGS)
    for a, b in zip(want, loader, strict=True):
        assert_same_batch(a, b)


def test_obs_frame_and_queries_by_cudf(small_h5ad):
    cudf = pytest.importorskip("cudf")
    query = "batch in ['s1d1', 's2d1'] and GEX_n_genes > 200"
    loader = MultiomeLoader(small_h5ad, device="cuda", subset=query, **KWARGS)
    assert isinstance(loader.obs_frame, cudf.DataFrame)
    want = MultiomeLoader(small_h5ad, device="cpu", subset=query, **KWARGS)
    np.testing.assert_array_equal(loader.positions, want.positions)
    for a, b in zip(want, loader, strict=True):
        assert_same_batch(a, b)


def test_a_failed_pinned_allocation_streams(small_h5ad, monkeypatch):
    loader = MultiomeLoader(small_h5ad, device="cuda", preload=True, **KWARGS)
    pinned, calls = loader.backend.pinned, []

    def first_fails(nbytes):
        calls.append(nbytes)
        if len(calls) == 1:
            raise MemoryError("cannot page-lock (injected)")
        return pinned(nbytes)

    monkeypatch.setattr(loader.backend, "pinned", first_fails)
    with pytest.warns(RuntimeWarning, match="streaming instead"):
        got = list(loader)
    for a, b in zip(cpu_batches(small_h5ad), got, strict=True):
        assert_same_batch(a, b)


def test_zero_copy_native_and_what_dali_does(small_h5ad):
    loader = MultiomeLoader(small_h5ad, device="cuda", **KWARGS)
    loader.backend.ledger.record = True
    batch = next(iter(loader))
    output = next(op for op in loader.backend.ledger.ops if op.name == "output")
    assert batch["GEX"].data_ptr() == output.address
    pytest.importorskip("nvidia.dali")
    dali = MultiomeLoader(small_h5ad, device="cuda", pipeline="dali", **KWARGS)
    dali.backend.ledger.record = True
    b = next(iter(dali))
    outputs = [(op.address, op.address + op.size) for op in dali.backend.ledger.ops if op.name == "output"]
    inside = any(lo <= b["GEX"].data_ptr() < hi for lo, hi in outputs)
    # What the README states: DALIGenericIterator copies into tensors it owns. If a GPU run shows
    # a view instead, this fails and the README's DALI paragraph is to be corrected.
    assert not inside, "DALI handed back a view of the kernel's output: update the README"
    torch.testing.assert_close(b["GEX"].cpu(), cpu_batches(small_h5ad)[0]["GEX"], rtol=1e-5, atol=1e-6)


def test_two_ranks_with_nccl(small_h5ad, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    worker = Path(__file__).with_name("ddp_worker.py")
    out = tmp_path / "ranks.json"
    cmd = [*torchrun(2), str(worker), str(small_h5ad)]
    env = {**os.environ, "GPULOAD_TEST_DEVICE": "cuda", "GPULOAD_TEST_BACKEND": "nccl"}
    result = subprocess.run([*cmd, str(out), "0"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = json.loads(out.read_text())
    flat = [i for r in ranks for batch in r["epoch"] for i in batch]
    assert set(flat) == set(range(600)) and all(r["resumed_ok"] for r in ranks)
    assert sorted(r["device"] for r in ranks) == ["cuda:0", "cuda:1"]
