"""Facts about the NeurIPS 2021 BMMC multiome file (GEO GSE194122) that several modules share.

Source: ``../shared/DATASET.md``. The loader reads whatever obs columns a file has; these
constants only describe the real file, for the synthetic generator and the competition split.
"""

from __future__ import annotations

N_CELLS = 69_249
N_GENES = 13_431
N_PEAKS = 116_490
MODALITY_KEY = "feature_types"
MODALITIES = ("GEX", "ATAC")

CELL_TYPE_COUNTS = {
    "CD8+ T": 11589,
    "CD14+ Mono": 10843,
    "NK": 6929,
    "CD4+ T activated": 5526,
    "Naive CD20+ B": 5052,
    "Erythroblast": 4916,
    "CD4+ T naive": 4398,
    "Transitional B": 2810,
    "Proerythroblast": 2300,
    "CD16+ Mono": 1894,
    "B1 B": 1890,
    "Normoblast": 1780,
    "Lymph prog": 1779,
    "G/M prog": 1203,
    "pDC": 1191,
    "HSC": 1072,
    "CD8+ T naive": 1012,
    "MK/E prog": 884,
    "cDC2": 859,
    "ILC": 835,
    "Plasma cell": 379,
    "ID2-hi myeloid prog": 108,
}

BATCHES = (
    "s1d1",
    "s1d2",
    "s1d3",
    "s2d1",
    "s2d4",
    "s2d5",
    "s3d3",
    "s3d6",
    "s3d7",
    "s3d10",
    "s4d1",
    "s4d8",
    "s4d9",
)

# The competition split is by batch.
SPLITS = {
    "train": ("s1d1", "s1d3", "s2d1", "s2d4", "s2d5", "s3d3", "s3d6", "s3d10"),
    "val": ("s1d2", "s3d7"),
    "test": ("s4d1", "s4d8", "s4d9"),
}

PHASES = ("G1", "S", "G2M")

# Developmental trajectories along which pseudotime is defined (NaN elsewhere).
TRAJECTORIES = {
    "GEX_pseudotime_order": ("HSC", "MK/E prog", "Proerythroblast", "Erythroblast", "Normoblast"),
    "ATAC_pseudotime_order": ("HSC", "G/M prog", "CD14+ Mono"),
}

OBSM_WIDTHS = {
    "ATAC_gene_activity": 19_039,
    "ATAC_lsi_full": 50,
    "ATAC_lsi_red": 39,
    "ATAC_umap": 2,
    "GEX_X_pca": 50,
    "GEX_X_umap": 2,
}

# obs columns of the real file and the dtype kind anndata reads them as
# ("f" float64, "i" integer, "c" categorical).
OBS_COLUMNS = {
    "GEX_pct_counts_mt": "f",
    "GEX_n_counts": "f",
    "GEX_n_genes": "i",
    "GEX_size_factors": "f",
    "GEX_phase": "c",
    "ATAC_nCount_peaks": "f",
    "ATAC_atac_fragments": "i",
    "ATAC_reads_in_peaks_frac": "f",
    "ATAC_blacklist_fraction": "f",
    "ATAC_nucleosome_signal": "f",
    "cell_type": "c",
    "batch": "c",
    "ATAC_pseudotime_order": "f",
    "GEX_pseudotime_order": "f",
    "Samplename": "c",
    "Site": "c",
    "DonorNumber": "c",
    "Modality": "c",
    "VendorLot": "i",
    "DonorID": "i",
    "DonorAge": "i",
    "DonorBMI": "f",
    "DonorBloodType": "c",
    "DonorRace": "c",
    "Ethnicity": "c",
    "DonorGender": "c",
    "QCMeds": "c",
    "DonorSmoker": "c",
}
