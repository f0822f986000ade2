"""MultiomeLoader: a drop-in replacement for ``torch.utils.data.DataLoader`` over a multiome h5ad.

Data flow of one epoch, as this module composes it:

1. :func:`~gpuload.plan.build_plan` decided once what to deliver: modalities, cells, column
   layout, transforms with their statistics, obs columns.
2. :class:`~gpuload.sampler.EpochSampler` gives this rank's order of cells (seed, epoch), cut
   into batches (or :class:`~gpuload.user_sampler.UserSampler`, the user's ``sampler=`` or
   ``batch_sampler=``; every argument was checked first, :class:`~gpuload.options.LoaderOptions`),
   and :func:`~gpuload.sampler.load_requests` groups the batches into reads.
3. :class:`~gpuload.epoch.EpochRun` runs two background threads: the reader
   (:class:`~gpuload.fetch.BlockFetcher`: file -> device row block) and the assembler
   (:class:`~gpuload.assembly.BatchAssembler`: kernels, obs, masks -> batch dict).
4. The batches reach the training loop through the hand-off ``pipeline=`` chose
   (:mod:`gpuload.handoff`): natively (zero-copy), through DALI or through the user's own stage.

Exactness: every epoch visits each selected cell exactly once (plus the documented DDP padding),
in the documented order (under ``weights=``, the epoch's draw instead); ``state_dict`` records
how many batches were consumed, so a fresh process resumes with exactly the remaining cells.

Iterators are independent, as ``DataLoader``'s are: each ``iter(loader)`` is its own run
(:class:`~gpuload.epoch.LoaderIterator`) with its own buffers, so ``zip(loader, loader)``, two
live iterators, ``itertools.islice`` or an abandoned epoch never share or cut another's batches.
Which epoch an iterator delivers: the loader's *position* (``epoch``, batches done) follows the
most recently created iterator. A new iterator starts at the position: the epoch
:meth:`set_epoch` or :meth:`load_state_dict` named (there, after the batches done), else the
current epoch, or the next one when the latest iterator yielded part of its epoch without ending
it (like ``DataLoader``, an abandoned epoch is not resumed; ``state_dict`` is for that). When
the latest iterator ends its epoch the position moves to the next. Older iterators keep their
own epoch and run to its end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gpuload.assembly import BatchAssembler
from gpuload.device import Backend, ObsFrames, RingPool, get_backend
from gpuload.epoch import EpochRun, LoaderIterator, Position
from gpuload.errors import GpuloadError
from gpuload.fetch import BlockFetcher
from gpuload.formats import DataSource, MultiomeStore, is_file_list, open_multiome
from gpuload.handoff import Handoff
from gpuload.options import LoaderOptions
from gpuload.plan import build_plan
from gpuload.sampler import load_requests, resume_point
from gpuload.selection import Selection

# Runs (iterators that have started) one loader keeps live at once; a new one closes the oldest.
MAX_LIVE_RUNS = 4


class MultiomeLoader(Selection):
    """Paired, shuffled mini-batches of a multiome dataset as torch tensors on the device.

    What it delivers (cells, columns, obs values, categories) is read through the accessors of
    :class:`~gpuload.selection.Selection`: :attr:`positions`, :attr:`feature_masks`,
    :meth:`var_names`, :meth:`categories`, :meth:`obs_values`, ...

    Parameters
    ----------
    data
        An ``.h5ad`` (modalities told apart by ``var["feature_types"]``), an ``.h5mu`` (the
        modalities are its ``mod`` entries, paired by global cell; a cell a modality lacks reads
        as a zero row with ``mask[modality]`` False), a 10x feature-barcode matrix ``.h5``
        (modalities from its ``feature_type``), a ``{modality: .h5ad}`` mapping (one file
        per modality, cells paired by obs_names, the same way; see
        :mod:`gpuload.formats.modality_files`), a list of such files or mappings with the same
        features (one dataset: their cells one after the other; ``batch["file"]`` indexes
        :attr:`files`), or an open :class:`~gpuload.formats.MultiomeStore`.
    batch_size, shuffle, drop_last
        As ``torch.utils.data.DataLoader``. ``batch_size`` (default 32) is not used with
        ``batch_sampler=``, whose batches are delivered as they come. ``shuffle`` is read as
        ``DataLoader`` reads it: ``False``, ``0`` or ``None`` (file order), ``True``, ``1`` or
        ``"block"`` (block shuffle), or ``"full"`` (a true permutation); by default block
        shuffle, or the order of ``sampler=``.
        ``state_dict()`` spells each mode one way (``False``, ``True``, ``"full"``).
    seed, generator
        Orders are a function of (seed, epoch); ``set_epoch`` works like ``DistributedSampler``.
        ``seed`` defaults to 0; a ``torch.Generator`` passed as ``generator=`` gives the seed
        instead, drawn from it once, at construction.
    modalities
        ``None`` (every modality of the file, in file order: ``GEX``, ``ATAC`` for BMMC), a
        name, a sequence of names (``("rna", "atac")`` for an ``.h5mu``), ``{key: name}`` (the
        modality ``name`` delivered as ``batch[key]``: ``{"GEX": "Gene Expression"}``), or
        ``"all"`` (one full-width ``"X"``).
    layer
        ``None`` for X or a key of ``layers`` such as ``"counts"`` (for an ``.h5mu``, also
        ``{modality: layer or None}``).
    feature_type_key
        The var column whose distinct values are the modalities of an ``.h5ad`` (default
        ``"feature_types"``).
    transform
        ``None`` (values as stored), one spec for every modality, or ``{modality: spec}``; a
        spec is a name (``"log1p_size_factor"``, ``"normalize_total"``, ``"log1p"``,
        ``"binarize"``, ``"tfidf"``, ``"identity"``), a ``{"name": ..., **params}`` dict or a
        :class:`~gpuload.plan.Transform`. Statistics (totals, TF-IDF's column sums) are taken
        over the selected cells and features.
    features
        Feature selection: ``None`` (every column), one spec for every modality, or
        ``{modality: spec}``; a spec is a boolean mask over the modality's columns, a list of
        var names, the name of a boolean var column (``"highly_variable"``) or ``{"top": k}``
        (the k features nonzero in the most selected cells). Outputs are ``[B, k]`` in file
        order; :meth:`var_names` names their columns (see :mod:`gpuload.plan.features`).
    obs_keys
        obs columns to deliver: ``None`` (all; for a single modality, its own and the shared
        ones) or a list.
    obsm_keys
        obsm arrays to deliver as ``batch["obsm"][key]``, float32 ``[B, k]`` on the device
        (dense arrays only; for an ``.h5mu``, a modality's own as ``"rna:X_pca"``, NaN for
        cells it lacks).
    subset, split
        Cells to use: a query string, boolean mask or integer indices; and/or a split: the
        competition's by obs ``batch`` (``"train"``, ``"val"``, ``"test"``:
        ``gpuload.bmmc.schema.SPLITS``) or the dataset's own as ``{obs column: allowed values}``
        (``{"fold": [0, 1]}``: the cells whose ``fold`` is 0 or 1).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` (the current GPU), ``"cuda:N"`` (or ``"cudasim"`` in
        tests, or a :class:`~gpuload.device.Backend`).
    chunk_size, window
        Block-shuffle geometry (rows per contiguous read, chunks per shuffle window).
    prefetch, prefetch_factor
        Super-batches the assembler may hold ready beside the one being handed out (default 2;
        memory is O(window + prefetch * super_batch_bytes)). ``prefetch_factor`` is
        ``DataLoader``'s name for it.
    num_threads, num_workers
        Threads of the CPU kernel (default: every core; on a busy machine fewer can be faster,
        see ``benchmarks/RESULTS.md``). Training on the same CPU, leave the model some
        (``gpuload train`` takes half). ``num_workers=N`` (N > 0) sets it as ``DataLoader``'s
        worker count would; ``num_workers=0`` keeps the default. Each iterator also runs one
        reader (none once the rows are preloaded) and one assembler thread, whatever these say.
    preload
        ``"auto"`` (on a GPU: when the selected rows fit in free device memory), ``True`` or
        ``False``: keep the whole selected CSR on the device and gather every batch from it.
    pipeline
        ``"native"`` (zero-copy hand-off), ``"dali"`` (a DALI external-source pipeline), another
        name given to :func:`~gpuload.handoff.register_handoff`, or a
        :class:`~gpuload.handoff.Handoff` object (the user's own stage: ``check`` what it can
        carry, ``wrap`` each run's batches).
    rank, world_size
        Data-parallel share; by default taken from ``torch.distributed`` when initialized.
    dtype
        Output dtype of the matrices (``torch.float32``; ``float16``/``bfloat16`` are cast).
    output
        ``"dense"`` (``[B, width]`` tensors) or ``"sparse_csr"`` (``torch.sparse_csr_tensor`` per
        modality, the transformed stored values only, for models that take sparse input).
    super_batch_bytes
        Output bytes assembled per kernel launch (several batches at once; default by face,
        see :data:`gpuload.assembly.SUPER_BATCH_BYTES`). A batch the user keeps keeps its
        super-batch's buffer alive.
    weights, num_samples, replacement
        Weighted sampling, as ``torch.utils.data.WeightedRandomSampler``: each epoch draws
        ``num_samples`` cells (default: every selected cell's count) with probability
        proportional to their weight, with or without ``replacement``, as a function of (seed,
        epoch); DDP ranks split that one draw like any order. ``weights`` is one non-negative
        weight per selected cell (aligned with :attr:`positions`) or the name of an obs column
        whose values are balanced: each cell weighs 1 / (selected cells of its value), and a
        missing value weighs 0 (see :mod:`gpuload.plan.weights`). The draw is random, so
        ``shuffle`` is irrelevant, but ``shuffle=False`` is refused.
    batch_transform
        A callable ``batch -> batch`` applied to every batch in the assembler thread, on the
        loader's stream, before hand-off (its exceptions reach the loop after the batches
        before); not with ``pipeline="dali"``, whose tensors are fixed. Tensors in the
        returned dicts, lists and tuples are handed to the consumer's stream.
    sampler, batch_sampler
        The user's order, as ``DataLoader`` takes it: any ``torch.utils.data.Sampler`` or
        iterable of positions (indices into :attr:`positions`), or any iterable of lists of them;
        gpuload groups the batches into chunked reads and yields them in that order. The sampler
        gives this rank's share (a ``DistributedSampler`` shards; ``rank``/``world_size`` are
        refused beside it) and is told ``set_epoch``; not with a true ``shuffle``, ``weights``,
        ``seed`` or ``generator`` (see :mod:`gpuload.user_sampler`).
    dataloader_keywords
        ``DataLoader``'s other keywords, at the value that is what gpuload does
        (``pin_memory=False``, ``persistent_workers=False``, ``timeout=0``, ``in_order=True``,
        no ``collate_fn``, ``worker_init_fn``, ``multiprocessing_context`` or
        ``pin_memory_device``); another value raises an ``ArgumentError`` saying why it does not
        apply (:data:`gpuload.options.REFUSED`).
    """

    def __init__(
        self,
        data: DataSource | Sequence[DataSource] | MultiomeStore,
        *,
        batch_size: int = 32,
        shuffle: bool | str | None = "auto",
        drop_last: bool = False,
        seed: int | None = None,
        modalities: str | Sequence[str] | dict[str, str] | None = None,
        layer: str | None = None,
        feature_type_key: str = "feature_types",
        transform=None,
        features=None,
        obs_keys: Sequence[str] | None = None,
        obsm_keys: Sequence[str] = (),
        subset=None,
        split: str | Mapping[str, Any] | None = None,
        device: str | torch.device | Backend = "auto",
        chunk_size: int = 256,
        window: int = 16,
        prefetch: int | None = None,
        num_threads: int | None = None,
        preload: bool | str = "auto",
        pipeline: str | Handoff = "native",
        rank: int | None = None,
        world_size: int | None = None,
        dtype: torch.dtype = torch.float32,
        output: str = "dense",
        super_batch_bytes: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        weights: np.ndarray | Sequence[float] | str | None = None,
        num_samples: int | None = None,
        replacement: bool = True,
        batch_transform: Callable[[dict], dict] | None = None,
        sampler: Iterable[int] | None = None,
        batch_sampler: Iterable[Sequence[int]] | None = None,
        num_workers: int | None = 0,
        prefetch_factor: int | None = None,
        generator: torch.Generator | None = None,
        **dataloader_keywords,
    ) -> None:
        # Every argument by name (a comprehension's first iterable is evaluated in this scope).
        given = {k: v for k, v in locals().items() if k not in ("self", "data", "dataloader_keywords")}
        self.options = o = LoaderOptions.from_arguments(**given, **dataloader_keywords)
        self.batch_size, self.prefetch, self.num_threads = o.batch_size, o.prefetch, o.num_threads
        self.drop_last, self.dtype, self.pipeline, self.output = o.drop_last, o.dtype, o.pipeline, o.output
        self.batch_transform, self.backend = o.batch_transform, get_backend(o.device)
        self._owns_store = owns_store = not isinstance(data, MultiomeStore)
        self.store: MultiomeStore = (
            data
            if isinstance(data, MultiomeStore)
            else open_multiome(
                data, layer=o.layer, feature_type_key=o.feature_type_key, cache_dir=o.cache_dir
            )
        )
        try:
            frames = ObsFrames(self.backend)
            self.plan = build_plan(
                self.store,
                modalities=o.modalities,
                transform=o.transform,
                features=o.features,
                obs_keys=o.obs_keys,
                obsm_keys=o.obsm_keys,
                deliver_file=is_file_list(data) or len(self.store.files) > 1,
                subset=o.subset,
                split=o.split_by,
                query=frames.query,
            )
            self.epoch_sampler = o.epoch_sampler(self.positions, self.store.obs, self.store.path)
            # cuDF's copy of the delivered obs (the GPU face); the CPU face needs none
            self.obs_frame = frames.frame(self.store.obs[list(self.plan.obs_keys)]) if frames.cudf else None
            self.assembler = BatchAssembler(
                self.plan,
                self.backend,
                dtype=o.dtype,
                output=o.output,
                super_batch_bytes=o.super_batch_bytes,
                obs_matrices=frames.matrices(self.plan.obs, self.obs_frame),
            )
            self.fetcher = BlockFetcher(
                self.store,
                self.backend,
                self.positions,
                o.preload,
                counts_for=self.plan.layout if o.output == "sparse_csr" else None,
                reserve=self.assembler.budget * (self.prefetch + 2),
            )
        except BaseException:
            if owns_store:  # a loader that failed to build holds no handle on the file
                self.store.close()
            raise
        self.rings = RingPool(self.backend, self.prefetch)
        self.position = Position(MAX_LIVE_RUNS)
        self._closed = False

    # -- DataLoader semantics ---------------------------------------------------------------
    def __len__(self) -> int:
        return self.epoch_sampler.n_batches(self.batch_size, self.epoch)

    @property
    def epoch(self) -> int:
        return self.position.epoch

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration (like ``DistributedSampler``)."""
        self.position.move_to(int(epoch), 0)

    def state_dict(self) -> dict:
        """Where this rank is: enough for a fresh process to resume the same epoch exactly."""
        return {
            "epoch": self.position.epoch,
            "batches_done": self.position.batches_done,
            "batch_size": self.batch_size,
            **self.epoch_sampler.state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the loader must be configured like the one that saved it."""
        self.position.move_to(*resume_point(state, self.state_dict(), len(self)), resume=True)

    def batch_rows(self, epoch: int | None = None) -> list[np.ndarray]:
        """The file rows of every batch this rank yields in ``epoch`` (default: the next one)."""
        epoch = self.epoch if epoch is None else epoch
        return [self.positions[b] for b in self.epoch_sampler.batches(epoch, self.batch_size)]

    def __iter__(self) -> LoaderIterator:
        if self._closed:
            raise GpuloadError("this MultiomeLoader was closed; make a new one to iterate again")
        return self.position.new_iterator(self._start_run)

    def _start_run(self, epoch: int, first: int) -> tuple[EpochRun, Iterator[dict]]:
        """The run of ``epoch`` from batch ``first`` (an iterator's first ``next()``)."""
        s = self.epoch_sampler
        batches = s.batches(epoch, self.batch_size)[first:]  # views of the epoch's order
        widest = max((b.size for b in batches), default=1)
        positions = self.positions
        rows = (positions[b] for b in batches)  # file rows, made as the reads are planned
        held = self.fetcher.preloaded  # after the first run of a preloading loader: nothing to plan
        requests = load_requests(
            rows, positions, s.chunk_size, s.window, widest, held=None if held is None else held.rows
        )
        run = EpochRun(
            requests,
            self.fetcher,
            self.assembler,
            rings=self.rings.lease(),
            prefetch=self.prefetch,
            num_threads=self.num_threads,
            batch_transform=self.batch_transform,
            give_back=self.rings.give_back,
        )
        handoff = self.options.handoff
        return run, handoff.wrap(iter(run), names=self.plan.names, batch_size=widest, backend=self.backend)

    def close(self) -> None:
        """Stop and join every live iterator's threads, release page-locked memory and close the
        file (when the loader opened it). Iterating a closed loader raises; closing twice is fine."""
        if self._closed:
            return
        self._closed = True
        self.position.close_all("its loader was closed")
        self.rings.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> MultiomeLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
