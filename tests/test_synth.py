"""The synthetic generator writes the real file's schema (../shared/DATASET.md) with learnable
structure, and the `gpuload synth` / `gpuload info` commands behave."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import TruncatedSVD
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from gpuload.bmmc import schema
from gpuload.bmmc.synth import write_synthetic
from gpuload.cli import main as cli_main

from .conftest import SMALL


def test_var_modalities_and_ids(small_adata):
    var = small_adata.var
    types = var["feature_types"].astype(str).to_numpy()
    assert (types[: SMALL["n_genes"]] == "GEX").all() and (types[SMALL["n_genes"] :] == "ATAC").all()
    assert "gene_id" in var.columns
    assert all(n.startswith("chr") for n in var.index[SMALL["n_genes"] :])


def test_obs_columns_dtypes_and_categories(small_adata):
    obs = small_adata.obs
    assert list(obs.columns) == list(schema.OBS_COLUMNS)
    for column, kind in schema.OBS_COLUMNS.items():
        dtype = obs[column].dtype
        if kind == "c":
            assert isinstance(dtype, pd.CategoricalDtype), column
        elif kind == "i":
            assert pd.api.types.is_integer_dtype(dtype), column
        else:
            assert dtype == np.float64, column
    assert set(obs["cell_type"].cat.categories) == set(schema.CELL_TYPE_COUNTS)
    assert list(obs["batch"].cat.categories) == list(schema.BATCHES)
    assert set(obs["GEX_phase"].cat.categories) == set(schema.PHASES)
    assert set(obs["QCMeds"].astype(str)) <= {"True", "False"}
    # Rows are grouped by batch, like the real file.
    codes = obs["batch"].cat.codes.to_numpy()
    assert (np.diff(codes) >= 0).all()


def test_pseudotime_nan_outside_trajectories(small_adata):
    obs = small_adata.obs
    for column, path in schema.TRAJECTORIES.items():
        on = obs["cell_type"].isin(path).to_numpy()
        values = obs[column].to_numpy()
        assert np.isnan(values[~on]).all() and np.isfinite(values[on]).all()


def test_x_and_counts_relation(small_adata):
    a = small_adata
    counts = a.layers["counts"].tocsr()
    assert np.array_equal(counts.data, np.round(counts.data))  # raw integer-valued counts
    g = SMALL["n_genes"]
    sf = a.obs["GEX_size_factors"].to_numpy()
    expected_gex = np.log1p(counts[:, :g].toarray() / sf[:, None])
    np.testing.assert_allclose(a.X[:, :g].toarray(), expected_gex, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.X[:, g:].toarray(), (counts[:, g:].toarray() > 0).astype(np.float32))
    np.testing.assert_array_equal(a.obs["GEX_n_genes"].to_numpy(), np.diff(counts[:, :g].indptr))
    np.testing.assert_allclose(a.obs["GEX_n_counts"].to_numpy(), counts[:, :g].sum(axis=1).A1)
    np.testing.assert_allclose(a.obs["ATAC_nCount_peaks"].to_numpy(), counts[:, g:].sum(axis=1).A1)


def test_obsm_and_uns(small_adata):
    for key, width in schema.OBSM_WIDTHS.items():
        assert small_adata.obsm[key].shape == (small_adata.n_obs, width), key
    for key in ("ATAC_gene_activity_var_names", "dataset_id", "genome", "organism"):
        assert key in small_adata.uns


def _type_accuracy(matrix, labels) -> float:
    features = TruncatedSVD(20, random_state=0).fit_transform(matrix)
    clf = LogisticRegression(max_iter=2000)
    return float(cross_val_score(clf, features, labels, cv=3).mean())


def test_cell_types_are_separable_in_both_modalities(small_adata):
    """The latent structure drives both modalities: a linear probe recovers cell types."""
    a = small_adata
    labels = a.obs["cell_type"].astype(str).to_numpy()
    common = pd.Series(labels).value_counts()
    keep = np.isin(labels, common[common >= 10].index)
    g = SMALL["n_genes"]
    chance = common.max() / common[common >= 10].sum()
    for matrix in (a.X[:, :g], a.X[:, g:]):
        accuracy = _type_accuracy(matrix[keep], labels[keep])
        assert accuracy > max(0.6, 2 * chance), accuracy


def test_nonzeros_per_cell_like_real_data(data_dir):
    """At the real widths, GEX ~300-3,000 and ATAC ~1,000-30,000 stored values per cell."""
    import anndata as ad

    path = write_synthetic(data_dir / "fullwidth.h5ad", n_cells=200, seed=3, progress=False)
    x = ad.read_h5ad(path).X.tocsr()
    g = schema.N_GENES
    gex = np.diff(x[:, :g].indptr)
    atac = np.diff(x[:, g:].indptr)
    assert 200 < np.median(gex) < 3000 and 1000 < np.median(atac) < 30000
    assert 3000 < x.nnz / x.shape[0] < 12000


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "gpuload", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cells", "-5"], "positive integer"),
        (["--cells", "abc"], "positive integer"),
        (["--x-format", "coo"], "invalid choice"),
    ],
)
def test_synth_cli_bad_arguments(tmp_path, args, message, capsys):
    """In-process (the exit codes of real subprocesses are tested in test_reliability.py)."""
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors
        cli_main(["synth", "--out", str(tmp_path / "x.h5ad"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_synth_cli_unwritable_path(tmp_path, capsys):
    assert cli_main(["synth", "--out", str(tmp_path / "missing-dir" / "x.h5ad"), "--cells", "10"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0]


def test_synth_and_info_cli(tmp_path):
    out = tmp_path / "cli.h5ad"
    result = _cli("synth", "--out", str(out), "--cells", "50", "--genes", "40", "--peaks", "100", "--quiet")
    assert result.returncode == 0, result.stderr
    info = _cli("info", str(out))
    assert info.returncode == 0, info.stderr
    for text in (
        "50 cells x 140 features",
        "GEX 40 columns",
        "ATAC 100 columns",
        "csr",
        "cell_type",
        "median",
    ):
        assert text in info.stdout
