"""The store returns exactly what anndata + scipy return for the same rows, in every encoding,
reads the real BMMC GEX file, selects subsets, and never writes to its input."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from gpuload import open_multiome
from gpuload.bmmc.schema import SPLITS
from gpuload.bmmc.synth import write_synthetic
from gpuload.errors import ArgumentError, ObsKeyError, SchemaError
from gpuload.plan.obs import subset_positions

from .conftest import file_digest


def _reference(path, rows, layer=None):
    adata = ad.read_h5ad(path)
    matrix = adata.X if layer is None else adata.layers[layer]
    matrix = sp.csr_matrix(matrix)[rows]
    types = adata.var["feature_types"].astype(str).to_numpy()
    return {m: matrix[:, types == m].toarray() for m in ("GEX", "ATAC") if (types == m).any()}


ROW_SETS = {
    "empty": [],
    "single": [7],
    "contiguous": list(range(40, 90)),
    "unsorted": [250, 3, 77, 76, 120, 0, 299],
    "duplicates": [5, 5, 9, 5, 200, 9],
}


@pytest.mark.parametrize("rows", ROW_SETS.values(), ids=ROW_SETS.keys())
@pytest.mark.parametrize("layer", [None, "counts"])
def test_read_rows_matches_anndata(variant_h5ad, rows, layer):
    rows = np.array(rows, dtype=np.int64)
    expected = _reference(variant_h5ad, rows, layer)
    with open_multiome(variant_h5ad, layer=layer) as store:
        got = store.read_rows(rows)
    assert set(got) == set(expected)
    for name, ref in expected.items():
        dense = got[name].toarray() if sp.issparse(got[name]) else got[name]
        assert dense.shape == ref.shape
        np.testing.assert_array_equal(dense, ref)


def test_read_rows_random_sets(small_h5ad, rng):
    with open_multiome(small_h5ad) as store:
        for _ in range(5):
            rows = rng.integers(0, store.n_cells, rng.integers(1, 100))
            expected = _reference(small_h5ad, rows)
            got = store.read_rows(rows)
            for name in expected:
                np.testing.assert_array_equal(got[name].toarray(), expected[name])


def test_encoding_is_reported(variant_h5ad):
    with open_multiome(variant_h5ad) as store:
        kind = variant_h5ad.stem.split("-")[1]
        assert store.encoding.kind == kind
        assert store.encoding.dtype == (np.float64 if "f64" in variant_h5ad.stem else np.float32)
        if "gzip" in variant_h5ad.stem:
            assert store.encoding.compression == "gzip"
        assert (store.sidecar is not None) == (kind == "csc")


def test_csc_sidecar_is_built_once_and_input_untouched(tmp_path):
    path = write_synthetic(
        tmp_path / "csc.h5ad", n_cells=80, n_genes=30, n_peaks=50, x_format="csc", progress=False
    )
    before = file_digest(path)
    with open_multiome(path, cache_dir=tmp_path / "side") as store:
        folder = store.sidecar
        assert folder.parent == tmp_path / "side"
    mtime = (folder / "data.npy").stat().st_mtime_ns
    with open_multiome(path, cache_dir=tmp_path / "side") as store:
        assert store.sidecar == folder
    assert (folder / "data.npy").stat().st_mtime_ns == mtime
    assert file_digest(path) == before


def test_real_gex_file(real_gex, rng):
    """The organisers' 500-cell CSC float64 file: GEX only, unprefixed obs names."""
    before = file_digest(real_gex)
    with open_multiome(real_gex) as store:
        assert store.n_cells == 500 and list(store.modalities) == ["GEX"]
        assert store.encoding.kind == "csc" and store.encoding.dtype == np.float64
        assert "size_factors" in store.obs.columns
        rows = rng.permutation(500)[:64]
        expected = _reference(real_gex, rows)
        np.testing.assert_array_equal(store.read_rows(rows)["GEX"].toarray(), expected["GEX"])
        with pytest.raises(ArgumentError, match="ATAC"):
            store.modality("ATAC")
    assert file_digest(real_gex) == before


def test_int64_indices_and_indptr(tmp_path, small_adata):
    path = tmp_path / "int64.h5ad"
    small_adata.write_h5ad(path)
    with h5py.File(path, "r+") as f:
        for key in ("indices", "indptr"):
            values = f["X"][key][:].astype(np.int64)
            del f["X"][key]
            f["X"].create_dataset(key, data=values)
    with open_multiome(path) as store:
        assert store.encoding.index_dtype == np.int64
        rows = np.array([3, 1, 500])
        np.testing.assert_array_equal(store.read_rows(rows)["GEX"].toarray(), _reference(path, rows)["GEX"])


