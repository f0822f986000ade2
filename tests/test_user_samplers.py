"""The user's sampler drives the loader (sampler=, batch_sampler=): torch's samplers, a
class-balanced one and DistributedSampler, on the cpu and simulated-GPU faces. Each batch holds
the file's rows of ``loader.positions`` in the sampler's order, and resuming is exact for a
sampler that is deterministic given ``set_epoch``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from gpuload import MultiomeLoader
from gpuload.device import SimulatedCudaBackend, check
from gpuload.errors import ArgumentError

from .conftest import FACES, recording_backend
from .reference import check_rows

N_CELLS, N_GENES, N_PEAKS = 120, 24, 72  # narrow: the simulator runs every CUDA thread in Python
SUBSET = np.arange(4, N_CELLS, 2)  # 58 selected cells: positions differ from file rows


@pytest.fixture(scope="module")
def tiny(synthetic):
    path = synthetic("tiny-samplers.h5ad", n_cells=N_CELLS, n_genes=N_GENES, n_peaks=N_PEAKS, seed=6)
    adata = ad.read_h5ad(path)
    return path, adata.X.toarray(), adata.obs["cell_type"].to_numpy()[SUBSET]


class ClassBalancedSampler(Sampler[int]):
    """Each epoch, ``per_class`` positions of every class (with replacement), interleaved class
    by class; deterministic given (seed, set_epoch), like DistributedSampler."""

    def __init__(self, labels: np.ndarray, per_class: int, seed: int = 0) -> None:
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.per_class, self.seed, self.epoch = per_class, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        drawn = np.stack([rng.choice(members, self.per_class) for members in self.by_class], axis=1)
        return iter(drawn.ravel().tolist())

    def __len__(self) -> int:
        return self.per_class * len(self.by_class)


def _generator(seed: int = 5) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


n = SUBSET.size
SAMPLERS = {  # name: labels -> (keyword, sampler); made twice, the twin gives the expected order
    "random": lambda labels: ("sampler", RandomSampler(range(n), generator=_generator())),
    "random-num_samples": lambda labels: (
        "sampler",
        RandomSampler(range(n), True, 75, generator=_generator()),
    ),
    "sequential": lambda labels: ("sampler", SequentialSampler(range(n))),
    "weighted": lambda labels: (
        "sampler",
        WeightedRandomSampler(np.linspace(0.1, 2.0, n), 50, generator=_generator()),
    ),
    "subset-random": lambda labels: (
        "sampler",
        SubsetRandomSampler(list(range(0, n, 3)), generator=_generator()),
    ),
    "batch-sampler": lambda labels: (
        "batch_sampler",
        BatchSampler(RandomSampler(range(n), generator=_generator()), batch_size=7, drop_last=False),
    ),
    "class-balanced": lambda labels: ("sampler", ClassBalancedSampler(labels, per_class=6, seed=2)),
    "array": lambda labels: ("sampler", np.arange(n)[::-1] % 17),
}


def _loader(path, device, **kw):
    backend = recording_backend() if device == "cudasim" else device
    options = {"device": backend, "obs_keys": ["cell_type"], "subset": SUBSET, "chunk_size": 8, "window": 2}
    if "batch_sampler" not in kw:
        options["batch_size"] = 8
    return MultiomeLoader(path, **{**options, "super_batch_bytes": 2 * 8 * (N_GENES + N_PEAKS) * 4, **kw})


def _expected(keyword: str, sampler, batch_size: int = 8, drop_last: bool = False) -> list[np.ndarray]:
    if keyword == "batch_sampler":
        return [np.asarray(b) for b in sampler]
    order = np.asarray(list(sampler))
    stop = order.size - order.size % batch_size if drop_last else order.size
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def _epoch(loader, x, labels) -> list[np.ndarray]:
    """The epoch's batches as positions, after checking every value against the file."""
    out = []
    for batch in loader:
        rows = check_rows(batch, x, N_GENES)
        positions = np.searchsorted(loader.positions, rows)
        np.testing.assert_array_equal(loader.positions[positions], rows)
        assert list(batch["obs"]["cell_type"]) == list(labels[positions])
        out.append(positions)
    if isinstance(loader.backend, SimulatedCudaBackend):
        assert check(loader.backend.ledger.ops) == []
    return out


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_batches_follow_the_sampler(tiny, face, name):
    path, x, labels = tiny
    keyword, sampler = SAMPLERS[name](labels)
    twin = SAMPLERS[name](labels)[1]
    loader = _loader(path, face, **{keyword: sampler})
    np.testing.assert_array_equal(loader.positions, SUBSET)
    for epoch in range(2 if face == "cpu" else 1):  # a fresh draw each epoch, as DataLoader's
        if hasattr(twin, "set_epoch"):  # the loader forwards each epoch to a sampler that takes it
            twin.set_epoch(epoch)
        expected = _expected(keyword, twin)
        assert len(loader) == len(expected)
        got = _epoch(loader, x, labels)
        assert [g.tolist() for g in got] == [e.tolist() for e in expected], f"epoch {epoch}"


