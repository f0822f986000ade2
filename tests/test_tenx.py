"""Real files as 10x users have them: a 10x feature-barcode matrix ``.h5`` (written with h5py to
10x's specification, :mod:`tests.tenx_writer`) read directly, and one h5ad with 10x's modality
names (``"Gene Expression"`` / ``"Peaks"``, written by anndata). Both are made from the REAL
500-cell BMMC pair in ``../shared/data`` (skipped where it is absent) and from synthetic
counts, and every batch is compared with ``scanpy.read_10x_h5(path, gex_only=False)`` /
anndata's rows, shuffled, dense and sparse, on the CPU and simulated-GPU faces."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from gpuload import MultiomeLoader
from gpuload.errors import ArgumentError, InputFileError, SchemaError
from gpuload.formats import open_multiome
from tests.conftest import FACES, face_cells, file_digest
from tests.tenx_writer import real_as_10x_h5, real_as_10x_h5ad, write_10x_h5

sc = pytest.importorskip("scanpy")
TENX = {"GEX": "Gene Expression", "ATAC": "Peaks"}  # batch key -> the data's modality name


@pytest.fixture(scope="module")
def real_10x(real_pair, tmp_path_factory) -> tuple:
    """The real pair as a 10x .h5, and scanpy's reading of it."""
    path = real_as_10x_h5(real_pair, tmp_path_factory.mktemp("tenx") / "filtered_feature_bc_matrix.h5")
    return path, sc.read_10x_h5(path, gex_only=False)


@pytest.fixture(scope="module")
def real_10x_h5ad(real_pair, tmp_path_factory) -> tuple:
    """The real pair as one h5ad with 10x's modality names, and the AnnData written."""
    path = tmp_path_factory.mktemp("tenx_h5ad") / "multiome_10x_names.h5ad"
    return path, real_as_10x_h5ad(real_pair, path)


@pytest.mark.parametrize("output", ["dense", "sparse_csr"])
@pytest.mark.parametrize("device", FACES)
@pytest.mark.parametrize("layout", ["real_10x", "real_10x_h5ad"])
def test_real_cells_in_10x_layouts_equal_the_reference_rows(request, layout, device, output):
    path, reference = request.getfixturevalue(layout)
    before = file_digest(path)
    x = sp.csr_matrix(reference.X)
    types = reference.var["feature_types"].to_numpy()
    loader = MultiomeLoader(
        path,
        modalities=TENX,
        batch_size=48,
        seed=5,
        chunk_size=16,
        window=4,
        device=device,
        output=output,
        **face_cells(device, reference.n_obs),
    )
    assert [m.name for m in loader.modalities] == ["GEX", "ATAC"]
    assert loader.var_names("ATAC") == list(reference.var_names[types == "Peaks"])
    seen = []
    for batch in loader:
        rows = batch["index"].numpy()
        seen.extend(rows.tolist())
        for key, name in TENX.items():
            got = batch[key].to_dense() if output == "sparse_csr" else batch[key]
            expected = x[rows][:, np.flatnonzero(types == name)].toarray()
            np.testing.assert_array_equal(got.numpy(), expected.astype(np.float32))
    assert sorted(seen) == loader.positions.tolist()  # every selected cell exactly once
    assert loader.positions.size == (reference.n_obs if device == "cpu" else 25)
    assert file_digest(path) == before


def test_10x_store_matches_scanpy(real_10x):
    path, reference = real_10x
    with open_multiome(path) as store:
        assert list(store.modalities) == ["Gene Expression", "Peaks"]
        pd.testing.assert_frame_equal(store.var, reference.var)
        assert store.obs.index.equals(reference.obs.index) and store.obs.columns.empty
        assert store.encoding.kind == "csr" and store.sidecar is None  # read as CSR, no conversion
        assert store.about["chemistry_description"].startswith("Single Cell Multiome")
        rows = np.array([499, 3, 3, 250])
        got = store.read_rows(rows)
        for name in store.modalities:
            on = (reference.var["feature_types"] == name).to_numpy()
            np.testing.assert_array_equal(got[name].toarray(), reference.X[rows][:, on].toarray())


def test_10x_modalities_by_data_name_transforms_features_and_one_modality(real_10x):
    path, reference = real_10x
    peaks = reference.var_names[reference.var["feature_types"] == "Peaks"]
    loader = MultiomeLoader(
        path,
        batch_size=500,
        shuffle=False,
        device="cpu",
        transform={"Peaks": "binarize", "Gene Expression": "log1p"},
        features={"Peaks": list(peaks[::7])},
    )
    assert [m.name for m in loader.modalities] == ["Gene Expression", "Peaks"]
    (batch,) = list(loader)
    x = reference.X.toarray()
    np.testing.assert_array_equal(batch["Peaks"].numpy(), (x[:, 600:][:, ::7] > 0).astype(np.float32))
    np.testing.assert_allclose(batch["Gene Expression"].numpy(), np.log1p(x[:, :600]), rtol=1e-6)
    gex_only = MultiomeLoader(path, modalities="Gene Expression", batch_size=500, device="cpu")
    assert [m.name for m in gex_only.modalities] == ["Gene Expression"]  # scanpy's gex_only=True


