"""Every loader argument checked in one place before the file is opened (gpuload.options):
``shuffle`` read as DataLoader reads it with one spelling per mode in ``state_dict()``, and every
keyword of ``torch.utils.data.DataLoader`` either honoured, with a visible effect, or refused with
a message naming it."""

from __future__ import annotations

import inspect
import os

import anndata
import numpy as np
import pytest
import torch

from gpuload import MultiomeLoader
from gpuload.bmmc.schema import SPLITS
from gpuload.errors import ArgumentError
from gpuload.options import LoaderOptions
from gpuload.sampler import EpochSampler

from .conftest import gpuload_threads
from .reference import epoch_rows

N = 120


@pytest.fixture(scope="module")
def tiny(synthetic):
    return synthetic("tiny-options.h5ad", n_cells=N, n_genes=20, n_peaks=60, seed=4)


def _loader(path, **kw):
    return MultiomeLoader(path, **{"device": "cpu", "obs_keys": [], "batch_size": 10, "chunk_size": 8, **kw})


def _order(loader) -> np.ndarray:
    return np.concatenate(loader.batch_rows())


@pytest.mark.parametrize("file_order", [False, 0, None, np.False_])
def test_falsy_shuffle_is_file_order(tiny, file_order):
    """``0 in (False, True, "full")`` holds in Python: shuffle=0 used to block-shuffle."""
    loader = _loader(tiny, shuffle=file_order)
    np.testing.assert_array_equal(_order(loader), np.arange(N))
    assert loader.state_dict()["shuffle"] is False
    np.testing.assert_array_equal(epoch_rows(loader), np.arange(N))


def test_true_one_and_block_are_one_mode(tiny):
    orders = {spelling: _order(_loader(tiny, shuffle=spelling)) for spelling in (True, 1, "block", "auto")}
    assert not np.array_equal(orders[True], np.arange(N))
    for order in orders.values():
        np.testing.assert_array_equal(order, orders[True])
    states = [_loader(tiny, shuffle=s).state_dict()["shuffle"] for s in (True, 1, "block", np.True_)]
    assert states == [True] * 4
    assert _loader(tiny, shuffle="full").state_dict()["shuffle"] == "full"


def test_checkpoints_resume_across_spellings(tiny):
    saver = _loader(tiny, shuffle=True, seed=2)
    it = iter(saver)
    next(it), next(it)
    state = saver.state_dict()
    for spelling in (1, "block"):
        resumed = _loader(tiny, shuffle=spelling, seed=2)
        resumed.load_state_dict(state)
        rest = [b["index"].numpy() for b in resumed]
        np.testing.assert_array_equal(np.concatenate(rest), np.concatenate(saver.batch_rows(0)[2:]))
    old = {**state, "shuffle": "block"}  # a checkpoint written before one spelling per mode
    _loader(tiny, shuffle=True, seed=2).load_state_dict(old)
    with pytest.raises(ArgumentError, match="shuffle"):
        _loader(tiny, shuffle="full", seed=2).load_state_dict(state)


def test_epoch_sampler_normalizes_shuffle():
    assert EpochSampler(10, shuffle=0).shuffle is False
    assert EpochSampler(10, shuffle="block").state()["shuffle"] is True
    np.testing.assert_array_equal(EpochSampler(10, shuffle=0).epoch_order(3), np.arange(10))


