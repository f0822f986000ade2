"""The table, the derived per-cell numbers, the plots and the RESULTS.md section of ``scale.py``."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from compare import RESULTS_MD, markdown_table  # noqa: E402

GOAL_BYTES_PER_CELL = 64  # issue #26: above a fixed base, obs_keys=["cell_type"]
GOAL_MS_PER_FILE = 5  # issue #26: opening, per file beyond the first
PLOTS = ("scale_cells_per_s.png", "scale_bytes_per_cell.png", "scale_open_vs_files.png")


def _measured(results: list[dict]) -> list[dict]:
    return [r for r in results if r["status"] == "ok" and not r["series"].startswith("warm-up")]


def per_cell_bytes(results: list[dict]) -> None:
    """Add, to each row, its costs above the smallest row of its series: bytes per cell (peak RSS
    and RSS after opening), milliseconds of opening per extra file, cells/s over the smallest's."""
    for row in _measured(results):
        series = [r for r in _measured(results) if r["series"] == row["series"]]
        base = min(series, key=lambda r: r["cells"])
        row["base_cells"] = base["cells"]
        if row is base:
            continue
        extra = row["cells"] - base["cells"]
        if extra <= 0:
            continue
        for key, rss in (("bytes_per_cell_open", "rss_open_mb"), ("bytes_per_cell_peak", "peak_rss_mb")):
            if row.get(rss) is not None and base.get(rss) is not None:
                row[key] = (row[rss] - base[rss]) * 2**20 / extra
        if row["files"] > base["files"]:
            row["ms_per_extra_file"] = (
                1000 * (row["open_s"] - base["open_s"]) / (row["files"] - base["files"])
            )
        if row.get("cells_per_s") and base.get("cells_per_s"):
            row["cells_per_s_vs_base"] = row["cells_per_s"] / base["cells_per_s"]


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(results: list[dict]) -> str:
    head = ["series", "cells", "files", "open s", "ms/file", "1st batch s", "cells/s", "x smallest"]
    head += ["RSS open MB", "peak RSS MB", "B/cell open", "B/cell peak", "held MB", "load", "note"]
    rows = []
    for r in results:
        ident = [r["series"], f"{r['cells']:,}", f"{r['files']:,}"]
        if r["status"] != "ok":
            rows.append(ident + ["-"] * 11 + [f"{r['status']}: {r.get('reason', '')}"])
            continue
        rows.append(
            ident
            + [
                _num(r.get("open_s"), ".2f"),
                _num(r.get("ms_per_extra_file"), ".1f"),
                _num(r.get("first_batch_s"), ".2f"),
                _num(r.get("cells_per_s"), ",.0f"),
                _num(r.get("cells_per_s_vs_base"), ".2f"),
                _num(r.get("rss_open_mb"), ",.0f"),
                _num(r.get("peak_rss_mb"), ",.0f"),
                _num(r.get("bytes_per_cell_open"), ",.0f"),
                _num(r.get("bytes_per_cell_peak"), ",.0f"),
                _num(r.get("held_mb"), ",.1f"),
                _num(r.get("load_before"), ".1f"),
                f"timed {r['timed_cells']:,} cells" if r.get("timed_cells") else "",
            ]
        )
    return markdown_table(head, rows, right=set(range(1, len(head) - 1)))


# -- plots -----------------------------------------------------------------------------------


def _series(results: list[dict], key: str) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for r in _measured(results):
        if r.get(key) is not None:
            out.setdefault(r["series"], []).append((r["cells"] if key != "open_s" else r["files"], r[key]))
    return {name: sorted(points) for name, points in out.items()}


def _lines(ax, series: dict[str, list[tuple[float, float]]], style: str = "o-") -> None:
    for name, points in series.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, style, label=name)


def plot_all(results: list[dict], out: Path, subtitle: str) -> list[Path]:
    """cells/s vs cells, bytes per cell vs cells, open time vs files: three PNGs in ``out``."""
    paths = [out / name for name in PLOTS]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    _lines(ax, _series(results, "cells_per_s"))
    ax.set(xscale="log", xlabel="cells in the dataset", ylabel="cells / s", ylim=(0, None))
    ax.set_title(f"Throughput against dataset size\n{subtitle}", fontsize=9)
    _finish(fig, ax, paths[0])

    fig, ax = plt.subplots(figsize=(11, 4.8))
    _lines(ax, {f"{k} (peak)": v for k, v in _series(results, "bytes_per_cell_peak").items()})
    _lines(ax, {f"{k} (open)": v for k, v in _series(results, "bytes_per_cell_open").items()}, "s--")
    ax.axhline(GOAL_BYTES_PER_CELL, color="k", lw=0.8, ls=":", label=f"goal {GOAL_BYTES_PER_CELL} B/cell")
    ax.set(xscale="log", xlabel="cells in the dataset")
    ax.set_ylabel("bytes per cell above the series' smallest size")
    ax.set_title(
        f"Resident memory per cell: (RSS(N) - RSS(smallest)) / (N - smallest)\n{subtitle}", fontsize=9
    )
    _finish(fig, ax, paths[1])

    fig, ax = plt.subplots(figsize=(11, 4.8))
    _lines(ax, _series(results, "open_s"))
    files = sorted({r["files"] for r in _measured(results)})
    ax.plot(
        files,
        [GOAL_MS_PER_FILE * f / 1000 for f in files],
        "k:",
        lw=0.8,
        label=f"{GOAL_MS_PER_FILE} ms per file",
    )
    ax.set(
        xscale="log", yscale="log", xlabel="files in the dataset", ylabel="open s (constructing the loader)"
    )
    ax.set_title(f"Opening against the number of files\n{subtitle}", fontsize=9)
    _finish(fig, ax, paths[2])
    return paths


