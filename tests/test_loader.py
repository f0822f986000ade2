"""MultiomeLoader: exact batches, DataLoader semantics, epochs, resume, masks, prefetch thread."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from gpuload import MultiomeLoader
from gpuload.errors import ArgumentError, DataValueError, ObsKeyError

from .conftest import SMALL, file_digest, gpuload_threads
from .reference import epoch_rows

G = SMALL["n_genes"]


@pytest.mark.parametrize("drop_last", [False, True])
def test_sequential_batches_equal_reference(small_h5ad, small_adata, drop_last):
    before = file_digest(small_h5ad)
    loader = MultiomeLoader(
        small_h5ad,
        batch_size=64,
        shuffle=False,
        drop_last=drop_last,
        device="cpu",
        layer="counts",
        transform={"GEX": "log1p_size_factor", "ATAC": "binarize"},
    )
    batches = list(loader)
    assert len(batches) == len(loader) == (600 // 64 if drop_last else -(-600 // 64))
    counts = small_adata.layers["counts"].tocsr()
    x = small_adata.X.tocsr()
    start = 0
    for b in batches:
        n = b["GEX"].shape[0]
        rows = np.arange(start, start + n)
        np.testing.assert_array_equal(b["index"].numpy(), rows)
        # The transforms rebuild the competition X from the raw counts.
        np.testing.assert_allclose(b["GEX"].numpy(), x[rows, :G].toarray(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(b["ATAC"].numpy(), (counts[rows, G:].toarray() > 0).astype(np.float32))
        obs = small_adata.obs.iloc[rows]
        assert b["obs"]["cell_type"] == list(obs["cell_type"].astype(str))
        np.testing.assert_allclose(b["obs"]["GEX_size_factors"].numpy(), obs["GEX_size_factors"], rtol=1e-6)
        np.testing.assert_array_equal(b["obs"]["GEX_n_genes"].numpy(), obs["GEX_n_genes"])
        assert b["obs"]["GEX_n_genes"].dtype == torch.int64
        np.testing.assert_array_equal(b["obs_codes"]["batch"].numpy(), obs["batch"].cat.codes)
        assert b["GEX"].dtype == torch.float32 and b["GEX"].is_contiguous() and b["ATAC"].is_contiguous()
        start += n
    assert loader.categories("batch")[:2] == ["s1d1", "s1d2"]
    assert file_digest(small_h5ad) == before


def test_real_gex_file_through_the_loader(real_gex):
    adata = ad.read_h5ad(real_gex)
    loader = MultiomeLoader(real_gex, batch_size=100, shuffle=False, modalities="GEX", device="cpu")
    got = torch.cat([b["GEX"] for b in loader]).numpy()
    np.testing.assert_array_equal(got, adata.X.toarray().astype(np.float32))
    b = next(iter(loader))
    assert b["obs"]["cell_type"] == list(adata.obs["cell_type"].astype(str)[:100])
    np.testing.assert_allclose(b["obs"]["size_factors"].numpy(), adata.obs["size_factors"][:100], rtol=1e-6)
    assert torch.isnan(b["obs"]["pseudotime_order_GEX"]).any()  # NaN kept
    with pytest.raises(ArgumentError, match="unknown modality 'ATAC'.*GEX"):
        MultiomeLoader(real_gex, modalities=("GEX", "ATAC"))


def test_all_modalities_as_one_x(small_h5ad, small_adata):
    loader = MultiomeLoader(
        small_h5ad, batch_size=50, shuffle=False, modalities="all", device="cpu", obs_keys=[]
    )
    b = next(iter(loader))
    assert set(b) >= {"X", "index", "obs", "mask"} and "GEX" not in b
    np.testing.assert_array_equal(b["X"].numpy(), small_adata.X[:50].toarray())


@pytest.mark.parametrize("shuffle", [True, "full"])
def test_shuffled_epochs_are_permutations(small_h5ad, shuffle):
    subset = "batch in ['s1d1', 's2d1', 's3d6', 's4d8']"
    kwargs = dict(
        batch_size=32, shuffle=shuffle, seed=3, device="cpu", subset=subset, chunk_size=16, window=4
    )
    loader = MultiomeLoader(small_h5ad, obs_keys=["batch"], **kwargs)
    expected = np.sort(loader.positions)
    e0, e1 = epoch_rows(loader), epoch_rows(loader)
    np.testing.assert_array_equal(np.sort(e0), expected)
    np.testing.assert_array_equal(np.sort(e1), expected)
    assert not np.array_equal(e0, e1)
    again = MultiomeLoader(small_h5ad, obs_keys=["batch"], **kwargs)
    np.testing.assert_array_equal(epoch_rows(again), e0)
    again.set_epoch(1)
    np.testing.assert_array_equal(epoch_rows(again), e1)
    for b in MultiomeLoader(small_h5ad, batch_size=32, subset=subset, device="cpu", obs_keys=["batch"]):
        assert set(b["obs"]["batch"]) <= {"s1d1", "s2d1", "s3d6", "s4d8"}


def test_shuffled_batches_hold_the_right_rows(small_h5ad, small_adata):
    loader = MultiomeLoader(small_h5ad, batch_size=40, shuffle=True, device="cpu", chunk_size=8, window=3)
    x = small_adata.X.tocsr()
    for b in loader:
        rows = b["index"].numpy()
        np.testing.assert_array_equal(b["GEX"].numpy(), x[rows, :G].toarray())
        np.testing.assert_array_equal(b["ATAC"].numpy(), x[rows, G:].toarray())
        assert b["obs"]["cell_type"] == list(small_adata.obs["cell_type"].astype(str).iloc[rows])


@pytest.mark.parametrize("stop_after", [0, 1, 5, 9, 10])  # 10: after the last batch
def test_resume_mid_epoch_in_a_fresh_loader(small_h5ad, stop_after):
    kwargs = dict(batch_size=64, shuffle=True, seed=11, device="cpu", obs_keys=[], chunk_size=32, window=2)
    uninterrupted = MultiomeLoader(small_h5ad, **kwargs)
    uninterrupted.set_epoch(2)
    full = [b["index"].numpy() for b in uninterrupted]
    first = MultiomeLoader(small_h5ad, **kwargs)
    first.set_epoch(2)
    it = iter(first)
    before = [next(it)["index"].numpy() for _ in range(stop_after)]
    state = first.state_dict()  # a yielded batch counts as consumed
    assert state["batches_done"] == stop_after and state["epoch"] == 2
    fresh = MultiomeLoader(small_h5ad, **kwargs)
    fresh.load_state_dict(state)
    after = [b["index"].numpy() for b in fresh]
    np.testing.assert_array_equal(np.concatenate(before + after), np.concatenate(full))
    assert fresh.epoch == 3  # the resumed epoch completed


def test_load_state_dict_rejects_a_different_configuration(small_h5ad):
    state = MultiomeLoader(small_h5ad, batch_size=64, device="cpu").state_dict()
    with pytest.raises(ArgumentError, match="batch_size"):
        MultiomeLoader(small_h5ad, batch_size=32, device="cpu").load_state_dict(state)


def test_abandoned_iteration_starts_a_fresh_epoch(small_h5ad):
    loader = MultiomeLoader(small_h5ad, batch_size=64, shuffle=True, device="cpu", obs_keys=[])
    it = iter(loader)
    next(it)
    del it
    rows = epoch_rows(loader)
    assert np.unique(rows).size == 600 and loader.epoch == 2


def test_missing_modality_mask(tmp_path, small_adata):
    adata = small_adata.copy()
    x = adata.X.tolil()
    x[3, G:] = 0  # cell 3 has no ATAC
    x[5, :G] = 0  # cell 5 has no GEX
    adata.X = x.tocsr()
    path = tmp_path / "mask.h5ad"
    adata.write_h5ad(path)
    b = next(iter(MultiomeLoader(path, batch_size=8, shuffle=False, device="cpu", obs_keys=[])))
    assert b["mask"]["ATAC"].tolist() == [True, True, True, False, True, True, True, True]
    assert b["mask"]["GEX"].tolist() == [True, True, True, True, True, False, True, True]


def test_reader_thread_stops_on_break_and_on_error(small_h5ad, tmp_path, small_adata):
    loader = MultiomeLoader(small_h5ad, batch_size=16, device="cpu", prefetch=2, obs_keys=[])
    for i, _ in enumerate(loader):
        if i == 2:
            break
    assert not gpuload_threads()
    adata = small_adata.copy()
    adata.X = sp.csr_matrix(adata.X)
    adata.X.data[adata.X.indptr[300]] = np.nan  # a NaN in cell 300
    path = tmp_path / "nan.h5ad"
    adata.write_h5ad(path)
    seen = []
    with pytest.raises(DataValueError, match="row 300.*NaN"):
        for b in MultiomeLoader(path, batch_size=50, shuffle=False, device="cpu", obs_keys=[]):
            seen.append(b["index"])
    assert len(seen) == 6  # every batch before the bad one arrived
    assert not gpuload_threads()


def test_kept_batches_are_never_overwritten(small_h5ad):
    """Output buffers are recycled only once nothing references them."""
    loader = MultiomeLoader(small_h5ad, batch_size=32, shuffle=False, device="cpu", obs_keys=[])
    kept = [(b["GEX"][:, :5], b["GEX"][:, :5].clone()) for b in loader]
    for view, copy in kept:
        assert torch.equal(view, copy)


def test_dataloader_style_arguments_and_errors(small_h5ad):
    loader = MultiomeLoader(small_h5ad, batch_size=100, device="cpu", num_workers=4, pin_memory=False)
    assert loader.batch_size == 100 and len(loader) == 6 and loader.num_threads == 4
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ArgumentError, match="batch_size"):
            MultiomeLoader(small_h5ad, batch_size=bad)
    with pytest.raises(ArgumentError, match="unknown transform 'zscore'.*binarize"):
        MultiomeLoader(small_h5ad, transform="zscore")
    with pytest.raises(ArgumentError, match="shuffle"):
        MultiomeLoader(small_h5ad, shuffle="sometimes")


@pytest.mark.cudasim
def test_simulated_gpu_orchestration_equals_cpu(small_h5ad):
    """The cuda face's orchestration (device arrays, kernel launch, hand-off) under the
    simulator gives the CPU path's batches."""
    kwargs = dict(
        batch_size=6,
        shuffle=True,
        seed=5,
        subset=np.arange(0, 600, 25),
        layer="counts",
        transform={"GEX": "normalize_total", "ATAC": "tfidf"},
        chunk_size=4,
        window=2,
    )
    cpu = list(MultiomeLoader(small_h5ad, device="cpu", **kwargs))
    sim = list(MultiomeLoader(small_h5ad, device="cudasim", **kwargs))
    assert len(cpu) == len(sim) == 4
    for a, b in zip(cpu, sim, strict=True):
        assert torch.equal(a["index"], b["index"])
        torch.testing.assert_close(a["GEX"], b["GEX"])
        torch.testing.assert_close(a["ATAC"], b["ATAC"])
        assert a["obs"]["cell_type"] == b["obs"]["cell_type"]
        assert torch.equal(a["mask"]["ATAC"], b["mask"]["ATAC"])


