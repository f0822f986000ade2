"""Feature selection (``features=``): every spec kind against anndata slicing, on both faces,
dense and sparse output, with and without transforms; and the errors of bad specs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from gpuload import MultiomeLoader
from gpuload.errors import ArgumentError

TRANSFORMS = {
    "none": None,
    "stats": {"GEX": "normalize_total", "ATAC": {"name": "tfidf", "flavor": "signac"}},
}


@pytest.fixture(scope="module")
def marked(small_adata, tmp_path_factory):
    """The small file with a boolean var column, and the adata it was written from."""
    adata = small_adata.copy()
    rng = np.random.default_rng(5)
    adata.var["highly_variable"] = rng.random(adata.n_vars) < 0.3
    adata.var["score"] = rng.random(adata.n_vars)
    path = tmp_path_factory.mktemp("features") / "marked.h5ad"
    adata.write_h5ad(path)
    return path, adata


def _columns(adata: ad.AnnData, modality: str) -> np.ndarray:
    return np.flatnonzero(adata.var["feature_types"].to_numpy() == modality)


def _top(adata: ad.AnnData, modality: str, k: int, rows: np.ndarray) -> np.ndarray:
    """The k columns nonzero in the most cells (ties: file order), as a mask over the modality."""
    x = adata.layers["counts"][rows][:, _columns(adata, modality)]
    nonzero = np.asarray((x != 0).sum(0)).ravel()
    keep = np.zeros(nonzero.size, dtype=bool)
    keep[np.argsort(-nonzero, kind="stable")[:k]] = True
    return keep


def _specs(kind: str, adata: ad.AnnData, rows: np.ndarray):
    """(features argument, {modality: mask over its columns}) for one spec kind."""
    gex, atac = _columns(adata, "GEX"), _columns(adata, "ATAC")
    rng = np.random.default_rng(1)
    if kind == "mask":
        masks = {"GEX": rng.random(gex.size) < 0.4, "ATAC": rng.random(atac.size) < 0.1}
        return masks, masks
    if kind == "names":
        masks = {"GEX": rng.random(gex.size) < 0.4, "ATAC": rng.random(atac.size) < 0.1}
        names = {m: adata.var_names[c][masks[m]].tolist()[::-1] for m, c in (("GEX", gex), ("ATAC", atac))}
        return names, masks  # given in reverse: delivered in file order
    if kind == "var_column":
        hv = adata.var["highly_variable"].to_numpy()
        return "highly_variable", {"GEX": hv[gex], "ATAC": hv[atac]}
    if kind == "top":
        return {"GEX": {"top": 30}, "ATAC": {"top": 100}}, {
            "GEX": _top(adata, "GEX", 30, rows),
            "ATAC": _top(adata, "ATAC", 100, rows),
        }
    raise AssertionError(kind)


def _batches(path, face, output, transform, features, rows):
    loader = MultiomeLoader(
        path,
        batch_size=8,
        shuffle=False,
        device=face,
        layer="counts",
        subset=rows,
        obs_keys=[],
        output=output,
        transform=transform,
        features=features,
    )
    out = {m: [] for m in ("GEX", "ATAC")}
    for batch in loader:
        for m in out:
            x = batch[m]
            out[m].append(x.to_dense() if output == "sparse_csr" else x)
            if output == "sparse_csr":  # columns stay sorted within each row
                crow, col = x.crow_indices(), x.col_indices()
                for r in range(crow.numel() - 1):
                    assert torch.all(col[crow[r] + 1 : crow[r + 1]] > col[crow[r] : crow[r + 1] - 1])
    return loader, {m: torch.cat(v).numpy() for m, v in out.items()}


def _cases():
    """Every (face, output, transform, kind); the simulator's sparse kernel (each of a row's 32
    lanes a Python thread) runs two of its eight cases always and the rest in test-all."""
    for face in ("cpu", "cudasim"):
        for output in ("dense", "sparse_csr"):
            for transform in TRANSFORMS:
                for kind in ("mask", "names", "var_column", "top"):
                    marks = [pytest.mark.cudasim] if face == "cudasim" else []
                    quick = (kind, transform) in {("top", "stats"), ("names", "none")}
                    if face == "cudasim" and output == "sparse_csr" and not quick:
                        marks.append(pytest.mark.slow)
                    yield pytest.param(face, output, transform, kind, marks=marks)


@pytest.mark.parametrize(("face", "output", "transform", "kind"), list(_cases()))
def test_selection_equals_anndata_slicing(marked, tmp_path, face, output, transform, kind):
    """The selected loader equals a loader over ``adata[:, selection]`` written as its own file
    (so transforms' statistics come from the selected features only), and its raw values equal
    the slice itself."""
    path, adata = marked
    n_cells = 6 if face == "cudasim" else adata.n_obs  # the simulator runs every thread in Python
    rows = np.arange(n_cells) if face == "cudasim" else np.arange(0, adata.n_obs, 2)
    features, masks = _specs(kind, adata, rows)
    keep = np.concatenate([_columns(adata, m)[masks[m]] for m in ("GEX", "ATAC")])
    keep.sort()
    sliced = tmp_path / "sliced.h5ad"
    adata[:, keep].copy().write_h5ad(sliced)

    loader, got = _batches(path, face, output, TRANSFORMS[transform], features, rows)
    _, want = _batches(sliced, "cpu", "dense", TRANSFORMS[transform], None, rows)
    for m in ("GEX", "ATAC"):
        assert got[m].shape == (rows.size, int(masks[m].sum()))
        np.testing.assert_allclose(got[m], want[m], rtol=1e-5, atol=1e-6)
        assert loader.var_names(m) == adata.var_names[_columns(adata, m)[masks[m]]].tolist()
        if transform == "none":  # the values themselves: adata[:, mask]
            ref = adata[rows][:, _columns(adata, m)[masks[m]]].layers["counts"].toarray()
            np.testing.assert_array_equal(got[m], ref)


def test_one_spec_for_all_and_partial_dicts(marked):
    path, adata = marked
    both = MultiomeLoader(path, features={"top": 20}, obs_keys=[], device="cpu")
    assert [m.width for m in both.modalities] == [20, 20]
    only_atac = MultiomeLoader(path, features={"ATAC": {"top": 50}}, obs_keys=[], device="cpu")
    assert [m.width for m in only_atac.modalities] == [_columns(adata, "GEX").size, 50]
    batch = next(iter(only_atac))
    assert batch["ATAC"].shape[1] == 50 and batch["GEX"].shape[1] == _columns(adata, "GEX").size
    # plan.feature_masks is the spec that gives another loader (other cells) the same columns
    held_out = MultiomeLoader(
        path, features=only_atac.plan.feature_masks, subset=np.arange(10), obs_keys=[], device="cpu"
    )
    assert [held_out.var_names(m) for m in ("GEX", "ATAC")] == [
        only_atac.var_names(m) for m in ("GEX", "ATAC")
    ]


def test_top_k_breaks_ties_by_file_order(marked):
    """A k equal to the width keeps every column; on a column-constant tie the first wins."""
    path, adata = marked
    width = _columns(adata, "GEX").size
    loader = MultiomeLoader(path, modalities="GEX", features={"top": width}, obs_keys=[], device="cpu")
    assert loader.var_names("GEX") == adata.var_names[_columns(adata, "GEX")].tolist()


@pytest.mark.parametrize(
    ("features", "needle"),
    [
        ({"GEX": ["MT-G0", "no_such_gene"]}, "e.g. 'no_such_gene'"),
        ({"GEX": ["MT-G0", "MT-G0"]}, "repeats"),
        ({"GEX": []}, "selects no features"),
        ({"GEX": np.zeros(120, dtype=bool)}, "selects no features"),
        ({"GEX": np.ones(7, dtype=bool)}, "one entry per GEX feature (120)"),
        ({"GEX": {"top": 0}}, "'top' must be in [1, 120]"),
        ({"GEX": {"top": 121}}, "'top' must be in [1, 120]"),
        ({"GEX": {"top": 2.5}}, "'top' must be an integer"),
        ({"GEX": {"top": 5, "by": "variance"}}, "only key"),
        ("highly_varable", "did you mean ['highly_variable']"),
        ("score", "must be a boolean column"),
        ({"ADT": {"top": 5}}, "not loaded"),
        ({"GEX": 3}, "a boolean mask, a list of var names"),
    ],
)
def test_bad_feature_specs_are_clear_errors(marked, features, needle):
    path, _ = marked
    with pytest.raises(ArgumentError) as info:
        MultiomeLoader(path, features=features, obs_keys=[], device="cpu")
    assert needle in str(info.value)


def test_var_names_of_an_unloaded_modality(marked):
    path, _ = marked
    loader = MultiomeLoader(path, modalities="GEX", obs_keys=[], device="cpu")
    with pytest.raises(ArgumentError, match="not loaded"):
        loader.var_names("ATAC")
