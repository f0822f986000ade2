"""Row reads: ``MultiomeStore.read_rows`` against anndata backed-mode slicing, same rows, same run.

    python benchmarks/store_reads.py FILE [--repeats 20]

Two access patterns: random batches of 32 rows (what a shuffled loader without blocks asks for)
and contiguous chunks of 1,024 rows (what block shuffle reads). Both readers return CSR rows of
the full width; anndata's are sliced from ``read_h5ad(FILE, backed="r").X``.
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np

from gpuload import open_multiome


def _rate(read, row_sets) -> float:
    for rows in row_sets:  # warm-up: page cache, lazy opens, numba's compiled helpers
        read(rows)
    start = time.perf_counter()
    for rows in row_sets:
        read(rows)
    return sum(r.size for r in row_sets) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    store = open_multiome(args.file)
    backed = ad.read_h5ad(args.file, backed="r")
    n = store.n_cells
    patterns = {
        "random 32": [np.sort(rng.choice(n, 32, replace=False)) for _ in range(args.repeats)],
        "contiguous 1024": [np.arange(s, s + 1024) for s in rng.integers(0, n - 1024, args.repeats)],
    }
    print(f"{args.file}: {n} cells x {store.n_vars} features, X {store.encoding.kind}")
    print(f"{'pattern':<17} {'gpuload rows/s':>15} {'anndata backed rows/s':>22} {'ratio':>6}")
    for name, row_sets in patterns.items():
        ours = _rate(lambda r: store.read_block(r), row_sets)
        theirs = _rate(lambda r: backed.X[r], row_sets)
        print(f"{name:<17} {ours:>15,.0f} {theirs:>22,.0f} {ours / theirs:>6.1f}")


if __name__ == "__main__":
    main()
