"""Real cells in the layouts users have them: the 500 REAL BMMC cells of ``../shared/data`` read
as per-modality files (``{"GEX": gex.h5ad, "ATAC": atac.h5ad}``, the competition's layout) and as
an ``.h5mu``, every batch compared with anndata's / mudata's own rows (:mod:`tests.reference`),
shuffled, dense and sparse, on the CPU and the simulated-GPU faces; then pairs written here with
anndata from those cells: another order and cells missing on each side, duplicate names, a list
of pairs, DDP shares, resume, preload, features, transforms and weights. Skipped, with the
reason, where ``../shared`` is absent."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from gpuload import MultiomeLoader, open_multiome
from gpuload.errors import ArgumentError, GpuloadError, SchemaError
from tests.conftest import FACES, REAL_ATAC, REAL_GEX, REAL_H5MU, face_cells, file_digest
from tests.reference import Reference, check_batch, check_epoch, h5mu_reference, pair_reference

md = pytest.importorskip("mudata")

OUTPUTS = ["dense", "sparse_csr"]


@pytest.fixture(scope="module")
def real(real_pair, real_h5mu) -> dict[str, ad.AnnData]:
    return dict(zip(("GEX", "ATAC"), real_pair, strict=True))


def _write(adata: ad.AnnData, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-unique names, on purpose in one test
        adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def gappy_pair(real, tmp_path_factory) -> tuple[dict[str, Path], Reference]:
    """GEX without its last 60 cells; ATAC without its first 40, stored in another order, as CSR,
    with an obsm array and a shared obs column of other values: cells missing on each side, a
    join by name, mixed encodings."""
    folder = tmp_path_factory.mktemp("gappy")
    gex = real["GEX"][:440].copy()
    atac = real["ATAC"][40 + np.random.default_rng(5).permutation(460)].copy()
    atac.X = sp.csr_matrix(atac.X)
    atac.obsm["X_lsi"] = np.random.default_rng(6).random((atac.n_obs, 4))
    atac.obs["pseudotime_order_GEX"] = -1.0  # differs from GEX's: a shared column is the first's
    files = {"GEX": _write(gex, folder / "gex.h5ad"), "ATAC": _write(atac, folder / "atac.h5ad")}
    return files, pair_reference({"GEX": gex, "ATAC": atac})


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("device", FACES)
@pytest.mark.parametrize("layout", ["files", "h5mu"])
def test_real_layouts_batches_equal_the_reference(real, layout, device, output):
    data = {"GEX": REAL_GEX, "ATAC": REAL_ATAC} if layout == "files" else REAL_H5MU
    ref = pair_reference(real) if layout == "files" else h5mu_reference(REAL_H5MU)
    before = {p: file_digest(p) for p in (REAL_GEX, REAL_ATAC, REAL_H5MU)}
    loader = MultiomeLoader(
        data,
        batch_size=48,
        seed=3,
        device=device,
        output=output,
        chunk_size=16,
        window=4,
        **face_cells(device, 500),
    )
    assert [m.name for m in loader.modalities] == ["GEX", "ATAC"]
    assert list(loader.store.obs.columns) == list(ref.obs.columns)
    assert list(loader.store.obs.index) == list(ref.cells)
    seen = check_epoch(loader, ref)
    assert sorted(seen) == loader.positions.tolist() and len(seen) == len(set(seen))
    assert seen != sorted(seen)  # shuffled
    assert loader.positions.size == (25 if device == "cudasim" else 500)
    assert {p: file_digest(p) for p in (REAL_GEX, REAL_ATAC, REAL_H5MU)} == before


def test_real_files_obs_naming(real):
    """Shared columns under their names (cell_type: categories of both files, GEX's order while
    GEX holds every cell), each file's own as ``mod:col``; split and single-modality obs work."""
    with open_multiome({"GEX": REAL_GEX, "ATAC": REAL_ATAC}) as store:
        assert list(store.obs["cell_type"].cat.categories) == list(
            real["GEX"].obs["cell_type"].cat.categories
        )
        assert "GEX:size_factors" in store.obs and "ATAC:nCount_peaks" in store.obs and "batch" in store.obs
        assert store.layers == ["counts"] and store.measured == {}
    loader = MultiomeLoader(
        {"GEX": REAL_GEX, "ATAC": REAL_ATAC}, modalities="GEX", split="train", batch_size=500, device="cpu"
    )
    (batch,) = list(loader)
    assert len(batch["index"]) == (real["GEX"].obs["batch"] == "s1d1").sum()
    assert not any(key.startswith("ATAC:") for key in batch["obs"]) and "GEX:phase" in batch["obs"]


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("device", FACES)
def test_pair_in_another_order_with_cells_missing_on_each_side(gappy_pair, device, output):
    files, ref = gappy_pair
    loader = MultiomeLoader(
        files,
        batch_size=40,
        seed=1,
        device=device,
        output=output,
        obsm_keys=["ATAC:X_lsi"],
        **face_cells(device, 500),
    )
    assert list(loader.store.obs.index) == list(ref.cells) and len(ref.cells) == 500
    measured = loader.store.measured
    assert measured["GEX"].sum() == 440 and measured["ATAC"].sum() == 460
    lsi = ref.modalities["ATAC"].obsm["X_lsi"]
    seen = []
    for batch in loader:
        rows = check_batch(batch, ref, loader)
        seen.extend(rows.tolist())
        names = ref.cells[rows]
        has = np.asarray(names.isin(ref.modalities["ATAC"].obs_names))
        got = batch["obsm"]["ATAC:X_lsi"].cpu().numpy()
        want = lsi[ref.modalities["ATAC"].obs_names.get_indexer(names[has])]
        np.testing.assert_allclose(got[has], want, rtol=1e-6)
        assert np.isnan(got[~has]).all()
    assert sorted(seen) == loader.positions.tolist()
    # ATAC holds 60 cells GEX lacks: cell_type's categories are the union, sorted
    categories = loader.categories("cell_type")
    assert categories == sorted(categories)
    pseudotime = loader.store.obs["pseudotime_order_GEX"].to_numpy()
    assert (pseudotime[440:] == -1).all() and not (pseudotime[:440] == -1).any()


