"""The happens-before checker (gpuload.device.happens_before): on hand-made ledgers, on every
loader configuration of the simulated GPU face (each batch also compared with the CPU face's),
and on purposely broken variants of the loader, each of which it must catch: a checker that
cannot fail proves nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpuload import MultiomeLoader
from gpuload.device import RingPool, StreamFace, check
from gpuload.device.backend import spans
from gpuload.device.ledger import DeviceOp
from gpuload.device.pinned import PinnedRing, RunRings

from .conftest import recording_backend


def op(kind, stream="compute", thread="T", reads=(), writes=(), event=0, peer="", address=0, size=0):
    return DeviceOp(kind, kind, stream, thread, size, address, tuple(reads), tuple(writes), event, peer)


BUF, HOST = (1000, 64), (5000, 64)


def test_a_read_needs_the_write_ordered_before_it():
    write = [op("alloc", address=1000, size=64), op("launch", writes=[BUF])]
    unordered = [*write, op("use", stream="default", thread="C", reads=[BUF])]
    assert [v.rule for v in check(unordered)] == ["read-after-write", "foreign-stream"]
    waited = [
        *write,
        op("event", event=1),
        op("wait", stream="default", thread="C", event=1),
        op("record_stream", stream="default", thread="C", reads=[BUF]),
        op("use", stream="default", thread="C", reads=[BUF]),
    ]
    assert check(waited) == []


def test_a_reuse_needs_the_uses_ordered_or_recorded():
    use = [
        op("alloc", address=1000, size=64),
        op("launch", writes=[BUF]),
        op("event", event=1),
        op("wait", stream="default", thread="C", event=1),
        op("use", stream="default", thread="C", reads=[BUF]),
    ]
    reuse = op("alloc", address=1000, size=64)
    assert {v.rule for v in check([*use, reuse])} == {"reuse", "foreign-stream"}
    recorded = op("record_stream", stream="default", thread="C", reads=[BUF])
    assert check([*use, recorded, reuse]) == []


def test_host_writes_to_page_locked_memory_wait_for_the_copy_out():
    first = [
        op("pinned", stream="host", address=5000, size=64),
        op("host_write", stream="host", writes=[HOST]),
        op("h2d", stream="copy", reads=[HOST]),
        op("event", stream="copy", event=7),
    ]
    again = op("host_write", stream="host", writes=[HOST])
    assert [v.rule for v in check([*first, again])] == ["write-after-access"]
    assert check([*first, op("sync", stream="host", event=7), again]) == []


def test_threads_are_ordered_by_spawn_join_and_queues():
    writes = [op("pinned", stream="host", address=5000, size=64), op("host_write", thread="A", writes=[HOST])]
    racing = [*writes, op("host_read", thread="B", reads=[HOST])]
    assert [v.rule for v in check(racing)] == ["read-after-write"]
    handed = [*writes, op("put", thread="A", peer="q"), op("get", thread="B", peer="q")]
    assert check([*handed, op("host_read", thread="B", reads=[HOST])]) == []
    joined = [op("spawn", thread="B", peer="A"), *writes, op("joined", thread="B", peer="A")]
    assert check([*joined, op("host_read", thread="B", reads=[HOST])]) == []


def test_waiting_on_an_event_never_recorded_is_reported():
    assert [v.rule for v in check([op("sync", stream="host", event=99)])] == ["unknown-event"]


# -- every loader configuration on the simulated GPU face -------------------------------------
def _options(output, preload, extra):
    options = dict(
        batch_size=8,
        seed=2,
        chunk_size=8,
        window=2,
        prefetch=1,
        layer="counts",
        transform={"GEX": "log1p_size_factor", "ATAC": "binarize"},
        obs_keys=["cell_type", "GEX_n_genes"],
        output=output,
        preload=preload,
        super_batch_bytes=2 * 8 * 120 * 4,
        subset=np.arange(0, 120, 10 if output == "sparse_csr" else 5),  # the simulator runs each CUDA thread
    )
    if extra == "transform+obsm":
        options |= dict(obsm_keys=["GEX_X_umap"], batch_transform=lambda b: {**b, "twice": b["index"] * 2})
    if extra == "all obs":
        options |= dict(obs_keys=None)
    if extra == "float16":
        options |= dict(dtype=torch.float16)
    if extra == "rank 1 of 2":
        options |= dict(rank=1, world_size=2)
    return options


def _same(a: dict, b: dict) -> None:
    assert torch.equal(a["index"], b["index"])
    for name in ("GEX", "ATAC"):
        x, y = a[name], b[name]
        if x.layout == torch.sparse_csr:
            x, y = x.to_dense(), y.to_dense()
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
        assert torch.equal(a["mask"][name], b["mask"][name])
    assert a["obs"]["cell_type"] == b["obs"]["cell_type"]


EXTRAS = ["plain", "transform+obsm", "all obs", "float16", "rank 1 of 2"]


def _configuration(output: str, preload: bool, extra: str):
    """The simulated sparse kernel is the slow one: make test runs its plain and DDP cases,
    make test-all every case."""
    slow = output == "sparse_csr" and extra not in ("plain", "rank 1 of 2")
    name = f"{output}-{'preload' if preload else 'stream'}-{extra}"
    return pytest.param(output, preload, extra, marks=[pytest.mark.slow] if slow else [], id=name)


CONFIGURATIONS = [
    _configuration(output, preload, extra)
    for output in ("dense", "sparse_csr")
    for preload in (False, True)
    for extra in EXTRAS
]


@pytest.mark.cudasim
@pytest.mark.parametrize("output, preload, extra", CONFIGURATIONS)
def test_every_configuration_is_ordered(tiny_h5ad, output, preload, extra):
    """Two epochs, a zipped pair of iterators and an abandoned one, checked by the checker; the
    batches equal the CPU face's."""
    options = _options(output, preload, extra)
    want = list(MultiomeLoader(tiny_h5ad, device="cpu", **options))
    backend = recording_backend()
    loader = MultiomeLoader(tiny_h5ad, device=backend, **options)
    got = list(loader)
    for a, b in zip(want, got, strict=True):
        _same(a, b)
    abandoned = iter(loader)
    next(abandoned)
    for a, b in zip(loader, loader, strict=True):
        assert torch.equal(a["index"], b["index"])
    del abandoned
    loader.close()
    assert check(backend.ledger.ops) == []


