"""Synthetic data with exactly the schema of the real BMMC multiome file (``../shared/DATASET.md``).

The real file cannot be downloaded on our machines, so this generator is the embedded default
for the demo, the tests and the benchmarks. It is not noise: a low-dimensional latent state,
driven by cell type, trajectory position and batch, generates BOTH modalities (negative-binomial
GEX counts, Bernoulli ATAC accessibility). So cross-modal prediction, matching and cell-type
recovery are learnable, as on the real data.

The full 69,249 x 129,921 file is written in row chunks (``anndata.io.sparse_dataset.append``),
so peak memory is set by ``chunk_cells``, not by the file size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from gpuload.bmmc import schema
from gpuload.errors import ArgumentError

X_FORMATS = ("csr", "csc", "dense")
LATENT_DIM = 16
N_MT_GENES = 13


@dataclass(frozen=True)
class _Model:
    """The generative parameters shared by every chunk of one file."""

    type_centers: np.ndarray  # [n_types, LATENT_DIM]
    batch_shifts: np.ndarray  # [n_batches, LATENT_DIM]
    gex_loadings: np.ndarray  # [LATENT_DIM, n_genes]
    gex_base: np.ndarray  # [n_genes]
    atac_loadings: np.ndarray  # [LATENT_DIM, n_peaks]
    atac_base: np.ndarray  # [n_peaks]
    peak_to_gene: sp.csr_matrix  # [n_peaks, n_activity_genes]
    pca_proj: np.ndarray  # [LATENT_DIM, 50]
    lsi_proj: np.ndarray  # [LATENT_DIM, 50]
    umap_proj: np.ndarray  # [LATENT_DIM, 4]


def _check_args(n_cells: int, n_genes: int, n_peaks: int, x_format: str, chunk_cells: int) -> None:
    for name, value in (("cells", n_cells), ("genes", n_genes), ("peaks", n_peaks)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ArgumentError(f"--{name} must be a positive integer, got {value!r}")
    if n_genes <= N_MT_GENES:
        raise ArgumentError(f"--genes must be more than {N_MT_GENES} (the MT- genes), got {n_genes}")
    if x_format not in X_FORMATS:
        raise ArgumentError(f"--x-format must be one of {', '.join(X_FORMATS)}, got {x_format!r}")
    if chunk_cells < 1:
        raise ArgumentError(f"chunk_cells must be positive, got {chunk_cells}")


def _make_model(rng: np.random.Generator, n_genes: int, n_peaks: int) -> _Model:
    n_types = len(schema.CELL_TYPE_COUNTS)
    n_activity = schema.OBSM_WIDTHS["ATAC_gene_activity"]
    peak_gene = rng.integers(0, n_activity, n_peaks)
    keep = rng.random(n_peaks) < 0.5
    peak_to_gene = sp.csr_matrix(
        (np.ones(keep.sum(), np.float32), (np.flatnonzero(keep), peak_gene[keep])),
        shape=(n_peaks, n_activity),
    )
    return _Model(
        type_centers=rng.normal(0.0, 1.2, (n_types, LATENT_DIM)).astype(np.float32),
        batch_shifts=rng.normal(0.0, 0.25, (len(schema.BATCHES), LATENT_DIM)).astype(np.float32),
        gex_loadings=(
            rng.normal(0.0, 0.6, (LATENT_DIM, n_genes)) * (rng.random((LATENT_DIM, n_genes)) < 0.3)
        ).astype(np.float32),
        gex_base=rng.normal(-1.0, 1.5, n_genes).astype(np.float32),
        atac_loadings=(
            rng.normal(0.0, 0.8, (LATENT_DIM, n_peaks)) * (rng.random((LATENT_DIM, n_peaks)) < 0.3)
        ).astype(np.float32),
        atac_base=rng.normal(0.0, 1.0, n_peaks).astype(np.float32),
        peak_to_gene=peak_to_gene,
        pca_proj=rng.normal(0, 1, (LATENT_DIM, 50)).astype(np.float32),
        lsi_proj=rng.normal(0, 1, (LATENT_DIM, 50)).astype(np.float32),
        umap_proj=rng.normal(0, 1, (LATENT_DIM, 4)).astype(np.float32),
    )


def _donor_table(rng: np.random.Generator) -> pd.DataFrame:
    """One row per batch (site x donor) with the donor-level obs columns of the real file."""
    rows = []
    donor_ids = rng.choice(np.arange(10000, 40000), len(schema.BATCHES), replace=False)
    for b, (batch, donor_id) in enumerate(zip(schema.BATCHES, donor_ids, strict=True)):
        site, donor = batch[1:].split("d")
        rows.append(
            {
                "batch": batch,
                "Samplename": f"site{site}_donor{donor}_multiome",
                "Site": f"site{site}",
                "DonorNumber": f"donor{donor}",
                "Modality": "multiome",
                "VendorLot": int(3_054_000 + 17 * int(site)),
                "DonorID": int(donor_id),
                "DonorAge": int(rng.integers(22, 41)),
                "DonorBMI": float(np.round(rng.uniform(20.0, 33.0), 1)),
                "DonorBloodType": str(rng.choice(["A+", "B+", "O+", "O-", "AB+"])),
                "DonorRace": str(rng.choice(["White", "Asian", "Black or African American"])),
                "Ethnicity": str(rng.choice(["HISPANIC OR LATINO", "NOT HISPANIC OR LATINO"])),
                "DonorGender": ("Male", "Female")[b % 2],
                "QCMeds": str(rng.choice(["True", "False"])),
                "DonorSmoker": str(rng.choice(["Nonsmoker", "Former smoker", "Smoker"])),
            }
        )
    return pd.DataFrame(rows).set_index("batch")


def _cell_labels(rng: np.random.Generator, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell-type and batch codes; rows are grouped by batch, as in the real file."""
    counts = np.array(list(schema.CELL_TYPE_COUNTS.values()), dtype=np.float64)
    types = rng.choice(len(counts), n_cells, p=counts / counts.sum())
    batch_weights = rng.dirichlet(np.full(len(schema.BATCHES), 8.0))
    batches = np.sort(rng.choice(len(schema.BATCHES), n_cells, p=batch_weights))
    return types, batches