def test_duplicate_obs_names_are_refused_naming_file_and_name(real, tmp_path):
    atac = real["ATAC"][:50].copy()
    names = list(atac.obs_names)
    names[7] = names[3]
    atac.obs_names = names
    path = _write(atac, tmp_path / "dup.h5ad")
    with pytest.raises(
        SchemaError, match=rf"dup.h5ad: obs_names are not unique \('{names[3]}' appears 2 times\)"
    ):
        open_multiome({"GEX": REAL_GEX, "ATAC": path})
    with pytest.raises(SchemaError, match="dup.h5ad: obs_names are not unique"):
        MultiomeLoader({"GEX": REAL_GEX, "ATAC": path}, device="cpu")


def test_pair_errors_name_the_file(real, tmp_path):
    renamed = real["ATAC"][:20].copy()
    renamed.obs_names = [f"x{i}" for i in range(20)]
    path = _write(renamed, tmp_path / "renamed.h5ad")
    with pytest.raises(SchemaError, match=r"renamed.h5ad: none of its obs_names is in an earlier file"):
        open_multiome({"GEX": REAL_GEX, "ATAC": path})
    both = ad.concat([real["GEX"], real["ATAC"]], axis=1, merge="first")
    both_path = _write(both, tmp_path / "both.h5ad")
    with pytest.raises(SchemaError, match=r"both.h5ad: var\['feature_types'\] names several modalities"):
        open_multiome({"GEX": both_path, "ATAC": REAL_ATAC})
    with pytest.raises(ArgumentError, match=r"is a MuData file; a \{modality: file\} mapping"):
        open_multiome({"GEX": REAL_GEX, "ATAC": REAL_H5MU})
    with pytest.raises(ArgumentError, match="empty mapping"):
        open_multiome({})
    with pytest.raises(ArgumentError, match=r"layer names modalities \['RNA'\]"):
        open_multiome({"GEX": REAL_GEX, "ATAC": REAL_ATAC}, layer={"RNA": "counts"})
    with pytest.raises(GpuloadError, match=r"no layer 'spliced'"):
        open_multiome({"GEX": REAL_GEX, "ATAC": REAL_ATAC}, layer={"GEX": "spliced"})
    with pytest.raises(ArgumentError, match="more than once"):
        open_multiome([{"GEX": REAL_GEX, "ATAC": REAL_ATAC}, {"GEX": REAL_GEX, "ATAC": path}])


