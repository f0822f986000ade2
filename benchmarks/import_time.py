"""What ``import gpuload`` costs: ``python -X importtime -c "import gpuload"`` in fresh processes.

    python benchmarks/import_time.py [--runs 3] [--top 6] [--after torch] [CHECKOUT ...]

For each checkout (default: this one; give two, e.g. main's and a branch's, for a before/after:
their runs alternate, so both see the same machine load) and each run: ``gpuload``'s cumulative
import time from ``-X importtime``, the process CPU time of the import (less moved by other
jobs on a busy machine than wall time) and the modules it added; then, for the median run, the
packages whose first import took longest (cumulative: a package first imported by another,
such as pandas by anndata, counts in both). ``--after torch`` imports torch first, uncounted:
what gpuload adds to a process that already has torch. The interpreter is the one running this.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROBE = """
import json, sys, time
{after}
before, cpu = len(sys.modules), time.process_time()
import gpuload
print(json.dumps([1000 * (time.process_time() - cpu), len(sys.modules) - before]))
"""


@dataclass
class Run:
    wall_ms: float  # gpuload's cumulative time in -X importtime
    cpu_ms: float
    modules: int
    packages: dict[str, float]  # package -> cumulative ms of its first import


def import_once(root: Path, after: str | None) -> Run:
    """One fresh ``import gpuload`` from ``root``."""
    probe = PROBE.format(after=f"import {after}" if after else "")
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    packages = {}
    for line in out.stderr.splitlines():  # -X importtime lists each module once, where first imported
        fields = line.removeprefix("import time:").split("|")
        if len(fields) == 3 and fields[1].strip().isdigit() and "." not in fields[2].strip():
            packages[fields[2].strip()] = int(fields[1]) / 1000
    cpu_ms, modules = json.loads(out.stdout.splitlines()[-1])
    if after:
        packages.pop(after.split(".")[0], None)  # imported before the measurement
    return Run(packages.pop("gpuload"), cpu_ms, modules, packages)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", type=Path, default=[Path(__file__).resolve().parents[1]])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--after", help="a module imported before gpuload, uncounted (e.g. torch)")
    args = parser.parse_args(argv)
    runs: dict[Path, list[Run]] = {root: [] for root in args.checkouts}
    for _ in range(args.runs):
        for root in args.checkouts:
            runs[root].append(import_once(root, args.after))
    for root, done in runs.items():
        walls = [r.wall_ms for r in done]
        median = done[walls.index(statistics.median_low(walls))]
        top = sorted(median.packages, key=lambda name: -median.packages[name])[: args.top]
        after = f" after import {args.after}" if args.after else ""
        print(f"import gpuload{after} from {root}, {median.modules} modules added:")
        print("  -X importtime: " + ", ".join(f"{w:,.0f}" for w in walls) + " ms")
        print("  CPU time:      " + ", ".join(f"{r.cpu_ms:,.0f}" for r in done) + " ms")
        print("  largest (median run): " + ", ".join(f"{n} {median.packages[n]:,.0f} ms" for n in top))


if __name__ == "__main__":
    main()