def _pseudotimes(rng: np.random.Generator, types: np.ndarray) -> dict[str, np.ndarray]:
    """Pseudotime along each trajectory: the type's rank on the path plus jitter, NaN off it."""
    names = list(schema.CELL_TYPE_COUNTS)
    out = {}
    for column, path in schema.TRAJECTORIES.items():
        values = np.full(types.size, np.nan)
        for rank, cell_type in enumerate(path):
            on = types == names.index(cell_type)
            values[on] = (rank + rng.random(on.sum())) / len(path)
        out[column] = values
    return out


def _latent(
    rng: np.random.Generator,
    model: _Model,
    types: np.ndarray,
    batches: np.ndarray,
    ptime: np.ndarray,
) -> np.ndarray:
    z = model.type_centers[types] + model.batch_shifts[batches]
    z += rng.normal(0.0, 0.35, z.shape).astype(np.float32)
    # Cells on a trajectory drift along the first latent axis with their pseudotime.
    z[:, 0] += np.nan_to_num(ptime, nan=0.0).astype(np.float32) * 2.0
    return z


def _gex_counts(rng: np.random.Generator, model: _Model, z: np.ndarray, library: np.ndarray) -> sp.csr_matrix:
    logits = z @ model.gex_loadings + model.gex_base
    logits -= logits.max(axis=1, keepdims=True)
    rate = np.exp(logits)
    rate *= (library / rate.sum(axis=1))[:, None]
    rate *= rng.gamma(4.0, 0.25, rate.shape).astype(np.float32)  # negative-binomial overdispersion
    return sp.csr_matrix(rng.poisson(rate).astype(np.float32))


def _atac_counts(rng: np.random.Generator, model: _Model, z: np.ndarray, depth: np.ndarray) -> sp.csr_matrix:
    weight = np.exp(np.clip(z @ model.atac_loadings + model.atac_base, -30, 8))
    weight *= (depth / weight.sum(axis=1))[:, None]
    opened = rng.random(weight.shape, dtype=np.float32) < weight
    rows, cols = np.nonzero(opened)
    counts = 1.0 + rng.binomial(3, 0.15, rows.size)
    return sp.csr_matrix((counts.astype(np.float32), (rows, cols)), shape=weight.shape)


