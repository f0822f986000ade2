"""The GPU face's per-batch host cost, measured without a GPU: the cuda orchestration on the
simulated face (``cudasim``), its device operations counted by the backend's ledger.

    NUMBA_ENABLE_CUDASIM=1 python benchmarks/orchestration.py [--cells 2000] [--batch-sizes 32 256 1024]

For each batch size, after a warm-up epoch (compilation, the preload), ``--epochs`` preloaded,
shuffled epochs are timed one by one and reported per batch: kernel launches, host waits on
events (most of them on events long passed: the consumer reading a super-batch's status, a ring
slot's reuse), host-to-device copies, and host CPU microseconds with the kernels' work excluded:
the CPU time of the whole process (loader threads and consumer) less the kernels', with the
kernels run by their single-threaded CPU twins (``SimulatedCudaBackend(kernels="cpu")``), since
the simulator's own Python threads would swamp what is measured. An epoch at B=32 is about
40 ms of host time, so one epoch's figure swings with the machine and with the cyclic garbage
collector: a full collection of this process's ~320,000 objects takes 0.25-0.35 s on a 2-core
VM (six to nine epochs' worth) and falls into an epoch depending on what ran before. So the
timed epochs start after a ``gc.collect()``, the median epoch is reported with the lowest and
highest, and the collections of each generation during the timed epochs are counted.

The file is narrow, so the super-batch budget is scaled by its width: each launch covers as many
batches as the cuda face's default budget does at the BMMC file's full width (129,921 features).
A last, recorded epoch reports how many times a loader thread waited for the latest event of a
stream (a drain: it would stall until the GPU ran dry) and whether the happens-before checker
finds the epoch ordered.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    sys.exit("run with NUMBA_ENABLE_CUDASIM=1 (the simulated GPU face)")
# One thread for numba and torch: idle worker threads that spin would count as host CPU time.
os.environ["NUMBA_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"

from gpuload import MultiomeLoader  # noqa: E402
from gpuload.assembly import SUPER_BATCH_BYTES  # noqa: E402
from gpuload.bmmc import schema  # noqa: E402
from gpuload.bmmc.synth import write_synthetic  # noqa: E402
from gpuload.device import SimulatedCudaBackend, check  # noqa: E402
from gpuload.device.happens_before import drains  # noqa: E402

FULL_WIDTH = schema.N_GENES + schema.N_PEAKS


def measure(path: Path, batch_size: int, width: int, obs_keys, epochs: int) -> dict:
    timed, _, _ = timed_epochs(path, batch_size, width, obs_keys, epochs, record=False)
    _, loader_drains, ordered = timed_epochs(path, batch_size, width, obs_keys, 1, record=True)
    return {**timed, "drains": loader_drains, "ordered": ordered}


def timed_epochs(
    path: Path, batch_size: int, width: int, obs_keys, epochs: int, *, record: bool
) -> tuple[dict, int, str]:
    """A warm-up epoch, then ``epochs`` timed ones: their figures (host us per batch of each
    epoch, the rest per batch over all of them), and (with ``record``, the ledger of every
    epoch) the loader threads' drains and whether the checker finds them ordered."""
    budget = max(1, SUPER_BATCH_BYTES["cuda"] * width // FULL_WIDTH)
    backend = SimulatedCudaBackend(kernels="cpu")
    backend.ledger.record = record  # from the start: the checker needs every event
    loader = MultiomeLoader(
        path,
        batch_size=batch_size,
        shuffle=True,
        device=backend,
        num_threads=1,
        preload=True,
        layer="counts",
        transform={"GEX": "log1p_size_factor", "ATAC": "binarize"},
        obs_keys=obs_keys,
        super_batch_bytes=budget,
    )
    list(loader)  # warm-up: compilation and the preload
    ledger = loader.backend.ledger
    ledger.counts.clear()
    collections = [0, 0, 0]

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections[info["generation"]] += 1

    host_us, batches = [], 0
    gc.collect()
    gc.callbacks.append(count)
    try:
        for _ in range(epochs):
            ledger.launch_seconds = 0.0
            start = time.process_time()
            n = sum(1 for _ in loader)
            cpu = time.process_time() - start
            host_us.append((cpu - ledger.launch_seconds) / n * 1e6)
            batches += n
    finally:
        gc.callbacks.remove(count)
    per = {kind: ledger.counts[kind] / batches for kind in ("launch", "sync", "h2d")}
    loader_drains = [op for op in drains(ledger.ops) if op.thread.startswith("gpuload-")]
    ordered = "yes" if not check(ledger.ops) else "NO"
    figures = {"B": batch_size, "batches": batches // epochs, **per, "host_us": host_us, "gc": collections}
    return figures, len(loader_drains), ordered


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=2000)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256, 1024])
    p.add_argument("--file", type=Path, default=None, help="an existing (narrow) multiome .h5ad")
    p.add_argument("--obs", choices=("all", "cell_type"), default="all", help="obs columns delivered")
    p.add_argument("--epochs", type=int, default=5, help="epochs timed per batch size (median reported)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or write_synthetic(
            Path(tmp) / "narrow.h5ad", n_cells=args.cells, n_genes=120, n_peaks=900, seed=0, progress=False
        )
        width = MultiomeLoader(path, device="cpu", obs_keys=[]).store.n_vars
        obs_keys = None if args.obs == "all" else ["cell_type"]
        print(f"cuda orchestration on the cudasim face, {path.name}: preloaded, shuffled, obs: {args.obs}")
        print(
            f"| B | batches | launches / batch | host waits / batch | H2D copies / batch "
            f"| host CPU us / batch, median of {args.epochs} epochs (min-max) | GC collections gen 0/1/2 "
            "| loader-thread drains | ordered |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
        for b in args.batch_sizes:
            r = measure(path, b, width, obs_keys, args.epochs)
            us, collections = r["host_us"], "/".join(map(str, r["gc"]))
            print(
                f"| {r['B']} | {r['batches']} | {r['launch']:.3f} | {r['sync']:.3f} | {r['h2d']:.3f} "
                f"| {statistics.median(us):.0f} ({min(us):.0f}-{max(us):.0f}) | {collections} "
                f"| {r['drains']} | {r['ordered']} |"
            )


if __name__ == "__main__":
    main()