def test_list_of_two_pairs_reads_as_their_concatenation(real, tmp_path):
    """Two samples, each a pair (the second's ATAC in another order): cells one after the other,
    ``batch["file"]`` says the sample."""
    samples, adatas = [], []
    for i, (lo, hi) in enumerate([(0, 230), (230, 500)]):
        gex, atac = real["GEX"][lo:hi].copy(), real["ATAC"][lo:hi].copy()
        if i == 1:
            atac = atac[::-1].copy()
        samples.append(
            {"GEX": _write(gex, tmp_path / f"gex{i}.h5ad"), "ATAC": _write(atac, tmp_path / f"atac{i}.h5ad")}
        )
        adatas.append((gex, atac))
    ref = pair_reference(
        {"GEX": ad.concat([g for g, _ in adatas]), "ATAC": ad.concat([a for _, a in adatas])}
    )
    loader = MultiomeLoader(samples, batch_size=64, seed=4, device="cpu")
    assert len(loader.files) == 2 and "GEX:" in loader.files[1] and "atac1.h5ad" in loader.files[1]
    seen = []
    for batch in loader:
        rows = check_batch(batch, ref, loader)
        np.testing.assert_array_equal(batch["file"].numpy(), (rows >= 230).astype(np.int64))
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(500))


def test_ddp_shares_resume_and_preload(gappy_pair):
    files, ref = gappy_pair
    options = {"batch_size": 32, "seed": 7, "device": "cpu", "shuffle": "full"}
    shares = [MultiomeLoader(files, rank=r, world_size=3, **options) for r in range(3)]
    rows = [check_epoch(share, ref) for share in shares]
    assert len({len(r) for r in rows}) == 1 and set().union(*rows) == set(range(500))  # padded to equal
    full = MultiomeLoader(files, **options)
    expected = np.concatenate(full.batch_rows()).tolist()
    first = MultiomeLoader(files, **options)
    it = iter(first)
    done = [check_batch(next(it), ref, first).tolist() for _ in range(5)]
    state = first.state_dict()
    resumed = MultiomeLoader(files, **options)
    resumed.load_state_dict(state)
    assert sum(done, []) + check_epoch(resumed, ref) == expected
    preloaded = MultiomeLoader(files, preload=True, **options)
    assert sorted(check_epoch(preloaded, ref)) == list(range(500))


def test_features_transforms_and_statistics(real):
    """Counts through the competition's own formulas give the files' X: GEX ``log1p(counts /
    size_factors)`` (``GEX:size_factors``, the GEX file's own column), ATAC binarized; on a
    selection of features and the training split."""
    keep = list(real["GEX"].var_names[::4])
    loader = MultiomeLoader(
        {"GEX": REAL_GEX, "ATAC": REAL_ATAC},
        layer="counts",
        transform={"GEX": "log1p_size_factor", "ATAC": "binarize"},
        features={"GEX": keep, "ATAC": {"top": 100}},
        split="train",
        batch_size=50,
        device="cpu",
    )
    assert loader.var_names("GEX") == keep and len(loader.var_names("ATAC")) == 100
    ref = pair_reference(real)  # X is what the transforms of the counts give
    seen = check_epoch(loader, ref, rtol=1e-5)
    assert sorted(seen) == np.flatnonzero(real["GEX"].obs["batch"] == "s1d1").tolist()
    tfidf = MultiomeLoader(
        {"GEX": REAL_GEX, "ATAC": REAL_ATAC}, modalities="ATAC", layer="counts", transform="tfidf",
        split="train", batch_size=500, shuffle=False, device="cpu",
    )  # fmt: skip
    counts = real["ATAC"].layers["counts"].toarray()[np.asarray(real["ATAC"].obs["batch"] == "s1d1")]
    (batch,) = list(tfidf)
    col_sums = counts.sum(axis=0)
    idf = np.divide(counts.shape[0], col_sums, out=np.zeros_like(col_sums), where=col_sums > 0)
    want = np.log1p(1e4 * counts / counts.sum(axis=1, keepdims=True)) * np.log1p(idf)  # muon's
    np.testing.assert_allclose(batch["ATAC"].numpy(), want, rtol=1e-4, atol=1e-5)


def test_weights_balance_an_obs_column_of_the_pair(gappy_pair):
    files, ref = gappy_pair
    loader = MultiomeLoader(files, weights="cell_type", batch_size=50, seed=2, device="cpu")
    seen = check_epoch(loader, ref)
    assert len(seen) == 500
    drawn = ref.obs["cell_type"].iloc[seen].value_counts()
    assert drawn.max() < 3 * 500 / len(drawn)  # balanced: no type near its natural share of 89/500
    own = MultiomeLoader(files, weights="GEX:phase", batch_size=50, seed=2, device="cpu")
    assert not ref.obs["GEX:phase"].iloc[check_epoch(own, ref)].isna().any()  # missing weighs 0
