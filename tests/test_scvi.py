"""scvi-tools' SCVI, SCANVI and PEAKVI trained through ScviDataModule, saved and loaded: real scvi-tools,
real files, CPU (scvi-tools 1.4.2 on Python 3.11, 1.5 in `make test-latest`)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

pytest.importorskip("scvi")
import scvi  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.metrics import normalized_mutual_info_score  # noqa: E402

from gpuload import ArgumentError  # noqa: E402
from gpuload.scvi import ScviDataModule  # noqa: E402

TRAIN = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}
LOADER = {"num_threads": 1, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cells(synthetic):
    return synthetic("scvi-cells.h5ad", n_cells=1000, n_genes=200, n_peaks=300, seed=3)


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

    model.save(tmp_path / "scanvi", datamodule=dm)
    loaded = dm.load_model(scvi.model.SCANVI, tmp_path / "scanvi")
    assert np.asarray(loaded.predict(dataloader=dm.inference_dataloader())).tolist() == predicted.tolist()


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


def _nmi_against_control(z: np.ndarray, cell_types: np.ndarray) -> tuple[float, float]:
    """KMeans on ``z`` against the cell types, and against the same labels shuffled."""
    clusters = KMeans(len(set(cell_types)), n_init=5, random_state=0).fit_predict(z)
    control = np.random.default_rng(0).permutation(cell_types)
    return normalized_mutual_info_score(cell_types, clusters), normalized_mutual_info_score(control, clusters)


SCVI_VERSION = tuple(int(part) for part in scvi.__version__.split(".")[:2])
SCVI_15 = pytest.mark.skipif(
    SCVI_VERSION < (1, 5),
    reason="scvi-tools 1.4 does not pass train()'s batch_size/train_size to a datamodule",
)


def test_default_split_is_scvis_and_set_split_recuts_it(cells):
    dm = ScviDataModule(cells, **LOADER)
    dm.setup()
    assert [dm.loaders[s].positions.size for s in ("train", "val")] == [900, 100]
    dm.set_split(train_size=0.5, validation_size=0.3, shuffle_set_split=False, batch_size=100)
    dm.setup()
    assert dm.batch_size == 100 and "500 training, 300 validation" in dm.split_description
    assert dm.loaders["val"].positions.tolist() == list(range(300))  # file order: validation first
    assert dm.loaders["train"].positions.tolist() == list(range(300, 800))
    assert dm.loaders["test"].positions.tolist() == list(range(800, 1000))
    with pytest.raises(ArgumentError, match="train_size"):
        dm.set_split(train_size=1.5)


@SCVI_15
def test_train_batch_size_and_train_size_reach_the_datamodule(cells):
    dm = ScviDataModule(cells, batch_key="batch", **LOADER)
    model = scvi.model.SCVI(registry=dm.registry, n_latent=5)
    model.train(
        datamodule=dm, max_epochs=1, batch_size=100, train_size=0.5, check_val_every_n_epoch=1, **TRAIN
    )
    assert dm.loaders["train"].batch_size == 100 and len(dm.loaders["train"]) == 5
    assert dm.loaders["val"].positions.size == 500 and "elbo_validation" in model.history

    given = ScviDataModule(cells, batch_key="batch", split="random", **LOADER)
    model = scvi.model.SCVI(registry=given.registry, n_latent=5)
    with pytest.raises(ArgumentError, match="train_size=0.5"):
        model.train(datamodule=given, max_epochs=1, train_size=0.5, **TRAIN)
    model.train(datamodule=given, max_epochs=1, **TRAIN)  # scvi's default: the split given stays
    assert given.loaders["train"].positions.size == 800


def test_save_and_load_with_the_datamodule(cells, tmp_path):
    dm = ScviDataModule(cells, batch_key="batch", **LOADER)
    model = scvi.model.SCVI(registry=dm.registry, n_latent=5)
    model.train(datamodule=dm, max_epochs=2, **TRAIN)
    z = model.get_latent_representation(dataloader=dm.inference_dataloader())
    model.save(tmp_path / "model", datamodule=dm)
    loaded = dm.load_model(scvi.model.SCVI, tmp_path / "model")
    again = loaded.get_latent_representation(dataloader=dm.inference_dataloader())
    np.testing.assert_allclose(again, z, rtol=1e-5, atol=1e-6)
    # Control: the weights loaded are the trained ones, not those a new model starts from.
    fresh = scvi.model.SCVI(registry=dm.registry, n_latent=5)
    assert torch.equal(_weights(loaded), _weights(model)) and not torch.equal(
        _weights(fresh), _weights(model)
    )


def _weights(model) -> torch.Tensor:
    return torch.cat([p.flatten().cpu() for p in model.module.state_dict().values() if p.is_floating_point()])


@pytest.mark.skipif(SCVI_VERSION < (1, 5), reason="PEAKVI takes registry= from scvi-tools 1.5")
def test_peakvi_on_atac_with_default_early_stopping(cells):
    scvi.settings.seed = 0  # the weights' initialisation: with the loader's seed, a repeatable run
    dm = ScviDataModule(cells, modality="ATAC", batch_key="batch", model_name="PEAKVI", **LOADER)
    model = scvi.model.PEAKVI(registry=dm.registry, n_latent=10)
    model.train(datamodule=dm, max_epochs=30, lr=1e-3, **TRAIN)  # early_stopping=True: PEAKVI's default
    assert len(model.history["reconstruction_loss_validation"]) > 0
    z = model.get_latent_representation(dataloader=dm.inference_dataloader())
    score, control = _nmi_against_control(z, ad.read_h5ad(cells).obs["cell_type"].astype(str).to_numpy())
    print(f"PEAKVI latent (ATAC): KMeans NMI {score:.3f}, shuffled-label control {control:.3f}")
    assert score > control + 0.15  # 300 peaks carry less of the cell type than 200 genes (SCVI: + 0.4)
