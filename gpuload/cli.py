"""The ``gpuload`` command: synth, info, bench, train.

Bad input ends with a one-line ``gpuload: error: ...`` and exit code 2 (no traceback unless
``--debug``), for argument errors and for every :class:`~gpuload.errors.GpuloadError`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from gpuload.bmmc import schema
from gpuload.errors import GpuloadError

EXIT_BAD_INPUT = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def cmd_synth(args: argparse.Namespace) -> int:
    from gpuload.bmmc.synth import write_synthetic

    path = write_synthetic(
        args.out,
        n_cells=args.cells,
        n_genes=args.genes,
        n_peaks=args.peaks,
        x_format=args.x_format,
        dtype=args.dtype,
        compression=args.compression,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"wrote {path} ({args.cells} cells x {args.genes} genes + {args.peaks} peaks, X {args.x_format})")
    return 0


def _describe_encoding(e) -> str:
    parts = [e.kind, str(e.dtype)]
    if e.index_dtype is not None:
        parts.append(f"indices {e.index_dtype}, indptr {e.indptr_dtype}, nnz {e.nnz:,}")
    parts.append(f"compression {e.compression or 'none'}, chunks {e.chunks or 'contiguous'}")
    return ", ".join(parts)


def cmd_info(args: argparse.Namespace) -> int:
    from gpuload.formats import open_multiome

    with open_multiome(args.file) as store:
        print(f"{store.path}: {store.n_cells:,} cells x {store.n_vars:,} features")
        for label, value in store.about.items():
            print(f"{label}: {value}")
        print(
            "modalities: "
            + ", ".join(
                f"{m.name} {m.width:,} columns" + ("" if m.contiguous else " (scattered)")
                for m in store.modalities.values()
            )
        )
        for label, encoding in store.encodings.items():
            print(f"{label}: {_describe_encoding(encoding)}")
        for layer in store.layers:
            with open_multiome(args.file, layer=layer, cache_dir=args.cache_dir) as ls:
                for label, encoding in ls.encodings.items():
                    label = label.replace(f"layers/{layer}", f"layers[{layer!r}]")
                    print(f"{label}: {_describe_encoding(encoding)}")
        rows = np.unique(np.linspace(0, store.n_cells - 1, min(args.sample, store.n_cells)).astype(np.int64))
        per_mod = store.read_rows(rows)
        print(f"stored values per cell ({rows.size:,} evenly spaced cells):")
        for name, matrix in per_mod.items():
            nnz = np.diff(matrix.indptr) if hasattr(matrix, "indptr") else (matrix != 0).sum(axis=1)
            q = np.percentile(nnz, [0, 5, 50, 95, 100])
            print(
                f"  {name:<5} min {q[0]:,.0f}  p5 {q[1]:,.0f}  median {q[2]:,.0f}  "
                f"p95 {q[3]:,.0f}  max {q[4]:,.0f}"
            )
        print(f"obs ({len(store.obs.columns)} columns):")
        for column, dtype in store.obs.dtypes.items():
            extra = f" ({len(dtype.categories)} categories)" if str(dtype) == "category" else ""
            print(f"  {column:<28} {dtype}{extra}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from gpuload.device import get_backend
    from gpuload.formats import open_multiome
    from gpuload.reference.bench import format_table, run_bench

    open_multiome(args.file).close()  # bad input is reported before any contender runs
    get_backend(args.device)
    print(f"gpuload bench {args.file}: shuffled, both modalities at full width, dense float32 + obs")
    results = run_bench(
        str(args.file), args.batch_size, cells=args.cells, seed_cells=args.seed_cells, device=args.device
    )
    print(format_table(results, reference="seed"))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from gpuload.reference.train import run_train

    return run_train(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuload", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic BMMC-shaped multiome .h5ad")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--cells", type=_positive_int, default=schema.N_CELLS)
    p.add_argument("--genes", type=_positive_int, default=schema.N_GENES)
    p.add_argument("--peaks", type=_positive_int, default=schema.N_PEAKS)
    p.add_argument("--x-format", choices=("csr", "csc", "dense"), default="csr")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--compression", choices=("gzip", "lzf"), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "info", help="shape, modalities, encodings, nnz per cell and obs of an .h5ad, .h5mu or 10x .h5"
    )
    p.add_argument("file", type=Path)
    p.add_argument("--sample", type=_positive_int, default=2000, help="cells read for the nnz statistics")
    p.add_argument("--cache-dir", type=Path, default=None, help="where a CSC layer's row-major sidecar goes")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="cells/s of gpuload next to the seed's per-row Dataset")
    p.add_argument("file", type=Path)
    p.add_argument("--batch-size", type=_positive_int, nargs="+", default=[32, 256])
    p.add_argument("--cells", type=_positive_int, default=8192, help="cells timed per gpuload run")
    p.add_argument(
        "--seed-cells", type=_positive_int, default=512, help="cells timed for the seed's approach"
    )
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="train the multimodal VAE through the loader and evaluate it")
    try:
        from gpuload.reference.train import add_train_arguments
    except ModuleNotFoundError as e:  # the base install: the reference model's libraries are an extra
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=_missing_train_extra, missing=str(e))
    else:
        add_train_arguments(p)
        p.set_defaults(func=cmd_train)
    return parser


def _missing_train_extra(args: argparse.Namespace) -> int:
    print(
        f"gpuload: error: train needs the reference model's libraries ({args.missing}); "
        "install them with: pip install 'gpuload[train]'",
        file=sys.stderr,
    )
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GpuloadError as e:
        if args.debug:
            raise
        print(f"gpuload: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        # Exit now: waiting for the loader's threads would wait out a numba compilation of the
        # first batch (seconds); the process ends with them, so nothing is left running.
        print("gpuload: interrupted", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
