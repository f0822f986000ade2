"""Every :class:`~gpuload.loader.MultiomeLoader` argument, checked in one place before any file is
opened: types, ranges and conflicts, each failure an ``ArgumentError`` naming the argument, what was
given and what is allowed. What needs the file (modality, obs and var names, a subset, a
``weights=`` array's length) is checked as the plan resolves it (:func:`~gpuload.plan.build_plan`,
:meth:`LoaderOptions.epoch_sampler`).

``DataLoader``'s keywords each get a meaning here (:meth:`LoaderOptions.from_arguments`):

- ``num_workers=N`` (N > 0) sets ``num_threads``, the threads of the CPU kernel (the assembler's
  parallel work); ``0`` (``DataLoader``'s default: load in the main process) keeps gpuload's
  default, every core. gpuload's one reader (none once preloaded) and one assembler thread per
  iterator always run.
- ``prefetch_factor=k`` sets ``prefetch``: super-batches (several batches each) held ready.
- ``generator=`` (a ``torch.Generator``) seeds the order: ``seed`` is drawn from it once, here,
  as ``DataLoader`` draws its base seed (``torch.empty((), dtype=torch.int64).random_(generator)``).
- ``pin_memory=False``, ``persistent_workers=False``, ``timeout=0``, ``in_order=True`` and an
  empty ``pin_memory_device`` are what gpuload does; their other values are refused, saying why
  (:data:`REFUSED`), as are ``collate_fn``, ``worker_init_fn`` and ``multiprocessing_context``.
- ``sampler=``/``batch_sampler=`` plug the user's order in (:mod:`gpuload.user_sampler`);
  exclusive with ``shuffle`` (true), ``weights=``, ``seed=``/``generator=`` and, for a batch
  sampler, ``batch_size``/``drop_last``, as ``DataLoader`` refuses them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gpuload.assembly import OUTPUT_DTYPES, OUTPUTS
from gpuload.checks import non_negative_int, one_of, positive_int, weight_array
from gpuload.device import Backend
from gpuload.errors import ArgumentError
from gpuload.handoff import NATIVE, Handoff, NativeHandoff, resolve_handoff
from gpuload.plan import cell_weights
from gpuload.plan.transforms import TRANSFORMS, parse_transform
from gpuload.sampler import EpochSampler, distributed_share, shuffle_mode
from gpuload.splits import split_by
from gpuload.user_sampler import UserSampler, check_user_sampler

DEFAULT_BATCH_SIZE, DEFAULT_PREFETCH = 32, 2

# DataLoader keywords gpuload has no use for: the value that is what gpuload does, and why others
# do not apply.
REFUSED: dict[str, tuple[Any, str]] = {
    "collate_fn": (
        None,
        "a torch collate_fn takes a list of samples, but gpuload assembles whole batches on the device; "
        "pass a callable batch -> batch as batch_transform= instead",
    ),
    "pin_memory": (
        False,
        "gpuload writes each batch on device= itself, staging host-to-GPU copies through its own "
        "page-locked memory, so there is no host batch to pin; use device='cuda' for batches on the GPU",
    ),
    "pin_memory_device": ("", "batches are written on device=; pass device= instead"),
    "persistent_workers": (
        False,
        "gpuload has no worker processes: what is costly (open files, plan, statistics, preload, "
        "page-locked memory) lives as long as the loader, and each iterator's two threads start in "
        "microseconds and are joined at its end",
    ),
    "worker_init_fn": (None, "gpuload has no worker processes to initialize (it reads in threads)"),
    "multiprocessing_context": (None, "gpuload has no worker processes (it reads in threads)"),
    "timeout": (0, "gpuload has no batch timeout: a read that fails raises its own error"),
    "in_order": (True, "gpuload always delivers batches in order"),
}
DEVICES = "device must be 'auto', 'cpu', 'cuda', 'cuda:N', 'cudasim', a torch.device or a Backend"


@dataclass(frozen=True)
class LoaderOptions:
    """The loader's arguments, checked and in their one spelling (``shuffle`` as ``False``,
    ``True`` or ``"full"``; defaults filled in); the meanings are :class:`MultiomeLoader`'s."""

    batch_size: int | None = DEFAULT_BATCH_SIZE  # None under batch_sampler (its batches)
    shuffle: bool | str | None = "auto"  # "auto": True, or the sampler's order
    drop_last: bool = False
    seed: int | None = None  # None: 0
    modalities: Any = None  # a name, names, {key: name}, "all" or None
    layer: str | dict | None = None
    feature_type_key: str = "feature_types"
    transform: Any = None
    features: Any = None
    obs_keys: Sequence[str] | None = None
    obsm_keys: Sequence[str] = ()
    subset: Any = None
    split: str | Mapping[str, Any] | None = None  # a named split, or {obs column: allowed values}
    device: str | torch.device | Backend = "auto"
    chunk_size: int = 256
    window: int = 16
    prefetch: int = DEFAULT_PREFETCH
    # every core by default: what the loader alone is fastest with
    num_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    preload: bool | str = "auto"
    pipeline: str | Handoff = NATIVE
    rank: int | None = None
    world_size: int | None = None
    dtype: torch.dtype = torch.float32
    output: str = "dense"
    super_batch_bytes: int | None = None
    cache_dir: str | os.PathLike | None = None
    weights: np.ndarray | Sequence[float] | str | None = None
    num_samples: int | None = None
    replacement: bool = True
    batch_transform: Callable[[dict], dict] | None = None
    sampler: Any = None
    batch_sampler: Any = None
    # resolved by __post_init__: the stage pipeline= names, the cells split= asks for
    handoff: Handoff = field(default=NativeHandoff(), init=False, repr=False, compare=False)
    split_by: dict[str, tuple] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_arguments(
        cls,
        *,
        num_workers: int | None = 0,
        prefetch_factor: int | None = None,
        generator: torch.Generator | None = None,
        **arguments,
    ) -> LoaderOptions:
        """The options from the loader's arguments, ``DataLoader``'s keywords mapped or refused
        (see the module docstring)."""
        for name, (allowed, why) in REFUSED.items():
            given = arguments.pop(name, allowed)
            if isinstance(allowed, bool):
                fits = isinstance(given, bool | np.bool_) and given == allowed
            elif allowed is None:
                fits = given is None
            else:  # timeout=0 (or 0.0), pin_memory_device=""
                fits = type(given) in (int, float, str) and given == allowed
            if not fits:
                raise ArgumentError(
                    f"{name}={given!r} does not apply to gpuload (allowed: {allowed!r}): {why}"
                )
        if num_workers is not None and non_negative_int("num_workers", num_workers) > 0:
            arguments["num_threads"] = agreed(
                "num_threads", arguments.get("num_threads"), "num_workers", num_workers
            )
        if prefetch_factor is not None:
            prefetch_factor = positive_int("prefetch_factor", prefetch_factor)
            arguments["prefetch"] = agreed(
                "prefetch", arguments.get("prefetch"), "prefetch_factor", prefetch_factor
            )
        if generator is not None:
            arguments["seed"] = seed_of(generator, arguments)
        for name in ("prefetch", "num_threads"):  # None: the default
            if name in arguments and arguments[name] is None:
                del arguments[name]
        unknown = sorted(set(arguments) - {f.name for f in fields(cls) if f.init})
        if unknown:
            raise TypeError(f"MultiomeLoader() got unexpected keyword arguments {unknown}")
        return cls(**arguments)

    def __post_init__(self) -> None:
        self._check_order()
        self._check_selection()
        self._check_output()
        for name in ("chunk_size", "window"):
            positive_int(name, getattr(self, name))
        positive_int("prefetch", self.prefetch)
        positive_int("num_threads", self.num_threads)
        if not (isinstance(self.preload, bool | np.bool_) or self.preload == "auto"):
            raise ArgumentError(f"preload must be True, False or 'auto', got {self.preload!r}")
        if not isinstance(self.device, Backend | torch.device) and not (
            isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cudasim|cuda(:\d+)?", self.device)
        ):
            raise ArgumentError(f"{DEVICES}, got {self.device!r}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str | os.PathLike):
            raise ArgumentError(f"cache_dir must be a folder path or None, got {self.cache_dir!r}")

    def _fill(self, name: str, default, check: Callable) -> None:
        value = getattr(self, name)
        object.__setattr__(self, name, default if value is None else check(name, value))

    def _check_order(self) -> None:
        """batch_size, shuffle, drop_last, seed, the user's sampler, weights and the DDP share."""
        object.__setattr__(self, "drop_last", flag("drop_last", self.drop_last))
        given = [name for name in ("sampler", "batch_sampler") if getattr(self, name) is not None]
        user = given[0] if given else None
        if user is not None:
            self._check_user_sampler(user)
        if user != "batch_sampler":
            positive_int("batch_size", self.batch_size)  # DataLoader's None (no batching) is not offered
        self._fill("seed", 0, non_negative_int)
        object.__setattr__(self, "replacement", flag("replacement", self.replacement))
        if self.weights is None and (self.num_samples is not None or not self.replacement):
            raise ArgumentError(
                "num_samples and replacement=False apply to weighted sampling: pass weights= too "
                "(np.ones(n) for uniform sampling)"
            )
        if self.weights is not None:
            self._check_weights()
        auto = self.shuffle == "auto"
        object.__setattr__(self, "shuffle", (user is None) if auto else shuffle_mode(self.shuffle))
        if self.weights is not None and self.shuffle is False:
            raise ArgumentError(
                "shuffle=False asks for file order, but weights= draws a random order; leave shuffle "
                "at its default (it is ignored under weights)"
            )
        if (self.rank is None) != (self.world_size is None):
            raise ArgumentError("pass both rank and world_size, or neither")
        if self.rank is not None:
            rank, world = non_negative_int("rank", self.rank), positive_int("world_size", self.world_size)
            if rank >= world:
                raise ArgumentError(f"rank must lie in [0, world_size={world}), got {rank}")

    def _check_user_sampler(self, user: str) -> None:
        """``sampler=``/``batch_sampler=``: iterable each epoch, and alone in deciding the order."""
        if self.sampler is not None and self.batch_sampler is not None:
            raise ArgumentError(
                "sampler= and batch_sampler= are mutually exclusive: a batch sampler orders too"
            )
        check_user_sampler(user, getattr(self, user))
        conflicts = {  # name: (given, what to do instead)
            "shuffle": (
                self.shuffle != "auto" and shuffle_mode(self.shuffle) is not False,
                "leave shuffle out: the sampler's order is delivered",
            ),
            "weights": (self.weights is not None, "pass a WeightedRandomSampler as the sampler instead"),
            "seed": (self.seed is not None, "seed your sampler (a RandomSampler's generator=, say)"),
            "rank/world_size": (
                self.rank is not None or self.world_size is not None,
                "pass a DistributedSampler(num_replicas=, rank=): it shards, and gpuload does not "
                "shard a sampler's order again",
            ),
        }
        if user == "batch_sampler":
            # DataLoader's default (1), its "no batching" (None) or gpuload's default stand aside
            conflicts["batch_size"] = (
                self.batch_size not in (None, 1, DEFAULT_BATCH_SIZE),
                "the batch sampler makes the batches",
            )
            conflicts["drop_last"] = (self.drop_last, "give drop_last to the batch sampler (BatchSampler's)")
        for name, (given, instead) in conflicts.items():
            if given:
                decides = "the order and the batches" if user == "batch_sampler" else "the order"
                raise ArgumentError(
                    f"{user}= decides {decides}, so {name}= cannot be given with it (DataLoader "
                    f"refuses the same); {instead}"
                )
        if user == "batch_sampler":
            object.__setattr__(self, "batch_size", None)

    def _check_weights(self) -> None:
        weights = self.weights
        if weights is None or isinstance(weights, str):
            return
        if np.ndim(weights) != 1:
            raise ArgumentError(
                f"weights must hold one weight per selected cell (1-D, aligned with loader.positions), "
                f"got shape {np.shape(weights)}"
            )
        weight_array(weights, len(weights))
        if self.num_samples is not None:
            positive_int("num_samples", self.num_samples)

    def _check_selection(self) -> None:
        """modalities, layer, feature_type_key, transform, obs_keys, obsm_keys and split, as far as
        they can be checked without the file (the plan finds split's columns in obs)."""
        m = self.modalities
        if not (m is None or isinstance(m, str) or names(m, empty=True) or names(m, empty=True, keyed=True)):
            raise ArgumentError(
                f"modalities must be a name, a sequence of names, {{key: name}}, 'all' or None, got {m!r}"
            )
        if not isinstance(self.feature_type_key, str):
            raise ArgumentError(f"feature_type_key must be a var column name, got {self.feature_type_key!r}")
        layers = self.layer.values() if isinstance(self.layer, Mapping) else [self.layer]
        if not all(v is None or isinstance(v, str) for v in layers):
            raise ArgumentError(
                f"layer must be None, a layers key or {{modality: key or None}}, got {self.layer!r}"
            )
        one_spec = isinstance(self.transform, Mapping) and self.transform.get("name") in TRANSFORMS
        specs = (
            self.transform.values()
            if isinstance(self.transform, Mapping) and not one_spec
            else [self.transform]
        )
        for spec in specs:
            parse_transform(spec)
        for name in ("obs_keys", "obsm_keys"):
            value = getattr(self, name)
            if not (value is None and name == "obs_keys" or names(value, empty=True)):
                raise ArgumentError(f"{name} must be a list of column names, got {value!r}")
        if self.split is not None:
            object.__setattr__(self, "split_by", split_by(self.split))

    def _check_output(self) -> None:
        """dtype, output, super_batch_bytes, pipeline and batch_transform fit together (what a
        pipeline can carry, its hand-off says: :mod:`gpuload.handoff`)."""
        one_of("dtype", self.dtype, OUTPUT_DTYPES)
        one_of("output", self.output, OUTPUTS)
        if self.super_batch_bytes is not None:
            positive_int("super_batch_bytes", self.super_batch_bytes)
        if self.batch_transform is not None and not callable(self.batch_transform):
            raise ArgumentError(
                f"batch_transform must be a callable batch -> batch or None, got {self.batch_transform!r}"
            )
        handoff = resolve_handoff(self.pipeline)
        handoff.check(dtype=self.dtype, output=self.output, batch_transform=self.batch_transform)
        object.__setattr__(self, "handoff", handoff)

    def epoch_sampler(
        self, positions: np.ndarray, obs: pd.DataFrame, path: Path | str
    ) -> EpochSampler | UserSampler:
        """The order these options ask for over the selected file rows ``positions`` (``obs`` and
        ``path``: the store's, for ``weights=`` naming an obs column): gpuload's own
        (:class:`~gpuload.sampler.EpochSampler`, sharded over the DDP ranks) or the user's."""
        if self.sampler is None and self.batch_sampler is None:
            assert self.shuffle is not None and self.seed is not None  # filled in by __post_init__
            rank, world_size = distributed_share(self.rank, self.world_size)
            return EpochSampler(
                positions.size,
                self.shuffle,
                self.chunk_size,
                self.window,
                self.seed,
                rank,
                world_size,
                self.drop_last,
                weights=cell_weights(self.weights, obs, positions, Path(path)),
                num_samples=self.num_samples,
                replacement=self.replacement,
            )
        return UserSampler(
            positions.size,
            sampler=self.sampler,
            batch_sampler=self.batch_sampler,
            drop_last=self.drop_last,
            chunk_size=self.chunk_size,
            window=self.window,
        )


def flag(name: str, value) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ArgumentError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def names(value, *, empty: bool = False, keyed: bool = False) -> bool:
    """Whether ``value`` is a sequence of strings (not one string; non-empty unless ``empty``),
    or with ``keyed`` a mapping of strings to strings."""
    if keyed:
        return isinstance(value, Mapping) and names([*value, *value.values()], empty=empty)
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        return False
    values = list(value)
    return (empty or len(values) > 0) and all(isinstance(v, str) for v in values)


def agreed(name: str, value, alias: str, alias_value: int) -> int:
    """``alias_value`` (DataLoader's keyword ``alias``) for gpuload's ``name``, unless both disagree."""
    if value is not None and value != alias_value:
        raise ArgumentError(
            f"{alias}={alias_value!r} sets {name}, which was given as {value!r}; pass one of them"
        )
    return alias_value


def seed_of(generator, arguments: dict) -> int:
    """The seed drawn once from ``generator`` (as ``DataLoader`` draws its base seed)."""
    if not isinstance(generator, torch.Generator):
        raise ArgumentError(f"generator must be a torch.Generator or None, got {generator!r}")
    for other in ("seed", "sampler", "batch_sampler"):
        if arguments.get(other) is not None:
            raise ArgumentError(
                f"generator= seeds gpuload's own order, so it cannot be given with {other}= "
                f"({'pass one of them' if other == 'seed' else 'seed your sampler with it instead'})"
            )
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
