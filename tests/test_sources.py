"""Beyond one h5ad: MuData ``.h5mu`` files (written by mudata), several h5ad files as one dataset
(written by anndata), and obsm arrays in the batches, each compared with mudata / anndata + scipy
references on the CPU and the simulated-GPU faces."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from gpuload import MultiomeLoader
from gpuload.errors import GpuloadError, ObsKeyError, SchemaError
from gpuload.formats import open_multiome
from tests.conftest import FACES, PARTS, SMALL, face_cells, file_digest

md = pytest.importorskip("mudata")
G = SMALL["n_genes"]


def _mudata(adata: ad.AnnData, rna_rows: np.ndarray, atac_rows: np.ndarray) -> md.MuData:
    """A MuData of the small file's GEX (``rna``) and ATAC (``atac``) columns, each modality
    holding only the given cells (in the given order)."""
    rna = adata[rna_rows, :G].copy()
    atac = adata[atac_rows, G:].copy()
    rna.obs = rna.obs[["cell_type", "GEX_n_genes"]]
    atac.obs = atac.obs[["ATAC_nCount_peaks"]]
    rna.obsm = {"X_pca": np.random.default_rng(3).random((rna.n_obs, 5))}
    atac.X = sp.csc_matrix(atac.X)  # another encoding: read through the row-major sidecar
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData({"rna": rna, "atac": atac})
        mdata.obsm["joint"] = np.random.default_rng(4).random((mdata.n_obs, 3)).astype(np.float32)
    return mdata


@pytest.fixture(scope="module")
def paired_h5mu(small_adata, data_dir):
    """Every cell in both modalities."""
    path = data_dir / "paired.h5mu"
    rows = np.arange(small_adata.n_obs)
    mdata = _mudata(small_adata, rows, rows)
    mdata.write(path)
    return path, md.read_h5mu(path)


@pytest.fixture(scope="module")
def gappy_h5mu(small_adata, data_dir):
    """A third of the cells lack ATAC, a tenth lack RNA, and ATAC stores its cells shuffled."""
    path = data_dir / "gappy.h5mu"
    rng = np.random.default_rng(8)
    n = small_adata.n_obs
    rna_rows = np.sort(rng.choice(n, size=n - n // 10, replace=False))
    atac_rows = rng.permutation(np.setdiff1d(np.arange(n), rng.choice(n, size=n // 3, replace=False)))
    mdata = _mudata(small_adata, rna_rows, atac_rows)
    mdata.write(path)
    return path, md.read_h5mu(path)


def _expected(mdata: md.MuData, mod: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dense rows of modality ``mod`` for global cells ``rows``, zero where it lacks them;
    which cells it has)."""
    modality = mdata[mod]
    names = mdata.obs_names[rows]
    has = np.isin(names, modality.obs_names)
    out = np.zeros((rows.size, modality.n_vars), dtype=np.float32)
    out[has] = modality[names[has]].X.toarray()
    return out, has


@pytest.mark.parametrize("device", FACES)
@pytest.mark.parametrize("fixture", ["paired_h5mu", "gappy_h5mu"])
def test_h5mu_batches_equal_mudata(request, fixture, device):
    path, mdata = request.getfixturevalue(fixture)
    before = file_digest(path)
    loader = MultiomeLoader(
        path,
        batch_size=64,
        seed=2,
        device=device,
        obsm_keys=["joint", "rna:X_pca"],
        chunk_size=16,
        window=4,
        **face_cells(device, 580),
    )
    assert [m.name for m in loader.modalities] == ["rna", "atac"]
    seen = []
    for batch in loader:
        rows = batch["index"].numpy()
        seen.extend(rows.tolist())
        for mod in ("rna", "atac"):
            expected, has = _expected(mdata, mod, rows)
            np.testing.assert_allclose(batch[mod].numpy(), expected, rtol=1e-6)
            assert not batch["mask"][mod].numpy()[~has].any()  # a missing cell: zero row, mask False
            np.testing.assert_array_equal(batch["mask"][mod].numpy(), (expected != 0).any(axis=1))
        np.testing.assert_allclose(batch["obsm"]["joint"].numpy(), mdata.obsm["joint"][rows])
        pca, has = batch["obsm"]["rna:X_pca"].numpy(), _expected(mdata, "rna", rows)[1]
        np.testing.assert_allclose(
            pca[has], mdata["rna"][mdata.obs_names[rows][has]].obsm["X_pca"], rtol=1e-6
        )
        assert np.isnan(pca[~has]).all()
        # From the modality's own obs: mudata 0.4 no longer copies it into the global obs.
        cell_type = mdata["rna"].obs["cell_type"].reindex(mdata.obs_names[rows])
        assert batch["obs"]["rna:cell_type"] == [None if pd.isna(v) else str(v) for v in cell_type]
    assert sorted(seen) == loader.positions.tolist() and loader.positions.size == len(
        face_cells(device, 580).get("subset", range(mdata.n_obs))
    )
    assert file_digest(path) == before