def test_class_balanced_batches_are_balanced(tiny):
    path, x, labels = tiny
    loader = _loader(path, "cpu", sampler=ClassBalancedSampler(labels, per_class=8), batch_size=32)
    drawn = labels[np.concatenate(_epoch(loader, x, labels))]
    _, counts = np.unique(drawn, return_counts=True)
    assert (counts == 8).all()


def test_drop_last_cuts_the_sampler_order(tiny):
    path, x, labels = tiny
    loader = _loader(path, "cpu", sampler=SequentialSampler(range(n)), drop_last=True)
    assert len(loader) == n // 8
    np.testing.assert_array_equal(np.concatenate(_epoch(loader, x, labels)), np.arange(n // 8 * 8))


@pytest.mark.parametrize("face", FACES)
def test_distributed_sampler_shards_as_in_torch(tiny, face):
    """Two ranks in-process: each loader yields its DistributedSampler's share (gpuload does not
    shard again); set_epoch is forwarded; the shares cover every cell (padded as torch pads)."""
    path, x, labels = tiny
    shares = []
    for rank in range(2):
        sampler = DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=True, seed=7)
        loader = _loader(path, face, sampler=sampler)
        loader.set_epoch(3)
        twin = DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=True, seed=7)
        twin.set_epoch(3)
        got = _epoch(loader, x, labels)
        assert [g.tolist() for g in got] == [e.tolist() for e in _expected("sampler", twin)]
        assert sampler.epoch == 3
        shares.append(np.concatenate(got))
    assert set(np.concatenate(shares)) == set(range(n)) and shares[0].size == shares[1].size == n // 2


def test_resume_is_exact_for_a_sampler_seeded_by_its_epoch(tiny):
    path, x, labels = tiny

    def make():
        return _loader(path, "cpu", sampler=DistributedSampler(range(n), num_replicas=2, rank=1, seed=4))

    saver = make()
    saver.set_epoch(2)
    planned = saver.batch_rows()
    it = iter(saver)
    for _ in range(2):
        next(it)
    state = saver.state_dict()
    assert state["sampler"] == "sampler=torch.utils.data.distributed.DistributedSampler"
    resumed = make()
    resumed.load_state_dict(state)
    rest = [b["index"].numpy().tolist() for b in resumed]
    assert rest == [p.tolist() for p in planned[2:]]
    with pytest.raises(ArgumentError, match="sampler"):
        _loader(path, "cpu").load_state_dict(state)


def test_batch_sampler_over_a_distributed_sampler_gets_set_epoch(tiny):
    path, x, labels = tiny
    inner = DistributedSampler(range(n), num_replicas=2, rank=0, seed=1)
    loader = _loader(path, "cpu", batch_sampler=BatchSampler(inner, 5, drop_last=True))
    loader.set_epoch(6)
    twin = DistributedSampler(range(n), num_replicas=2, rank=0, seed=1)
    twin.set_epoch(6)
    got = _epoch(loader, x, labels)
    assert inner.epoch == 6 and loader.batch_size is None
    assert [g.tolist() for g in got] == [b for b in BatchSampler(twin, 5, drop_last=True)]


