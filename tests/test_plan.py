"""The plan on its own (gpuload.plan), built straight from a store, no loader: which rows it
selects, where each column goes, what the statistics pass counts and the per-cell scales and
per-column weights the transforms prepare, each against scipy / pandas over the same file
(the small synthetic file, the three-file dataset, the REAL 500-cell GEX starter file)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from gpuload import open_multiome
from gpuload.errors import ArgumentError, DataValueError
from gpuload.kernels.arithmetic import DEST_MASK, DEST_SHIFT, MAX_MODALITIES
from gpuload.plan import build_plan
from gpuload.plan.layout import column_destinations
from gpuload.plan.stats import compute_stats

from .conftest import PARTS, SMALL

G = SMALL["n_genes"]


@pytest.fixture
def store(small_h5ad):
    with open_multiome(small_h5ad) as opened:
        yield opened


@pytest.fixture(scope="module")
def x(small_adata) -> sp.csr_matrix:
    return sp.csr_matrix(small_adata.X, dtype=np.float64)


def test_layout_routes_every_column_to_its_modality_and_output_column(store):
    plan = build_plan(store)
    assert plan.names == ("GEX", "ATAC") and plan.layout.widths == (G, SMALL["n_peaks"])
    dest = plan.layout.col_dest
    np.testing.assert_array_equal(dest[:G], np.arange(G))
    np.testing.assert_array_equal(dest[G:], (1 << DEST_SHIFT) | np.arange(SMALL["n_peaks"]))
    np.testing.assert_array_equal(plan.layout.col_mod, np.repeat([0, 1], [G, SMALL["n_peaks"]]))
    np.testing.assert_array_equal(plan.positions, np.arange(SMALL["n_cells"]))
    assert all(mask.all() for mask in plan.feature_masks.values())


def test_one_modality_leaves_the_others_columns_unrouted(store):
    plan = build_plan(store, modalities="ATAC")
    assert plan.names == ("ATAC",)
    assert (plan.layout.col_dest[:G] == -1).all()
    np.testing.assert_array_equal(plan.layout.col_dest[G:], np.arange(SMALL["n_peaks"]))


def test_selected_features_keep_file_order_and_say_which_columns(store, small_adata):
    names = small_adata.var_names[:G]
    chosen = [names[7], names[2], names[40]]  # given out of order: delivered in file order
    plan = build_plan(store, features={"GEX": chosen})
    assert plan.var_names_of("GEX") == [names[2], names[7], names[40]]
    np.testing.assert_array_equal(np.flatnonzero(plan.feature_masks["GEX"]), [2, 7, 40])
    dest = plan.layout.col_dest
    np.testing.assert_array_equal(dest[[2, 7, 40]], [0, 1, 2])
    assert (np.delete(dest[:G], [2, 7, 40]) == -1).all()
    assert plan.layout.widths == (3, SMALL["n_peaks"])
    with pytest.raises(ArgumentError, match="'RNA' is not loaded"):
        plan.var_names_of("RNA")


def test_top_features_are_the_most_often_detected(store, x):
    """``{"top": k}``: the k columns nonzero in the most selected cells (ties: file order)."""
    rows = np.arange(0, SMALL["n_cells"], 3)
    plan = build_plan(store, subset=rows, features={"ATAC": {"top": 25}})
    detected = (x[rows][:, G:] != 0).sum(axis=0).A1
    expected = np.sort(np.argsort(-detected, kind="stable")[:25])
    np.testing.assert_array_equal(np.flatnonzero(plan.feature_masks["ATAC"]), expected)


def test_subset_selects_the_rows_pandas_selects(store, small_adata):
    by_query = build_plan(store, subset="batch == 's1d1'")
    want = np.flatnonzero(small_adata.obs["batch"].astype(str) == "s1d1")
    assert 0 < want.size < SMALL["n_cells"]
    np.testing.assert_array_equal(by_query.positions, want)
    mask = np.zeros(SMALL["n_cells"], dtype=bool)
    mask[want] = True
    np.testing.assert_array_equal(build_plan(store, subset=mask).positions, want)
    np.testing.assert_array_equal(build_plan(store, subset=want[::-1]).positions, want)  # sorted


def test_stats_equal_scipy_over_the_selected_cells(store, x):
    rows = np.arange(5, SMALL["n_cells"], 4)
    stats = compute_stats(store, rows, list(store.modalities.values()), block_rows=37)  # several blocks
    np.testing.assert_allclose(stats.col_sums, x[rows].sum(axis=0).A1, rtol=1e-6)
    np.testing.assert_array_equal(stats.col_nonzero, (x[rows] != 0).sum(axis=0).A1)
    for name, columns in (("GEX", slice(0, G)), ("ATAC", slice(G, None))):
        totals = np.zeros(SMALL["n_cells"])
        totals[rows] = x[rows][:, columns].sum(axis=1).A1
        np.testing.assert_allclose(stats.row_totals[name], totals, rtol=1e-6)
        assert stats.n_measured[name] == rows.size


def test_normalize_total_and_tfidf_prepare_their_scales_from_the_selection(store, x):
    rows = np.arange(0, SMALL["n_cells"], 2)
    transform = {"GEX": "normalize_total", "ATAC": {"name": "tfidf", "flavor": "signac"}}
    plan = build_plan(store, subset=rows, transform=transform)
    gex_totals = x[rows][:, :G].sum(axis=1).A1
    target = np.median(gex_totals[gex_totals > 0])
    np.testing.assert_allclose(plan.row_scale[rows, 0], target / gex_totals, rtol=1e-5)
    atac_totals = x[rows][:, G:].sum(axis=1).A1
    np.testing.assert_allclose(plan.row_scale[rows, 1], 1e4 / atac_totals, rtol=1e-5)
    col_sums = x[rows][:, G:].sum(axis=0).A1
    idf = np.where(col_sums > 0, rows.size / np.where(col_sums > 0, col_sums, 1), 0)
    np.testing.assert_allclose(plan.layout.col_weight[G:], idf, rtol=1e-5)
    assert (plan.layout.col_weight[:G] == 1).all()


def test_categories_and_obs_keys(store, small_adata):
    plan = build_plan(store, obs_keys=["cell_type", "GEX_n_genes"])
    assert plan.obs_keys == ("cell_type", "GEX_n_genes")
    assert plan.categories_of("cell_type") == list(small_adata.obs["cell_type"].cat.categories)
    with pytest.raises(ArgumentError, match="'GEX_n_genes' is not a delivered categorical"):
        plan.categories_of("GEX_n_genes")


def test_a_dataset_of_files_says_which_file_holds_a_row(parts):
    with open_multiome(parts) as store:
        plan = build_plan(store)
    assert plan.files == tuple(str(p) for p in parts)
    rows = np.array([0, PARTS[1] - 1, PARTS[1], PARTS[2] + 3, PARTS[3] - 1])
    np.testing.assert_array_equal(plan.file_of(rows), [0, 0, 1, 2, 2])
    where = plan.where_row(PARTS[2] + 3)
    assert str(parts[2]) in where and "row 3" in where


def test_column_destinations_refuse_what_the_routing_cannot_hold():
    with pytest.raises(ArgumentError, match=f"at most {MAX_MODALITIES} modalities"):
        column_destinations(MAX_MODALITIES + 1, [np.array([i]) for i in range(MAX_MODALITIES + 1)])
    wide = DEST_MASK + 2
    with pytest.raises(ArgumentError, match="wider than"):
        column_destinations(wide, [np.arange(wide)])


def test_real_counts_get_the_files_size_factors(real_gex):
    """The REAL GEX file: ``log1p_size_factor`` on its counts scales each cell by
    1 / obs ``size_factors`` (the file's own unprefixed column), and the stats pass sums its
    counts as scipy does."""
    import anndata as ad

    adata = ad.read_h5ad(real_gex)
    with open_multiome(real_gex, layer="counts") as store:
        plan = build_plan(store, transform="log1p_size_factor")
        stats = compute_stats(store, plan.positions, list(plan.modalities))
    assert plan.names == ("GEX",) and plan.key == "layers/counts"
    np.testing.assert_allclose(plan.row_scale[:, 0], 1 / adata.obs["size_factors"].to_numpy(), rtol=1e-6)
    counts = sp.csr_matrix(adata.layers["counts"])
    np.testing.assert_allclose(stats.row_totals["GEX"], counts.sum(axis=1).A1)
    np.testing.assert_array_equal(stats.col_nonzero, (counts != 0).sum(axis=0).A1)


def test_bad_size_factors_name_the_column_and_row(tmp_path, small_adata):
    adata = small_adata[:40].copy()
    adata.obs["GEX_size_factors"] = 1.0
    adata.obs.iloc[9, adata.obs.columns.get_loc("GEX_size_factors")] = 0.0
    path = tmp_path / "zero-factor.h5ad"
    adata.write_h5ad(path)
    with open_multiome(path) as store, pytest.raises(DataValueError, match=r"GEX_size_factors.*row 9"):
        build_plan(store, transform={"GEX": "log1p_size_factor"})
