"""The NeurIPS 2021 multimodal tasks, scored on held-out cells (the competition's definitions).

- Predict modality: GEX -> ATAC RMSE on binarized ATAC and ATAC -> GEX RMSE on
  ``ln(1 + counts / size_factor)``, next to predicting every cell as the training cells' mean.
- Match modality: an N x N matrix whose rows (GEX embeddings) are distributions over the
  columns (ATAC embeddings); the score is the mass on the true partner, next to random 1/N.
- Joint embedding: KMeans with one cluster per cell type -> NMI and ARI; cell-type ASW and
  batch ASW, scaled as in the competition. They need cell types: on data without them (the
  batches' ``obs["cell_type"]`` is None) they are None, "not available"; so is batch ASW where
  no cell type spans two batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    silhouette_samples,
    silhouette_score,
)

from gpuload.reference.models import MultiomeVAE, as_dense, log_normalize, size_factors_of

if TYPE_CHECKING:
    from gpuload.loader import MultiomeLoader

MAX_MATCH_CELLS = 1000


def matching_matrix(gex_post: torch.Tensor, atac_post: torch.Tensor) -> torch.Tensor:
    """Row i: how likely each ATAC cell j is GEX cell i's partner, from posterior overlap.

    Two posteriors N(m_i, v_i) and N(m_j, v_j) describe the same z with likelihood
    N(m_i - m_j; 0, v_i + v_j); each row is that likelihood normalized over j (rows sum to 1).
    ``gex_post`` and ``atac_post`` are stacked (mean, variance), [2, cells, latent_dim].
    """
    (m_g, v_g), (m_a, v_a) = gex_post, atac_post
    var = v_g[:, None, :] + v_a[None, :, :]
    log_lik = -0.5 * ((m_g[:, None, :] - m_a[None, :, :]).square() / var + var.log()).sum(-1)
    return torch.softmax(log_lik, dim=1)


def batch_asw(embedding: np.ndarray, batches: np.ndarray, cell_types: np.ndarray) -> float:
    """The competition's batch ASW: within each cell type, 1 - |silhouette by batch| per cell,
    averaged per cell type and then over cell types (1 = batches fully mixed)."""
    scores = []
    for cell_type in np.unique(cell_types):
        here = cell_types == cell_type
        if np.unique(batches[here]).size < 2 or here.sum() <= np.unique(batches[here]).size:
            continue  # silhouette needs >= 2 batches and more cells than batches
        scores.append(np.mean(1.0 - np.abs(silhouette_samples(embedding[here], batches[here]))))
    return float(np.mean(scores)) if scores else float("nan")


def embedding_scores(
    embedding: np.ndarray, cell_types: np.ndarray, batches: np.ndarray, seed: int
) -> dict[str, float]:
    """NMI and ARI of a KMeans clustering (one cluster per cell type), and the two ASWs."""
    n_types = np.unique(cell_types).size
    clusters = KMeans(n_clusters=n_types, n_init=10, random_state=seed).fit_predict(embedding)
    return {
        "nmi": float(normalized_mutual_info_score(cell_types, clusters)),
        "ari": float(adjusted_rand_score(cell_types, clusters)),
        "asw_cell_type": float((silhouette_score(embedding, cell_types) + 1.0) / 2.0),
        "asw_batch": batch_asw(embedding, batches, cell_types),
    }


@torch.no_grad()
def evaluate(
    model: MultiomeVAE, loader: MultiomeLoader, train_means: tuple, seed: int
) -> tuple[dict[str, float | int | None], dict[str, np.ndarray]]:
    """All held-out metrics, streaming over ``loader``; also the embeddings for the plot."""
    model.eval()
    gex_mean, atac_mean = train_means
    device = loader.backend.torch_device  # where the batches are: the sums stay there until the end
    squared = {name: torch.zeros((), device=device) for name in ("atac", "atac_base", "gex", "gex_base")}
    n_gex = n_atac = 0
    posteriors: dict[str, list] = {"joint": [], "gex": [], "atac": []}
    cell_type_names: list[str] = []
    batch_names: list[str] = []
    for batch in loader:
        gex_in, atac_in, codes = batch["GEX"], batch["ATAC"], batch["obs_codes"]["batch"]
        gex, atac = as_dense(gex_in), as_dense(atac_in)  # the targets; the model reads either
        size_factors = size_factors_of(batch)
        target = log_normalize(gex, size_factors)
        predicted = model.predict_gex_from_atac(atac_in, codes, gex.sum(-1), size_factors)
        squared["gex"] += (predicted - target).square().sum()
        squared["gex_base"] += (gex_mean - target).square().sum()
        squared["atac"] += (model.predict_atac_from_gex(gex_in, codes) - atac).square().sum()
        squared["atac_base"] += (atac_mean - atac).square().sum()
        n_gex, n_atac = n_gex + target.numel(), n_atac + atac.numel()
        for name, (mean, var) in model.posteriors(gex_in, atac_in).items():
            posteriors[name].append(torch.stack([mean, var]).cpu())
        labels = batch["obs"]["cell_type"]
        cell_type_names += [] if labels is None else [str(c) for c in labels]
        batch_names += batch["obs"]["batch"]
    metrics: dict[str, float | int | None] = {
        "gex2atac_rmse": float((squared["atac"] / n_atac).sqrt()),
        "gex2atac_rmse_baseline": float((squared["atac_base"] / n_atac).sqrt()),
        "atac2gex_rmse": float((squared["gex"] / n_gex).sqrt()),
        "atac2gex_rmse_baseline": float((squared["gex_base"] / n_gex).sqrt()),
    }
    # [2 (mean, var), cells, latent] per posterior
    mean_var = {name: torch.cat(parts, dim=1) for name, parts in posteriors.items()}
    n_cells = mean_var["joint"].shape[1]
    pick = np.sort(np.random.default_rng(seed).permutation(n_cells)[:MAX_MATCH_CELLS])
    match = matching_matrix(mean_var["gex"][:, pick], mean_var["atac"][:, pick])
    metrics.update(
        match_score=float(match.diagonal().mean()), match_random=1.0 / pick.size, match_n=int(pick.size)
    )
    embedding = mean_var["joint"][0].numpy()
    batches = np.array(batch_names)
    if len(cell_type_names) == n_cells:
        cell_types = np.array(cell_type_names)
        scores = embedding_scores(embedding, cell_types, batches, seed)
        metrics.update({k: None if np.isnan(v) else v for k, v in scores.items()})
        metrics["n_cell_types"] = int(np.unique(cell_types).size)
    else:  # no labels: the label-based scores are not available
        cell_types = np.full(n_cells, "not available")
        metrics.update(dict.fromkeys(("nmi", "ari", "asw_cell_type", "asw_batch")), n_cell_types=0)
    return metrics, {"embedding": embedding, "cell_type": cell_types, "batch": batches}
