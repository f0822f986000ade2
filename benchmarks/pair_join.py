"""Time the obs_names join that pairs a ``{modality: file}`` mapping's files at open.

Two files of N cells (default 1M) named like 10x barcodes: listed in the same order (no join),
in another order, and in another order with a tenth of each file's cells missing from the other.
Each run gets fresh ``pd.Index`` objects, as opening the files does (pandas caches hash tables
on an Index). ``python benchmarks/pair_join.py [N]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from gpuload.formats.modality_files import paired_cells


def main(n: int = 1_000_000, repeats: int = 3) -> None:
    rng = np.random.default_rng(0)
    names = np.char.add(np.char.add("ACGTTGCAAC", np.arange(n).astype(str)), "-1-s1d1").astype(object)
    shuffled = names[rng.permutation(n)]
    cut = n // 10
    gappy = np.concatenate([shuffled[: n - cut], np.array([f"other{i}-1" for i in range(cut)], dtype=object)])
    cases = {
        "same order": (names, names),
        "other order": (names, shuffled),
        "other order, 10% unpaired": (names[cut:], gappy),
    }
    for label, (first, second) in cases.items():
        times = []
        for _ in range(repeats):
            a, b = pd.Index(first.copy()), pd.Index(second.copy())
            start = time.perf_counter()
            cells, _ = paired_cells({"GEX": ("gex.h5ad", a), "ATAC": ("atac.h5ad", b)})
            times.append(time.perf_counter() - start)
        print(f"{label:<28} {len(cells):>10,} cells  {', '.join(f'{t:.3f}' for t in times)} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
