"""``batch_transform=``: applied per batch in the assembler thread, its result delivered, its
errors raised after the batches before, resume unchanged, and (cudasim ledger) its work on the
loader's stream with the hand-off waiting on an event recorded after it."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from gpuload import MultiomeLoader
from gpuload.batch_columns import ColumnKeys, LazyColumns
from gpuload.device import check
from gpuload.epoch import tensors_of
from gpuload.errors import ArgumentError

from .conftest import gpuload_threads, recording_backend

KWARGS = dict(batch_size=50, shuffle=True, seed=3, obs_keys=["cell_type"], chunk_size=16, window=4)


class Doubler:
    """A transform returning a new dict with an extra tensor, recording where it ran."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def __call__(self, batch: dict) -> dict:
        self.threads.append(threading.current_thread().name)
        return {**batch, "GEX2": batch["GEX"] * 2, "extra": [batch["index"] + 1]}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cudasim", marks=pytest.mark.cudasim)])
def test_the_transformed_batch_is_delivered_from_the_assembler_thread(small_h5ad, device):
    options = dict(KWARGS, subset=np.arange(0, 600, 12)) if device == "cudasim" else KWARGS
    plain = list(MultiomeLoader(small_h5ad, device=device, **options))
    doubler = Doubler()
    loader = MultiomeLoader(small_h5ad, device=device, batch_transform=doubler, **options)
    got = list(loader)
    assert len(got) == len(plain) == len(loader) == len(doubler.threads)
    for a, b in zip(plain, got, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["GEX"], b["GEX"])
        assert torch.equal(b["GEX2"], 2 * a["GEX"]) and torch.equal(b["extra"][0], a["index"] + 1)
        assert b["obs"]["cell_type"] == a["obs"]["cell_type"]
    (thread,) = set(doubler.threads)  # every batch in the run's one assembler thread
    assert thread.startswith("gpuload-assembler-") and thread != threading.current_thread().name


def test_an_error_in_the_transform_reaches_the_loop_after_the_batches_before(small_h5ad):
    calls = []

    def fails_third(batch):
        calls.append(int(batch["index"][0]))
        if len(calls) == 3:  # the second super-batch's second batch (the first is read alone)
            raise RuntimeError("transform failed")
        return batch

    loader = MultiomeLoader(small_h5ad, device="cpu", batch_transform=fails_third, **KWARGS)
    expected = loader.batch_rows()
    seen = []
    with pytest.raises(RuntimeError, match="transform failed"):
        for b in loader:
            seen.append(b["index"].numpy())
    assert len(seen) == 2
    np.testing.assert_array_equal(np.concatenate(seen), np.concatenate(expected[:2]))
    assert not gpuload_threads()
    # The failed batch was not consumed: a fresh loader resumes there.
    state = loader.state_dict()
    assert state["batches_done"] == 2
    fresh = MultiomeLoader(small_h5ad, device="cpu", batch_transform=lambda b: b, **KWARGS)
    fresh.load_state_dict(state)
    rest = [b["index"].numpy() for b in fresh]
    np.testing.assert_array_equal(np.concatenate(seen + rest), np.concatenate(expected))


def test_resume_counts_transformed_batches(small_h5ad):
    loader = MultiomeLoader(small_h5ad, device="cpu", batch_transform=Doubler(), **KWARGS)
    full = [b["index"].numpy() for b in loader]
    loader.set_epoch(0)
    it = iter(loader)
    head = [next(it)["GEX2"].shape[0] for _ in range(4)]
    state = loader.state_dict()
    assert state["batches_done"] == 4 and sum(head) == 200
    fresh = MultiomeLoader(small_h5ad, device="cpu", batch_transform=Doubler(), **KWARGS)
    fresh.load_state_dict(state)
    tail = [b["index"].numpy() for b in fresh]
    np.testing.assert_array_equal(np.concatenate(tail), np.concatenate(full[4:]))


def test_tensors_of_walks_containers_and_sparse_tensors():
    dense, csr = torch.ones(3), torch.eye(3).to_sparse_csr()
    made = LazyColumns(["a", "b"], lambda key: torch.zeros(2))
    made["a"]  # made; "b" is not, and is not made by the walk
    found = tensors_of({"x": dense, "y": [csr, (dense, "text")], "obs": made, "n": 3})
    assert len(found) == 1 + 3 + 1 + 1
    assert found[1] is not csr and torch.equal(found[3], csr.values())
    assert made.made() == [found[-1]] and len(made.made()) == 1
    coo = torch.eye(2).to_sparse()
    assert len(tensors_of(coo)) == 2