def _chunk(
    rng: np.random.Generator,
    model: _Model,
    types: np.ndarray,
    batches: np.ndarray,
    gex_ptime: np.ndarray,
    size_factors: np.ndarray,
) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray, dict[str, np.ndarray]]:
    """Counts, X, the latent state and the per-cell QC columns for one row chunk."""
    n = types.size
    z = _latent(rng, model, types, batches, gex_ptime)
    library = (size_factors * 3500.0).astype(np.float32)
    depth = np.clip(rng.lognormal(np.log(6500.0), 0.6, n), 1000, 30000).astype(np.float32)
    gex = _gex_counts(rng, model, z, library)
    atac = _atac_counts(rng, model, z, depth)
    counts = sp.hstack([gex, atac], format="csr")
    gex_x = gex.copy()
    gex_x.data = np.log1p(gex_x.data / np.repeat(size_factors, np.diff(gex_x.indptr)))
    atac_x = atac.copy()
    atac_x.data[:] = 1.0
    x = sp.hstack([gex_x, atac_x], format="csr")
    n_counts = np.asarray(gex.sum(axis=1)).ravel().astype(np.float64)
    mt = np.asarray(gex[:, :N_MT_GENES].sum(axis=1)).ravel()
    n_peaks_counts = np.asarray(atac.sum(axis=1)).ravel().astype(np.float64)
    fragments = np.maximum(1, (n_peaks_counts / rng.uniform(0.35, 1.1, n)).astype(np.int64))
    qc = {
        "GEX_pct_counts_mt": 100.0 * mt / np.maximum(n_counts, 1.0),
        "GEX_n_counts": n_counts,
        "GEX_n_genes": np.diff(gex.indptr).astype(np.int64),
        "ATAC_nCount_peaks": n_peaks_counts,
        "ATAC_atac_fragments": fragments,
        "ATAC_reads_in_peaks_frac": n_peaks_counts / fragments,
        "ATAC_blacklist_fraction": rng.beta(1.0, 300.0, n),
        "ATAC_nucleosome_signal": rng.gamma(6.0, 0.12, n),
    }
    return counts, x, z, qc


def _obsm_dense(rng: np.random.Generator, model: _Model, z: np.ndarray) -> dict[str, np.ndarray]:
    noise = lambda w: rng.normal(0.0, 0.1, (z.shape[0], w)).astype(np.float32)  # noqa: E731
    lsi = z @ model.lsi_proj
    umap = z @ model.umap_proj
    return {
        "ATAC_lsi_full": lsi + noise(50),
        "ATAC_lsi_red": lsi[:, : schema.OBSM_WIDTHS["ATAC_lsi_red"]] + noise(39),
        "ATAC_umap": umap[:, :2] + noise(2),
        "GEX_X_pca": z @ model.pca_proj + noise(50),
        "GEX_X_umap": umap[:, 2:] + noise(2),
    }


def _var_frame(rng: np.random.Generator, n_genes: int, n_peaks: int) -> pd.DataFrame:
    genes = [f"MT-G{i}" for i in range(N_MT_GENES)] + [f"GENE{i}" for i in range(N_MT_GENES, n_genes)]
    chrom = np.sort(rng.integers(1, 23, n_peaks))
    start = np.zeros(n_peaks, dtype=np.int64)
    for c in np.unique(chrom):
        on = chrom == c
        start[on] = np.cumsum(rng.integers(2_000, 40_000, on.sum()))
    peaks = [f"chr{c}-{s}-{s + 600}" for c, s in zip(chrom, start, strict=True)]
    gene_ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    return pd.DataFrame(
        {
            "feature_types": pd.Categorical(
                ["GEX"] * n_genes + ["ATAC"] * n_peaks, categories=["ATAC", "GEX"]
            ),
            "gene_id": pd.Categorical(gene_ids + peaks),
        },
        index=pd.Index(genes + peaks),
    )