@pytest.mark.parametrize("device", FACES)
def test_h5mu_transforms_features_sparse_and_one_modality(gappy_h5mu, device):
    path, mdata = gappy_h5mu
    keep = list(mdata["rna"].var_names[::3])
    loader = MultiomeLoader(
        path,
        batch_size=100,
        shuffle=False,
        device=device,
        transform={"rna": "log1p", "atac": "binarize"},
        features={"rna": keep},
        output="sparse_csr",
        **face_cells(device, 580),
    )
    assert loader.var_names("rna") == keep
    for batch in loader:
        rows = batch["index"].numpy()
        rna = _expected(mdata, "rna", rows)[0][:, ::3]
        np.testing.assert_allclose(batch["rna"].to_dense().numpy(), np.log1p(rna), rtol=1e-5)
        atac = _expected(mdata, "atac", rows)[0]
        np.testing.assert_array_equal(batch["atac"].to_dense().numpy(), (atac > 0).astype(np.float32))
    only = MultiomeLoader(path, modalities="atac", batch_size=600, shuffle=False, device="cpu")
    (batch,) = list(only)
    assert set(batch) >= {"atac", "mask"} and "rna" not in batch
    assert set(batch["obs"]) == {"atac:ATAC_nCount_peaks"}  # the modality's own obs columns


def test_h5mu_layers_and_errors(gappy_h5mu, tmp_path):
    path, mdata = gappy_h5mu
    counts = MultiomeLoader(path, layer="counts", batch_size=600, shuffle=False, device="cpu")
    (batch,) = list(counts)
    expected = np.zeros((mdata.n_obs, G), dtype=np.float32)
    has = np.isin(mdata.obs_names, mdata["rna"].obs_names)
    expected[has] = mdata["rna"][mdata.obs_names[has]].layers["counts"].toarray()
    np.testing.assert_array_equal(batch["rna"].numpy(), expected)
    mixed = MultiomeLoader(path, layer={"rna": "counts"}, batch_size=600, shuffle=False, device="cpu")
    np.testing.assert_array_equal(
        next(iter(mixed))["atac"].numpy(), _expected(mdata, "atac", np.arange(mdata.n_obs))[0]
    )
    with pytest.raises(GpuloadError, match=r"gappy.h5mu.*unknown modality 'GEX'.*'rna', 'atac'"):
        MultiomeLoader(path, modalities=("GEX", "ATAC"))
    with pytest.raises(GpuloadError, match=r"gappy.h5mu.*no layer 'spliced'"):
        MultiomeLoader(path, layer="spliced")
    with pytest.raises(GpuloadError, match=r"layer names modalities \['protein'\]"):
        MultiomeLoader(path, layer={"protein": "counts"})
    with pytest.raises(ObsKeyError, match=r"obsm has no key 'X_umap'.*joint"):
        MultiomeLoader(path, obsm_keys=["X_umap"])
    bad = tmp_path / "bad-obsmap.h5mu"
    mdata.write(bad)
    import h5py

    with h5py.File(bad, "r+") as f:
        f["obsmap/atac"][:2] = 5  # two cells claim the same ATAC row
    with pytest.raises(
        SchemaError, match=r"bad-obsmap.h5mu: obsmap/atac must give each global cell a distinct row"
    ):
        MultiomeLoader(bad)


def test_bmmc_embeddings_in_batches(small_h5ad, small_adata):
    keys = ["GEX_X_pca", "ATAC_lsi_full", "ATAC_umap"]
    loader = MultiomeLoader(small_h5ad, obsm_keys=keys, batch_size=128, device="cpu")
    for batch in loader:
        rows = batch["index"].numpy()
        for key in keys:
            np.testing.assert_allclose(batch["obsm"][key].numpy(), small_adata.obsm[key][rows], rtol=1e-6)
    with pytest.raises(SchemaError, match=r"obsm\['ATAC_gene_activity'\] is a sparse csr_matrix"):
        MultiomeLoader(small_h5ad, obsm_keys=["ATAC_gene_activity"])


