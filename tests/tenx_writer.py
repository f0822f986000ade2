"""Writing 10x Genomics feature-barcode matrix ``.h5`` files with h5py, to 10x's specification
(cellranger / cellranger-arc, format version 2): ``matrix/{barcodes,data,indices,indptr,shape}``
with the features x barcodes matrix in CSC, and ``matrix/features/{_all_tag_keys,feature_type,
genome,id,name[,interval]}`` as fixed-length byte strings, root attributes as cellranger-arc
writes them; and the REAL 500-cell BMMC pair of ``../shared/data`` (the ``real_pair`` fixture)
in 10x's layouts (a 10x ``.h5``, one h5ad with 10x's modality names). Shared by the tests that
read such files."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp


def write_10x_h5(
    path: Path,
    counts: sp.csr_matrix,
    barcodes,
    names,
    ids,
    feature_types,
    *,
    genome: str = "GRCh38",
    interval=None,
    dtype=np.uint32,
) -> Path:
    """``counts`` (cells x features) as a 10x ``.h5``: its CSR arrays are the CSC of features x
    barcodes the format stores. ``interval`` (cellranger-arc's ``chr:start-end``, ``NA`` for
    genes) is written when given."""
    counts = sp.csr_matrix(counts)
    counts.sort_indices()
    n_cells, n_features = counts.shape
    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        f.attrs["software_version"] = "cellranger-arc-2.0.2"
        f.attrs["chemistry_description"] = "Single Cell Multiome ATAC + Gene Expression v1"
        f.attrs["library_ids"] = np.array([b"test_library"])
        f.attrs["original_gem_groups"] = np.array([1])
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        m.create_dataset("data", data=counts.data.astype(dtype), compression="gzip")
        m.create_dataset("indices", data=counts.indices.astype(np.int64), compression="gzip")
        m.create_dataset("indptr", data=counts.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([n_features, n_cells], dtype=np.int32))
        feats = m.create_group("features")
        tags = [b"genome"] + ([b"interval"] if interval is not None else [])
        feats.create_dataset("_all_tag_keys", data=np.array(tags, dtype="S"))
        feats.create_dataset("feature_type", data=np.array(feature_types, dtype="S"))
        feats.create_dataset("genome", data=np.array([genome] * n_features, dtype="S"))
        feats.create_dataset("id", data=np.array(ids, dtype="S"))
        feats.create_dataset("name", data=np.array(names, dtype="S"))
        if interval is not None:
            feats.create_dataset("interval", data=np.array(interval, dtype="S"))
    return Path(path)


def peak_interval(name: str) -> str:
    """``chr1-100-200`` (BMMC's peak names) as cellranger-arc's ``chr1:100-200``."""
    chrom, start, end = name.rsplit("-", 2)
    return f"{chrom}:{start}-{end}"


def _counts(pair) -> sp.csr_matrix:
    gex, atac = pair
    return sp.hstack([gex.layers["counts"], atac.layers["counts"]]).tocsr()


def real_as_10x_h5(pair, path: Path) -> Path:
    """The real pair's counts as cellranger-arc writes them: Gene Expression then Peaks (with
    ``interval``), uint32 counts, barcodes only (no obs columns)."""
    gex, atac = pair
    return write_10x_h5(
        path,
        _counts(pair),
        gex.obs_names,
        [*gex.var_names, *atac.var_names],
        [*gex.var["gene_ids"], *atac.var_names],
        ["Gene Expression"] * gex.n_vars + ["Peaks"] * atac.n_vars,
        interval=["NA"] * gex.n_vars + [peak_interval(n) for n in atac.var_names],
    )


def real_as_10x_h5ad(pair, path: Path) -> ad.AnnData:
    """One AnnData with 10x's naming (what scanpy gives for cellranger-arc output): counts in X
    (float32), the GEX file's obs, no layers; written by anndata."""
    gex, atac = pair
    var = pd.DataFrame(
        {"feature_types": ["Gene Expression"] * gex.n_vars + ["Peaks"] * atac.n_vars},
        index=[*gex.var_names, *atac.var_names],
    )
    adata = ad.AnnData(_counts(pair).astype(np.float32), obs=gex.obs.copy(), var=var)
    adata.write_h5ad(path)
    return adata