def test_preload_gives_the_same_batches(small_h5ad):
    kwargs = dict(batch_size=50, shuffle=True, seed=1, device="cpu", obs_keys=["cell_type"])
    streamed = list(MultiomeLoader(small_h5ad, preload=False, **kwargs))
    preloaded = list(MultiomeLoader(small_h5ad, preload=True, **kwargs))
    for a, b in zip(streamed, preloaded, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["ATAC"], b["ATAC"])


def test_half_precision_output(small_h5ad):
    b = next(
        iter(MultiomeLoader(small_h5ad, batch_size=8, shuffle=False, device="cpu", dtype=torch.bfloat16))
    )
    assert b["GEX"].dtype == torch.bfloat16 and b["ATAC"].dtype == torch.bfloat16


def test_preload_out_of_memory_falls_back_to_streaming(small_h5ad, monkeypatch):
    loader = MultiomeLoader(
        small_h5ad,
        batch_size=100,
        shuffle=False,
        device="cpu",
        preload=True,
        obs_keys=[],
        chunk_size=25,
        window=2,
    )
    read = loader.fetcher.store.read_block
    calls = []

    def first_fails(rows, *args):
        calls.append(rows.size)
        if len(calls) == 1:
            raise MemoryError("out of device memory")
        return read(rows, *args)

    monkeypatch.setattr(loader.fetcher.store, "read_block", first_fails)
    with pytest.warns(RuntimeWarning, match="streaming instead"):
        rows = epoch_rows(loader)
    np.testing.assert_array_equal(rows, np.arange(600))
    assert calls[0] == 600 and max(calls[1:]) < 600


