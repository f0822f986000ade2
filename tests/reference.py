"""Comparing a loader's batches with the reference readers' own rows: whatever the layout (one
``.h5ad``, per-modality files, an ``.h5mu``, a 10x ``.h5``), a test describes the dataset as
anndata / mudata read it (:class:`Reference`) and :func:`check_epoch` compares every batch with
it: matrix values (dense or sparse output), masks, and obs values by ``batch["index"]``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch


@dataclass
class Reference:
    """The dataset as the reference readers give it.

    ``cells``: the dataset's cell names in gpuload's documented order (``batch["index"]`` counts
    in it); ``modalities``: each batch key's own AnnData (its cells, in any order; its rows are
    found by name); ``obs``: the obs values the loader must deliver, one row per cell of ``cells``,
    under gpuload's column names.
    """

    cells: pd.Index
    modalities: dict[str, ad.AnnData]
    obs: pd.DataFrame

    def rows(self, name: str, rows: np.ndarray, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(dense float64 rows of modality ``name`` for dataset rows ``rows``, zero where it
        lacks the cell; which cells it has)."""
        adata = self.modalities[name]
        names = self.cells[rows]
        has = names.isin(adata.obs_names)
        matrix = adata.X if layer is None else adata.layers[layer]
        out = np.zeros((rows.size, adata.n_vars), dtype=np.float64)
        picked = matrix[adata.obs_names.get_indexer(names[has])]
        out[has] = picked.toarray() if sp.issparse(picked) else np.asarray(picked)
        return out, np.asarray(has)


def pair_reference(adatas: dict[str, ad.AnnData]) -> Reference:
    """What the per-modality files must read as, built from anndata's own objects: the first
    file's cells, then the next files' new cells in their order; a column several files have
    under its name, from the first file that has the cell; a file's own columns as ``mod:col``."""
    first, *others = adatas.values()
    cells = first.obs_names
    for other in others:
        cells = cells.append(other.obs_names[~other.obs_names.isin(cells)])
    holders: dict[str, list[str]] = {}
    for name, adata in adatas.items():
        for column in adata.obs.columns:
            holders.setdefault(column, []).append(name)
    obs = {}
    for column, names in holders.items():
        values = pd.Series([None] * len(cells), index=cells, dtype=object)
        taken = np.zeros(len(cells), dtype=bool)
        for name in names:
            here = np.asarray(cells.isin(adatas[name].obs_names)) & ~taken
            values[here] = adatas[name].obs[column].astype(object).loc[cells[here]].to_numpy()
            taken |= here
        obs[column if len(names) > 1 else f"{names[0]}:{column}"] = values
    return Reference(cells, dict(adatas), pd.DataFrame(obs, index=cells))


def h5mu_reference(path) -> Reference:
    """What an ``.h5mu`` must read as: mudata's cells, modalities and obs."""
    import mudata as md

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.read_h5mu(path)
    # mudata 0.3 copies each modality's obs columns into the global obs as ``mod:column``;
    # 0.4 no longer does, so the columns it left out are taken from the modality, per cell.
    pulled = {
        f"{m}:{column}": mdata[m].obs[column].reindex(mdata.obs_names)
        for m in mdata.mod
        for column in mdata[m].obs.columns
        if f"{m}:{column}" not in mdata.obs.columns
    }
    obs = pd.concat([mdata.obs, pd.DataFrame(pulled, index=mdata.obs_names)], axis=1) if pulled else mdata.obs
    return Reference(mdata.obs_names, {m: mdata[m] for m in mdata.mod}, obs)


def dense(value: torch.Tensor) -> np.ndarray:
    """A batch matrix as a host ndarray, dense or ``torch.sparse_csr_tensor``."""
    value = value.to_dense() if value.layout == torch.sparse_csr else value
    return value.cpu().numpy()


def epoch_rows(loader) -> np.ndarray:
    """The file rows (``batch["index"]``) one epoch of ``loader`` delivers, in order."""
    return np.concatenate([np.empty(0, np.int64), *(b["index"].numpy() for b in loader)])


def check_rows(batch: dict, x: np.ndarray, n_genes: int) -> np.ndarray:
    """A dense cpu batch of a synthetic file against that file's dense ``x`` (GEX the first
    ``n_genes`` columns, ATAC the rest) at the rows the batch names; returns the rows."""
    rows = batch["index"].numpy()
    np.testing.assert_array_equal(batch["GEX"].numpy(), x[rows, :n_genes])
    np.testing.assert_array_equal(batch["ATAC"].numpy(), x[rows, n_genes:])
    return rows


def comparable(values) -> list:
    """Obs values as plain Python values (None for missing, float for numbers, str for text)."""
    out = []
    for v in values:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            out.append(None)
        elif isinstance(v, (bool, np.bool_)):
            out.append(bool(v))
        elif isinstance(v, (int, float, np.integer, np.floating)):
            out.append(float(v))
        else:
            out.append(str(v))
    return out


def check_obs(batch: dict, ref: Reference, rows: np.ndarray, keys=None) -> None:
    """Every obs column of the batch (or ``keys``) against ``ref.obs`` at ``rows``."""
    for key in batch["obs"] if keys is None else keys:
        got = batch["obs"][key]
        got = got.cpu().tolist() if isinstance(got, torch.Tensor) else list(got)
        want = comparable(ref.obs[key].iloc[rows].astype(object))
        got = comparable(got)
        for g, w in zip(got, want, strict=True):
            if isinstance(w, float) and g is not None:
                assert np.isclose(g, w, rtol=1e-6, equal_nan=True), (key, got, want)
            else:
                assert g == w, (key, got, want)


def check_batch(
    batch: dict,
    ref: Reference,
    loader,
    *,
    expect: Callable[[str, np.ndarray], np.ndarray] = lambda name, x: x,
    layer: str | None = None,
    rtol: float = 1e-6,
) -> np.ndarray:
    """One batch against the reference: each modality's values (``expect(name, rows)`` maps the
    reference rows to what the loader delivers, e.g. a transform), only the columns
    ``loader.var_names`` names; masks (False where the modality lacks the cell); obs. Returns
    the batch's rows."""
    rows = batch["index"].cpu().numpy()
    for modality in loader.modalities:
        name = modality.name
        full, has = ref.rows(name, rows, layer)
        columns = ref.modalities[name].var_names.get_indexer(loader.var_names(name))
        want = expect(name, full[:, columns])
        np.testing.assert_allclose(dense(batch[name]), want, rtol=rtol, atol=1e-6, err_msg=name)
        mask = batch["mask"][name].cpu().numpy()
        assert not mask[~has].any(), f"{name}: a cell the modality lacks has mask True"
        np.testing.assert_array_equal(mask, has & (full != 0).any(axis=1), err_msg=name)
    check_obs(batch, ref, rows)
    return rows


def check_epoch(loader, ref: Reference, **options) -> list[int]:
    """Every batch of one epoch checked (:func:`check_batch`); the rows seen, in order."""
    seen: list[int] = []
    for batch in loader:
        seen.extend(check_batch(batch, ref, loader, **options).tolist())
    return seen