@pytest.fixture(scope="module")
def mixed_10x(tmp_path_factory) -> tuple:
    """Synthetic counts whose feature types interleave (Peaks first), int32 data as some
    cellranger versions write it; and scanpy's reading."""
    rng = np.random.default_rng(11)
    n_cells, n_features = 300, 90
    counts = sp.random(n_cells, n_features, density=0.2, random_state=rng, format="csr")
    counts.data = rng.integers(1, 40, counts.nnz).astype(np.float64)
    types = np.array(["Peaks", "Gene Expression", "Antibody Capture"])[rng.integers(0, 3, n_features)]
    types[0] = "Peaks"
    path = write_10x_h5(
        tmp_path_factory.mktemp("mixed") / "mixed.h5",
        counts,
        [f"AAAC{i:06d}-1" for i in range(n_cells)],
        [f"feature{i}" for i in range(n_features)],
        [f"ID{i}" for i in range(n_features)],
        types,
        dtype=np.int32,
    )
    return path, sc.read_10x_h5(path, gex_only=False)


@pytest.mark.parametrize("device", FACES)
def test_interleaved_feature_types_in_order_of_first_appearance(mixed_10x, device):
    path, reference = mixed_10x
    types = reference.var["feature_types"].to_numpy()
    order = list(dict.fromkeys(types))
    loader = MultiomeLoader(path, batch_size=32, seed=1, device=device, **face_cells(device, 300))
    assert [m.name for m in loader.modalities] == order and order[0] == "Peaks"
    for batch in loader:
        rows = batch["index"].numpy()
        for name in order:
            expected = reference.X[rows][:, np.flatnonzero(types == name)].toarray()
            np.testing.assert_array_equal(batch[name].numpy(), expected)
            assert loader.var_names(name) == list(reference.var_names[types == name])


def test_10x_files_as_one_dataset(mixed_10x, tmp_path):
    path, reference = mixed_10x
    other = tmp_path / "copy.h5"
    other.write_bytes(path.read_bytes())
    loader = MultiomeLoader([path, other], batch_size=600, shuffle=False, device="cpu", modalities="Peaks")
    (batch,) = list(loader)
    peaks = reference.X[:, np.flatnonzero(reference.var["feature_types"] == "Peaks")].toarray()
    np.testing.assert_array_equal(batch["Peaks"].numpy(), np.vstack([peaks, peaks]))
    np.testing.assert_array_equal(batch["file"].numpy(), np.repeat([0, 1], 300))


def test_info_describes_a_10x_file(real_10x, capsys):
    from gpuload.cli import main

    assert main(["info", str(real_10x[0])]) == 0
    out = capsys.readouterr().out
    assert "500 cells x 1,200 features" in out and "format: 10x Genomics feature-barcode matrix" in out
    assert "Gene Expression 600 columns" in out and "Peaks 600 columns" in out
    assert "matrix: csr, uint32" in out and "version: 2" in out


def test_names_from_data_rename_and_errors_that_list_them(real_10x_h5ad, tmp_path):
    path, adata = real_10x_h5ad
    with pytest.raises(
        ArgumentError, match=r"unknown modality 'GEX'; the data has \['Gene Expression', 'Peaks'\]"
    ):
        MultiomeLoader(path, modalities=("GEX", "ATAC"), device="cpu")
    with pytest.raises(ArgumentError, match="names a modality twice"):
        MultiomeLoader(path, modalities={"a": "Peaks", "b": "Peaks"}, device="cpu")
    renamed = MultiomeLoader(
        path, modalities={"rna": "Gene Expression"}, batch_size=500, shuffle=False, device="cpu"
    )
    (batch,) = list(renamed)
    assert set(batch) >= {"rna", "mask"} and set(batch["mask"]) == {"rna"}
    np.testing.assert_array_equal(batch["rna"].numpy(), adata.X[:, :600].toarray())
    # another var column names the modalities: feature_type_key=
    custom = adata.copy()
    custom.var = custom.var.rename(columns={"feature_types": "assay"})
    custom.write_h5ad(tmp_path / "assay.h5ad")
    with pytest.raises(SchemaError, match="no column 'feature_types'.*'assay'"):
        MultiomeLoader(tmp_path / "assay.h5ad", device="cpu")
    by_assay = MultiomeLoader(tmp_path / "assay.h5ad", feature_type_key="assay", device="cpu")
    assert [m.name for m in by_assay.modalities] == ["Gene Expression", "Peaks"]
    from gpuload.lightning import MultiomeDataModule

    dm = MultiomeDataModule(tmp_path / "assay.h5ad", batch_size=50, feature_type_key="assay", device="cpu")
    assert "random" in dm.split_description  # s1d1 / s1d2 only: no competition test batch


