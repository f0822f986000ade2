"""Real-GPU tests (``pytest -m gpu``, run by benchmarks/gpu.sh); skipped without a GPU.

The same checks run in CI against the simulated GPU face (tests/test_loader.py,
tests/test_kernels.py); these confirm them on the device itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuload import MultiomeLoader

pytestmark = pytest.mark.gpu
KWARGS = dict(
    batch_size=64,
    shuffle=True,
    seed=3,
    layer="counts",
    transform={"GEX": "log1p_size_factor", "ATAC": "tfidf"},
)


@pytest.mark.parametrize("preload", [False, True])
def test_cuda_batches_equal_cpu_batches(small_h5ad, preload):
    cpu = list(MultiomeLoader(small_h5ad, device="cpu", **KWARGS))
    gpu = list(MultiomeLoader(small_h5ad, device="cuda", preload=preload, **KWARGS))
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu, strict=True):
        assert b["GEX"].is_cuda and b["ATAC"].is_cuda and b["index"].is_cuda
        assert torch.equal(a["index"], b["index"].cpu())
        torch.testing.assert_close(a["GEX"], b["GEX"].cpu(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["ATAC"], b["ATAC"].cpu(), rtol=1e-5, atol=1e-6)
        assert a["obs"]["cell_type"] == b["obs"]["cell_type"]
        torch.testing.assert_close(a["obs"]["GEX_size_factors"], b["obs"]["GEX_size_factors"].cpu())


def test_cuda_hand_off_is_zero_copy(small_h5ad, monkeypatch):
    loader = MultiomeLoader(small_h5ad, device="cuda", **KWARGS)
    written = []
    gather = type(loader.backend).gather

    def spy(self, block, local, layout, scale, out, present):
        written.append(out.data_ptr())
        return gather(self, block, local, layout, scale, out, present)

    monkeypatch.setattr(type(loader.backend), "gather", spy)
    batch = next(iter(loader))
    assert batch["GEX"].data_ptr() == written[0]


def test_obs_frame_is_cudf(small_h5ad):
    cudf = pytest.importorskip("cudf")
    loader = MultiomeLoader(small_h5ad, device="cuda", **KWARGS)
    assert isinstance(loader.obs_frame, cudf.DataFrame)
    assert np.array_equal(
        loader.obs_frame["GEX_n_genes"].to_numpy(), loader.store.obs["GEX_n_genes"].to_numpy()
    )
