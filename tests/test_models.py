"""The reference MultiomeVAE and its training run: the maths of its pieces, shapes, and a short
CPU run on synthetic data that must beat the competition's baselines on held-out cells."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from scipy import stats

from gpuload.bmmc.synth import write_synthetic
from gpuload.errors import ArgumentError, SchemaError
from gpuload.reference.config import TrainConfig
from gpuload.reference.metrics import batch_asw, embedding_scores, matching_matrix
from gpuload.reference.models import (
    MultiomeVAE,
    kl_to_prior,
    negative_binomial_log_prob,
    product_of_experts,
)
from gpuload.reference.train import split_cells, train

N_GENES, N_PEAKS, N_BATCHES = 40, 60, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fake_batch(n_cells: int = 32, seed: int = 0) -> dict:
    """A loader-shaped batch: raw GEX counts, binary ATAC, batch codes and size factors."""
    g = torch.Generator().manual_seed(seed)
    gex = torch.poisson(torch.rand(n_cells, N_GENES, generator=g) * 5.0, generator=g)
    atac = (torch.rand(n_cells, N_PEAKS, generator=g) < 0.2).float()
    codes = torch.randint(0, N_BATCHES, (n_cells,), generator=g)
    size_factors = gex.sum(1) / gex.sum(1).mean()
    return {
        "GEX": gex,
        "ATAC": atac,
        "obs": {"GEX_size_factors": size_factors},
        "obs_codes": {"batch": codes},
    }


# -- the maths ---------------------------------------------------------------------------------
def test_product_of_experts_is_the_normalized_product_of_densities() -> None:
    experts = [
        (torch.tensor([[1.0]]), torch.tensor([[0.5]])),
        (torch.tensor([[-2.0]]), torch.tensor([[2.0]])),
    ]
    mean, var = product_of_experts(experts)
    # Closed form: precision 1 + 2 + 0.5 = 3.5; mean (1 / 0.5 - 2 / 2) / 3.5.
    assert var.item() == pytest.approx(1 / 3.5)
    assert mean.item() == pytest.approx(1 / 3.5)
    # Independently: multiply the densities (prior included) on a grid and take the moments.
    x = np.linspace(-10, 10, 200_001)
    density = stats.norm.pdf(x, 1, 0.5**0.5) * stats.norm.pdf(x, -2, 2**0.5) * stats.norm.pdf(x)
    density /= density.sum()
    grid_mean = (x * density).sum()
    assert mean.item() == pytest.approx(grid_mean, abs=1e-6)
    assert var.item() == pytest.approx(((x - grid_mean) ** 2 * density).sum(), abs=1e-6)


def test_product_of_one_expert_with_a_standard_normal_prior_shrinks_it() -> None:
    mean, var = product_of_experts([(torch.tensor([[3.0]]), torch.tensor([[1.0]]))])
    assert (mean.item(), var.item()) == pytest.approx((1.5, 0.5))


def test_kl_to_prior_matches_torch() -> None:
    mean, var = torch.tensor([[0.3, -1.2]]), torch.tensor([[0.5, 2.0]])
    q = torch.distributions.Normal(mean, var.sqrt())
    p = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(kl_to_prior((mean, var)), expected)


def test_negative_binomial_log_prob_matches_scipy() -> None:
    x = torch.tensor([0.0, 1.0, 7.0, 120.0])
    mean = torch.tensor([0.5, 2.0, 7.0, 90.0])
    theta = torch.tensor([0.3, 1.0, 10.0, 4.0])
    got = negative_binomial_log_prob(x, mean.log(), theta.log())
    expected = stats.nbinom.logpmf(x.numpy(), theta.numpy(), (theta / (theta + mean)).numpy())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_matching_matrix_rows_sum_to_one_and_prefer_the_closest_posterior() -> None:
    means = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    post = torch.stack([means, torch.full_like(means, 0.1)])
    m = matching_matrix(post, post)
    torch.testing.assert_close(m.sum(1), torch.ones(3))
    assert torch.equal(m.argmax(1), torch.arange(3))


def test_batch_asw_is_one_for_mixed_batches_and_low_for_separated_ones() -> None:
    rng = np.random.default_rng(0)
    cell_types = np.repeat(["a", "b"], 100)
    batches = np.tile(["x", "y"], 100)
    mixed = rng.normal(size=(200, 2)) + (cell_types == "b")[:, None] * 10
    separated = mixed + (batches == "y")[:, None] * 20
    assert batch_asw(mixed, batches, cell_types) > 0.9
    assert batch_asw(separated, batches, cell_types) < 0.2


# -- the model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("likelihood", ["nb", "gaussian"])
def test_shapes_and_finite_loss(likelihood: str) -> None:
    torch.manual_seed(0)
    model = MultiomeVAE(N_GENES, N_PEAKS, N_BATCHES, latent_dim=4, hidden=16, gex_likelihood=likelihood)
    batch = _fake_batch()
    loss, terms = model.loss(batch)
    assert loss.shape == () and torch.isfinite(loss)
    assert set(terms) == {
        f"{t}_{q}" for t in ("gex_from", "atac_from", "kl") for q in ("joint", "gex", "atac")
    }
    assert loss.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-5)
    gex, atac, codes = batch["GEX"], batch["ATAC"], batch["obs_codes"]["batch"]
    for which in ("joint", "gex", "atac"):
        assert model.embed(gex, atac, which=which).shape == (32, 4)
    probs = model.predict_atac_from_gex(gex, codes)
    assert probs.shape == (32, N_PEAKS) and probs.min() >= 0 and probs.max() <= 1
    predicted = model.predict_gex_from_atac(atac, codes, gex.sum(1), batch["obs"]["GEX_size_factors"])
    assert predicted.shape == (32, N_GENES) and torch.isfinite(predicted).all()


@pytest.mark.parametrize("likelihood", ["nb", "gaussian"])
def test_loss_decreases(likelihood: str) -> None:
    torch.manual_seed(0)
    model = MultiomeVAE(N_GENES, N_PEAKS, N_BATCHES, latent_dim=4, hidden=32, gex_likelihood=likelihood)
    batch = _fake_batch(n_cells=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # The loss is a one-sample ELBO estimate, so compare averages rather than single steps.
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.97 * np.mean(losses[:10])


def test_unseen_batch_rows_stay_untouched() -> None:
    """A batch never trained on decodes as batch-neutral: its embedding row stays zero."""
    torch.manual_seed(0)
    model = MultiomeVAE(N_GENES, N_PEAKS, N_BATCHES + 1, latent_dim=4, hidden=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss, _ = model.loss(_fake_batch())  # codes 0..N_BATCHES-1 only
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.count_nonzero(model.gex_decoder.batch.weight[N_BATCHES]) == 0
    assert torch.count_nonzero(model.gex_decoder.batch.weight[0]) > 0


def test_rejects_unknown_likelihood() -> None:
    with pytest.raises(ValueError, match="gex_likelihood"):
        MultiomeVAE(N_GENES, N_PEAKS, N_BATCHES, gex_likelihood="poisson")


# -- the split ---------------------------------------------------------------------------------
def test_split_uses_competition_batches_when_present() -> None:
    batches = np.array(["s1d1", "s1d2", "s4d1", "s4d9", "s3d10", "s3d7"])
    train_rows, test_rows, how = split_cells(batches, seed=0)
    assert train_rows.tolist() == [0, 4] and test_rows.tolist() == [2, 3]
    assert "competition" in how


def test_split_falls_back_to_a_seeded_random_fifth() -> None:
    batches = np.array(["donorA", "donorB"] * 500)
    train_rows, test_rows, how = split_cells(batches, seed=3)
    again = split_cells(batches, seed=3)
    assert np.array_equal(train_rows, again[0]) and "random" in how
    assert np.intersect1d(train_rows, test_rows).size == 0
    assert train_rows.size + test_rows.size == 1000 and 150 < test_rows.size < 250
    sub_train, sub_test, _ = split_cells(batches, seed=3, max_cells=100)
    assert sub_train.size + sub_test.size == 100


# -- a short training run ----------------------------------------------------------------------
SMALL_FEATURES = {"GEX": {"top": 500}, "ATAC": {"top": 2500}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[dict, object]:
    """``gpuload train``'s defaults (10 epochs of 128 cells, the most detected features) at a
    quarter of the default feature counts, on a fresh 3,000-cell file narrower than the real
    one, so that the test stays under a minute; the full-size defaults are measured in the
    README on 3,000- and 5,000-cell files at the real width."""
    folder = tmp_path_factory.mktemp("train")
    data = write_synthetic(
        folder / "synth.h5ad", n_cells=3000, n_genes=1000, n_peaks=5000, seed=7, progress=False
    )
    out = folder / "out"
    config = TrainConfig(features=SMALL_FEATURES, device="cpu", out_dir=out, seed=0, progress=False)
    metrics = train(data, config)
    return metrics, out


def test_training_with_defaults_wins_all_three_tasks(trained) -> None:
    m, _ = trained
    assert m["split"].startswith("competition") and m["n_test"] > 500
    assert (m["n_genes"], m["n_peaks"]) == (500, 2500)  # the feature selection
    assert m["gex2atac_rmse"] < m["gex2atac_rmse_baseline"]
    assert m["atac2gex_rmse"] < m["atac2gex_rmse_baseline"]
    assert m["match_score"] >= 10 * m["match_random"]
    assert m["nmi"] >= 0.9
    assert 0.0 <= m["asw_batch"] <= 1.0 and 0.0 <= m["asw_cell_type"] <= 1.0
    assert m["loss_history"][-1] < m["loss_history"][0]


def test_training_writes_its_outputs(trained) -> None:
    m, out = trained
    assert json.loads((out / "metrics.json").read_text()) == m
    report = (out / "report.md").read_text()
    assert "| Match modality |" in report and "umap.png" in report and "top 2500 ATAC" in report
    for plot in ("embedding.png", "umap.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = torch.load(out / "model.pt")
    model = MultiomeVAE(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["state_dict"])
    assert len(checkpoint["batch_categories"]) == checkpoint["model_args"]["n_batches"]
    assert len(checkpoint["var_names"]["ATAC"]) == checkpoint["model_args"]["n_peaks"] == 2500


@pytest.mark.filterwarnings("ignore:Element .* was written without encoding metadata")
def test_training_needs_both_modalities(real_gex, tmp_path) -> None:
    """The real 500-cell starter file holds GEX only: a clear error, before any training."""
    with pytest.raises(SchemaError, match="paired GEX \\+ ATAC"):
        train(real_gex, TrainConfig(out_dir=tmp_path, device="cpu", progress=False))


def test_embedding_scores_agree_with_scib_metrics() -> None:
    """Our ASWs are scIB's definitions (scib-metrics computes the same numbers), and our
    KMeans NMI / ARI agree with scib-metrics' own KMeans clustering on clear clusters."""
    import scib_metrics

    rng = np.random.default_rng(0)
    cell_types = np.repeat(["a", "b", "c"], 120)
    batches = np.tile(["x", "y", "z"], 120)
    centres = rng.normal(scale=6.0, size=(3, 8))
    codes = np.searchsorted(["a", "b", "c"], cell_types)
    embedding = (centres[codes] + rng.normal(size=(360, 8)) + (batches == "y")[:, None] * 0.5).astype(
        np.float32
    )
    ours = embedding_scores(embedding, cell_types, batches, seed=0)
    assert ours["asw_cell_type"] == pytest.approx(
        float(scib_metrics.silhouette_label(embedding, codes, rescale=True)), abs=1e-4
    )
    batch_codes = np.searchsorted(["x", "y", "z"], batches)
    assert ours["asw_batch"] == pytest.approx(
        float(scib_metrics.silhouette_batch(embedding, codes, batch_codes, rescale=True)), abs=1e-4
    )
    theirs = scib_metrics.nmi_ari_cluster_labels_kmeans(embedding, codes)
    assert ours["nmi"] == pytest.approx(float(theirs["nmi"]), abs=0.02)
    assert ours["ari"] == pytest.approx(float(theirs["ari"]), abs=0.02)