def _obs_frame(
    rng: np.random.Generator,
    types: np.ndarray,
    batches: np.ndarray,
    ptimes: dict[str, np.ndarray],
    size_factors: np.ndarray,
    qc: dict[str, np.ndarray],
) -> pd.DataFrame:
    n = types.size
    donors = _donor_table(rng)
    batch_names = np.array(schema.BATCHES)[batches]
    letters = np.array(list("ACGT"))
    barcodes = ["".join(b) for b in letters[rng.integers(0, 4, (n, 16))]]
    obs = pd.DataFrame(index=pd.Index([f"{bc}-1-{b}" for bc, b in zip(barcodes, batch_names, strict=True)]))
    for column, kind in schema.OBS_COLUMNS.items():
        if column in qc:
            obs[column] = qc[column]
        elif column in ptimes:
            obs[column] = ptimes[column]
        elif column == "GEX_size_factors":
            obs[column] = size_factors
        elif column == "GEX_phase":
            obs[column] = pd.Categorical(
                rng.choice(schema.PHASES, n, p=[0.6, 0.2, 0.2]), categories=schema.PHASES
            )
        elif column == "cell_type":
            obs[column] = pd.Categorical.from_codes(types, categories=list(schema.CELL_TYPE_COUNTS))
        elif column == "batch":
            obs[column] = pd.Categorical.from_codes(batches, categories=list(schema.BATCHES))
        else:
            values = donors[column].to_numpy()[batches]
            obs[column] = values if kind != "c" else pd.Categorical(values)
    obs.index = obs.index.astype(str)
    return obs


def _object_strings(df: pd.DataFrame) -> pd.DataFrame:
    """Index and categories as object dtype, as pandas 2 makes them: pandas 3 infers its ``str``
    dtype for strings, which anndata 0.12 writes only as its nullable-string encoding, behind
    ``anndata.settings.allow_write_nullable_strings`` (the file is the same under both)."""
    df = df.copy()
    df.index = df.index.astype(object)
    for column in df.columns:
        if isinstance(df[column].dtype, pd.CategoricalDtype):
            df[column] = df[column].cat.set_categories(df[column].cat.categories.astype(object))
    return df


def _write_root(f: h5py.File, obs: pd.DataFrame, var: pd.DataFrame, uns: dict) -> None:
    f.attrs["encoding-type"] = "anndata"
    f.attrs["encoding-version"] = "0.1.0"
    ad.io.write_elem(f, "obs", _object_strings(obs))
    ad.io.write_elem(f, "var", _object_strings(var))
    ad.io.write_elem(f, "uns", uns)
    ad.io.write_elem(f, "obsp", {})
    ad.io.write_elem(f, "varm", {})
    ad.io.write_elem(f, "varp", {})


class _MatrixWriter:
    """Writes one cells x features matrix chunk by chunk in the requested on-disk format."""

    def __init__(
        self,
        group: h5py.Group,
        key: str,
        shape: tuple[int, int],
        x_format: str,
        dtype: np.dtype,
        dataset_kwargs: dict,
    ) -> None:
        self.group, self.key, self.shape, self.format = group, key, shape, x_format
        self.dtype, self.kwargs = dtype, dataset_kwargs
        self.row = 0
        self._pending: list[sp.csr_matrix] = []  # csc is transposed once, at the end

    def append(self, chunk: sp.csr_matrix) -> None:
        chunk = chunk.astype(self.dtype)
        if self.format == "csc":
            self._pending.append(chunk)
        elif self.format == "dense":
            if self.row == 0:
                ad.io.write_elem(
                    self.group,
                    self.key,
                    np.zeros((0, self.shape[1]), self.dtype),
                    dataset_kwargs={**self.kwargs, "maxshape": (None, self.shape[1])},
                )
            dset = self.group[self.key]
            dset.resize(self.row + chunk.shape[0], axis=0)
            dset[self.row :] = chunk.toarray()
        elif self.row == 0:
            ad.io.write_elem(self.group, self.key, chunk, dataset_kwargs=self.kwargs)
        else:
            ad.io.sparse_dataset(self.group[self.key]).append(chunk)
        self.row += chunk.shape[0]

    def close(self) -> None:
        if self.format == "csc":
            ad.io.write_elem(
                self.group, self.key, sp.vstack(self._pending, format="csc"), dataset_kwargs=self.kwargs
            )


