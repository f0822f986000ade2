"""GPU loader throughput: streaming and preloaded, native (and DALI when installed), against the
host-to-device bandwidth and the CPU face measured in the same run.

    python benchmarks/gpu_bench.py FILE [--batch-sizes 32 256 1024] [--cells 20000]

Each contender's batches count once the consumer's stream has them and the device has finished
(a synchronize per batch, on the consumer's side, as a training step would). The ledger of the
first native loader says how many kernel launches and host waits a batch cost, and whether the
hand-off was zero-copy (the batch lies inside the output buffer the kernel wrote). Prints a
markdown table for benchmarks/RESULTS.md, with the device named.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch

from gpuload import MultiomeLoader
from gpuload.device import gpu_available
from gpuload.reference.bench import time_loader

TRANSFORM = {"GEX": "log1p_size_factor", "ATAC": "binarize"}


def h2d_bandwidth(nbytes: int = 1 << 29) -> float:
    """Bytes/s of one page-locked host buffer copied to the device (the ceiling of any reader)."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    device.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        device.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * nbytes / (time.perf_counter() - start)


def zero_copy_and_costs(path: str, batch_size: int) -> tuple[bool, float, float]:
    """(native hand-off is zero-copy, launches per batch, host waits per batch), preloaded."""
    loader = MultiomeLoader(
        path, batch_size=batch_size, device="cuda", preload=True, layer="counts", transform=TRANSFORM
    )
    list(loader)
    ledger = loader.backend.ledger
    ledger.reset()
    ledger.record = True
    batches = list(loader)
    outputs = [(op.address, op.address + op.size) for op in ledger.ops if op.name == "output"]
    inside = all(any(lo <= b["GEX"].data_ptr() < hi for lo, hi in outputs) for b in batches)
    return inside, ledger.counts["launch"] / len(batches), ledger.counts["sync"] / len(batches)


def synced(loader):
    """Batches count once they are on the consumer's stream and finished."""
    for batch in loader:
        torch.cuda.synchronize()
        yield batch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256, 1024])
    p.add_argument("--cells", type=int, default=20_000, help="cells timed per gpuload contender")
    args = p.parse_args(argv)
    if not gpu_available():
        raise SystemExit("no usable GPU: benchmarks/gpu_bench.py measures the cuda face only")
    probe = MultiomeLoader(args.file, device="cuda", obs_keys=[])
    bytes_per_cell = probe.store.stored_values(probe.positions) * 8 / probe.positions.size
    bandwidth = h2d_bandwidth()
    zero_copy, launches, syncs = zero_copy_and_costs(args.file, 32)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(
        f"H2D {bandwidth / 1e9:.1f} GB/s = {bandwidth / bytes_per_cell:,.0f} cells/s of CSR "
        f"({bytes_per_cell / 1e3:.0f} kB/cell); native hand-off zero-copy: {zero_copy}; "
        f"B=32 preloaded: {launches:.3f} launches and {syncs:.3f} host waits per batch"
    )
    pipelines = ["native"] + (["dali"] if importlib.util.find_spec("nvidia.dali") else [])
    rows = []
    for b in args.batch_sizes:
        common = dict(batch_size=b, layer="counts", transform=TRANSFORM)
        cpu = MultiomeLoader(args.file, device="cpu", **common)
        rows.append(time_loader("gpuload cpu", lambda lo=cpu: lo, b, cells=max(b, args.cells // 8)))
        for pipeline in pipelines:
            for preload in (False, True):
                name = f"gpuload cuda {pipeline} {'preloaded' if preload else 'streaming'}"
                loader = MultiomeLoader(
                    args.file, device="cuda", preload=preload, pipeline=pipeline, **common
                )
                rows.append(time_loader(name, lambda lo=loader: synced(lo), b, cells=args.cells))
    print("| loader | B | cells/s | x cpu face | share of H2D |\n|---|---:|---:|---:|---:|")
    cpu_rate = {r.batch_size: r.cells_per_s for r in rows if r.name == "gpuload cpu"}
    for r in rows:
        share = r.cells_per_s * bytes_per_cell / bandwidth
        ratio = r.cells_per_s / cpu_rate[r.batch_size]
        print(f"| {r.name} | {r.batch_size} | {r.cells_per_s:,.0f} | {ratio:.1f} | {share:.0%} |")


if __name__ == "__main__":
    main()
