"""One run and the position rules on their own (gpuload.epoch), driven without the loader's
iterator: an :class:`EpochRun` over a small plan's real fetcher and assembler (the cpu face,
and the simulated GPU face with leased rings) yields its requests' batches in order with the
file's values, ends early on ``close()`` with its threads joined and its rings given back once,
hands an error over after the batches before it; :class:`Position` decides which epoch and
batch each new iterator starts at, which iterator moves it, and closes the oldest run beyond
its limit."""

from __future__ import annotations

import threading

import anndata as ad
import numpy as np
import pytest

from gpuload import MultiomeLoader
from gpuload.device import RingPool, check
from gpuload.epoch import EpochRun, Position
from gpuload.errors import ArgumentError, GpuloadError
from gpuload.sampler import load_requests

from .conftest import TINY, gpuload_threads, recording_backend
from .reference import check_rows

N_GENES = TINY["n_genes"]
BATCH = 8


@pytest.fixture(scope="module")
def x(tiny_h5ad) -> np.ndarray:
    return ad.read_h5ad(tiny_h5ad).X.toarray()


@pytest.fixture(scope="module")
def loader(tiny_h5ad):
    """Where the plan, fetcher and assembler come from (its own iterators are not used)."""
    options = {"batch_size": BATCH, "shuffle": True, "seed": 4, "device": "cpu", "obs_keys": []}
    with MultiomeLoader(tiny_h5ad, **options) as built:
        yield built


class Runs:
    """``start(epoch, first)``: an EpochRun of ``loader``'s batches of ``epoch`` from ``first``,
    as the loader starts one; remembers what it was asked and what it gave back."""

    def __init__(self, loader, pool: RingPool | None = None, **options) -> None:
        self.loader, self.pool, self.options = loader, pool, options
        self.started: list[tuple[int, int]] = []
        self.given_back: list = []

    def run(self, epoch: int = 0, first: int = 0) -> EpochRun:
        batches = self.loader.batch_rows(epoch)[first:]
        requests = load_requests(batches, self.loader.positions, chunk_size=16, window=2, batch_size=BATCH)
        return EpochRun(
            requests,
            self.loader.fetcher,
            self.loader.assembler,
            rings=self.pool.lease() if self.pool else None,
            prefetch=2,
            num_threads=1,
            give_back=self.give_back,
            **self.options,
        )

    def give_back(self, rings) -> None:
        self.given_back.append(rings)
        if self.pool is not None:
            self.pool.give_back(rings)

    def start(self, epoch: int, first: int):
        self.started.append((epoch, first))
        run = self.run(epoch, first)
        return run, iter(run)


def threads_of(run: EpochRun) -> list:
    return [t for t in gpuload_threads() if t.name.endswith(f"-{run.number}")]


# -- EpochRun ---------------------------------------------------------------------------------
def test_a_run_yields_its_batches_in_order_then_ends_joined(loader, x):
    runs = Runs(loader)
    run = runs.run(epoch=1)
    got = [check_rows(batch, x, N_GENES) for batch in run]
    want = loader.batch_rows(1)
    assert len(got) == len(want) == -(-TINY["n_cells"] // BATCH)
    for rows, expected in zip(got, want, strict=True):
        np.testing.assert_array_equal(rows, expected)
    assert run.closed and threads_of(run) == [] and runs.given_back == [None]


def test_a_run_from_a_later_batch_skips_the_ones_before(loader, x):
    run = Runs(loader).run(epoch=0, first=5)
    got = [check_rows(batch, x, N_GENES) for batch in run]
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(loader.batch_rows(0)[5:]))


def test_closing_early_joins_the_threads_and_gives_back_once(loader, x):
    runs = Runs(loader)
    run = runs.run()
    batches = iter(run)
    check_rows(next(batches), x, N_GENES)
    assert len(threads_of(run)) == 2  # the reader and the assembler
    run.close()
    run.close()  # closing twice is fine
    assert run.closed and run.stopped.is_set() and threads_of(run) == []
    assert runs.given_back == [None]


def test_a_reader_error_comes_after_the_batches_before_it(loader, x):
    """The requests fail after their first group: its batches come, then the error, and the
    run is closed with its threads joined."""
    runs = Runs(loader)
    run = runs.run()
    first = next(iter(run.requests))

    def failing():
        yield first
        raise OSError("the disk went away")

    run.requests = failing()
    seen = []
    with pytest.raises(OSError, match="the disk went away"):
        for batch in run:
            seen.append(check_rows(batch, x, N_GENES))
    assert [r.tolist() for r in seen] == [b.tolist() for b in first.batches]
    assert run.closed and threads_of(run) == [] and runs.given_back == [None]


