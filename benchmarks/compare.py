"""gpuload against the seed, AnnLoader, scDataset and annbatch: same file, same run, with plots.

    python benchmarks/compare.py --out bench_out [--cells 20000] [--batch-sizes 32 256]
                                 [--file EXISTING.h5ad] [--time-cells 16384]

Without ``--file`` it writes a synthetic BMMC-shaped file (``gpuload.bmmc.synth``, full width).
Then, for each batch size, every contender runs in its own process (``peers.py``): shuffled
dense float32 GEX and ATAC batches plus cell_type, timed on a fixed number of cells after a
warm-up, peak RSS of that process, and one batch checked against anndata + scipy. annbatch
first converts the file to its zarr store (one-off preparation, timed apart) and runs from
``benchmarks/.venv-annbatch`` (Python 3.12). Results: a table on stdout, ``OUT/results.json``,
``OUT/cells_per_s.png`` and a dated section appended to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers import CONTENDERS, VERSIONED, WARMUP_BATCHES  # noqa: E402
from plot import plot_results  # noqa: E402

PEERS = HERE / "peers.py"
ANNBATCH_PYTHON = HERE / ".venv-annbatch" / "bin" / "python"
RESULTS_MD = HERE / "RESULTS.md"
GPULOAD = ("gpuload-cpu", "gpuload-cpu-preload", "gpuload-gpu")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the file, stores, results")
    p.add_argument("--cells", type=int, default=20_000, help="cells of the synthetic file")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    p.add_argument("--file", type=Path, default=None, help="an existing multiome .h5ad instead")
    p.add_argument("--time-cells", type=int, default=16_384, help="cells timed per contender")
    p.add_argument("--slow-cells", type=int, default=None, help="for the seed (default: time-cells / 8)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of every contender; the best is kept")
    p.add_argument("--max-seconds", type=float, default=60.0, help="cap on one contender's timed loop")
    p.add_argument("--contenders", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS))
    p.add_argument("--timeout", type=int, default=300, help="seconds per contender process")
    p.add_argument("--annbatch-python", type=Path, default=ANNBATCH_PYTHON, help="Python 3.12+, annbatch")
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    return p.parse_args(argv)


# -- the run ---------------------------------------------------------------------------------


def synthesize(out: Path, cells: int) -> tuple[Path, float]:
    path = out / f"bmmc_synth_{cells}.h5ad"
    print(f"writing {path} ({cells:,} cells, full width) with gpuload synth ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "gpuload", "synth", "--out", str(path), "--cells", str(cells), "--quiet"],
        check=True,
    )
    return path, time.perf_counter() - t0


def child(python: Path, args: list[str], log: Path, timeout: int, script: Path = PEERS) -> dict:
    """Run ``script`` (``peers.py``) in a fresh process; its JSON result, or why there is none."""
    out = log.with_suffix(".json")
    out.unlink(missing_ok=True)
    cmd = [str(python), str(script), *args, "--out", str(out)]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "reason": f"no result within {timeout} s (see {log})"}
    extra = {
        "process_s": time.perf_counter() - t0,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    if out.exists():
        return {**json.loads(out.read_text()), **extra}
    tail = log.read_text()[-600:].strip().splitlines()[-1:] or [""]
    return {"status": "failed", "reason": f"exit {proc.returncode}: {tail[0]} (see {log})", **extra}


def prepare_annbatch(args: argparse.Namespace, path: Path, logs: Path) -> dict:
    """Write annbatch's store with its own Python: ``--annbatch-python``, or this one if >= 3.12."""
    if not args.annbatch_python.exists() and sys.version_info >= (3, 12):
        args.annbatch_python = Path(sys.executable)
    if not args.annbatch_python.exists():
        return {
            "status": "skipped",
            "reason": f"{args.annbatch_python} not found: create "
            "benchmarks/.venv-annbatch (Python >= 3.12, see benchmarks/README.md)",
        }
    print("annbatch: converting the file to its zarr store (one-off preparation) ...", flush=True)
    result = child(
        args.annbatch_python,
        ["prepare", "annbatch", "--file", str(path), "--work", str(args.out)],
        logs / "prepare-annbatch.log",
        args.timeout,
    )
    # The run children read this file to find the store and the preparation time.
    (args.out / "prepare-annbatch.json").write_text(json.dumps(result, indent=1))
    return result


def run_all(args: argparse.Namespace, path: Path) -> tuple[list[dict], dict]:
    """Every (batch size, contender) in its own process, ``--repeats`` rounds; the best round
    of each is kept (a shared machine's load only ever slows a run down). annbatch's store is
    written first."""
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    prepared = {}
    if "annbatch" in args.contenders:
        prepared["annbatch"] = prepare_annbatch(args, path, logs)
    runs: dict[tuple[int, str], list[dict]] = {}
    for round_ in range(1, args.repeats + 1):
        print(f"round {round_} of {args.repeats}", flush=True)
        for batch_size in args.batch_sizes:
            for name in args.contenders:
                result = run_one(args, path, prepared, name, batch_size, round_)
                runs.setdefault((batch_size, name), []).append(result)
    return [best_of(rounds) for rounds in runs.values()], prepared


