"""scvi-tools' SCVI and SCANVI trained through ScviDataModule: real scvi-tools, real files, CPU."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

pytest.importorskip("scvi")
import scvi  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.metrics import normalized_mutual_info_score  # noqa: E402

from gpuload import ArgumentError, write_synthetic  # noqa: E402
from gpuload.scvi import ScviDataModule  # noqa: E402

TRAIN = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}
LOADER = {"num_threads": 1, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    return write_synthetic(
        tmp_path_factory.mktemp("scvi") / "cells.h5ad",
        n_cells=1000,
        n_genes=200,
        n_peaks=300,
        seed=3,
        progress=False,
    )


def test_scvi_latent_recovers_cell_types_in_file_order(cells):
    dm = ScviDataModule(cells, modality="GEX", layer="counts", batch_key="batch", **LOADER)
    model = scvi.model.SCVI(registry=dm.registry, n_latent=10)
    model.train(datamodule=dm, max_epochs=10, **TRAIN)
    z = model.get_latent_representation(dataloader=dm.inference_dataloader())
    adata = ad.read_h5ad(cells)
    assert z.shape == (adata.n_obs, 10)

    cell_types = adata.obs["cell_type"].astype(str).to_numpy()
    clusters = KMeans(len(set(cell_types)), n_init=5, random_state=0).fit_predict(z)
    score = normalized_mutual_info_score(cell_types, clusters)
    control = normalized_mutual_info_score(np.random.default_rng(0).permutation(cell_types), clusters)
    print(f"SCVI latent: KMeans NMI {score:.3f}, shuffled-label control {control:.3f}")
    assert score > 0.6 and score > control + 0.4

    # File order: row r of z is file row r's posterior mean, computed here from anndata's counts.
    rows = np.array([0, 1, 499, 998, 999])
    genes = (adata.var["feature_types"] == "GEX").to_numpy()
    counts = torch.tensor(adata.layers["counts"][rows][:, genes].toarray(), dtype=torch.float32)
    batch_codes = torch.tensor(adata.obs["batch"].cat.codes.to_numpy()[rows], dtype=torch.int64)[:, None]
    with torch.inference_mode():
        direct = model.module.inference(x=counts, batch_index=batch_codes)["qz"].loc.numpy()
    np.testing.assert_allclose(z[rows], direct, rtol=1e-4, atol=1e-5)
    other = model.get_latent_representation(dataloader=dm.inference_dataloader(batch_size=333))
    np.testing.assert_allclose(other, z, rtol=1e-4, atol=1e-5)
    indices = torch.cat([t["ind_x"][:, 0] for t in dm.inference_dataloader()])
    assert indices.tolist() == list(range(adata.n_obs))


def test_scanvi_learns_from_the_labelled_cells(cells, tmp_path):
    """A quarter of the labels removed: SCANVI trains its classifier on the rest and labels them."""
    adata = ad.read_h5ad(cells)
    hidden = np.random.default_rng(1).random(adata.n_obs) < 0.25
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    adata.obs["cell_type"] = adata.obs["cell_type"].mask(hidden)
    path = tmp_path / "partly_labelled.h5ad"
    adata.write_h5ad(path)

    dm = ScviDataModule(path, batch_key="batch", labels_key="cell_type", features={"top": 150}, **LOADER)
    assert dm.n_vars == 150 and dm.labels_mapping[-1] == "Unknown"
    assert (dm.labels_ == "Unknown").tolist() == hidden.tolist()
    model = scvi.model.SCANVI(registry=dm.registry, datamodule=dm, n_latent=10)
    model.train(datamodule=dm, max_epochs=10, **TRAIN)
    predicted = np.asarray(model.predict(dataloader=dm.inference_dataloader()))
    accuracy = (predicted[hidden] == truth[hidden]).mean()
    majority = max((truth[hidden] == t).mean() for t in set(truth))
    print(f"SCANVI on unlabelled cells: accuracy {accuracy:.3f}, majority class {majority:.3f}")
    assert accuracy > majority + 0.3


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"batch_key": "GEX_n_counts"}, "batch_key"),
        ({"labels_key": "DonorAge"}, "labels_key"),
        ({"obs_keys": ["batch"]}, "obs_keys"),
        ({"modality": ["GEX", "ATAC"]}, "modality"),
        ({"subset": [0, 1]}, "subset"),
    ],
)
def test_bad_argument_names_it(cells, kwargs, argument):
    with pytest.raises(ArgumentError, match=argument):
        ScviDataModule(cells, **{**LOADER, **kwargs})
