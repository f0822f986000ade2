"""Iterators as independent as DataLoader's, on every face: abandoned, zipped, interleaved,
sliced and Lightning-style iterations each deliver the file's rows named by ``batch["index"]``,
every completed epoch exactly once per cell; runs are joined when they end; ``close()``."""

from __future__ import annotations

import gc
import itertools
import weakref

import anndata as ad
import numpy as np
import pytest

from gpuload import MultiomeLoader
from gpuload.device import SimulatedCudaBackend, check
from gpuload.errors import GpuloadError
from gpuload.loader import MAX_LIVE_RUNS

from .conftest import FACES, TINY, gpuload_threads, recording_backend
from .reference import check_rows

N_GENES = TINY["n_genes"]


@pytest.fixture(scope="module")
def tiny(tiny_h5ad):
    return tiny_h5ad, ad.read_h5ad(tiny_h5ad).X.toarray()


def _loader(path, device, **kw):
    backend = recording_backend() if device == "cudasim" else device
    options = dict(batch_size=8, shuffle=True, seed=3, device=backend, obs_keys=["cell_type"], chunk_size=8)
    return MultiomeLoader(path, **{**options, "window": 2, "super_batch_bytes": 2 * 8 * 120 * 4, **kw})


def _once_each(rows: list[np.ndarray], n: int = 120) -> None:
    np.testing.assert_array_equal(np.sort(np.concatenate(rows)), np.arange(n))


def _ordered(loader) -> None:
    if isinstance(loader.backend, SimulatedCudaBackend):
        assert check(loader.backend.ledger.ops) == []


@pytest.mark.parametrize("device", FACES)
def test_fifty_abandoned_partial_epochs_then_a_full_one(tiny, device):
    path, x = tiny
    loader = _loader(path, device)
    for i in range(50):
        iterator = iter(loader)
        for batch in itertools.islice(iterator, 1 + i % 3):
            check_rows(batch, x, N_GENES)
        del iterator  # dropped: its run is stopped and joined at once
        assert gpuload_threads() == []
    assert loader.epoch == 49  # each abandoned epoch moved the position on, like DataLoader
    _once_each([check_rows(b, x, N_GENES) for b in loader])
    assert loader.epoch == 51 and gpuload_threads() == []
    _ordered(loader)


@pytest.mark.parametrize("device", FACES)
def test_zip_of_a_loader_with_itself_gives_every_pair(tiny, device):
    path, x = tiny
    loader = _loader(path, device)
    pairs = list(zip(loader, loader, strict=True))
    assert len(pairs) == len(loader) == 15
    left = [check_rows(a, x, N_GENES) for a, _ in pairs]
    right = [check_rows(b, x, N_GENES) for _, b in pairs]
    _once_each(left)
    _once_each(right)
    for a, b in zip(left, right, strict=True):  # both iterators deliver the same epoch
        np.testing.assert_array_equal(a, b)
    assert [b["index"].tolist() for b in loader] != [r.tolist() for r in left]  # then the next epoch
    _ordered(loader)


@pytest.mark.parametrize("device", FACES)
def test_two_live_iterators_interleaved_to_the_end(tiny, device):
    path, x = tiny
    loader = _loader(path, device)
    first = iter(loader)
    a = [check_rows(next(first), x, N_GENES)]
    second = iter(loader)  # the latest left its epoch part-way: this one is the next epoch
    b = []
    for one, two in itertools.zip_longest(first, second):
        a += [check_rows(one, x, N_GENES)] if one is not None else []
        b += [check_rows(two, x, N_GENES)] if two is not None else []
    _once_each(a)
    _once_each(b)
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(loader.batch_rows(0)))
    np.testing.assert_array_equal(np.concatenate(b), np.concatenate(loader.batch_rows(1)))
    assert loader.epoch == 2 and gpuload_threads() == []
    _ordered(loader)


@pytest.mark.parametrize("device", FACES)
def test_islice_then_full_epochs_and_resume(tiny, device):
    path, x = tiny
    loader = _loader(path, device)
    head = list(itertools.islice(loader, 3))
    state = loader.state_dict()
    assert (state["epoch"], state["batches_done"]) == (0, 3)
    for batch in head:
        check_rows(batch, x, N_GENES)
    _once_each([check_rows(b, x, N_GENES) for b in loader])  # epoch 1, whole
    resumed = _loader(path, device)
    resumed.load_state_dict(state)
    rest = [check_rows(b, x, N_GENES) for b in resumed]
    _once_each([b["index"].numpy() for b in head] + rest)  # epoch 0: the 3 taken + the rest
    _ordered(loader)
    _ordered(resumed)


@pytest.mark.parametrize("device", FACES)
def test_lightning_val_then_train_pattern(tiny, device):
    """What Lightning does: a sanity check takes 2 validation batches and keeps its iterator,
    a training epoch runs while it is alive, then a validation epoch; and again."""
    path, x = tiny
    train, val = _loader(path, device), _loader(path, device, shuffle=False)
    sanity = iter(val)
    for _ in range(2):
        check_rows(next(sanity), x, N_GENES)
    for epoch in range(2):
        train.set_epoch(epoch)
        _once_each([check_rows(b, x, N_GENES) for b in train])
        rows = [check_rows(b, x, N_GENES) for b in val]
        np.testing.assert_array_equal(np.concatenate(rows), np.arange(120))
    del sanity
    assert gpuload_threads() == []
    _ordered(train)
    _ordered(val)


@pytest.mark.parametrize("device", FACES)
def test_close_joins_every_run_and_refuses_more(tiny, device):
    path, x = tiny
    with _loader(path, device) as loader:
        live = iter(loader)
        check_rows(next(live), x, N_GENES)
        assert gpuload_threads()
    assert gpuload_threads() == []
    with pytest.raises(GpuloadError, match="was closed: its loader was closed"):
        next(live)
    with pytest.raises(GpuloadError, match="MultiomeLoader was closed"):
        iter(loader)
    loader.close()  # twice is fine
    if device == "cudasim":
        assert loader.backend.ledger.pinned_bytes == 0
        _ordered(loader)


def test_a_run_beyond_the_limit_closes_the_oldest_which_then_says_so(tiny):
    path, x = tiny
    loader = _loader(path, "cpu")
    iterators = [iter(loader) for _ in range(MAX_LIVE_RUNS + 1)]
    for it in iterators:
        check_rows(next(it), x, N_GENES)
    with pytest.raises(GpuloadError, match=f"{MAX_LIVE_RUNS} newer iterators"):
        next(iterators[0])
    for it in iterators[1:]:
        check_rows(next(it), x, N_GENES)


def test_a_loader_nobody_holds_is_freed_without_the_cycle_collector(tiny_h5ad):
    """No reference cycle through the loader's iterators: its memory goes when its last
    reference does, not at some later garbage collection."""
    gc.disable()
    try:
        loader = _loader(tiny_h5ad, "cpu")
        list(loader)
        abandoned = iter(loader)
        next(abandoned)
        del abandoned
        freed = weakref.ref(loader)
        del loader
        assert freed() is None
    finally:
        gc.enable()