def test_renamed_h5mu_modalities_keep_their_obs_and_statistics(real_pair, tmp_path):
    """``{"GEX": "rna"}`` on a MuData whose ATAC lacks half the cells: TF-IDF counts the cells
    the modality measured and masks come out as without renaming."""
    md = pytest.importorskip("mudata")
    gex, atac = real_pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData({"rna": gex.copy(), "atac": atac[::2].copy()})
        mdata.write(tmp_path / "gappy.h5mu")
    options = {"batch_size": 500, "shuffle": False, "device": "cpu", "layer": "counts"}
    plain = MultiomeLoader(tmp_path / "gappy.h5mu", transform={"atac": "tfidf"}, **options)
    renamed = MultiomeLoader(
        tmp_path / "gappy.h5mu",
        modalities={"GEX": "rna", "ATAC": "atac"},
        transform={"ATAC": "tfidf"},
        **options,
    )
    (a,) = list(plain)
    (b,) = list(renamed)
    np.testing.assert_array_equal(a["atac"].numpy(), b["ATAC"].numpy())
    np.testing.assert_array_equal(a["mask"]["atac"].numpy(), b["mask"]["ATAC"].numpy())
    assert not b["mask"]["ATAC"].numpy()[1::2].any()
    one = MultiomeLoader(tmp_path / "gappy.h5mu", modalities={"GEX": "rna"}, **options)
    assert set(one.plan.obs_keys) == {c for c in one.store.obs.columns if not c.startswith("atac:")}


def _corrupt(source, path, edit) -> str:
    path.write_bytes(source.read_bytes())
    with h5py.File(path, "r+") as f:
        edit(f)
    return str(path)


def test_bad_10x_files_are_refused_naming_file_and_key(mixed_10x, tmp_path):
    source = mixed_10x[0]
    before = file_digest(source)
    cases = [
        (lambda f: f["matrix"].pop("indptr"), SchemaError, r"matrix/indptr is missing"),
        (
            lambda f: f["matrix/features"].pop("feature_type"),
            SchemaError,
            r"matrix/features/feature_type is missing",
        ),
        (lambda f: f["matrix"].pop("features"), SchemaError, r"matrix/features is missing"),
        (
            lambda f: f["matrix"]["shape"].write_direct(np.array([90, 301], dtype=np.int32)),
            SchemaError,
            r"matrix/barcodes has 300 entries but shape says 301",
        ),
        (
            lambda f: f["matrix"]["shape"].write_direct(np.array([91, 300], dtype=np.int32)),
            SchemaError,
            r"matrix/features: name has 90 entries but shape says 91",
        ),
        (lambda f: f.attrs.__setitem__("version", 1), SchemaError, "format version 1"),
    ]
    for i, (edit, kind, message) in enumerate(cases):
        path = _corrupt(source, tmp_path / f"bad{i}.h5", edit)
        with pytest.raises(kind, match=message) as error:
            MultiomeLoader(path, device="cpu")
        assert path in str(error.value)

    def short_indptr(f):
        indptr = f["matrix/indptr"][:-1]
        del f["matrix/indptr"]
        f["matrix"].create_dataset("indptr", data=indptr)

    path = _corrupt(source, tmp_path / "indptr.h5", short_indptr)
    with pytest.raises(SchemaError, match=rf"{path}:matrix: indptr has 300 entries; expected 301"):
        MultiomeLoader(path, device="cpu")
    with pytest.raises(ArgumentError, match="one matrix .* no layers"):
        MultiomeLoader(source, layer="counts", device="cpu")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(InputFileError, match=str(truncated)):
        MultiomeLoader(truncated, device="cpu")
    assert file_digest(source) == before


def test_format_version_1_is_refused_with_how_to_convert(tmp_path):
    """cellranger 2's layout: one group per genome with genes and gene_names."""
    path = tmp_path / "v1.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("GRCh38")
        for name, data in (
            ("barcodes", np.array([b"AAAC-1", b"AAAG-1"])),
            ("data", np.array([1, 2], dtype=np.int32)),
            ("indices", np.array([0, 1], dtype=np.int64)),
            ("indptr", np.array([0, 1, 2], dtype=np.int64)),
            ("shape", np.array([2, 2], dtype=np.int32)),
            ("genes", np.array([b"ENSG1", b"ENSG2"])),
            ("gene_names", np.array([b"A", b"B"])),
        ):
            g.create_dataset(name, data=data)
    with pytest.raises(
        SchemaError, match=r"format version 1 \(cellranger 2; genomes \['GRCh38'\]\).*read_10x_h5"
    ):
        open_multiome(path)
