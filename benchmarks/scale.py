"""gpuload against dataset size and number of files: cells/s, open time, first batch, memory per cell.

    python benchmarks/scale.py --out bench_out/scale [--sizes 10000 100000 1000000 10000000]
                               [--variant-sizes 10000 1000000] [--files 1 10 100 1000] [--peers annbatch]

One base file is written with gpuload's synthetic writer (``--base-cells`` cells, narrow:
``--genes`` genes + ``--peaks`` peaks); every bigger dataset is that file hard-linked N times,
given to ``MultiomeLoader([...])`` as a list: N files of identical content on one inode, so no
disk is spent and every read comes from the page cache (this measures the loader, not the disk).
"One file" datasets are written whole (``--single-file-sizes``). Each case runs in its own
process (``scale.py child``), which opens the loader (open s, RSS after opening, the arrays it
holds: ``held_memory.py``), then times three rounds of ``--round-seconds``, each after a new
iterator's first and ``--warmup-batches`` batches (enough to drain what the assembler made ahead), with
``peers.measure_best``: the fastest round's cells/s, the first batch of the process, peak RSS.
Memory per cell is read as (RSS(N) - RSS(smallest N of the series)) / (N - smallest N): the
cost of cells above a fixed base.
Sizes whose predicted peak RSS exceeds ``--ram-fraction`` of the free memory, or that would not fit
the time budget, are skipped with the reason. annbatch (``peers.py``, its own venv) runs at
``--annbatch-sizes`` from a store converted from the same links. Everything written under
``OUT/data`` is removed at the end (``--keep`` keeps it). Results: a table on stdout,
``OUT/results.json``, three PNG plots and a section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The helpers beside this file, and this checkout's gpuload (not another one the venv installed).
sys.path[:0] = [str(HERE), str(HERE.parent)]

from compare import ANNBATCH_PYTHON, child, command_line, machine_info, versions  # noqa: E402
from scale_report import format_table, per_cell_bytes, plot_all, record  # noqa: E402

SCALE = Path(__file__).resolve()
SERIES_SIZE = "narrow, many files, dense, cell_type"
ROUNDS = 3  # timed rounds per case, in its process: the fastest is kept (a busy machine slows some)


@dataclass(frozen=True)
class Case:
    """One measured configuration: what the child process opens and how."""

    series: str
    width: str  # "narrow" or "full"
    layout: str  # "many files" (hard links of the base) or "one file"
    output: str  # "dense" or "sparse_csr"
    obs: str  # "cell_type" or "all"
    cells: int
    files: int
    batches: int  # 0: open only


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for data (removed after) and results")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    p.add_argument(
        "--variant-sizes",
        type=int,
        nargs="*",
        default=[10_000, 1_000_000],
        help="sizes of the all-obs, sparse and full-width series",
    )
    p.add_argument("--single-file-sizes", type=int, nargs="*", default=[100_000])
    p.add_argument("--files", type=int, nargs="*", default=[1, 10, 100, 1000], help="open-only series")
    p.add_argument("--open-base-cells", type=int, default=1_000, help="cells per file of the files series")
    p.add_argument("--base-cells", type=int, default=10_000)
    p.add_argument("--genes", type=int, default=2_000)
    p.add_argument("--peaks", type=int, default=10_000)
    p.add_argument("--no-full-width", action="store_true", help="skip the full-width series")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=1_000_000, help="cap on the batches timed per case")
    p.add_argument("--round-seconds", type=float, default=2.5, help="each of the 3 timed rounds")
    p.add_argument("--warmup-batches", type=int, default=32, help="untimed, before each round")
    p.add_argument("--peers", nargs="*", choices=["annbatch"], default=["annbatch"])
    p.add_argument("--annbatch-sizes", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--annbatch-python", type=Path, default=ANNBATCH_PYTHON)
    p.add_argument("--ram-fraction", type=float, default=0.4, help="of MemAvailable, per case")
    p.add_argument("--budget-min", type=float, default=12.0, help="skip cases once this is spent")
    p.add_argument("--timeout", type=int, default=600, help="seconds per child process")
    p.add_argument("--keep", action="store_true", help="keep OUT/data")
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    return p.parse_args(argv)


# -- data ------------------------------------------------------------------------------------


class Data:
    """The base files (written once each) and their hard-linked datasets, under one folder."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root, self.args = root, args
        self.bases: dict[tuple[str, int], Path] = {}
        self.write_s: dict[str, float] = {}
        root.mkdir(parents=True, exist_ok=True)

    def file(self, width: str, cells: int) -> Path:
        """One synthetic file (written on first use)."""
        key = (width, cells)
        if key not in self.bases:
            from gpuload.bmmc.synth import write_synthetic

            path = self.root / f"synth_{width}_{cells}.h5ad"
            size = {"n_genes": self.args.genes, "n_peaks": self.args.peaks} if width == "narrow" else {}
            print(f"writing {path.name} ({cells:,} cells, {width}) ...", flush=True)
            t0 = time.perf_counter()
            write_synthetic(path, n_cells=cells, progress=False, **size)
            self.write_s[path.name] = time.perf_counter() - t0
            self.bases[key] = path
        return self.bases[key]

    def paths(self, case: Case) -> list[Path]:
        """The files of a case: one written file, or ``files`` hard links to one base file."""
        if case.layout == "one file":
            return [self.file(case.width, case.cells)]
        base = self.file(case.width, case.cells // case.files)
        if case.files == 1:
            return [base]
        folder = self.root / f"links_{base.stem}_{case.files}"
        if not folder.exists():
            folder.mkdir()
            for i in range(case.files):
                os.link(base, folder / f"part{i:05d}.h5ad")
        return sorted(folder.glob("part*.h5ad"))


def cases(args: argparse.Namespace) -> list[Case]:
    """Every case in run order: the size series first (the later ones are predicted from it)."""
    b, per = args.batches, args.base_cells

    def many(series: str, width: str, output: str, obs: str, sizes: list[int]) -> list[Case]:
        return [Case(series, width, "many files", output, obs, n, max(1, n // per), b) for n in sizes]

    # Sizes above a million run last: their memory and time are predicted from the smaller ones.
    small = [n for n in sorted(args.sizes) if n <= 1_000_000]
    out = many(SERIES_SIZE, "narrow", "dense", "cell_type", small)
    out += many("narrow, many files, dense, all obs", "narrow", "dense", "all", args.variant_sizes)
    out += many(
        "narrow, many files, sparse, cell_type", "narrow", "sparse_csr", "cell_type", args.variant_sizes
    )
    opens = f"narrow, {args.open_base_cells:,} cells per file, open only"
    out += [
        Case(opens, "narrow", "many files", "dense", "cell_type", f * args.open_base_cells, f, 0)
        for f in args.files
    ]
    out += [
        Case("narrow, one file, dense, cell_type", "narrow", "one file", "dense", "cell_type", n, 1, b)
        for n in args.single_file_sizes
    ]
    if not args.no_full_width:
        out += many(
            "full width, many files, dense, cell_type", "full", "dense", "cell_type", args.variant_sizes
        )
    out += many(
        SERIES_SIZE, "narrow", "dense", "cell_type", [n for n in sorted(args.sizes) if n not in small]
    )
    return out


# -- the parent ------------------------------------------------------------------------------


def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith("MemAvailable")).split()[1]) / 1024


def why_skip(case: Case, done: list[dict], args: argparse.Namespace, started: float) -> str | None:
    """A reason not to run ``case`` (memory or time it would take, from the series so far), or None."""
    spent = time.perf_counter() - started
    if spent > args.budget_min * 60:
        return f"time budget spent ({spent / 60:.1f} of --budget-min {args.budget_min:g})"
    series = sorted(
        (r for r in done if r["series"] == case.series and r["status"] == "ok"), key=lambda r: r["cells"]
    )
    if len(series) < 2:
        return None
    first, last = series[0], series[-1]
    slope = (last["peak_rss_mb"] - first["peak_rss_mb"]) / (last["cells"] - first["cells"])
    peak = last["peak_rss_mb"] + slope * (case.cells - last["cells"])
    if peak > args.ram_fraction * mem_available_mb():
        return (
            f"predicted peak RSS {peak / 1024:.1f} GB > --ram-fraction {args.ram_fraction:g} of "
            f"{mem_available_mb() / 1024:.1f} GB available"
        )
    seconds = last["process_s"] * case.cells / last["cells"]
    left = args.budget_min * 60 - spent
    if seconds > min(args.timeout, left):
        return f"predicted {seconds:.0f} s > {min(args.timeout, left):.0f} s left (timeout or budget)"
    return None


def run_case(case: Case, data: Data, logs: Path, args: argparse.Namespace) -> dict:
    paths = data.paths(case)
    listing = logs / f"paths-{len(list(logs.glob('paths-*')))}.txt"
    listing.write_text("\n".join(map(str, paths)))
    command = ["child", "--paths", str(listing), "--batch-size", str(args.batch_size)]
    command += ["--batches", str(case.batches), "--output", case.output, "--obs", case.obs]
    command += ["--round-seconds", str(args.round_seconds), "--warmup-batches", str(args.warmup_batches)]
    log = logs / f"{case.series.replace(' ', '').replace(',', '-')}-{case.cells}.log"
    print(f"  {case.series}: {case.cells:,} cells in {case.files:,} file(s) ...", end=" ", flush=True)
    result = row(case, "gpuload", child(Path(sys.executable), command, log, args.timeout, script=SCALE))
    print(_summary(result), flush=True)
    return result


def run_or_skip(
    case: Case, done: list[dict], data: Data, logs: Path, args: argparse.Namespace, started: float
) -> dict:
    """The case's row: measured, or skipped with the reason."""
    reason = why_skip(case, done, args, started)
    if reason:
        print(f"  {case.series}: {case.cells:,} cells: skipped, {reason}", flush=True)
        return {**asdict(case), "contender": "gpuload", "status": "skipped", "reason": reason}
    result = run_case(case, data, logs, args)
    (args.out / "results.partial.json").write_text(json.dumps([*done, result], indent=1, default=str))
    return result


def run_annbatch(cells: int, data: Data, logs: Path, args: argparse.Namespace, started: float) -> dict:
    """annbatch over the same links: its store converted from them, then ``peers.py run annbatch``."""
    case = Case(
        "annbatch, narrow, many files, dense, cell_type",
        "narrow",
        "many files",
        "dense",
        "cell_type",
        cells,
        max(1, cells // args.base_cells),
        args.batches,
    )
    base = {**asdict(case), "contender": "annbatch"}
    spent = time.perf_counter() - started
    if spent > args.budget_min * 60:
        return {**base, "status": "skipped", "reason": f"time budget spent ({spent / 60:.1f} min)"}
    if not args.annbatch_python.exists():
        return {**base, "status": "skipped", "reason": f"{args.annbatch_python} not found (see README)"}
    paths = data.paths(case)
    work = data.root / f"annbatch_{cells}"
    work.mkdir(exist_ok=True)
    print(f"  annbatch: converting {cells:,} cells to its store ...", end=" ", flush=True)
    prep = child(
        args.annbatch_python,
        ["prepare", "annbatch", "--file", *map(str, paths), "--work", str(work)],
        logs / f"annbatch-prepare-{cells}.log",
        args.timeout,
    )
    (work / "prepare-annbatch.json").write_text(json.dumps(prep))
    if prep["status"] != "ok":
        print(prep.get("reason"), flush=True)
        return {**base, "status": prep["status"], "reason": f"preparation: {prep.get('reason', '')}"}
    print(f"{prep['prepare_s']:.0f} s; timing ...", end=" ", flush=True)
    # The links are one inode: rows named in the base file check every link's rows.
    command = ["run", "annbatch", "--file", str(paths[0]), "--batch-size", str(args.batch_size)]
    command += ["--cells", str(args.batches * args.batch_size), "--work", str(work), "--rounds", str(ROUNDS)]
    command += ["--max-seconds", str(ROUNDS * args.round_seconds), "--warmup", str(args.warmup_batches)]
    result = row(
        case, "annbatch", child(args.annbatch_python, command, logs / f"annbatch-{cells}.log", args.timeout)
    )
    result["open_s"] = result.get("setup_s")
    print(_summary(result), flush=True)
    shutil.rmtree(work / "annbatch.zarr", ignore_errors=True)
    return result


def row(case: Case, contender: str, result: dict) -> dict:
    """A table row: the case, then the child's result (its ``cells``, those timed, renamed)."""
    timed = {"timed_cells": result.pop("cells")} if "cells" in result else {}
    return {**result, **timed, **asdict(case), "contender": contender}


def _summary(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r.get('reason', '')}"
    if not r.get("cells_per_s"):
        return f"open {r['open_s']:.2f} s"
    return f"open {r['open_s']:.2f} s, {r['cells_per_s']:,.0f} cells/s, peak RSS {r['peak_rss_mb']:,.0f} MB"


def run_all(args: argparse.Namespace) -> tuple[list[dict], dict]:
    started = time.perf_counter()
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = Data(args.out / "data", args)
    results: list[dict] = []
    try:
        first = cases(args)[0]
        print("compiling the kernels (numba's cache) in a first, untimed case ...", flush=True)
        results.append({**run_case(replace(first, series="warm-up (compile)", batches=1), data, logs, args)})
        todo = cases(args)
        largest = [c for c in todo if c.series == SERIES_SIZE and c.cells > 1_000_000]
        for case in [c for c in todo if c not in largest]:
            results.append(run_or_skip(case, results, data, logs, args, started))
        for cells in args.annbatch_sizes if "annbatch" in args.peers else []:
            results.append(run_annbatch(cells, data, logs, args, started))
        for case in largest:  # last: the time left may not allow them
            results.append(run_or_skip(case, results, data, logs, args, started))
    finally:
        if not args.keep:
            shutil.rmtree(data.root, ignore_errors=True)
    return results, data.write_s


# -- the child -------------------------------------------------------------------------------


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_main(args: argparse.Namespace) -> dict:
    """Open the loader on the listed files, say what it holds, then time it (``measure_best``)."""
    from held_memory import held_bytes, top_holders
    from peers import Batch, Contender, measure_best, peak_rss_mb

    from gpuload import MultiomeLoader

    paths = args.paths.read_text().split("\n")
    rss_before = current_rss_mb()
    t0 = time.perf_counter()
    loader = MultiomeLoader(
        paths if len(paths) > 1 else paths[0],
        batch_size=args.batch_size,
        shuffle=True,
        device="cpu",
        obs_keys=["cell_type"] if args.obs == "cell_type" else None,
        output=args.output,
    )
    open_s = time.perf_counter() - t0
    result = {
        "status": "ok",
        "open_s": open_s,
        "rss_before_open_mb": rss_before,
        "rss_open_mb": current_rss_mb(),
        "peak_rss_mb": peak_rss_mb(),  # the timing updates it
        "n_cells": loader.store.n_cells,
    }
    held = held_bytes(loader)
    result["held_mb"] = sum(held.values()) / 2**20
    result["held_top"] = top_holders(held)
    if args.batches:
        first_key = loader.plan.modalities[0].name

        def epoch():
            for b in loader:
                yield Batch(b[first_key], None, (), None)

        contender = Contender("gpuload", epoch, open_s)
        numbers, _ = measure_best(
            contender,
            args.batches * args.batch_size,
            ROUNDS * args.round_seconds,
            ROUNDS,
            args.warmup_batches,
        )
        result.update(numbers, rss_end_mb=current_rss_mb())
    return result


def child_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="one case, in its own process")
    p.add_argument("--paths", type=Path, required=True, help="a text file of h5ad paths, one a line")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--batches", type=int, required=True)
    p.add_argument("--round-seconds", type=float, default=2.5)
    p.add_argument("--warmup-batches", type=int, default=32)
    p.add_argument("--output", choices=["dense", "sparse_csr"], required=True)
    p.add_argument("--obs", choices=["cell_type", "all"], required=True)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        args = child_args(argv[1:])
        args.out.write_text(json.dumps(child_main(args), indent=1, default=str))
        return 0
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    machine = machine_info()
    results, write_s = run_all(args)
    per_cell_bytes(results)
    run = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "machine": machine,
        "versions": versions(results),
        "args": {k: str(v) for k, v in vars(args).items()},
        "write_s": write_s,
        "results": results,
        "wall_s": time.perf_counter() - t_start,
    }
    pngs = plot_all(results, args.out, f"{machine['cpu']}, {machine['cores']} cores, B={args.batch_size}")
    (args.out / "results.json").write_text(json.dumps(run, indent=1, default=str))
    table = format_table(results)
    print("\n" + table)
    print(
        f"\nwrote {args.out / 'results.json'}, {', '.join(p.name for p in pngs)}; "
        f"wall time {run['wall_s'] / 60:.1f} min"
    )
    if not args.no_record:
        record(run, table, pngs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
