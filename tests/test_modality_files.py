"""Per-modality files paired by obs_names (``{"GEX": a.h5ad, "ATAC": b.h5ad}``), on synthetic
files written by anndata, so the layout is tested where ``../shared`` is absent (the real cells
are in ``tests/test_real_layouts.py``): every batch against anndata's rows, the obs naming
with three files, layers per modality, and what a bad value's message names."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from gpuload import MultiomeLoader, open_multiome
from gpuload.errors import GpuloadError
from tests.conftest import FACES, SMALL, face_cells
from tests.reference import check_epoch, pair_reference

G = SMALL["n_genes"]


@pytest.fixture(scope="module")
def split_files(small_adata, tmp_path_factory):
    """The small file's GEX columns (a tenth of the cells missing) and ATAC columns (a third
    missing, the rest shuffled, CSC) as two files; a few obs columns each, two of them shared."""
    folder = tmp_path_factory.mktemp("modality_files")
    rng = np.random.default_rng(11)
    n = small_adata.n_obs
    gex = small_adata[np.sort(rng.choice(n, n - n // 10, replace=False)), :G].copy()
    atac = small_adata[
        rng.permutation(np.setdiff1d(np.arange(n), rng.choice(n, n // 3, replace=False))), G:
    ].copy()
    gex.obs = gex.obs[["cell_type", "batch", "GEX_n_genes"]]
    gex.var["feature_types"] = "Gene Expression"  # the key names the modality
    atac.obs = atac.obs[["ATAC_nCount_peaks", "batch", "cell_type"]]
    atac.X = sp.csc_matrix(atac.X)
    paths = {"GEX": folder / "gex.h5ad", "ATAC": folder / "atac.h5ad"}
    gex.write_h5ad(paths["GEX"])
    atac.write_h5ad(paths["ATAC"])
    return paths, pair_reference({"GEX": gex, "ATAC": atac})


@pytest.mark.parametrize("device", FACES)
def test_split_files_batches_equal_anndata(split_files, device):
    paths, ref = split_files
    loader = MultiomeLoader(
        paths, batch_size=64, seed=5, device=device, chunk_size=16, window=4, **face_cells(device, 560)
    )
    assert list(loader.store.obs.columns) == [
        "cell_type",
        "batch",
        "GEX:GEX_n_genes",
        "ATAC:ATAC_nCount_peaks",
    ]
    seen = check_epoch(loader, ref)
    assert sorted(seen) == loader.positions.tolist()
    counts = MultiomeLoader(paths, layer={"GEX": "counts", "ATAC": None}, batch_size=200, device="cpu")
    ref.modalities["GEX"].X, saved = ref.modalities["GEX"].layers["counts"], ref.modalities["GEX"].X
    try:
        assert sorted(check_epoch(counts, ref)) == list(range(len(ref.cells)))
    finally:
        ref.modalities["GEX"].X = saved


def test_three_files_obs_columns_by_holders(small_adata, tmp_path):
    """A column only the 2nd and 3rd files have is theirs, by the first of them with the cell; a
    bool column only one file has is missing (not False) where it lacks the cell."""
    cells = small_adata.obs_names
    frames = {
        "A": pd.DataFrame({"a_only": np.arange(40.0)}, index=cells[:40]),
        "B": pd.DataFrame({"late": ["b"] * 30, "flag": [True] * 30}, index=cells[20:50]),
        "C": pd.DataFrame({"late": ["c"] * 40}, index=cells[10:50][::-1]),
    }
    paths = {}
    for name, obs in frames.items():
        paths[name] = tmp_path / f"{name}.h5ad"
        ad.AnnData(sp.csr_matrix(np.ones((len(obs), 3), dtype=np.float32)), obs=obs).write_h5ad(paths[name])
    with open_multiome(paths) as store:
        assert list(store.obs.index) == [*cells[:40], *cells[40:50]]
        assert list(store.obs.columns) == ["A:a_only", "late", "B:flag"]
        late = store.obs["late"].to_numpy(dtype=object)
        assert pd.isna(late[:10]).all() and (late[10:20] == "c").all() and (late[20:50] == "b").all()
        assert store.obs["B:flag"].isna().sum() == 20 and store.obs["B:flag"].sum() == 30
        assert {m: int(v.sum()) for m, v in store.measured.items()} == {"A": 40, "B": 30, "C": 40}


def test_bad_value_names_the_pair(small_adata, tmp_path):
    gex = small_adata[:30, :G].copy()
    gex.X = gex.X.tocsr()
    gex.X.data[gex.X.indptr[4]] = np.nan
    paths = {"GEX": tmp_path / "gex.h5ad", "ATAC": tmp_path / "atac.h5ad"}
    gex.write_h5ad(paths["GEX"])
    small_adata[:30, G:].copy().write_h5ad(paths["ATAC"])
    with pytest.raises(
        GpuloadError, match=r"\{GEX: .*gex.h5ad, ATAC: .*atac.h5ad\}:X row 4: a stored value is NaN"
    ):
        list(MultiomeLoader(paths, shuffle=False, batch_size=10, device="cpu"))
