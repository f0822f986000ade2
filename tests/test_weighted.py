"""Weighted sampling (``weights=``, ``num_samples=``, ``replacement=``): the semantics of
``torch.utils.data.WeightedRandomSampler``, drawn once per (seed, epoch), read once per group,
delivered exactly, resumable, and every bad input refused.

Frequency tests use a binomial 5-sigma bound: a cell (or category) of probability p drawn N
times appears c ~ Binomial(N, p) times, and each test asserts |c - N p| <= 5 sqrt(N p (1 - p)).
Under the null that the draw is right, one such check fails with probability < 6e-7, so even
the 50 checks of a test fail by chance with probability < 3e-5 (and the seeds are fixed).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gpuload import MultiomeLoader
from gpuload.errors import ArgumentError, ObsKeyError
from gpuload.plan import cell_weights
from gpuload.sampler import EpochSampler, load_requests

from .conftest import SMALL
from .reference import epoch_rows

G = SMALL["n_genes"]


def _within_5_sigma(counts: np.ndarray, p: np.ndarray, draws: int) -> None:
    expected = draws * p
    bound = 5 * np.sqrt(draws * p * (1 - p))
    assert (np.abs(counts - expected) <= bound).all(), (counts, expected, bound)


# -- the draw, at the sampler -----------------------------------------------------------------
def test_balanced_categories_are_equally_likely():
    """Four categories of 5, 20, 100 and 875 cells (and missing values, weight 0): over 200
    epochs of 1,000 draws each category is drawn a quarter of the time (5-sigma)."""
    sizes = [5, 20, 100, 875]
    labels = np.repeat(["rare", "small", "mid", "big"], sizes).astype(object)
    labels[[3, 500, 999]] = None
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)})
    positions = np.arange(labels.size)
    weights = cell_weights("cell_type", obs, positions, Path("test.h5ad"))
    assert weights[[3, 500, 999]].tolist() == [0, 0, 0]
    assert weights[0] == 1 / 4 and weights[-2] == 1 / 873
    sampler = EpochSampler(labels.size, weights=weights, seed=3)
    epochs = 200
    drawn = np.concatenate([sampler.epoch_order(e) for e in range(epochs)])
    assert not np.isin(drawn, [3, 500, 999]).any()
    counts = Counter(labels[drawn])
    _within_5_sigma(
        np.array([counts[k] for k in ("rare", "small", "mid", "big")]), np.full(4, 0.25), drawn.size
    )


def test_frequencies_follow_an_explicit_weight_array():
    """50 cells weighted 0..49 (cell 0 and cells 10..14 at 0): per-cell counts over 200k draws
    match N w_i / sum(w) within 5 sigma, and zero-weight cells never appear."""
    weights = np.arange(50, dtype=float)
    weights[10:15] = 0
    sampler = EpochSampler(50, weights=weights, num_samples=1000, seed=9)
    drawn = np.concatenate([sampler.epoch_order(e) for e in range(200)])
    counts = np.bincount(drawn, minlength=50)
    assert counts[weights == 0].sum() == 0
    _within_5_sigma(counts, weights / weights.sum(), drawn.size)


def test_without_replacement_draws_each_cell_at_most_once():
    weights = np.r_[np.zeros(10), np.linspace(1, 5, 90)]
    for epoch in range(5):
        drawn = EpochSampler(100, weights=weights, num_samples=90, replacement=False, seed=1).epoch_order(
            epoch
        )
        np.testing.assert_array_equal(np.sort(drawn), np.arange(10, 100))  # all 90 nonzero cells
        part = EpochSampler(100, weights=weights, num_samples=40, replacement=False).epoch_order(epoch)
        assert np.unique(part).size == 40 and part.min() >= 10


def test_the_draw_is_a_function_of_seed_and_epoch():
    w = np.linspace(0.1, 1, 300)
    a, b = EpochSampler(300, weights=w, seed=5), EpochSampler(300, weights=w.copy(), seed=5)
    np.testing.assert_array_equal(a.epoch_order(4), b.epoch_order(4))
    assert not np.array_equal(a.epoch_order(4), a.epoch_order(5))
    assert not np.array_equal(a.epoch_order(4), EpochSampler(300, weights=w, seed=6).epoch_order(4))
    for shuffle in (True, "block", "full"):  # irrelevant under weights
        np.testing.assert_array_equal(
            EpochSampler(300, shuffle, weights=w, seed=5).epoch_order(4), a.epoch_order(4)
        )
    w[0] = 99  # the sampler keeps its own copy
    np.testing.assert_array_equal(a.epoch_order(4), b.epoch_order(4))


@pytest.mark.parametrize("world, drop_last", [(2, False), (3, False), (3, True), (4, True)])
def test_ranks_split_one_global_draw(world, drop_last):
    w = np.linspace(0.1, 1, 100)
    kwargs = dict(weights=w, num_samples=151, seed=2, drop_last=drop_last)
    whole = EpochSampler(100, **kwargs).epoch_order(7)
    shares = [EpochSampler(100, rank=r, world_size=world, **kwargs).rank_order(7) for r in range(world)]
    assert len({s.size for s in shares}) == 1
    per_rank = 151 // world if drop_last else -(-151 // world)
    padded = np.concatenate([whole, whole[: per_rank * world - whole.size]])[: per_rank * world]
    np.testing.assert_array_equal(np.concatenate(shares), padded)


# -- through the loader -----------------------------------------------------------------------
def test_loader_balances_cell_types(small_h5ad, small_adata):
    """``weights="cell_type"`` over three epochs of 1,200 draws (3,600 in all): every cell type
    of the file is drawn 1/K of the time, within 5 sigma, as ``batch["obs"]["cell_type"]`` says."""
    loader = MultiomeLoader(
        small_h5ad,
        batch_size=100,
        weights="cell_type",
        num_samples=1200,
        seed=1,
        device="cpu",
        modalities="GEX",
        obs_keys=["cell_type"],
    )
    assert len(loader) == 12
    counts: Counter = Counter()
    for _ in range(3):
        for b in loader:
            counts.update(b["obs"]["cell_type"])
    types = small_adata.obs["cell_type"].astype(str).unique()
    assert set(counts) == set(types)
    k = types.size
    _within_5_sigma(np.array([counts[t] for t in types]), np.full(k, 1 / k), 3600)


def test_loader_draws_are_seeded_and_batch_rows_tell_them(small_h5ad):
    w = np.linspace(0, 1, 600)
    kwargs = dict(batch_size=64, weights=w, num_samples=250, seed=7, device="cpu", obs_keys=[])
    a, b = MultiomeLoader(small_h5ad, **kwargs), MultiomeLoader(small_h5ad, **kwargs)
    assert len(a) == 4
    planned = np.concatenate(a.batch_rows(0))
    np.testing.assert_array_equal(planned, a.positions[a.epoch_sampler.epoch_order(0)])
    e0 = epoch_rows(a)
    np.testing.assert_array_equal(e0, planned)
    np.testing.assert_array_equal(epoch_rows(b), e0)
    assert not np.array_equal(epoch_rows(a), e0)  # epoch 1
    b.set_epoch(1)
    np.testing.assert_array_equal(epoch_rows(b), np.concatenate(a.batch_rows(1)))
    assert 0 not in e0  # row 0 weighs 0


def test_weights_align_with_the_selected_cells(small_h5ad):
    """A weight array is per selected cell (``loader.positions``), after subset and split."""
    subset = np.arange(100, 400)
    w = np.zeros(300)
    w[[0, 299]] = 1  # the first and last selected cells: file rows 100 and 399
    loader = MultiomeLoader(small_h5ad, subset=subset, weights=w, device="cpu", obs_keys=[])
    assert set(epoch_rows(loader)) == {100, 399}
    rows = MultiomeLoader(
        small_h5ad, subset=subset, weights=w, num_samples=2, replacement=False, device="cpu", obs_keys=[]
    )
    assert sorted(epoch_rows(rows)) == [100, 399]


@pytest.mark.parametrize("stop_after", [0, 3, 8])  # 8: after the last batch
def test_weighted_resume_is_exact(small_h5ad, stop_after):
    kwargs = dict(batch_size=40, weights="cell_type", num_samples=320, seed=11, device="cpu", obs_keys=[])
    whole = MultiomeLoader(small_h5ad, **kwargs)
    whole.set_epoch(2)
    full = epoch_rows(whole)
    first = MultiomeLoader(small_h5ad, **kwargs)
    first.set_epoch(2)
    it = iter(first)
    head = [next(it)["index"].numpy() for _ in range(stop_after)]
    state = first.state_dict()
    assert state["num_samples"] == 320 and state["replacement"] is True and len(state["weights"]) == 16
    fresh = MultiomeLoader(small_h5ad, **kwargs)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate([*head, epoch_rows(fresh)]), full)


def test_resume_refuses_another_weighting(small_h5ad):
    base = dict(batch_size=40, device="cpu", obs_keys=[])
    w = np.linspace(0.5, 1, 600)
    weighted = MultiomeLoader(small_h5ad, weights=w, **base).state_dict()
    unweighted = MultiomeLoader(small_h5ad, **base).state_dict()
    assert unweighted["weights"] is unweighted["num_samples"] is unweighted["replacement"] is None
    others = {
        "weights": dict(weights=w[::-1].copy()),
        "num_samples": dict(weights=w, num_samples=599),
        "replacement": dict(weights=w, replacement=False),
    }
    for key, options in others.items():
        with pytest.raises(ArgumentError, match=f"load_state_dict: state has {key}="):
            MultiomeLoader(small_h5ad, **options, **base).load_state_dict(weighted)
    with pytest.raises(ArgumentError, match="load_state_dict: state has weights="):
        MultiomeLoader(small_h5ad, **base).load_state_dict(weighted)
    with pytest.raises(ArgumentError, match="load_state_dict: state has weights=None"):
        MultiomeLoader(small_h5ad, weights=w, **base).load_state_dict(unweighted)
    old = {k: v for k, v in unweighted.items() if k not in ("weights", "num_samples", "replacement")}
    MultiomeLoader(small_h5ad, **base).load_state_dict(old)  # a checkpoint from before weights= loads


def _check_against_file(loader, adata, sparse=False) -> int:
    """Every batch's matrices equal the file's rows of ``batch["index"]``; returns the number of
    repeated rows seen, checking each repeat equals its first occurrence."""
    x = adata.X.tocsr()
    first: dict[int, tuple] = {}
    repeats = 0
    for b in loader:
        rows = b["index"].numpy()
        gex = b["GEX"].to_dense() if sparse else b["GEX"]
        atac = b["ATAC"].to_dense() if sparse else b["ATAC"]
        np.testing.assert_array_equal(gex.numpy(), x[rows, :G].toarray())
        np.testing.assert_array_equal(atac.numpy(), x[rows, G:].toarray())
        assert b["obs"]["cell_type"] == list(adata.obs["cell_type"].astype(str).iloc[rows])
        for i, row in enumerate(rows.tolist()):
            seen = (gex[i].clone(), atac[i].clone(), b["mask"]["ATAC"][i].item())
            if row in first:
                repeats += 1
                assert all(
                    torch.equal(p, q) if torch.is_tensor(p) else p == q
                    for p, q in zip(first[row], seen, strict=True)
                )
            else:
                first[row] = seen
    return repeats


@pytest.mark.parametrize("preload, output", [(False, "dense"), (True, "sparse_csr")])
def test_weighted_batches_equal_the_file_and_rows_are_read_once(
    small_h5ad, small_adata, preload, output, monkeypatch
):
    """Heavy repeats (40 cells of nonzero weight, 400 draws): each batch and super-batch holds
    repeated rows, which equal their first occurrence; each read reads unique rows."""
    w = np.zeros(600)
    w[np.arange(0, 600, 15)] = np.arange(1, 41)
    loader = MultiomeLoader(
        small_h5ad,
        batch_size=50,
        weights=w,
        num_samples=400,
        seed=3,
        device="cpu",
        obs_keys=["cell_type"],
        preload=preload,
        output=output,
        chunk_size=8,
        window=4,
    )
    reads = []
    read = loader.fetcher.store.read_block

    def counting(rows, *args):
        reads.append(rows.copy())
        return read(rows, *args)

    monkeypatch.setattr(loader.fetcher.store, "read_block", counting)
    batches = loader.batch_rows()
    assert all(np.unique(b).size < b.size for b in batches)  # repeats inside every batch
    s = loader.epoch_sampler
    for request in load_requests(batches, loader.positions, s.chunk_size, s.window, loader.batch_size):
        assert np.unique(request.rows).size == request.rows.size
    assert _check_against_file(loader, small_adata, sparse=output == "sparse_csr") > 300
    assert all(np.unique(r).size == r.size for r in reads)
    assert sum(r.size for r in reads) < 400 or preload


@pytest.mark.cudasim
@pytest.mark.parametrize("output", ["dense", pytest.param("sparse_csr", marks=pytest.mark.slow)])
def test_weighted_batches_on_the_simulated_gpu(small_h5ad, small_adata, output):
    """The cuda face's orchestration (simulated; sparse: 12 s of simulated warps, test-all)."""
    w = np.zeros(600)
    w[np.arange(0, 600, 40)] = 1  # 15 cells, 30 draws: repeats within a batch and a super-batch
    kwargs = dict(batch_size=6, weights=w, num_samples=30, seed=2, obs_keys=["cell_type"], output=output)
    sim = MultiomeLoader(small_h5ad, device="cudasim", **kwargs)
    assert _check_against_file(sim, small_adata, sparse=output == "sparse_csr") > 5
    cpu = MultiomeLoader(small_h5ad, device="cpu", **kwargs)
    np.testing.assert_array_equal(epoch_rows(cpu), np.concatenate(sim.batch_rows(0)))