def test_obsm_errors_and_h5ad_obsm(small_adata, tmp_path):
    adata = small_adata.copy()
    adata.obsm["X_pca"] = np.random.default_rng(0).random((adata.n_obs, 4))
    adata.obsm["sparse"] = sp.random(adata.n_obs, 4, density=0.5, format="csr")
    path = tmp_path / "obsm.h5ad"
    adata.write_h5ad(path)
    loader = MultiomeLoader(path, obsm_keys=["X_pca"], batch_size=50, device="cpu")
    for batch in loader:
        out = batch["obsm"]["X_pca"]
        assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == (50, 4)
        np.testing.assert_allclose(out.numpy(), adata.obsm["X_pca"][batch["index"].numpy()], rtol=1e-6)
    with pytest.raises(SchemaError, match=r"obsm.h5ad: obsm\['sparse'\] is a sparse csr_matrix"):
        MultiomeLoader(path, obsm_keys=["sparse"])
    with pytest.raises(GpuloadError, match="repeats a key"):
        MultiomeLoader(path, obsm_keys=["X_pca", "X_pca"])


# -- several files as one dataset ---------------------------------------------------------------
@pytest.mark.parametrize("device", FACES)
def test_files_read_as_their_concatenation(parts, small_h5ad, small_adata, device):
    """Over the three parts, every batch equals the one of the whole file: same cells, values,
    obs; batch["file"] says which part each came from."""
    digests = [file_digest(p) for p in parts]
    kwargs = dict(
        batch_size=48, seed=3, device=device, chunk_size=16, window=4, obs_keys=["cell_type", "batch"]
    )
    stacked = MultiomeLoader(parts, **kwargs, obsm_keys=["X_pca"])
    whole = MultiomeLoader(small_h5ad, **{**kwargs, "device": "cpu"})
    assert len(stacked) == len(whole) and stacked.files == tuple(parts)
    x = small_adata.X.tocsr()
    for a, b in zip(stacked, whole, strict=True):
        rows = a["index"].numpy()
        np.testing.assert_array_equal(rows, b["index"].numpy())
        np.testing.assert_array_equal(a["file"].numpy(), np.searchsorted(PARTS, rows, side="right") - 1)
        assert a["file"].dtype == torch.int64
        np.testing.assert_allclose(a["GEX"].numpy(), x[rows, :G].toarray(), rtol=1e-6)
        np.testing.assert_allclose(a["ATAC"].numpy(), x[rows, G:].toarray(), rtol=1e-6)
        assert a["obs"]["cell_type"] == b["obs"]["cell_type"]
        np.testing.assert_allclose(a["obsm"]["X_pca"].numpy()[:, 0], rows * 2)
        assert "file" not in b
    assert [file_digest(p) for p in parts] == digests


def test_files_subsets_splits_and_transforms_are_over_the_union(parts, small_h5ad):
    kwargs = dict(
        batch_size=64,
        shuffle=False,
        device="cpu",
        split="train",
        subset="GEX_n_genes > 5",
        layer="counts",
        transform={"GEX": "normalize_total", "ATAC": "tfidf"},
        features={"ATAC": {"top": 100}},
    )
    a, b = MultiomeLoader(parts, **kwargs), MultiomeLoader(small_h5ad, **kwargs)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert a.var_names("ATAC") == b.var_names("ATAC")
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x["GEX"], y["GEX"])
        torch.testing.assert_close(x["ATAC"], y["ATAC"])


def test_each_rank_opens_only_the_files_it_reads(parts):
    """In file order, rank 0 of 2 reads cells 0-299: the first two parts only."""
    loader = MultiomeLoader(parts, shuffle=False, rank=0, world_size=2, batch_size=50, device="cpu")
    list(loader)
    assert loader.store.reader.touched == {0, 1}
    other = MultiomeLoader(parts, shuffle=False, rank=1, world_size=2, batch_size=50, device="cpu")
    list(other)
    assert other.store.reader.touched == {1, 2}


