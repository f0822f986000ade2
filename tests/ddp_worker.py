"""Run by torchrun in tests/test_distributed.py: each rank iterates its share of an epoch
(and a resumed epoch) and rank 0 writes what every rank saw to a JSON file."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from gpuload import MultiomeLoader


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
    loader = MultiomeLoader(data, **kwargs)
    epoch = [b["index"].tolist() for b in loader]
    where = str(loader.backend.torch_device)
    # Resume: two batches of epoch 1, then a fresh loader continues from the state.
    first = MultiomeLoader(data, **kwargs)
    first.set_epoch(1)
    it = iter(first)
    head = [next(it)["index"].tolist() for _ in range(2)]
    resumed = MultiomeLoader(data, **kwargs)
    resumed.load_state_dict(first.state_dict())
    tail = [b["index"].tolist() for b in resumed]
    whole = MultiomeLoader(data, **kwargs)
    whole.set_epoch(1)
    uninterrupted = [b["index"].tolist() for b in whole]
    mine = {
        "rank": dist.get_rank(),
        "len": len(loader),
        "epoch": epoch,
        "resumed_ok": head + tail == uninterrupted,
        "device": where,
    }
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