def _finish(fig, ax, path: Path) -> None:
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- RESULTS.md ------------------------------------------------------------------------------


def findings(results: list[dict]) -> list[str]:
    """The goal-facing numbers, one line each."""
    lines = []
    for r in _measured(results):
        if r.get("bytes_per_cell_peak") is not None:
            lines.append(
                f"{r['series']}, {r['cells']:,} cells: {r['bytes_per_cell_peak']:,.0f} B/cell (peak RSS), "
                f"{_num(r.get('bytes_per_cell_open'), ',.0f')} B/cell (after opening) above "
                f"{r['base_cells']:,} cells (goal <= {GOAL_BYTES_PER_CELL} with cell_type)"
                + (
                    f"; cells/s {r['cells_per_s_vs_base']:.2f}x the smallest"
                    if r.get("cells_per_s_vs_base")
                    else ""
                )
            )
        if r.get("ms_per_extra_file") is not None and r["batches"] == 0:
            lines.append(
                f"{r['series']}, {r['files']:,} files: open {r['open_s']:.2f} s, "
                f"{r['ms_per_extra_file']:.1f} ms per file beyond the first (goal <= {GOAL_MS_PER_FILE})"
            )
    return lines


def record(run: dict, table: str, pngs: list[Path]) -> None:
    """Append a dated section to benchmarks/RESULTS.md and copy the plots beside it."""
    m, args = run["machine"], run["args"]
    for png in pngs:
        shutil.copyfile(png, RESULTS_MD.parent / png.name)
    writes = ", ".join(f"{name} {s:.0f} s" for name, s in run["write_s"].items())
    lines = [
        "",
        f"## {run['date']}: scale (`benchmarks/scale.py`), B = {args['batch_size']}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM, GPU: {m['gpu']}, "
        f"Python {m['python']}; load average {m['load_at_start'][0]:.2f} at the start",
        f"- Command: `{run['command']}` (wall time {run['wall_s'] / 60:.1f} min; files written: {writes})",
        f"- Data: one synthetic base file per width (`write_synthetic`; narrow = {args['genes']} genes + "
        f"{args['peaks']} peaks, {args['base_cells']} cells), bigger datasets = that file hard-linked "
        "N times and given as a list to `MultiomeLoader([...])` (one inode: reads come from the page cache); "
        "'one file' rows are written whole. All removed afterwards.",
        f"- Each row is its own process: open = constructing the loader; then 3 timed rounds of "
        f"{args['round_seconds']} s, each after a new iterator's first and {args['warmup_batches']} warm-up "
        "batches, the fastest round kept (`peers.measure_best`; timed = its cells); "
        "1st batch = the process's first; B/cell = (RSS - RSS of the "
        "series' smallest size) / extra cells; held MB = arrays and frames reachable from the loader; "
        "load = the 1-minute load average before the row's process (2 cores, shared with other work).",
        "- annbatch (when present): `Loader(chunk_size=32, preload_nchunks=256, shuffle=True)` over "
        "`DatasetCollection(shuffle=True)` with the zarrs codec pipeline (its README's throughput settings), "
        "converted from the same links; densified per batch.",
    ]
    for env, pkgs in run["versions"].items():
        lines.append(f"- Packages, {env}: " + ", ".join(f"{k} {v}" for k, v in pkgs.items()))
    lines += ["", table, ""]
    lines += [f"- {x}" for x in findings(run["results"])]
    lines += ["", "Plots: " + ", ".join(f"`benchmarks/{p.name}`" for p in pngs), ""]
    with RESULTS_MD.open("a") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    """``python benchmarks/scale_report.py DIR``: the table and plots again from ``DIR/results.json``."""
    out = Path(argv[0] if argv else "bench_out/scale")
    run = json.loads((out / "results.json").read_text())
    per_cell_bytes(run["results"])
    m = run["machine"]
    pngs = plot_all(run["results"], out, f"{m['cpu']}, {m['cores']} cores, B={run['args']['batch_size']}")
    print(format_table(run["results"]))
    print("\n".join(findings(run["results"])))
    print("plots:", *pngs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