def test_a_sampler_without_len(tiny):
    path, x, labels = tiny

    class Evens:
        def __iter__(self):
            return iter(range(0, n, 2))

    loader = _loader(path, "cpu", sampler=Evens())
    assert len(loader) == -(-((n + 1) // 2) // 8)
    np.testing.assert_array_equal(np.concatenate(_epoch(loader, x, labels)), np.arange(0, n, 2))


CONFLICTS = [
    ({"shuffle": True}, "sampler= decides the order, so shuffle= cannot be given"),
    ({"shuffle": "full"}, "shuffle="),
    ({"weights": "cell_type"}, "weights="),
    ({"seed": 3}, "seed="),
    ({"rank": 0, "world_size": 2}, "rank/world_size=.*DistributedSampler"),
    ({"generator": torch.Generator()}, "generator=.*sampler="),
    ({"batch_sampler": [[0]]}, "mutually exclusive"),
]


@pytest.mark.parametrize("options, message", CONFLICTS)
def test_sampler_conflicts_are_refused(tmp_path, options, message):
    with pytest.raises(ArgumentError, match=message):
        MultiomeLoader(tmp_path / "absent.h5ad", sampler=[0, 1], **options)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"batch_size": 8}, "batch_sampler= decides the order and the batches, so batch_size="),
        ({"drop_last": True}, "drop_last="),
        ({"shuffle": True}, "shuffle="),
    ],
)
def test_batch_sampler_conflicts_are_refused(tmp_path, options, message):
    with pytest.raises(ArgumentError, match=message):
        MultiomeLoader(tmp_path / "absent.h5ad", batch_sampler=[[0, 1]], **options)


def test_shuffle_false_and_batch_size_one_go_with_samplers(tiny):
    """As DataLoader allows: shuffle=False beside a sampler, batch_size=1 beside a batch sampler."""
    path, x, labels = tiny
    assert len(_loader(path, "cpu", sampler=[2, 1, 0], shuffle=False)) == 1
    assert len(_loader(path, "cpu", batch_sampler=[[2, 1], [0]], batch_size=1)) == 2


@pytest.mark.parametrize(
    "keyword, sampler, message",
    [
        ("sampler", [0, 5, 999], r"sampler yielded position 999, outside \[0, 58\)"),
        ("sampler", [0, -1], "sampler yielded position -1"),
        ("sampler", [0.0, 1.5], r"sampler yielded 0.0 \(float\); it must yield integer positions"),
        ("sampler", [True, False], "sampler yielded True"),
        ("sampler", [[0, 1], [2, 3]], "a sampler of batches goes to batch_sampler="),
        ("batch_sampler", [[0, 1], [58]], "batch_sampler yielded position 58"),
        ("batch_sampler", [[0, 1], []], "batch_sampler yielded an empty batch"),
        ("batch_sampler", [0, 1], "batch_sampler yielded 0; it must yield lists of positions"),
    ],
)
def test_bad_positions_from_a_sampler_name_it(tiny, keyword, sampler, message):
    path, x, labels = tiny
    loader = _loader(path, "cpu", **{keyword: sampler})
    with pytest.raises(ArgumentError, match=message):
        next(iter(loader))


def test_tensor_positions_are_taken(tiny):
    path, x, labels = tiny
    loader = _loader(path, "cpu", sampler=SubsetRandomSampler(torch.arange(4, 20), generator=_generator()))
    twin = SubsetRandomSampler(torch.arange(4, 20), generator=_generator())
    got = _epoch(loader, x, labels)
    assert np.concatenate(got).tolist() == [int(i) for i in twin]


@pytest.mark.parametrize("sampler", [iter(range(5)), (i for i in range(5)), 42])
def test_a_sampler_must_be_iterable_each_epoch(tmp_path, sampler):
    with pytest.raises(ArgumentError, match="sampler must be"):
        MultiomeLoader(tmp_path / "absent.h5ad", sampler=sampler)