def write_synthetic(
    path: str | os.PathLike,
    *,
    n_cells: int = schema.N_CELLS,
    n_genes: int = schema.N_GENES,
    n_peaks: int = schema.N_PEAKS,
    x_format: str = "csr",
    dtype: str | np.dtype = "float32",
    compression: str | None = None,
    seed: int = 0,
    chunk_cells: int = 1024,
    progress: bool = True,
) -> Path:
    """Write a BMMC-shaped multiome ``.h5ad`` to ``path`` and return the path.

    Parameters
    ----------
    path
        Output file; its folder must exist and be writable. An existing file is replaced.
    n_cells, n_genes, n_peaks
        Shape: cells x (genes + peaks). Defaults are the real file's.
    x_format
        On-disk encoding of ``X`` and ``layers["counts"]``: ``"csr"`` (written in row chunks,
        any size), ``"csc"`` or ``"dense"`` (csc is assembled in memory, so keep it small).
    dtype, compression
        Value dtype of X and counts; h5py compression (``None``, ``"gzip"``, ``"lzf"``).
    seed
        Everything is a function of the seed.
    """
    _check_args(n_cells, n_genes, n_peaks, x_format, chunk_cells)
    path = Path(path)
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise ArgumentError(
            f"--out {str(path)!r}: folder {str(path.parent)!r} does not exist or is not writable"
        )
    rng = np.random.default_rng(seed)
    model = _make_model(rng, n_genes, n_peaks)
    types, batches = _cell_labels(rng, n_cells)
    ptimes = _pseudotimes(rng, types)
    size_factors = np.clip(rng.lognormal(0.0, 0.5, n_cells), 0.2, 5.0)
    size_factors /= size_factors.mean()
    var = _var_frame(rng, n_genes, n_peaks)
    activity_names = np.array(
        [f"AGENE{i}" for i in range(schema.OBSM_WIDTHS["ATAC_gene_activity"])], dtype=object
    )
    uns = {
        "ATAC_gene_activity_var_names": activity_names,
        "dataset_id": "openproblems_bmmc_multiome_phase2",
        "genome": "GRCh38",
        "organism": "human",
    }
    kwargs = {"compression": compression} if compression else {}
    shape = (n_cells, n_genes + n_peaks)
    qc_parts: list[dict[str, np.ndarray]] = []
    obsm_parts: list[dict[str, np.ndarray]] = []
    with h5py.File(path, "w") as f:
        layers = f.create_group("layers")
        layers.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        obsm = f.create_group("obsm")
        obsm.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        x_writer = _MatrixWriter(f, "X", shape, x_format, np.dtype(dtype), kwargs)
        counts_writer = _MatrixWriter(layers, "counts", shape, x_format, np.dtype(dtype), kwargs)
        activity_writer = _MatrixWriter(
            obsm, "ATAC_gene_activity", (n_cells, 0), "csr", np.dtype(np.float32), {}
        )
        starts = range(0, n_cells, chunk_cells)
        for start in tqdm(starts, desc=f"synth {path.name}", unit="chunk", disable=not progress):
            rows = slice(start, min(start + chunk_cells, n_cells))
            counts, x, z, qc = _chunk(
                rng,
                model,
                types[rows],
                batches[rows],
                ptimes["GEX_pseudotime_order"][rows],
                size_factors[rows],
            )
            x_writer.append(x)
            counts_writer.append(counts)
            activity = (counts[:, n_genes:] > 0).astype(np.float32) @ model.peak_to_gene
            activity_writer.append(sp.csr_matrix(activity))
            qc_parts.append(qc)
            obsm_parts.append(_obsm_dense(rng, model, z))
        x_writer.close()
        counts_writer.close()
        qc_all = {k: np.concatenate([p[k] for p in qc_parts]) for k in qc_parts[0]}
        for key, _ in obsm_parts[0].items():
            ad.io.write_elem(obsm, key, np.concatenate([p[key] for p in obsm_parts]))
        obs = _obs_frame(rng, types, batches, ptimes, size_factors, qc_all)
        _write_root(f, obs, var, uns)
    return path
