"""The CPU twin of the gather kernel against scipy and against a memory-write ceiling.

    python benchmarks/kernels.py FILE [--batches 40]

For B = 32 and 1,024 and three outputs (full width 129,921; GEX only; ATAC only), all in one run:
- gpuload: the CPU twin densifying B rows of an in-memory CSR block into a reused buffer,
- scipy: ``csr[rows].toarray()`` of the same columns,
- ceiling: ``np.zeros`` of the output plus one write per stored value (``out[r, c] = v``),
  the least work any densifier does. The last column is gpuload's share of that ceiling.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
import torch

from gpuload.device import get_backend
from gpuload.loader import MultiomeLoader


def _rate(fn, batches) -> float:
    fn(batches[0])
    start = time.perf_counter()
    for rows in batches:
        fn(rows)
    return sum(r.size for r in batches) / (time.perf_counter() - start)


def measure(loader: MultiomeLoader, block, sub: sp.csr_matrix, batches: list[np.ndarray]) -> tuple:
    """cells/s of gpuload's CPU twin, scipy and the ceiling on the same row batches."""
    backend = get_backend("cpu")
    b, width = batches[0].size, sub.shape[1]
    layout = loader.plan.layout.for_batch(np, b)
    out = backend.empty_output(b * width, loader.dtype)
    present = torch.zeros((b, len(loader.modalities)), dtype=torch.int8)

    def ours(rows):
        backend.gather(block, rows, layout, loader.plan.row_scale[rows], out, present)

    def ceiling(rows):
        dense = np.zeros((b, width), np.float32)
        part = sub[rows]
        dense[np.repeat(np.arange(b), np.diff(part.indptr)), part.indices] = part.data
        return dense

    return _rate(ours, batches), _rate(lambda r: sub[r].toarray(), batches), _rate(ceiling, batches)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--batches", type=int, default=40)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    header = ("output", "B", "gpuload", "scipy", "ceiling", "vs scipy", "of ceil.")
    print("{:<12} {:>5} {:>10} {:>10} {:>10} {:>9} {:>8}".format(*header))
    for modalities in (("GEX", "ATAC"), ("GEX",), ("ATAC",)):
        loader = MultiomeLoader(args.file, modalities=modalities, device="cpu", obs_keys=[])
        store = loader.store
        block = store.read_block(np.arange(store.n_cells))
        csr = sp.csr_matrix((block.data, block.indices, block.indptr), shape=(store.n_cells, store.n_vars))
        sub = csr[:, np.concatenate([m.columns for m in loader.modalities])]
        for b in (32, 1024):
            n_batches = max(2, args.batches * 32 // b)
            batches = [rng.choice(store.n_cells, b, replace=False) for _ in range(n_batches)]
            ours, scipy_rate, ceiling = measure(loader, block, sub, batches)
            print(
                f"{'+'.join(modalities):<12} {b:>5} {ours:>10,.0f} {scipy_rate:>10,.0f} {ceiling:>10,.0f} "
                f"{ours / scipy_rate:>9.1f} {ours / ceiling:>8.2f}"
            )
    print("cells/s; ceiling = np.zeros + one scattered write per stored value")


if __name__ == "__main__":
    main()