# -- bad input --------------------------------------------------------------------------------
def _bad_weights():
    w = np.ones(600)
    negative, nan, inf = w.copy(), w.copy(), w.copy()
    negative[5], nan[6], inf[7] = -1, np.nan, np.inf
    return [
        (dict(weights=negative), ArgumentError, r"weights must be non-negative; entry 5"),
        (dict(weights=nan), ArgumentError, r"weights must be finite; entry 6"),
        (dict(weights=inf), ArgumentError, r"weights must be finite; entry 7"),
        (dict(weights=np.zeros(600)), ArgumentError, r"weights are all zero"),
        (dict(weights=np.ones(599)), ArgumentError, r"one weight per selected cell \(600.*\(599,\)"),
        (dict(weights=np.ones(600), subset=np.arange(300)), ArgumentError, r"per selected cell \(300"),
        (dict(weights=np.ones((600, 1))), ArgumentError, r"weights must hold one weight"),
        (dict(weights=["a"] * 600), ArgumentError, r"weights must be real numbers.*dtype <U1"),
        (dict(weights=np.ones(600) + 1j), ArgumentError, r"weights must be real numbers.*complex128"),
        (dict(weights="cell_typ"), ObsKeyError, r"weights='cell_typ'.*no column 'cell_typ'.*did you mean"),
        (dict(weights="GEX_size_factors"), ArgumentError, r"weights='GEX_size_factors'.*not categories"),
        (dict(weights=w, num_samples=0), ArgumentError, r"num_samples must be a positive integer, got 0"),
        (dict(weights=w, num_samples=2.5), ArgumentError, r"num_samples must be a positive integer"),
        (dict(weights=w, num_samples=True), ArgumentError, r"num_samples must be a positive integer"),
        (dict(weights=w, replacement="no"), ArgumentError, r"replacement must be True or False"),
        (
            dict(weights=np.r_[np.zeros(590), np.ones(10)], num_samples=11, replacement=False),
            ArgumentError,
            r"replacement=False .*num_samples must be <= the 10 cells of nonzero weight",
        ),
        (dict(weights=w, shuffle=False), ArgumentError, r"shuffle=False asks for file order"),
        (dict(num_samples=10), ArgumentError, r"num_samples and replacement=False apply to weighted"),
        (dict(replacement=False), ArgumentError, r"pass weights="),
        (dict(weights=w, num_samples=1, rank=0, world_size=2), ArgumentError, r"world_size=2.*num_samples=1"),
    ]


@pytest.mark.parametrize("options, error, message", _bad_weights())
def test_bad_weighting_is_refused(small_h5ad, options, error, message):
    with pytest.raises(error, match=message):
        MultiomeLoader(small_h5ad, device="cpu", obs_keys=[], **options)


def test_a_column_of_missing_values_only_is_refused():
    obs = pd.DataFrame({"label": pd.Categorical([None, None, "a"])})
    with pytest.raises(ArgumentError, match="weights='label': every selected cell's value is missing"):
        cell_weights("label", obs, np.array([0, 1]), Path("f.h5ad"))
    np.testing.assert_array_equal(cell_weights("label", obs, np.array([1, 2]), Path("f.h5ad")), [0, 1])
    ints = pd.DataFrame({"donor": [3, 3, 3, 7]})  # integers and booleans are categories too
    np.testing.assert_array_equal(cell_weights("donor", ints, np.arange(4), Path("f")), [1 / 3] * 3 + [1])
