"""What a training run leaves behind for people: ``report.md`` and the embedding plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: training runs on headless machines
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA


def plot_embedding(embedding: np.ndarray, cell_types: np.ndarray, batches: np.ndarray, path: Path) -> None:
    """The joint embedding's first two principal components, coloured by cell type and by batch."""
    xy = PCA(n_components=2).fit_transform(embedding)
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), layout="constrained")
    colours = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors]
    for ax, labels, title in ((axes[0], cell_types, "cell type"), (axes[1], batches, "batch")):
        for i, label in enumerate(np.unique(labels)):
            on = labels == label
            ax.scatter(*xy[on].T, s=4, color=colours[i % len(colours)], label=label, rasterized=True)
        ax.set(title=f"held-out joint embedding (PCA) by {title}", xlabel="PC 1", ylabel="PC 2")
        ax.legend(fontsize=7, markerscale=3, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(metrics: dict, path: Path) -> None:
    """report.md: the run, then one markdown table row per metric."""
    m = metrics
    rows = [  # task, metric, metrics key, what the baseline is
        ("Predict GEX -> ATAC", "RMSE on binarized ATAC", "gex2atac_rmse", "mean per peak"),
        ("Predict ATAC -> GEX", "RMSE on ln(1 + counts / size factor)", "atac2gex_rmse", "mean per gene"),
        ("Match modality", f"mean M[i, i], N = {m['match_n']}", "match_score", "random 1/N"),
        ("Joint embedding", f"NMI, KMeans k = {m['n_cell_types']}", "nmi", ""),
        ("Joint embedding", "ARI", "ari", ""),
        ("Joint embedding", "cell-type ASW, (asw + 1) / 2", "asw_cell_type", ""),
        ("Joint embedding", "batch ASW, 1 - abs(asw) within cell types", "asw_batch", ""),
    ]
    baselines = {
        "gex2atac_rmse": m["gex2atac_rmse_baseline"],
        "atac2gex_rmse": m["atac2gex_rmse_baseline"],
        "match_score": m["match_random"],
    }
    lines = [
        "# gpuload MultiomeVAE training report",
        "",
        f"- data: `{m['data']}`",
        f"- cells: {m['n_train']} training, {m['n_test']} held out ({m['split']})",
        f"- model: {m['gex_likelihood']} GEX likelihood, latent {m['latent_dim']}; "
        f"{m['epochs']} epochs of {m['batch_size']} cells on {m['device']}",
        f"- training: {m['train_seconds']:.1f} s, {m['cells_per_second']:.0f} cells/s; "
        f"loss per epoch {', '.join(f'{x:.1f}' for x in m['loss_history'])}",
        "",
        "| task | metric | model | baseline | baseline is |",
        "|---|---|---:|---:|---|",
    ]
    for task, metric, key, what in rows:
        base = f"{baselines[key]:.4f}" if key in baselines else ""
        lines.append(f"| {task} | {metric} | {m[key]:.4f} | {base} | {what} |")
    lines += [
        "",
        "Lower RMSE is better; higher is better for the rest. Baselines use the training cells only.",
        "ATAC -> GEX with the NB likelihood averages NB draws at each held-out cell's GEX library size",
        "and size factor (its sequencing depth, none of its expression values).",
        "",
        "![held-out joint embedding](embedding.png)",
        "",
    ]
    path.write_text("\n".join(lines))
