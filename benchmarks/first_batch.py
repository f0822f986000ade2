"""First-batch latency of a fresh process, with numba's cache cold and warm.

    python benchmarks/first_batch.py FILE [--runs 3]

Each run is a new ``python -c`` that imports gpuload, builds a ``MultiomeLoader`` on FILE
(``device="cpu"``) and times ``next(iter(loader))``: the first batch waits for the kernels'
compilation unless numba's cache holds them. Cold: every run gets an empty ``NUMBA_CACHE_DIR``
(nothing compiled is on disk); warm: every run shares one that a first, untimed run filled.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
start = time.perf_counter()
import gpuload
imported = time.perf_counter()
loader = gpuload.MultiomeLoader(sys.argv[1], batch_size=128, shuffle=True, seed=0, device="cpu",
                                layer="counts", transform={"GEX": "log1p_size_factor", "ATAC": "binarize"})
built = time.perf_counter()
batch = next(iter(loader))
first = time.perf_counter()
print(json.dumps({"import": imported - start, "build": built - imported, "first_batch": first - built,
                  "package": gpuload.__file__}))
"""


def run_child(path: str, cache_dir: str) -> dict[str, float]:
    """One fresh process's timings (seconds) with ``NUMBA_CACHE_DIR=cache_dir``."""
    root = str(Path(__file__).resolve().parents[1])  # this checkout's gpuload
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, "PYTHONPATH": root}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, path], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    timings = json.loads(result.stdout.strip().splitlines()[-1])
    assert timings.pop("package").startswith(root), "timed another checkout's gpuload"
    return timings


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    print(f"{'cache':<6} {'run':>3} {'import s':>9} {'build s':>8} {'first batch s':>14}")
    with tempfile.TemporaryDirectory() as warm:
        run_child(args.file, warm)  # fills the warm cache
        for label in ("cold", "warm"):
            for i in range(args.runs):
                if label == "cold":
                    with tempfile.TemporaryDirectory() as cold:
                        t = run_child(args.file, cold)
                else:
                    t = run_child(args.file, warm)
                print(
                    f"{label:<6} {i + 1:>3} {t['import']:>9.2f} {t['build']:>8.2f} {t['first_batch']:>14.2f}"
                )


if __name__ == "__main__":
    main()