def test_batch_transform_runs_in_the_assembler_thread(loader, x):
    where = []

    def tag(batch):
        where.append(threading.current_thread().name)
        batch["tagged"] = True
        return batch

    run = Runs(loader, batch_transform=tag).run()
    batches = list(run)
    assert all(b["tagged"] for b in batches) and len(where) == len(batches)
    assert set(where) == {f"gpuload-assembler-{run.number}"}


def test_batch_transform_returning_none_is_an_argument_error(loader):
    run = Runs(loader, batch_transform=lambda batch: None).run()
    with pytest.raises(ArgumentError, match="batch_transform returned None"):
        list(run)
    assert run.closed and threads_of(run) == []


@pytest.mark.cudasim
def test_a_simulated_gpu_run_leases_rings_and_gives_them_back_after_joining(tiny_h5ad, x):
    backend = recording_backend()
    with MultiomeLoader(
        tiny_h5ad, batch_size=BATCH, seed=1, device=backend, obs_keys=[], subset=np.arange(0, 120, 4)
    ) as sim:
        pool = RingPool(backend, prefetch=2)
        runs = Runs(sim, pool)
        run = runs.run()
        leased = run.rings
        assert leased is not None
        got = [check_rows(batch, x, N_GENES) for batch in run]
        np.testing.assert_array_equal(np.concatenate(got), np.concatenate(sim.batch_rows(0)))
        assert runs.given_back == [leased] and pool.lease() is leased  # kept for the next run
        assert check(backend.ledger.ops) == []
        pool.give_back(leased)
        pool.close()


# -- Position ---------------------------------------------------------------------------------
def drain(iterator, n: int | None = None) -> int:
    """Take ``n`` batches (all when None); how many were taken."""
    taken = 0
    for _ in iterator:
        taken += 1
        if taken == n:
            break
    return taken


def test_a_finished_epoch_moves_the_position_to_the_next(loader):
    position, runs = Position(limit=4), Runs(loader)
    assert drain(position.new_iterator(runs.start)) == len(loader)
    assert (position.epoch, position.batches_done) == (1, 0)
    drain(position.new_iterator(runs.start))
    assert runs.started == [(0, 0), (1, 0)] and position.epoch == 2


def test_an_epoch_left_part_way_starts_a_fresh_one(loader):
    position, runs = Position(limit=4), Runs(loader)
    left = position.new_iterator(runs.start)
    drain(left, 3)
    assert (position.epoch, position.batches_done) == (0, 3)
    drain(position.new_iterator(runs.start), 1)
    assert runs.started == [(0, 0), (1, 0)]
    left.close()


def test_only_the_latest_iterator_moves_the_position(loader):
    position, runs = Position(limit=4), Runs(loader)
    older = position.new_iterator(runs.start)
    drain(older, 1)
    position.move_to(5, 0)  # set_epoch(5)
    drain(older)  # the older iterator ends its epoch 0 ...
    assert (position.epoch, position.batches_done) == (5, 0)  # ... and moves nothing
    newer = position.new_iterator(runs.start)
    assert newer.epoch == 5
    drain(newer, 2)
    assert (position.epoch, position.batches_done) == (5, 2)
    newer.close()


def test_a_resume_point_is_where_the_next_iterator_starts(loader):
    position, runs = Position(limit=4), Runs(loader)
    position.move_to(2, 3, resume=True)  # load_state_dict
    resumed = position.new_iterator(runs.start)
    assert drain(resumed) == len(loader) - 3
    assert runs.started == [(2, 3)] and (position.epoch, position.batches_done) == (3, 0)


def test_a_run_beyond_the_limit_closes_the_oldest(loader):
    position, runs = Position(limit=2), Runs(loader)
    iterators = [position.new_iterator(runs.start) for _ in range(3)]
    for iterator in iterators:
        drain(iterator, 1)
    oldest = iterators[0]
    assert not oldest.started and threads_of(oldest.run) == []
    with pytest.raises(GpuloadError, match="2 newer iterators of the same loader were started"):
        next(oldest)
    drain(iterators[1], 1)  # the others go on
    position.close_all("its loader was closed")
    for iterator in iterators[1:]:
        with pytest.raises(GpuloadError, match="its loader was closed"):
            next(iterator)
        assert threads_of(iterator.run) == []