def run_one(args: argparse.Namespace, path: Path, prepared: dict, name: str, batch_size: int, round_: int):
    """One contender at one batch size, in a child process (unless its preparation failed)."""
    spec = CONTENDERS[name]
    base = {"contender": name, "label": spec.label, "batch_size": batch_size}
    prep = prepared.get(name, {"status": "ok"})
    if prep["status"] != "ok":
        status = "skipped" if prep["status"] == "skipped" else "failed"
        return {**base, "status": status, "reason": f"preparation {prep['status']}: {prep.get('reason', '')}"}
    cells = max(args.slow_cells, 2 * batch_size) if spec.slow else args.time_cells
    print(f"  B={batch_size:<4} {name:<17} timing {cells:,} cells ...", end=" ", flush=True)
    python = args.annbatch_python if spec.python312 else Path(sys.executable)
    command = ["run", name, "--file", str(path), "--batch-size", str(batch_size), "--cells", str(cells)]
    command += ["--max-seconds", str(args.max_seconds), "--work", str(args.out)]
    log = args.out / "logs" / f"{name}-{batch_size}-r{round_}.log"
    result = {**base, **child(python, command, log, args.timeout)}
    print(_summary(result), flush=True)
    return result


def best_of(rounds: list[dict]) -> dict:
    """The fastest measured round, with every round's cells/s; else the last round's reason."""
    measured = [r for r in rounds if r["status"] == "ok"]
    if not measured:
        return rounds[-1]
    best = max(measured, key=lambda r: r["cells_per_s"])
    return {**best, "rounds_cells_per_s": [r.get("cells_per_s") for r in rounds]}


def _summary(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r.get('reason', '')}"
    return f"{r['cells_per_s']:,.0f} cells/s, check {'ok' if r['check']['ok'] else 'FAILED'}"


# -- reporting -------------------------------------------------------------------------------


def _label(r: dict) -> str:
    return r.get("label") or r["contender"]


def _check_text(r: dict) -> str:
    c = r["check"]
    how = "by hash" if c["method"].startswith("row hash") else "by rows"
    if not c["ok"]:
        return f"FAIL ({how}): {c.get('detail', '')}"
    return f"ok {how}, {c['contiguous_runs']} runs"


def format_table(results: list[dict]) -> str:
    """A Markdown table (also readable on a terminal); ratios are to the seed's per-row Dataset,
    ``timed`` is the cells timed (``*``: stopped at --max-seconds)."""
    seed = {
        r["batch_size"]: r["cells_per_s"] for r in results if r["contender"] == "seed" and r["status"] == "ok"
    }
    head = ["loader", "B", "cells/s", "x seed", "timed", "1st batch s", "setup s", "prep s"]
    head += ["peak RSS MB", "check"]
    rows = []
    for r in results:
        b = r["batch_size"]
        if r["status"] != "ok":
            rows.append([_label(r), str(b)] + ["-"] * 7 + [f"{r['status']}: {r.get('reason', '')}"])
            continue
        ratio = f"{r['cells_per_s'] / seed[b]:.1f}" if seed.get(b) else "-"
        rows.append(
            [
                _label(r),
                str(b),
                f"{r['cells_per_s']:,.0f}",
                ratio,
                f"{r['cells']:,}" + ("*" if r.get("stopped_early") else ""),
                f"{r['first_batch_s']:.2f}",
                f"{r['setup_s']:.2f}",
                f"{r['prepare_s']:.1f}" if r["prepare_s"] else "-",
                f"{r['peak_rss_mb']:,.0f}",
                _check_text(r),
            ]
        )
    return markdown_table(head, rows, right=set(range(1, len(head) - 1)))


def markdown_table(head: list[str], rows: list[list[str]], right: set[int]) -> str:
    """Padded Markdown (readable on a terminal too); the columns in ``right`` are right-aligned."""
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i in right else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def ratios(results: list[dict]) -> list[str]:
    """gpuload against the fastest peer and against the seed, per batch size."""
    lines = []
    for b in sorted({r["batch_size"] for r in results}):
        ok = [r for r in results if r["batch_size"] == b and r["status"] == "ok"]
        peers = [r for r in ok if r["contender"] not in GPULOAD and r["contender"] != "seed"]
        seed = next((r for r in ok if r["contender"] == "seed"), None)
        best = max(peers, key=lambda r: r["cells_per_s"], default=None)
        for g in (r for r in ok if r["contender"] in GPULOAD):
            parts = [f"B={b}: {_label(g)} {g['cells_per_s']:,.0f} cells/s"]
            if best:
                parts.append(
                    f"{g['cells_per_s'] / best['cells_per_s']:.2f}x the fastest peer "
                    f"({_label(best)}, {best['cells_per_s']:,.0f} cells/s)"
                )
            if seed:
                parts.append(f"{g['cells_per_s'] / seed['cells_per_s']:.1f}x the seed")
            lines.append(", ".join(parts))
        for r in results:
            if r["batch_size"] == b and r["contender"] in GPULOAD and r["status"] != "ok":
                lines.append(f"B={b}: {_label(r)}: {r.get('reason', r['status'])}")
    return lines