def test_lazy_columns_sharing_keys_are_independent():
    """Batches share one dict of unmade keys (ColumnKeys) until each is read or changed: reading,
    setting or deleting a column of one batch leaves every other batch's as it was."""
    keys = ColumnKeys(["a", "b"])
    made: list[tuple[int, str]] = []

    def make(k: int, key: str) -> torch.Tensor:
        made.append((k, key))
        return torch.full((2,), float(k))

    first, second, third = (LazyColumns(keys, make, k) for k in range(3))
    assert torch.equal(first["a"], torch.zeros(2)) and made == [(0, "a")]
    second["c"] = torch.ones(1)
    del third["b"]
    assert first.made() == [first["a"]] and len(made) == 1  # read once, made once
    assert list(first) == ["a", "b"] and list(second) == ["a", "b", "c"] and list(third) == ["a"]
    assert second.made() == [second["c"]] and third.made() == [] and made == [(0, "a")]
    assert list(LazyColumns(keys, make, 3)) == ["a", "b"] and list(keys.unmade) == ["a", "b"]
    moved = second.to(torch.float64)
    assert moved.made() == [] and moved["a"].dtype == torch.float64 and made[-1] == (1, "a")


def test_bad_batch_transform_is_refused(small_h5ad):
    with pytest.raises(
        ArgumentError, match="batch_transform must be a callable batch -> batch or None, got 3"
    ):
        MultiomeLoader(small_h5ad, device="cpu", batch_transform=3)
    with pytest.raises(ArgumentError, match="batch_transform cannot be used with pipeline='dali'"):
        MultiomeLoader(small_h5ad, device="cpu", pipeline="dali", batch_transform=lambda b: b)
    in_place = MultiomeLoader(small_h5ad, device="cpu", batch_transform=lambda b: b.update(x=1))
    with pytest.raises(ArgumentError, match="batch_transform returned None; it must return the batch"):
        next(iter(in_place))


@pytest.mark.cudasim
def test_the_transform_runs_on_the_loader_stream_and_the_hand_off_waits_for_it(small_h5ad):
    """Ledger order: each batch's transform op (on the compute stream, in the assembler thread),
    then a "batch transform" event, which is the event the consumer's hand-off of that
    super-batch waits on; and the happens-before checker finds the whole run ordered."""
    backend = recording_backend()

    def transform(batch):
        first = int(batch["index"][0])
        backend.empty(4, torch.float32, f"user transform {first}")  # stands for the transform's device work
        return {**batch, "stream": backend.stream_name()}

    loader = MultiomeLoader(
        small_h5ad,
        device=backend,
        batch_transform=transform,
        super_batch_bytes=3 * 8 * 1020 * 4,  # three batches of 8 rows per super-batch
        **dict(KWARGS, batch_size=8, subset=np.arange(0, 600, 10)),
    )
    batches = list(loader)
    ledger = backend.ledger
    assert {b["stream"] for b in batches} == {"compute"}
    assert ledger.off_stream() == []
    assert check(ledger.ops) == []
    ops = ledger.ops
    transform_at = {op.name: i for i, op in enumerate(ops) if op.name.startswith("user transform")}
    assert all(ops[i].thread.startswith("gpuload-assembler") for i in transform_at.values())
    assert {ops[i].stream for i in transform_at.values()} == {"compute"}
    event_at = {op.event: (i, op.name) for i, op in enumerate(ops) if op.kind == "event"}
    hand_offs = [op for op in ops if op.kind == "wait" and op.thread == "MainThread"]
    # One hand-off per super-batch (reads of 1, 1, 2 and 4 batches through the first window, at
    # most three batches a super-batch), each waiting on the event recorded after the transforms
    # of all its batches.
    assert len(batches) == len(loader) == 8 and len(hand_offs) == 5
    super_batches = (batches[:1], batches[1:2], batches[2:4], batches[4:7], batches[7:])
    for wait, batches_of_it in zip(hand_offs, super_batches, strict=True):
        at, name = event_at[wait.event]
        assert name.startswith("batch transform")
        assert all(at > transform_at[f"user transform {int(b['index'][0])}"] for b in batches_of_it)
    # Each super-batch is handed off with the transform's tensors too (its "stream" is a str).
    handed = [op.size for op in ops if op.kind == "record_stream" and op.name == "batch"]
    assert min(handed) > 6
