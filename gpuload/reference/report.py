"""What a training run leaves behind for people: ``report.md`` and the embedding plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: training runs on headless machines
import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA

PLOTS = {"PCA": "embedding.png", "UMAP": "umap.png"}
# Below this many cells a run shows that the job works on the file, not how good the model is.
SMALL_RUN_CELLS = 5000
NOT_AVAILABLE = "not available"


def plot_embedding(
    embedding: np.ndarray,
    cell_types: np.ndarray,
    batches: np.ndarray,
    out_dir: Path,
    seed: int,
    with_umap: bool = True,
) -> None:
    """The joint embedding in two dimensions, by cell type and by batch: its first two principal
    components (``embedding.png``) and a UMAP (``umap.png``, umap-learn, seeded; it compiles
    for ~20 s on first use in a process, hence ``with_umap``)."""
    coordinates = {"PCA": PCA(n_components=2).fit_transform(embedding)}
    if with_umap:
        import umap  # imported here: it compiles numba code

        # Seeded, so one thread (n_jobs=1 said outright: umap warns when it has to override it).
        reducer = umap.UMAP(n_neighbors=15, random_state=seed, n_jobs=1)
        coordinates["UMAP"] = reducer.fit_transform(embedding)
    # tab20 and tab20b are ListedColormaps; get_cmap is typed as returning their base class
    colours = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors]  # type: ignore[attr-defined]
    for method, xy in coordinates.items():
        fig, axes = plt.subplots(1, 2, figsize=(15, 6), layout="constrained")
        for ax, labels, title in ((axes[0], cell_types, "cell type"), (axes[1], batches, "batch")):
            for i, label in enumerate(np.unique(labels)):
                on = labels == label
                ax.scatter(*xy[on].T, s=4, color=colours[i % len(colours)], label=label, rasterized=True)
            ax.set(
                title=f"held-out joint embedding ({method}) by {title}",
                xlabel=f"{method} 1",
                ylabel=f"{method} 2",
            )
            ax.legend(fontsize=7, markerscale=3, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
        fig.savefig(out_dir / PLOTS[method], dpi=120)
        plt.close(fig)


def write_report(metrics: dict, path: Path) -> None:
    """report.md: the run, then one markdown table row per metric."""
    m = metrics
    rows = [  # task, metric, metrics key, what the baseline is
        ("Predict GEX -> ATAC", "RMSE on binarized ATAC", "gex2atac_rmse", "mean per peak"),
        ("Predict ATAC -> GEX", "RMSE on ln(1 + counts / size factor)", "atac2gex_rmse", "mean per gene"),
        ("Match modality", f"mean M[i, i], N = {m['match_n']}", "match_score", "random 1/N"),
        ("Joint embedding", f"NMI, KMeans k = {m['n_cell_types'] or 'cell types'}", "nmi", ""),
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
        *[f"- {choice}" for choice in m.get("inputs_chosen", [])],
        f"- cells: {m['n_train']} training, {m['n_test']} held out ({m['split']})",
        f"- features: {m['features']} ({m['n_genes']} genes, {m['n_peaks']} peaks; {m['inputs']} inputs)",
        f"- model: {m['gex_likelihood']} GEX likelihood, hidden {m['hidden']}, latent {m['latent_dim']}; "
        f"{m['epochs']} epochs of {m['batch_size']} cells on {m['device']}",
        f"- training: {m['train_seconds']:.1f} s, {m['cells_per_second']:.0f} cells/s; "
        f"loss per epoch {', '.join(f'{x:.1f}' for x in m['loss_history'])}",
        "",
        *[f"- {line}" for line in summary_lines(m)],
        "",
        *small_run_lines(m),
        "| task | metric | model | baseline | baseline is |",
        "|---|---|---:|---:|---|",
    ]
    for task, metric, key, what in rows:
        base = f"{baselines[key]:.4f}" if key in baselines else ""
        lines.append(f"| {task} | {metric} | {_number(m[key])} | {base} | {what} |")
    lines += [
        "",
        "Lower RMSE is better; higher is better for the rest. Baselines use the training cells only;",
        "both RMSEs (model and baseline) are over the selected features.",
        "ATAC -> GEX with the NB likelihood averages NB draws at each held-out cell's GEX library size",
        "and size factor (its sequencing depth, none of its expression values).",
        "",
        *_plot_lines(path.parent),
        "",
    ]
    path.write_text("\n".join(lines))


def _number(value: float | None, digits: int = 4) -> str:
    return NOT_AVAILABLE if value is None else f"{value:.{digits}f}"


def small_run_lines(m: dict) -> list[str]:
    """For a run on few cells, what it can and cannot show, said plainly (empty otherwise)."""
    n = m["n_train"] + m["n_test"]
    if n >= SMALL_RUN_CELLS:
        return []
    steps = -(-m["n_train"] // m["batch_size"])
    types = f" of {m['n_cell_types']} cell types" if m["n_cell_types"] else ""
    return [
        f"**What {n:,} cells can and cannot show.** The run shows that the whole job works on this",
        "data as it is shipped: the file is read with the choices above, every training cell is",
        f"visited once per epoch, the model trains ({steps} steps per epoch, {steps * m['epochs']} in all)",
        "and every metric the data has labels for is computed. It cannot show how good the model is: "
        f"{m['n_test']} held-out cells{types}",
        "give noisy scores (another --seed moves them), KMeans has a handful of cells per cluster,",
        f"and {m['n_train']} training cells are far too few for a model of this size, so beating or",
        "losing to a baseline here is no evidence either way. Judge the model on the full",
        "69,249-cell BMMC file or the README's synthetic runs.",
        "",
    ]


def _plot_lines(out_dir: Path) -> list[str]:
    """The plots that were drawn, side by side."""
    drawn = [(method, file) for method, file in PLOTS.items() if (out_dir / file).exists()]
    return [
        "| " + " | ".join(method for method, _ in drawn) + " |",
        "|" + "---|" * len(drawn),
        "| " + " | ".join(f"![held-out joint embedding, {m}]({f})" for m, f in drawn) + " |",
    ]


def summary_lines(m: dict) -> list[str]:
    """The three tasks, each with its baseline and whether the model beats it."""

    def verdict(ok: bool) -> str:
        return "wins" if ok else "LOSES"

    g2a, a2g = m["gex2atac_rmse"], m["atac2gex_rmse"]
    g2a_base, a2g_base = m["gex2atac_rmse_baseline"], m["atac2gex_rmse_baseline"]
    ratio = m["match_score"] / m["match_random"]
    return [
        f"predict GEX->ATAC: RMSE {g2a:.4f} vs mean-per-peak {g2a_base:.4f}: {verdict(g2a < g2a_base)}",
        f"predict ATAC->GEX: RMSE {a2g:.4f} vs mean-per-gene {a2g_base:.4f}: {verdict(a2g < a2g_base)}",
        f"match modality:    {m['match_score']:.4f} vs random {m['match_random']:.4f} ({ratio:.0f}x)",
        f"joint embedding:   NMI {_number(m['nmi'], 3)}, ARI {_number(m['ari'], 3)}, "
        f"cell-type ASW {_number(m['asw_cell_type'], 3)}, batch ASW {_number(m['asw_batch'], 3)}",
    ]