def test_obs_union_merges_columns_and_categories(small_adata, tmp_path):
    a, b = small_adata[:100].copy(), small_adata[100:160].copy()
    a.obs = a.obs[["cell_type", "GEX_n_genes"]]
    b.obs = pd.DataFrame(
        {"cell_type": pd.Categorical(["new type"] * 60), "site": ["s9"] * 60}, index=b.obs_names
    )
    paths = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    a.write_h5ad(paths[0])
    b.write_h5ad(paths[1])
    loader = MultiomeLoader(paths, batch_size=160, shuffle=False, device="cpu")
    (batch,) = list(loader)
    cats = loader.categories("cell_type")
    assert cats == sorted([*a.obs["cell_type"].cat.categories, "new type"])  # the lists differ: sorted
    assert batch["obs"]["cell_type"] == [*a.obs["cell_type"].astype(str), *["new type"] * 60]
    genes = batch["obs"]["GEX_n_genes"].numpy()
    assert np.isnan(genes[100:]).all() and (genes[:100] == a.obs["GEX_n_genes"].to_numpy()).all()
    assert (batch["obs_codes"]["site"].numpy()[:100] == -1).all()


def test_files_errors(parts, small_adata, tmp_path):
    other = small_adata[:50].copy()
    other.var_names = [*other.var_names[:7], "NOT-A-GENE", *other.var_names[8:]]
    renamed = tmp_path / "renamed.h5ad"
    other.write_h5ad(renamed)
    with pytest.raises(
        SchemaError, match=r"renamed.h5ad: var differs from .*part0.h5ad's at feature 7: 'NOT-A-GENE'"
    ):
        MultiomeLoader([parts[0], renamed])
    narrow = tmp_path / "narrow.h5ad"
    small_adata[:50, :-3].copy().write_h5ad(narrow)
    with pytest.raises(SchemaError, match=r"narrow.h5ad: 1017 features, but .*part0.h5ad has 1020"):
        MultiomeLoader([parts[0], narrow])
    with pytest.raises(GpuloadError, match="more than once"):
        MultiomeLoader([parts[0], parts[1], parts[0]])
    with pytest.raises(GpuloadError, match="empty list"):
        MultiomeLoader([])
    with pytest.raises(GpuloadError, match=r"missing.h5ad: no such file"):
        MultiomeLoader([parts[0], tmp_path / "missing.h5ad"])
    no_pca = tmp_path / "no_pca.h5ad"
    small_adata[:50].copy().write_h5ad(no_pca)
    with pytest.raises(ObsKeyError, match=r"no_pca.h5ad: obsm has no key 'X_pca'"):
        MultiomeLoader([parts[0], no_pca], obsm_keys=["X_pca"])


def test_bad_value_names_its_file_and_row(small_adata, tmp_path):
    a, b = small_adata[:40].copy(), small_adata[40:80].copy()
    b.X = b.X.tocsr()
    b.X.data[b.X.indptr[5]] = np.nan  # row 5 of the second file
    paths = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    a.write_h5ad(paths[0])
    b.write_h5ad(paths[1])
    with pytest.raises(GpuloadError, match=r"b.h5ad:X row 5: a stored value is NaN"):
        list(MultiomeLoader(paths, shuffle=False, batch_size=10, device="cpu"))


def test_info_describes_an_h5mu(gappy_h5mu, capsys):
    from gpuload.cli import main

    assert main(["info", str(gappy_h5mu[0])]) == 0
    out = capsys.readouterr().out
    assert (
        f"{gappy_h5mu[1].n_obs} cells x 1,020 features" in out
        and "rna 120 columns" in out
        and "atac 900 columns" in out
    )
    assert "rna/X: csr" in out and "atac/X: csc" in out
    with open_multiome(gappy_h5mu[0]) as store:
        assert {"joint", "rna:X_pca"} <= set(store.obsm_keys)


def test_h5mu_files_as_one_dataset(gappy_h5mu, tmp_path):
    """Two .h5mu files in a list: the second's cells follow the first's, each paired its own way."""
    import shutil

    path, mdata = gappy_h5mu
    copy = tmp_path / "copy.h5mu"
    shutil.copy(path, copy)
    n = mdata.n_obs
    loader = MultiomeLoader([path, copy], batch_size=100, seed=1, device="cpu", obsm_keys=["joint"])
    assert len(loader.positions) == 2 * n
    for batch in loader:
        rows, files = batch["index"].numpy(), batch["file"].numpy()
        np.testing.assert_array_equal(files, rows >= n)
        for mod in ("rna", "atac"):
            np.testing.assert_allclose(batch[mod].numpy(), _expected(mdata, mod, rows % n)[0], rtol=1e-6)
        np.testing.assert_allclose(batch["obsm"]["joint"].numpy(), mdata.obsm["joint"][rows % n])