@pytest.mark.cudasim
@pytest.mark.dali
def test_the_dali_pipeline_is_ordered(tiny_h5ad):
    pytest.importorskip("nvidia.dali")
    options = _options("dense", False, "plain")
    backend = recording_backend()
    want = list(MultiomeLoader(tiny_h5ad, device="cpu", **options))
    got = list(MultiomeLoader(tiny_h5ad, device=backend, pipeline="dali", **options))
    for a, b in zip(want, got, strict=True):
        _same(a, b)
    assert check(backend.ledger.ops) == []


# -- broken variants: each must be caught ------------------------------------------------------
def _run_broken(tiny_h5ad, **kw):
    """Two epochs and a zipped pair on 60 cells: 4 read groups per run, so each ring slot is
    reused within a run (across runs a join already orders the reuse)."""
    backend = recording_backend()
    options = {**_options("dense", False, "plain"), "subset": np.arange(0, 120, 2), **kw}
    loader = MultiomeLoader(tiny_h5ad, device=backend, **options)
    list(loader)
    list(zip(loader, loader, strict=True))
    return {v.rule for v in check(backend.ledger.ops)}


def _hand_off_without(skip: str):
    def hand_off(self, fence, tensors, receiver=None):
        current = self.stream_name()
        if current != receiver:
            if skip != "wait":
                self.wait_stream(fence)
            if skip != "record_stream":
                self.mark_in_use(tensors, "batch")
        if self.ledger.record:
            self.note("use", "batch", reads=spans(tensors))
        return current

    return hand_off


@pytest.mark.cudasim
def test_the_correct_loader_passes_the_variant_harness(tiny_h5ad):
    assert _run_broken(tiny_h5ad, dtype=torch.float16) == set()


@pytest.mark.cudasim
def test_a_missing_wait_is_caught(tiny_h5ad, monkeypatch):
    """With float32 alone the consumer's read of the status (after the kernel) would order it;
    the wait protects the work after the status: here the float16 cast."""
    monkeypatch.setattr(StreamFace, "hand_off", _hand_off_without("wait"))
    assert "read-after-write" in _run_broken(tiny_h5ad, dtype=torch.float16)


@pytest.mark.cudasim
def test_a_missing_record_stream_is_caught(tiny_h5ad, monkeypatch):
    monkeypatch.setattr(StreamFace, "hand_off", _hand_off_without("record_stream"))
    assert "foreign-stream" in _run_broken(tiny_h5ad)


@pytest.mark.cudasim
def test_a_ring_slot_reused_without_waiting_is_caught(tiny_h5ad, monkeypatch):
    take = PinnedRing.take

    def take_without_waiting(self, nbytes):
        self.fences[self.next] = None
        return take(self, nbytes)

    monkeypatch.setattr(PinnedRing, "take", take_without_waiting)
    assert "write-after-access" in _run_broken(tiny_h5ad)


@pytest.mark.cudasim
def test_one_status_slot_fewer_is_caught(tiny_h5ad, monkeypatch):
    def short(cls, backend, prefetch):
        return cls(PinnedRing(backend), PinnedRing(backend, prefetch + 2), PinnedRing(backend, prefetch + 1))

    monkeypatch.setattr(RunRings, "for_run", classmethod(short))
    assert "write-after-access" in _run_broken(tiny_h5ad, super_batch_bytes=8 * 120 * 4)


@pytest.mark.cudasim
def test_an_unjoined_run_sharing_its_rings_is_caught(tiny_h5ad, monkeypatch):
    """A run whose rings another run gets while it may still write them (what a new iterator
    that stops the old one without joining it, and reuses its buffers, amounts to)."""
    shared = {}
    lease = RingPool.lease

    def lease_shared(self):
        return shared.setdefault(id(self), lease(self))

    monkeypatch.setattr(RingPool, "lease", lease_shared)
    monkeypatch.setattr(RingPool, "give_back", lambda self, rings: None)
    assert "write-after-access" in _run_broken(tiny_h5ad, super_batch_bytes=8 * 120 * 4)
