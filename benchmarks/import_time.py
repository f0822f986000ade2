"""What ``import gpuload`` costs: ``python -X importtime -c "import gpuload"`` in fresh processes.

    python benchmarks/import_time.py [--runs 3] [--top 8] [--root CHECKOUT]

Prints each run's total (``gpuload``'s cumulative time) and, for the median run, the packages
whose first import took longest (cumulative: a package first imported by another, such as
pandas by anndata, counts in both). ``--root`` times another checkout's gpuload (e.g. main, for
a before/after); the interpreter is the one running this script.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path


def import_times(root: Path) -> dict[str, int]:
    """Package -> cumulative microseconds of its first import, in one fresh ``import gpuload``
    from ``root`` (``-X importtime`` lists each module once, where it was first imported)."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import gpuload"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    times = {}
    for line in run.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) == 3 and fields[1].strip().isdigit():
            name = fields[2].strip()
            if "." not in name:  # a package's own module: its whole first import
                times[name] = int(fields[1])
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    runs = [import_times(args.root) for _ in range(args.runs)]
    totals = [r["gpuload"] / 1000 for r in runs]
    print(f"import gpuload from {args.root}: " + ", ".join(f"{t:,.0f}" for t in totals) + " ms")
    median = runs[totals.index(statistics.median_low(totals))]
    top = sorted((n for n in median if n != "gpuload"), key=lambda n: -median[n])[: args.top]
    print("largest packages (median run): " + ", ".join(f"{n} {median[n] / 1000:,.0f} ms" for n in top))


if __name__ == "__main__":
    main()
