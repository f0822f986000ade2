"""Train scvi-tools' SCVI on gpuload batches streamed from the file (nothing loaded whole) and
cluster its latent space.

    python examples/scvi_datamodule.py bmmc.h5ad
"""

from __future__ import annotations

import sys

import numpy as np
import scvi
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from gpuload.scvi import ScviDataModule


def latent(path: str, max_epochs: int = 10, **train_kwargs) -> np.ndarray:
    """One latent row per cell, in file order."""
    dm = ScviDataModule(path, modality="GEX", layer="counts", batch_key="batch", features={"top": 2000})
    model = scvi.model.SCVI(registry=dm.registry)
    model.train(datamodule=dm, max_epochs=max_epochs, **train_kwargs)
    return model.get_latent_representation(dataloader=dm.inference_dataloader())


if __name__ == "__main__":
    import anndata as ad

    z = latent(sys.argv[1])
    cell_types = ad.read_h5ad(sys.argv[1], backed="r").obs["cell_type"].astype(str)
    clusters = KMeans(cell_types.nunique(), n_init=5, random_state=0).fit_predict(z)
    score = normalized_mutual_info_score(cell_types, clusters)
    print(f"{z.shape[0]} cells, latent {z.shape[1]}: KMeans NMI with cell types {score:.3f}")
