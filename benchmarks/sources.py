"""What reading through an ``.h5mu``, several files or a weighted draw costs: same cells, same run.

    python benchmarks/sources.py FILE [--out DIR] [--batch-size 256] [--epochs 2]

From FILE (a multiome h5ad) it writes, once, into DIR: the same cells as an ``.h5mu`` (``GEX`` and
``ATAC`` as two modalities, every cell in both) and as three h5ad files of a third of the cells
each. Then it times shuffled epochs of each source, and of FILE drawn with
``weights="cell_type"``, both modalities at full width, dense float32 + all obs, on the CPU face,
interleaving the sources epoch by epoch so that a noisy machine hurts each alike, and reports
cells/s and the ratio to the single h5ad (the reference of the same run).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np

from gpuload import MultiomeLoader


def write_sources(path: Path, out: Path) -> dict[str, object]:
    """{"h5ad": FILE, "h5mu": the same as MuData, "3 files": the same cut in three}."""
    import mudata as md

    out.mkdir(parents=True, exist_ok=True)
    h5mu, parts = out / f"{path.stem}.h5mu", [out / f"{path.stem}-part{i}.h5ad" for i in range(3)]
    if not (h5mu.exists() and all(p.exists() for p in parts)):
        adata = ad.read_h5ad(path)
        gex = adata.var["feature_types"].to_numpy() == "GEX"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            md.MuData({"GEX": adata[:, gex].copy(), "ATAC": adata[:, ~gex].copy()}).write(h5mu)
        cuts = np.linspace(0, adata.n_obs, 4).astype(int)
        for part, a, b in zip(parts, cuts[:-1], cuts[1:], strict=True):
            adata[a:b].copy().write_h5ad(part)
    return {"h5ad": path, "h5mu": h5mu, "3 files": parts}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    p.add_argument("--out", type=Path, default=Path("bench_out/sources"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    sources = write_sources(args.file, args.out)
    options = dict(batch_size=args.batch_size, seed=0, device="cpu", modalities=("GEX", "ATAC"))
    loaders = {name: MultiomeLoader(data, **options) for name, data in sources.items()}
    # The same h5ad drawn balanced by cell type: random rows, as shuffle="full" reads them.
    loaders["weighted"] = MultiomeLoader(args.file, weights="cell_type", **options)
    for loader in loaders.values():  # warm-up: numba compilation, page cache
        for _ in zip(range(4), loader, strict=False):
            pass
    seconds = dict.fromkeys(loaders, 0.0)
    cells = dict.fromkeys(loaders, 0)
    for _ in range(args.epochs):
        for name, loader in loaders.items():
            start = time.perf_counter()
            for batch in loader:
                cells[name] += batch["GEX"].shape[0]
            seconds[name] += time.perf_counter() - start
    rates = {name: cells[name] / seconds[name] for name in loaders}
    n = loaders["h5ad"].store.n_cells
    print(f"{args.file} ({n:,} cells), B={args.batch_size}, {args.epochs} epochs each")
    print(f"{'source':<10} {'cells/s':>10} {'vs h5ad':>8}")
    for name, rate in rates.items():
        print(f"{name:<10} {rate:>10,.0f} {rate / rates['h5ad']:>7.2f}x")


if __name__ == "__main__":
    main()