def test_sparse_inputs_give_the_dense_loss() -> None:
    """Encoders fed sparse CSR batches compute the same ELBO as dense ones."""
    torch.manual_seed(0)
    model = MultiomeVAE(N_GENES, N_PEAKS, N_BATCHES, latent_dim=4, hidden=16)
    dense = _fake_batch()
    dense["GEX"][3] = 0.0  # an empty row
    sparse = {**dense, "GEX": dense["GEX"].to_sparse_csr(), "ATAC": dense["ATAC"].to_sparse_csr()}
    torch.manual_seed(1)
    want, _ = model(dense)
    want.backward()
    want_grad = model.gex_encoder.first.weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(1)
    got, _ = model(sparse)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(model.gex_encoder.first.weight.grad, want_grad, rtol=1e-4, atol=1e-5)


def test_train_cli_rejects_a_negative_feature_count(tmp_path, capsys) -> None:
    from gpuload.cli import main

    code = main(["train", str(tmp_path / "any.h5ad"), "--top-peaks", "-3", "--out", str(tmp_path)])
    assert code == 2 and "--top-peaks must be 0 (all features) or a positive count" in capsys.readouterr().err


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "epochs must be a positive integer, got 0"),
        ("batch_size", 2.5, "batch_size must be a positive integer"),
        ("hidden", None, "hidden must be a positive integer"),
        ("latent_dim", -1, "latent_dim must be a positive integer"),
        ("inputs", "coo", "inputs must be one of"),
        ("features", "some", "features must be 'all' or {modality: spec}"),
        ("device", "tpu", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ("seed", -1, "seed must be a non-negative integer"),
        ("max_cells", 0, "max_cells must be a positive integer"),
        ("umap", "yes", "umap must be True or False"),
        ("gex", 3, "gex must be a name or None"),
        ("out_dir", 3, "out_dir must be a folder path"),
    ],
)
def test_train_config_names_the_bad_field(field, value, message) -> None:
    with pytest.raises(ArgumentError, match=re.escape(message)):
        TrainConfig(**{field: value})


def test_train_config_is_frozen_with_one_spelling(tmp_path) -> None:
    config = TrainConfig(features=None, out_dir=str(tmp_path))
    assert config.features == "all" and config.out_dir == tmp_path
    assert TrainConfig().features == {"GEX": {"top": 2000}, "ATAC": {"top": 10000}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]
    with pytest.raises(ArgumentError, match="train\\(\\) takes a TrainConfig"):
        train(tmp_path / "any.h5ad", {"epochs": 1})  # type: ignore[arg-type]