# -- cases a review found ------------------------------------------------------------------------
def test_h5mu_float16_and_dense_modalities_alone_and_in_a_list(small_adata, tmp_path):
    """A float16 CSR modality is widened like a float16 h5ad; an h5mu with one dense modality
    reads alone and inside a list (whose direct reads it cannot take)."""
    rows = np.arange(small_adata.n_obs)
    mdata = _mudata(small_adata, rows, rows)
    mdata["atac"].X = mdata["atac"].X.toarray()
    path = tmp_path / "f16-dense.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata.write(path)
    import h5py

    with h5py.File(path, "r+") as f:  # scipy has no float16 sparse matrices: rewrite the values
        values = f["mod/rna/X/data"][()].astype(np.float16)
        del f["mod/rna/X/data"]
        f["mod/rna/X/data"] = values
    for data in (path, [path]):
        (batch,) = list(MultiomeLoader(data, batch_size=600, shuffle=False, device="cpu"))
        rna = small_adata.X[:, :G].toarray().astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(batch["rna"].numpy(), rna)
        np.testing.assert_allclose(batch["atac"].numpy(), small_adata.X[:, G:].toarray(), rtol=1e-6)


def test_files_with_moved_modality_columns_are_refused(small_adata, tmp_path):
    a, b = small_adata[:20].copy(), small_adata[20:40].copy()
    types = b.var["feature_types"].astype(str).to_numpy()
    types[[0, G]] = types[[G, 0]]  # same names, one gene and one peak swap modalities
    b.var["feature_types"] = pd.Categorical(types)
    paths = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    a.write_h5ad(paths[0])
    b.write_h5ad(paths[1])
    with pytest.raises(
        SchemaError, match=r"b.h5ad: the columns of modality '(GEX|ATAC)' are not those of .*a.h5ad"
    ):
        MultiomeLoader(paths)


def test_obs_union_keeps_bools_and_sorts_differing_categories(small_adata, tmp_path):
    a, b = small_adata[:30].copy(), small_adata[30:60].copy()
    a.obs = pd.DataFrame({"flag": [True, False] * 15, "kind": pd.Categorical(["z"] * 30)}, index=a.obs_names)
    b.obs = pd.DataFrame({"kind": pd.Categorical(["b", "a"] * 15)}, index=b.obs_names)
    paths = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    a.write_h5ad(paths[0])
    b.write_h5ad(paths[1])
    loader = MultiomeLoader(paths, batch_size=60, shuffle=False, device="cpu")
    (batch,) = list(loader)
    assert batch["obs"]["flag"].dtype == torch.bool
    assert batch["obs"]["flag"][:30].tolist() == [True, False] * 15 and not batch["obs"]["flag"][30:].any()
    assert loader.categories("kind") == ["a", "b", "z"]  # as anndata.concat merges them
    assert batch["obs"]["kind"] == ["z"] * 30 + ["b", "a"] * 15
    one = MultiomeLoader(np.array([str(p) for p in paths]), batch_size=60, device="cpu")  # an array of paths
    assert len(one.files) == 2


def test_h5mu_tfidf_counts_the_cells_the_modality_measured(gappy_h5mu):
    """TF-IDF's n is the selected cells ATAC has, as muon computes it on mdata['atac']."""
    path, mdata = gappy_h5mu
    loader = MultiomeLoader(
        path, modalities="atac", transform="tfidf", batch_size=1000, shuffle=False, device="cpu"
    )
    (batch,) = list(loader)
    atac = mdata["atac"]
    x = atac.X.toarray().astype(np.float64)
    tf = x / x.sum(axis=1, keepdims=True).clip(min=1e-12)
    col = x.sum(axis=0)
    idf = np.where(col > 0, atac.n_obs / np.where(col > 0, col, 1), 0.0)
    expected = np.log1p(tf * 1e4) * np.log1p(idf)
    has = np.isin(mdata.obs_names, atac.obs_names)
    got = batch["atac"].numpy()[has]
    order = pd.Index(atac.obs_names).get_indexer(mdata.obs_names[has])
    np.testing.assert_allclose(got, expected[order], rtol=1e-4, atol=1e-5)
    assert not batch["atac"].numpy()[~has].any()