def test_subsets_and_splits(small_h5ad):
    with open_multiome(small_h5ad) as store:
        obs = store.obs
        pos = subset_positions(obs, "batch in ['s1d1', 's1d2']", None, store.path)
        np.testing.assert_array_equal(pos, np.flatnonzero(obs["batch"].isin(["s1d1", "s1d2"])))
        mask = obs["cell_type"].to_numpy() == "NK"
        np.testing.assert_array_equal(subset_positions(obs, mask, None, store.path), np.flatnonzero(mask))
        np.testing.assert_array_equal(subset_positions(obs, [9, 2, 4], None, store.path), [2, 4, 9])
        train = subset_positions(obs, None, {"batch": SPLITS["train"]}, store.path)
        assert set(obs["batch"].iloc[train].astype(str)) <= {
            "s1d1",
            "s1d3",
            "s2d1",
            "s2d4",
            "s2d5",
            "s3d3",
            "s3d6",
            "s3d10",
        }
        test = {"batch": SPLITS["test"]}
        both = subset_positions(obs, "GEX_n_genes > 50", test, store.path)
        assert set(both) <= set(subset_positions(obs, None, test, store.path))
        nk = subset_positions(obs, None, {"cell_type": ["NK"], "batch": ["s1d1", "s4d1"]}, store.path)
        wanted = (obs["cell_type"] == "NK") & obs["batch"].isin(["s1d1", "s4d1"])
        np.testing.assert_array_equal(nk, np.flatnonzero(wanted))
        with pytest.raises(ObsKeyError, match="split selects cells by obs 'fold', which obs lacks"):
            subset_positions(obs, None, {"fold": [0]}, store.path)
        with pytest.raises(ArgumentError, match="selects no cells"):
            subset_positions(obs, "GEX_n_genes < 0", None, store.path)
        with pytest.raises(ArgumentError, match="duplicates"):
            subset_positions(obs, [1, 1], None, store.path)


def test_missing_layer_and_feature_type_key(small_h5ad):
    with pytest.raises(SchemaError, match="no layer 'raw'.*counts"):
        open_multiome(small_h5ad, layer="raw")
    with pytest.raises(SchemaError, match="no column 'modality'"):
        open_multiome(small_h5ad, feature_type_key="modality")


def test_obs_key_suggestions(small_h5ad):
    from gpuload.plan.obs import select_columns

    with (
        open_multiome(small_h5ad) as store,
        pytest.raises(ObsKeyError, match="did you mean.*cell_type"),
    ):
        select_columns(store.obs, ["celltype"], ["GEX"], store.path)
    with open_multiome(small_h5ad) as store:
        gex_only = select_columns(store.obs, None, ["GEX"], store.path, list(store.modalities))
        assert "GEX_n_counts" in gex_only and "cell_type" in gex_only and "ATAC_nCount_peaks" not in gex_only


def test_direct_reads_span_back_to_back_chunks_and_gaps_alike(tmp_path, rng):
    """Chunks that lie back to back in the file are read with one system call per run; a file
    whose chunks interleave with another dataset's (written in turns) breaks the runs; every read
    equals h5py's, whatever runs and chunk edges it crosses."""
    import os

    from gpuload.formats.csr import DirectArray

    path = tmp_path / "chunks.h5"
    values = rng.standard_normal(9_000).astype(np.float32)
    with h5py.File(path, "w", rdcc_nbytes=0) as f:  # no chunk cache: a chunk is placed when written
        f.create_dataset("back_to_back", data=values, chunks=(100,))
        a = f.create_dataset("turns", shape=(0,), maxshape=(None,), chunks=(100,), dtype=np.float32)
        b = f.create_dataset("other", shape=(0,), maxshape=(None,), chunks=(100,), dtype=np.float32)
        for start in range(0, values.size, 300):  # three chunks of one, then three of the other
            for d in (a, b):
                d.resize((start + 300,))
                d[start : start + 300] = values[start : start + 300]
    with h5py.File(path, "r") as f, open(path, "rb", buffering=0) as raw:
        size = os.fstat(raw.fileno()).st_size
        runs = {}
        for name in ("back_to_back", "turns"):
            direct = DirectArray.open_direct(f[name], raw.fileno(), size)
            assert direct is not None
            runs[name] = np.unique(direct.run_end).size
            for lo, hi in [(0, 9_000), (50, 8_950), (299, 301), (250, 1_250), (0, 1), (8_999, 9_000)]:
                out = np.empty(hi - lo, dtype=np.float32)
                direct.read_into(lo, hi, out)
                np.testing.assert_array_equal(out, f[name][lo:hi])
        assert runs["back_to_back"] <= 2 and runs["turns"] >= 25, runs  # 30 turns of 3 chunks