BAD = [
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"shuffle": 2}, r"shuffle must be False, True, 0, 1, None, 'block' \(= True\) or 'full', got 2"),
    ({"shuffle": "sometimes"}, "shuffle"),
    ({"drop_last": "yes"}, "drop_last must be True or False, got 'yes'"),
    ({"seed": -1}, "seed"),
    ({"modalities": 3}, "modalities must be a name"),
    ({"batch_size": None}, "batch_size must be a positive integer, got None"),
    ({"modalities": {"GEX": 3}}, "modalities must be a name.*{key: name}"),
    ({"layer": 3}, "layer must be None"),
    ({"feature_type_key": 3}, "feature_type_key must be a var column name, got 3"),
    ({"transform": "zscore"}, "unknown transform 'zscore'.*binarize"),
    ({"transform": {"GEX": "log2"}}, "unknown transform 'log2'"),
    ({"obs_keys": "cell_type"}, "obs_keys must be a list of column names, got 'cell_type'"),
    ({"obsm_keys": [1]}, "obsm_keys"),
    ({"device": "tpu"}, "device must be 'auto', 'cpu', 'cuda', 'cuda:N'.*got 'tpu'"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"window": -2}, "window"),
    ({"prefetch": 0}, "prefetch"),
    ({"num_threads": 0}, "num_threads"),
    ({"preload": "always"}, "preload must be True, False or 'auto', got 'always'"),
    ({"preload": 1}, "preload"),
    ({"pipeline": "ffcv"}, "pipeline must be one of"),
    ({"rank": 1}, "pass both rank and world_size"),
    ({"rank": 2, "world_size": 2}, r"rank must lie in \[0, world_size=2\), got 2"),
    ({"world_size": 0, "rank": 0}, "world_size"),
    ({"dtype": torch.int32}, "dtype must be one of"),
    ({"output": "coo"}, "output must be one of"),
    ({"super_batch_bytes": 0}, "super_batch_bytes"),
    ({"pipeline": "dali", "dtype": torch.bfloat16}, "bfloat16"),
    ({"pipeline": "dali", "output": "sparse_csr"}, "dense batches only"),
    (
        {"pipeline": "dali", "batch_transform": lambda b: b},
        "batch_transform cannot be used with pipeline='dali'",
    ),
    ({"batch_transform": 3}, "batch_transform must be a callable"),
    ({"split": "training"}, r"split must be one of \['train', 'val', 'test'\].*got 'training'"),
    ({"split": {}}, r"an {obs column: allowed values} mapping.*got {}"),
    ({"split": {"batch": []}}, "got no values for obs 'batch'"),
    ({"split": {3: ["a"]}}, "got the column 3"),
    ({"cache_dir": 3}, "cache_dir"),
    ({"weights": [[1.0, 2.0]]}, "weights must hold one weight per selected cell"),
    ({"weights": [1.0, -1.0]}, "non-negative"),
    ({"weights": "cell_type", "shuffle": False}, "shuffle=False asks for file order"),
    ({"num_samples": 5}, "apply to weighted sampling"),
    ({"replacement": False}, "apply to weighted sampling"),
    ({"weights": "cell_type", "replacement": "no"}, "replacement must be True or False"),
    ({"num_workers": -1}, "num_workers must be a non-negative integer, got -1"),
    ({"num_workers": 2, "num_threads": 3}, "num_workers=2 sets num_threads, which was given as 3"),
    ({"prefetch_factor": 0}, "prefetch_factor"),
    ({"prefetch_factor": 4, "prefetch": 2}, "prefetch_factor=4 sets prefetch"),
    ({"generator": 7}, "generator must be a torch.Generator"),
    ({"generator": torch.Generator(), "seed": 1}, "generator= seeds gpuload's own order.*seed="),
]


@pytest.mark.parametrize("options, message", BAD)
def test_bad_options_are_refused_before_the_file_is_opened(tmp_path, options, message):
    """The path does not exist: each error comes from the options, not from reading."""
    with pytest.raises(ArgumentError, match=message):
        MultiomeLoader(tmp_path / "absent.h5ad", **options)


def test_unknown_keywords_are_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="batchsize"):
        MultiomeLoader(tmp_path / "absent.h5ad", batchsize=3)


def _dataloader_parameters() -> dict[str, object]:
    signature = inspect.signature(torch.utils.data.DataLoader.__init__)
    return {name: p.default for name, p in signature.parameters.items() if name not in ("self", "dataset")}


def test_dataloader_defaults_are_accepted(tiny):
    """DataLoader's own defaults mean the same here: batches of one, in file order."""
    loader = _loader(tiny, **_dataloader_parameters())
    assert loader.batch_size == 1 and len(loader) == N and loader.num_threads == (os.cpu_count() or 1)
    np.testing.assert_array_equal(_order(loader), np.arange(N))


def _first_rows(loader) -> np.ndarray:
    return next(iter(loader))["index"].numpy()


def _no_threads_left(loader) -> bool:
    list(loader)
    return not gpuload_threads()


def _delivered_in_order(loader) -> bool:
    planned = _order(loader)
    return np.array_equal(epoch_rows(loader), planned)


def _seed_drawn(loader) -> bool:
    expected = int(
        torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(11)).item()
    )
    return loader.state_dict()["seed"] == expected and np.array_equal(
        _order(loader), _order(_loader(loader.store.path, seed=expected))
    )


