"""GPU loader throughput: streaming and preloaded, native (and DALI when installed), with the
CPU path and the seed's per-row Dataset measured in the same run for the ratios.

    python benchmarks/gpu_bench.py FILE [--batch-sizes 32 256 1024] [--cells 20000]

Also checks by pointer that the native hand-off is zero-copy. Prints a markdown table to paste
into benchmarks/RESULTS.md together with the device name.
"""

from __future__ import annotations

import argparse
import importlib.util

import torch

from gpuload import MultiomeLoader
from gpuload.backend import gpu_available
from gpuload.reference.bench import seed_loader, time_loader


def _zero_copy(path: str) -> bool:
    loader = MultiomeLoader(path, batch_size=32, device="cuda")
    written = []
    gather = type(loader.backend).gather

    def spy(self, *args):
        written.append(args[-2].data_ptr())
        return gather(self, *args)

    type(loader.backend).gather = spy
    try:
        batch = next(iter(loader))
    finally:
        type(loader.backend).gather = gather
    return batch["GEX"].data_ptr() == written[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256, 1024])
    p.add_argument("--cells", type=int, default=20_000, help="cells timed per gpuload contender")
    args = p.parse_args(argv)
    if not gpu_available():
        raise SystemExit("no usable GPU: benchmarks/gpu_bench.py measures the cuda face only")
    print(f"device: {torch.cuda.get_device_name()}; zero-copy native hand-off: {_zero_copy(args.file)}")
    pipelines = ["native"] + (["dali"] if importlib.util.find_spec("nvidia.dali") else [])
    rows = []
    for b in args.batch_sizes:
        rows.append(
            time_loader("seed (per-row Dataset)", lambda b=b: seed_loader(args.file, b), b, cells=max(256, b))
        )
        rows.append(
            time_loader(
                "gpuload cpu",
                lambda b=b: MultiomeLoader(args.file, batch_size=b, device="cpu"),
                b,
                cells=args.cells // 4,
            )
        )
        for pipeline in pipelines:
            for preload in (False, True):
                name = f"gpuload cuda {pipeline} {'preloaded' if preload else 'streaming'}"
                loader = MultiomeLoader(
                    args.file, batch_size=b, device="cuda", preload=preload, pipeline=pipeline
                )
                rows.append(time_loader(name, lambda lo=loader: _synced(lo), b, cells=args.cells))
    seed = {r.batch_size: r.cells_per_s for r in rows if r.name.startswith("seed")}
    print("| loader | B | cells/s | x seed |\n|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.name} | {r.batch_size} | {r.cells_per_s:,.0f} | {r.cells_per_s / seed[r.batch_size]:.1f} |"
        )


def _synced(loader):
    """Batches only count once they are on the device and finished."""
    for batch in loader:
        torch.cuda.synchronize()
        yield batch


if __name__ == "__main__":
    main()