def test_public_accessors(small_h5ad, small_adata):
    """What applications read instead of ``loader.plan`` / ``loader.store``: the chosen columns
    (a ``features=`` another loader takes) and any obs column of the selected cells."""
    subset = "cell_type in ['NK', 'CD14+ Mono']"
    loader = MultiomeLoader(
        small_h5ad, subset=subset, features={"ATAC": {"top": 30}}, obs_keys=[], device="cpu", layer="counts"
    )
    cells = small_adata.obs.query(subset)
    np.testing.assert_array_equal(loader.positions, np.flatnonzero(small_adata.obs.index.isin(cells.index)))
    masks = loader.feature_masks
    assert masks["GEX"].all() and masks["ATAC"].sum() == 30
    atac_names = small_adata.var_names[small_adata.var["feature_types"] == "ATAC"]
    assert loader.var_names("ATAC") == list(atac_names[masks["ATAC"]])
    same = MultiomeLoader(small_h5ad, features=masks, obs_keys=[], device="cpu", layer="counts")
    assert same.var_names("ATAC") == loader.var_names("ATAC")
    for key in ("cell_type", "GEX_n_genes", "batch"):  # not delivered (obs_keys=[]), still readable
        np.testing.assert_array_equal(loader.obs_values(key), cells[key].to_numpy())
    with pytest.raises(ObsKeyError, match="obs has no column 'celltype'"):
        loader.obs_values("celltype")