# A non-default value of each DataLoader keyword, and the visible effect when it is honoured
# (None: it is refused, and the message must name it).
KEYWORDS = {
    "batch_size": (7, lambda lo: lo.batch_size == 7 and _first_rows(lo).size == 7),
    "shuffle": (False, lambda lo: np.array_equal(_order(lo), np.arange(N))),
    "sampler": (list(range(N - 1, -1, -1)), lambda lo: np.array_equal(_order(lo), np.arange(N)[::-1])),
    "batch_sampler": ([[3, 1], [0]], lambda lo: [b.tolist() for b in lo.batch_rows()] == [[3, 1], [0]]),
    "num_workers": (3, lambda lo: lo.num_threads == 3),
    "collate_fn": (lambda samples: samples, None),
    "pin_memory": (True, None),
    "drop_last": (True, lambda lo: len(lo) == N // 10 and _first_rows(lo).size == 10),
    "timeout": (5.0, None),
    "worker_init_fn": (lambda worker_id: None, None),
    "multiprocessing_context": ("spawn", None),
    "generator": (torch.Generator().manual_seed(11), _seed_drawn),
    "prefetch_factor": (5, lambda lo: lo.prefetch == 5),
    "persistent_workers": (True, None),
    "pin_memory_device": ("cuda", None),
    "in_order": (False, None),
}
HONOURED_DEFAULTS = {  # DataLoader's default values of the refused keywords are what gpuload does
    "pin_memory": lambda lo: not next(iter(lo))["GEX"].is_pinned(),
    "persistent_workers": _no_threads_left,
    "in_order": _delivered_in_order,
}


def test_the_table_covers_every_dataloader_keyword():
    assert set(KEYWORDS) == set(_dataloader_parameters())


@pytest.mark.parametrize("name", sorted(_dataloader_parameters()))
def test_every_dataloader_keyword_is_honoured_or_refused(tiny, name):
    value, effect = KEYWORDS[name]
    if name == "generator":
        value = torch.Generator().manual_seed(11)  # a fresh one: drawing from it advances it
    if effect is None:
        with pytest.raises(ArgumentError, match=f"{name}=.*does not apply to gpuload") as error:
            _loader(tiny, **{name: value})
        assert "batch_transform" in str(error.value) or name != "collate_fn"
    else:
        extra = {"batch_size": 1} if name == "batch_sampler" else {}  # DataLoader's default beside it
        assert effect(_loader(tiny, **{name: value, **extra}))
    if name in HONOURED_DEFAULTS:
        assert HONOURED_DEFAULTS[name](_loader(tiny, **{name: _dataloader_parameters()[name]}))


def test_num_workers_zero_keeps_the_default_threads(tiny):
    assert _loader(tiny, num_workers=0).num_threads == (os.cpu_count() or 1)
    assert _loader(tiny, num_workers=2, num_threads=2).num_threads == 2


def test_options_are_frozen_and_spelled_once():
    options = LoaderOptions(shuffle=0, seed=None)
    assert (
        options.shuffle is False and options.prefetch == 2 and options.batch_size == 32 and options.seed == 0
    )
    with pytest.raises(AttributeError):
        options.batch_size = 3  # type: ignore[misc]


def test_split_by_name_or_by_obs_values(tiny):
    """``split="train"`` is the competition's split, data the options resolve (the plan knows no
    dataset); any dataset's own split is ``{obs column: allowed values}``."""
    obs = anndata.read_h5ad(tiny, backed="r").obs
    named = _loader(tiny, split="val")
    assert LoaderOptions(split="val").split_by == {"batch": SPLITS["val"]}
    np.testing.assert_array_equal(named.positions, np.flatnonzero(obs["batch"].isin(SPLITS["val"])))
    own = _loader(tiny, split={"cell_type": ["NK", "CD14+ Mono"], "batch": "s1d1"}, shuffle=False)
    wanted = obs["cell_type"].isin(["NK", "CD14+ Mono"]) & (obs["batch"] == "s1d1")
    np.testing.assert_array_equal(own.positions, np.flatnonzero(wanted))
    np.testing.assert_array_equal(np.concatenate([b["index"].numpy() for b in own]), own.positions)
    saver = _loader(tiny, split="train", seed=3)
    it = iter(saver)
    next(it)
    resumed = _loader(tiny, split="train", seed=3)
    resumed.load_state_dict(saver.state_dict())
    rest = np.concatenate([b["index"].numpy() for b in resumed])
    np.testing.assert_array_equal(rest, np.concatenate(saver.batch_rows(0)[1:]))
    with pytest.raises(ArgumentError, match=r"split={'batch': \['nowhere'\]} selects no cells"):
        _loader(tiny, split={"batch": ["nowhere"]})
