"""``make demo``: the main job end to end on synthetic BMMC-shaped data.

1. write a few thousand cells at the real width (13,431 genes + 116,490 peaks),
2. benchmark gpuload against the seed's per-row Dataset on that file,
3. train the multimodal VAE through the loader with ``gpuload train``'s defaults (the loader
   selects the most frequently detected genes and peaks) and score the three tasks on held-out
   cells against their baselines,
and print where the report is. Under 5 minutes on a 2-core CPU machine.

``--real FILE`` (``make demo-real``: the 500 real BMMC cells of ``../shared/data``) trains on a
real file as it is shipped instead, with the same defaults, and says what it chose.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gpuload.bmmc.synth import write_synthetic
from gpuload.reference.bench import format_table, run_bench
from gpuload.reference.config import DEFAULT_EPOCHS, TrainConfig
from gpuload.reference.report import summary_lines
from gpuload.reference.train import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpuload.reference.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--cells", type=int, default=4000)
    parser.add_argument(
        "--train-cells", type=int, default=None, help="cells of the training run (default: all)"
    )
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--real", type=Path, default=None, metavar="FILE", help="train on this real file")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.real is not None:
        return _real(args, start)

    data = args.out / "bmmc_synthetic.h5ad"
    print(f"[1/3] synthetic BMMC multiome data: {args.cells} cells x 129,921 features -> {data}")
    if not data.exists():
        write_synthetic(data, n_cells=args.cells, seed=0)

    print("[2/3] loader benchmark (shuffled, both modalities at full width, dense float32 + obs)")
    results = run_bench(str(data), (32, 256), cells=4096, seed_cells=256, device=args.device)
    table = format_table(results, reference="seed")
    print(table)
    (args.out / "bench.txt").write_text(table + "\n")

    print(f"[3/3] training the multimodal VAE for {args.epochs} epochs through MultiomeLoader")
    config = TrainConfig(
        epochs=args.epochs, device=args.device, out_dir=args.out / "train", max_cells=args.train_cells
    )
    m = train(data, config)
    widths = f"{m['n_genes']} genes, {m['n_peaks']} peaks"
    print(f"trained on {m['features']} ({widths}) in {m['train_seconds']:.0f} s")
    for line in summary_lines(m):
        print(line)
    print(
        f"done in {time.perf_counter() - start:.0f} s; report: {args.out / 'train' / 'report.md'}, "
        f"plots: {args.out / 'train' / 'embedding.png'} (PCA) and umap.png, "
        f"benchmark: {args.out / 'bench.txt'}"
    )
    return 0


def _real(args: argparse.Namespace, start: float) -> int:
    """Train on a real file with ``gpuload train``'s defaults and print what was chosen."""
    if not args.real.exists():
        print(
            f"{args.real}: no such file (make demo-real reads ../shared/data; REAL_DATA=FILE names another)"
        )
        return 2
    print(f"training the multimodal VAE for {args.epochs} epochs on {args.real} as shipped")
    config = TrainConfig(epochs=args.epochs, device=args.device, out_dir=args.out, max_cells=args.train_cells)
    m = train(args.real, config)
    for line in [*m["inputs_chosen"], *summary_lines(m)]:
        print(line)
    print(f"done in {time.perf_counter() - start:.0f} s; report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