def machine_info() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    try:
        from gpuload.device import gpu_available

        gpu = "yes" if gpu_available() else "none"
    except ImportError:
        gpu = "unknown (gpuload not importable)"
    if gpu == "yes":
        try:
            gpu = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            gpu = "yes (nvidia-smi not available)"
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "ram_gib": mem_kb / 2**20,
        "gpu": gpu,
        "python": sys.version.split()[0],
        "nice": os.nice(0),
        "load_at_start": os.getloadavg(),
    }


def versions(results: list[dict]) -> dict[str, dict[str, str]]:
    main_env = {}
    for name in VERSIONED:
        try:
            main_env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out = {f"main venv (Python {sys.version.split()[0]})": main_env}
    for r in results:
        if r["contender"] == "annbatch" and r.get("versions"):
            out[f"annbatch venv (Python {r.get('python', '?')})"] = r["versions"]
            break
    return out


def command_line() -> str:
    python = Path(sys.executable)
    if python.is_relative_to(Path.cwd()):
        python = python.relative_to(Path.cwd())
    cmd = " ".join(shlex.quote(str(a)) for a in [python, *sys.argv])
    nice = os.nice(0)
    return f"nice -n {nice} {cmd}" if nice else cmd


def record(run: dict, table: str, ratio_lines: list[str], png: Path) -> None:
    """Append a dated section to benchmarks/RESULTS.md."""
    m = run["machine"]
    took = f"wall time {run['wall_s'] / 60:.1f} min"
    if run["synth_s"]:
        took += f", of which {run['synth_s']:.0f} s writing the file"
    lines = [
        f"## {run['date']}: {run['file_desc']}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM, GPU: {m['gpu']}; "
        f"load average {m['load_at_start'][0]:.2f} at the start (per contender: results.json)",
        f"- Command: `{run['command']}` ({took})",
        f"- Timed: {run['time_cells']:,} cells per contender ({run['slow_cells']:,} for the seed) "
        f"after the first batch and {WARMUP_BATCHES} warm-up batches, each in its own process; best "
        f"of {run['repeats']} rounds (all rounds in results.json); the plot is `{png.name}` in the "
        "output folder",
    ]
    for env, pkgs in run["versions"].items():
        lines.append(f"- Packages, {env}: " + ", ".join(f"{k} {v}" for k, v in pkgs.items()))
    lines += ["", table, "", "gpuload against the others:", ""]
    lines += [f"- {x}" for x in ratio_lines]
    lines += ["", "How each contender ran:", ""]
    seen = set()
    for r in run["results"]:
        if r["status"] == "ok" and _label(r) not in seen:
            seen.add(_label(r))
            lines.append(f"- {_label(r)}: " + "; ".join(r.get("notes", [])))
    lines.append("")
    if not RESULTS_MD.exists():
        RESULTS_MD.write_text(
            "# Loader benchmark results\n\nAppended by `benchmarks/compare.py`; "
            "newest last. See `benchmarks/README.md` for what is measured.\n\n"
        )
    with RESULTS_MD.open("a") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.slow_cells = args.slow_cells or args.time_cells // 8
    t_start = time.perf_counter()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    synth_s = 0.0
    if args.file is None:
        path, synth_s = synthesize(args.out, args.cells)
    else:
        path = args.file.resolve()
    import h5py

    with h5py.File(path, "r") as f:
        x = f["X"]
        n_cells, n_vars = (int(v) for v in (x.shape if isinstance(x, h5py.Dataset) else x.attrs["shape"]))
    sizes = ", ".join(map(str, args.batch_sizes))
    file_desc = f"{path.name}, {n_cells:,} cells x {n_vars:,} features, B = {sizes}"
    print(f"{file_desc}; each contender in its own process", flush=True)
    results, prepared = run_all(args, path)
    table = format_table(results)
    ratio_lines = ratios(results)
    run = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "file": str(path),
        "file_desc": file_desc,
        "synth_s": synth_s,
        "time_cells": args.time_cells,
        "slow_cells": args.slow_cells,
        "repeats": args.repeats,
        "machine": machine,
        "versions": versions(results),
        "prepared": prepared,
        "results": results,
        "title": f"{path.name}: shuffled dense GEX + ATAC + cell_type, {machine['cores']} "
        f"CPU cores (bar label: x seed)",
    }
    png = plot_results(results, args.out / "cells_per_s.png", run["title"])
    run["wall_s"] = time.perf_counter() - t_start
    (args.out / "results.json").write_text(json.dumps(run, indent=1, default=str))
    print()
    print(table)
    print()
    print("\n".join(ratio_lines))
    print(f"\nwrote {args.out / 'results.json'} and {png}; wall time {run['wall_s'] / 60:.1f} min")
    if not args.no_record:
        record(run, table, ratio_lines, png)
        print(f"appended to {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
