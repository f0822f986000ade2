"""Run by torchrun in tests/test_distributed.py: each rank iterates its share of an epoch
(and a resumed epoch), unweighted and then weighted (601 draws balanced by cell type, beside
the single-process draw of that epoch), and rank 0 writes what every rank saw to a JSON file."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from gpuload import MultiomeLoader


def share(path, kwargs: dict) -> dict:
    """This rank's batches of epoch 0, and whether a resumed epoch 1 equals an uninterrupted one."""
    loader = MultiomeLoader(path, **kwargs)
    epoch = [b["index"].tolist() for b in loader]
    # Resume: two batches of epoch 1, then a fresh loader continues from the state.
    first = MultiomeLoader(path, **kwargs)
    first.set_epoch(1)
    it = iter(first)
    head = [next(it)["index"].tolist() for _ in range(2)]
    resumed = MultiomeLoader(path, **kwargs)
    resumed.load_state_dict(first.state_dict())
    tail = [b["index"].tolist() for b in resumed]
    whole = MultiomeLoader(path, **kwargs)
    whole.set_epoch(1)
    uninterrupted = [b["index"].tolist() for b in whole]
    return {
        "len": len(loader),
        "epoch": epoch,
        "resumed_ok": head + tail == uninterrupted,
        "device": str(loader.backend.torch_device),
    }


def main(path: str, out: str, drop_last: str) -> None:
    data = path.split(",") if "," in path else path  # several files as one dataset
    device = os.environ.get("GPULOAD_TEST_DEVICE", "cpu")  # tests/test_gpu.py: cuda with NCCL
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # what a torchrun script does
    dist.init_process_group(os.environ.get("GPULOAD_TEST_BACKEND", "gloo"))
    kwargs = dict(
        batch_size=32,
        shuffle=True,
        seed=4,
        device=device,
        drop_last=drop_last == "1",
        obs_keys=["cell_type"],
        chunk_size=16,
        window=4,
    )
    weighted = {**kwargs, "weights": "cell_type", "num_samples": 601}
    single = MultiomeLoader(data, **{**weighted, "drop_last": False}, rank=0, world_size=1)  # the whole draw
    mine = {
        "rank": dist.get_rank(),
        **share(data, kwargs),
        "weighted": {
            **share(data, weighted),
            "single": [i for b in single.batch_rows(0) for i in b.tolist()],
        },
    }
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
