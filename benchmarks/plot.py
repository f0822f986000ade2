"""Bar chart of a ``compare.py`` run: cells/s on a log scale, one group per batch size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_results(results: list[dict], path: Path, title: str = "") -> Path:
    """One bar per measured contender in each batch-size group, labelled with its ratio to seed."""
    measured = [r for r in results if r.get("status") == "ok"]
    sizes = sorted({r["batch_size"] for r in measured})
    labels = list(dict.fromkeys(r["label"] for r in measured))  # run order
    seed = {r["batch_size"]: r["cells_per_s"] for r in measured if r["contender"] == "seed"}
    colors = plt.get_cmap("tab10").colors
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 + 1.1 * len(labels) * len(sizes)), 4.8))
    for j, label in enumerate(labels):
        for i, size in enumerate(sizes):
            row = next((r for r in measured if r["label"] == label and r["batch_size"] == size), None)
            if row is None:
                continue
            x = i + (j - (len(labels) - 1) / 2) * width
            ax.bar(
                x,
                row["cells_per_s"],
                width * 0.92,
                color=colors[j % len(colors)],
                label=label if i == 0 else None,
            )
            if seed.get(size):
                ax.text(
                    x,
                    row["cells_per_s"] * 1.08,
                    f"{row['cells_per_s'] / seed[size]:.1f}x",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    ax.set_yscale("log")
    ax.set_xticks(range(len(sizes)), [f"batch size {s}" for s in sizes])
    ax.set_ylabel("cells / s (log scale)")
    ax.set_title(title or "Shuffled dense GEX + ATAC batches with cell_type (label: x seed)", fontsize=10)
    top = max((r["cells_per_s"] for r in measured), default=1.0)
    ax.set_ylim(top=top * 3)
    skipped = {
        f"{r.get('label') or r['contender']}: {r.get('reason', r.get('status'))}"
        for r in results
        if r.get("status") != "ok"
    }
    if skipped:
        fig.text(0.01, 0.01, "; ".join(sorted(skipped)), fontsize=8, color="0.4")
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout(rect=(0, 0.04 if skipped else 0, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    """``python benchmarks/plot.py DIR``: redraw ``DIR/cells_per_s.png`` from ``DIR/results.json``."""
    out = Path(argv[0] if argv else "bench_out")
    run = json.loads((out / "results.json").read_text())
    print(plot_results(run["results"], out / "cells_per_s.png", run.get("title", "")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
