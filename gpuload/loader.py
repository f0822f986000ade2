"""MultiomeLoader: a drop-in replacement for ``torch.utils.data.DataLoader`` over a multiome h5ad.

Data flow of one epoch (read top to bottom):

1. ``EpochSampler`` gives this rank's order of cells (seeded by seed and epoch).
2. The order is cut into batches, and consecutive batches into read groups of about
   ``chunk_size * window`` cells.
3. A background thread reads each group's rows from the store (contiguous runs: one h5py read
   per run), moves the block to the backend's device, and for each batch of the group runs the
   gather kernel into a fresh output buffer, gathers the obs columns, and queues the batch.
4. The pipeline (native, or DALI) hands the queued batches to the training loop.

Exactness: every epoch visits each selected cell exactly once (plus the documented DDP padding),
in the documented order; ``state_dict`` records how many batches were consumed, so a fresh
process resumes with exactly the remaining cells.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numba
import numpy as np
import torch

from gpuload.backend import Backend, get_backend
from gpuload.errors import ArgumentError, DataValueError, GpuloadError
from gpuload.kernels import arithmetic as ops
from gpuload.metadata import ObsColumns, select_columns, subset_positions
from gpuload.sampler import EpochSampler
from gpuload.store import Modality, MultiomeStore, RowBlock, open_multiome
from gpuload.transforms import Transform, compute_stats, parse_transform

ALL = "all"
OUTPUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
OUTPUTS = ("dense", "sparse_csr")
_END = object()
_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Layout:
    """Where each full-width column goes in the flat output buffer (see kernels.arithmetic)."""

    names: tuple[str, ...]
    widths: tuple[int, ...]
    col_mod: object  # [n_vars] int64, -1 = not requested
    col_out: object  # [n_vars] int64
    mod_width: object  # [n_mod] int64
    mod_code: object  # [n_mod] int64
    mod_threshold: object  # [n_mod] float64
    col_weight: object  # [n_vars] float32
    mod_base: object = None  # [n_mod] int64, set per batch size by ``for_batch``

    def for_batch(self, xp, n_rows: int) -> Layout:
        base = np.concatenate([[0], np.cumsum(np.asarray(self.widths, dtype=np.int64) * n_rows)[:-1]])
        return Layout(**{**self.__dict__, "mod_base": xp.asarray(base)})


@dataclass
class _Failure:
    error: BaseException


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _resolve_modalities(store: MultiomeStore, modalities) -> list[Modality]:
    if modalities == ALL:
        return [Modality("X", np.arange(store.n_vars, dtype=np.int64))]
    if isinstance(modalities, str):
        names = [modalities]
    elif isinstance(modalities, Sequence) and all(isinstance(m, str) for m in modalities):
        names = list(modalities)
    else:
        raise ArgumentError(f"modalities must be a name, a sequence of names or 'all', got {modalities!r}")
    if not names:
        raise ArgumentError("modalities is empty; give 'GEX', 'ATAC', a tuple of them, or 'all'")
    valid = [*store.modalities, ALL]
    for name in names:
        if name not in store.modalities:
            raise ArgumentError(f"{store.path}: unknown modality {name!r}; valid: {valid}")
    if len(set(names)) != len(names):
        raise ArgumentError(f"modalities {names} repeats a modality")
    return [store.modalities[n] for n in names]


def _distributed_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ArgumentError("pass both rank and world_size, or neither")
        if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 0:
            raise ArgumentError(f"rank must be a non-negative integer, got {rank!r}")
        return int(rank), _check_positive_int("world_size", world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class MultiomeLoader:
    """Paired, shuffled mini-batches of a multiome h5ad as dense torch tensors on the device.

    Parameters
    ----------
    data
        Path to an ``.h5ad`` or an open :class:`~gpuload.store.MultiomeStore`.
    batch_size, shuffle, drop_last
        As ``torch.utils.data.DataLoader``. ``shuffle`` is ``False``, ``True`` (block shuffle)
        or ``"full"`` (a true permutation).
    seed
        Orders are a function of (seed, epoch); ``set_epoch`` works like ``DistributedSampler``.
    modalities
        ``("GEX", "ATAC")``, one name, or ``"all"`` (one full-width ``"X"``).
    layer
        ``None`` for X or a key of ``layers`` such as ``"counts"``.
    transform
        ``None`` (values as stored), one spec for every modality, or ``{modality: spec}``; a
        spec is a name (``"log1p_size_factor"``, ``"normalize_total"``, ``"log1p"``,
        ``"binarize"``, ``"tfidf"``, ``"identity"``), a ``{"name": ..., **params}`` dict or a
        :class:`~gpuload.transforms.Transform`.
    obs_keys
        obs columns to deliver: ``None`` (all; for a single modality, its own and the shared
        ones) or a list.
    subset, split
        Cells to use: a query string, boolean mask or integer indices; and/or the competition
        split by batch (``"train"``, ``"val"``, ``"test"``).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or ``"cudasim"`` in tests).
    chunk_size, window
        Block-shuffle geometry (rows per contiguous read, chunks per shuffle window).
    prefetch
        Batches the background reader may hold ready (memory is O(window + prefetch)).
    num_threads
        Threads of the CPU kernel (default: half the cores, leaving the rest to the model and
        the reader thread; measured on 2 cores, 2 kernel threads were 2-3x slower than 1 as
        soon as anything else ran).
    preload
        ``"auto"`` (on a GPU: when the selected rows fit in free device memory), ``True`` or
        ``False``: keep the whole selected CSR on the device and gather every batch from it.
    pipeline
        ``"native"`` (zero-copy hand-off) or ``"dali"`` (a DALI external-source pipeline).
    rank, world_size
        Data-parallel share; by default taken from ``torch.distributed`` when initialized.
    dtype
        Output dtype of the matrices (``torch.float32``; ``float16``/``bfloat16`` are cast).
    output
        ``"dense"`` (``[B, width]`` tensors) or ``"sparse_csr"`` (``torch.sparse_csr_tensor`` per
        modality, the transformed stored values only, for models that take sparse input).
    num_workers, pin_memory
        Accepted for drop-in compatibility with DataLoader and ignored: gpuload's reader
        thread replaces worker processes, and outputs are written on the target device.
    """

    def __init__(
        self,
        data: str | os.PathLike | MultiomeStore,
        *,
        batch_size: int = 32,
        shuffle: bool | str = True,
        drop_last: bool = False,
        seed: int = 0,
        modalities: str | Sequence[str] = ("GEX", "ATAC"),
        layer: str | None = None,
        transform=None,
        obs_keys: Sequence[str] | None = None,
        subset=None,
        split: str | None = None,
        device: str | torch.device = "auto",
        chunk_size: int = 256,
        window: int = 16,
        prefetch: int = 4,
        num_threads: int | None = None,
        preload: bool | str = "auto",
        pipeline: str = "native",
        rank: int | None = None,
        world_size: int | None = None,
        dtype: torch.dtype = torch.float32,
        output: str = "dense",
        cache_dir: str | os.PathLike | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.prefetch = _check_positive_int("prefetch", prefetch)
        if num_threads is None:  # half the cores: the rest are the model's (and the reader's)
            num_threads = max(1, (os.cpu_count() or 2) // 2)
        self.num_threads = _check_positive_int("num_threads", num_threads)
        self.drop_last = bool(drop_last)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ArgumentError(f"seed must be a non-negative integer, got {seed!r}")
        if dtype not in OUTPUT_DTYPES:
            raise ArgumentError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
        if pipeline not in ("native", "dali"):
            raise ArgumentError(f"pipeline must be 'native' or 'dali', got {pipeline!r}")
        if output not in OUTPUTS or (output == "sparse_csr" and pipeline == "dali"):
            raise ArgumentError(
                f"output must be one of {OUTPUTS} (sparse_csr with pipeline='native'), got {output!r}"
            )
        self.output = output
        owns_store = not isinstance(data, MultiomeStore)
        self.store = open_multiome(data, layer=layer, cache_dir=cache_dir) if owns_store else data
        try:
            self.backend: Backend = get_backend(device)
            self.modalities = _resolve_modalities(self.store, modalities)
            self.positions = subset_positions(self.store.obs, subset, split, self.store.path)
            rank, world_size = _distributed_rank(rank, world_size)
            self.epoch_sampler = EpochSampler(
                len(self.positions), shuffle, chunk_size, window, seed, rank, world_size, self.drop_last
            )
            self.dtype = dtype
            self.pipeline = pipeline
            keys = select_columns(
                self.store.obs, obs_keys, [m.name for m in self.modalities], self.store.path
            )
            self.obs_columns = ObsColumns.from_frame(self.store.obs, keys)
            self.obs_frame = self.backend.frame(self.store.obs[keys])
            self._obs_device = {k: self.backend.to_device(v) for k, v in self.obs_columns.numeric.items()}
            self._codes_device = {k: self.backend.to_device(v) for k, v in self.obs_columns.codes.items()}
            self.transforms = self._parse_transforms(transform)
            self._layout, self._row_scale = self._prepare_layout()
            self._preload = self._resolve_preload(preload)
            self._preloaded: RowBlock | None = None
            self._epoch = 0
            self._batches_done = 0
            self._resume_requested = False
            self._active_stop: threading.Event | None = None
        except BaseException:
            if owns_store:  # a loader that failed to build holds no handle on the file
                self.store.close()
            raise

    # -- set-up -----------------------------------------------------------------------------
    def _parse_transforms(self, transform) -> dict[str, Transform]:
        names = [m.name for m in self.modalities]
        if isinstance(transform, dict) and not ("name" in transform and transform.get("name") not in names):
            unknown = [k for k in transform if k not in names]
            if unknown:
                raise ArgumentError(
                    f"transform names modalities {unknown} that are not loaded; loaded: {names}"
                )
            return {n: parse_transform(transform.get(n)) for n in names}
        return {n: parse_transform(transform) for n in names}

    def _prepare_layout(self) -> tuple[Layout, object]:
        """Column routing, per-modality codes and per-cell scales, computed once."""
        store, xp = self.store, self.backend.xp
        stats = None
        if any(t.needs_stats for t in self.transforms.values()):
            stats = compute_stats(store, self.positions)
        col_mod = np.full(store.n_vars, -1, dtype=np.int64)
        col_out = np.zeros(store.n_vars, dtype=np.int64)
        col_weight = np.ones(store.n_vars, dtype=np.float32)
        row_scale = np.ones((store.n_cells, len(self.modalities)), dtype=np.float32)
        codes, thresholds = [], []
        for i, mod in enumerate(self.modalities):
            col_mod[mod.columns] = i
            col_out[mod.columns] = np.arange(mod.width)
            prepared = self.transforms[mod.name].prepare(
                mod.name, store.obs, stats, mod.columns, self.positions, store.path
            )
            codes.append(prepared.code)
            thresholds.append(prepared.threshold)
            if prepared.row_scale is not None:
                row_scale[:, i] = prepared.row_scale
            if prepared.col_weight is not None:
                col_weight[mod.columns] = prepared.col_weight
        layout = Layout(
            names=tuple(m.name for m in self.modalities),
            widths=tuple(m.width for m in self.modalities),
            col_mod=xp.asarray(col_mod),
            col_out=xp.asarray(col_out),
            mod_width=xp.asarray(np.array([m.width for m in self.modalities], dtype=np.int64)),
            mod_code=xp.asarray(np.array(codes, dtype=np.int64)),
            mod_threshold=xp.asarray(np.array(thresholds, dtype=np.float64)),
            col_weight=xp.asarray(col_weight),
        )
        return layout, xp.asarray(row_scale)

    def _selected_nnz(self) -> int | None:
        indptr = getattr(self.store._reader, "indptr", None)
        if indptr is None:
            return None
        return int(np.diff(indptr)[self.positions].sum())

    def _resolve_preload(self, preload: bool | str) -> bool:
        if preload not in (True, False, "auto"):
            raise ArgumentError(f"preload must be True, False or 'auto', got {preload!r}")
        if preload != "auto":
            return bool(preload)
        if not self.backend.on_gpu:
            return False
        nnz = self._selected_nnz()
        if nnz is None:
            return False
        enc = self.store.encoding
        need = nnz * (enc.dtype.itemsize + enc.index_dtype.itemsize) + 8 * (self.positions.size + 1)
        return need < 0.6 * self.backend.free_memory()

    # -- DataLoader semantics ---------------------------------------------------------------
    def __len__(self) -> int:
        per_rank = self.epoch_sampler.per_rank
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration (like ``DistributedSampler``)."""
        self._epoch = int(epoch)
        self._batches_done = 0
        self._resume_requested = False

    def categories(self, key: str) -> list[str]:
        """The category list behind ``batch["obs_codes"][key]``."""
        if key not in self.obs_columns.categories:
            raise ArgumentError(
                f"obs column {key!r} is not a delivered categorical; "
                f"those are {list(self.obs_columns.categories)}"
            )
        return self.obs_columns.categories[key]

    def state_dict(self) -> dict:
        """Where this rank is: enough for a fresh process to resume the same epoch exactly."""
        s = self.epoch_sampler
        return {
            "epoch": self._epoch,
            "batches_done": self._batches_done,
            "seed": s.seed,
            "shuffle": s.shuffle,
            "n_cells": s.n,
            "batch_size": self.batch_size,
            "rank": s.rank,
            "world_size": s.world_size,
            "drop_last": self.drop_last,
            "chunk_size": s.chunk_size,
            "window": s.window,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the loader must be configured like the one that saved it."""
        mine = self.state_dict()
        for key in (
            "seed",
            "shuffle",
            "n_cells",
            "batch_size",
            "rank",
            "world_size",
            "drop_last",
            "chunk_size",
            "window",
        ):
            if state.get(key) != mine[key]:
                raise ArgumentError(
                    f"load_state_dict: state has {key}={state.get(key)!r} but this loader has {mine[key]!r}"
                )
        if not 0 <= int(state["batches_done"]) <= len(self):
            raise ArgumentError(
                f"load_state_dict: batches_done={state['batches_done']} is outside [0, {len(self)}]"
            )
        self._epoch = int(state["epoch"])
        self._batches_done = int(state["batches_done"])
        self._resume_requested = True

    def batch_rows(self, epoch: int | None = None) -> list[np.ndarray]:
        """The file rows of every batch this rank yields in ``epoch`` (default: the next one)."""
        order = self.positions[self.epoch_sampler.rank_order(self._epoch if epoch is None else epoch)]
        n_batches = len(self)
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(n_batches)]

    def __iter__(self) -> Iterator[dict]:
        if self._active_stop is not None:
            self._active_stop.set()  # a new iteration ends an abandoned one, like DataLoader
        if self._batches_done and not self._resume_requested:
            # The last iteration was abandoned mid-epoch: like DataLoader, start a fresh epoch.
            self._epoch += 1
            self._batches_done = 0
        self._resume_requested = False
        batches = self.batch_rows()[self._batches_done :]
        if self.pipeline == "dali":
            from gpuload.pipeline import dali_batches

            source = dali_batches(self, batches)
        else:
            source = self._produce_in_background(batches)
        for batch in source:
            self._batches_done += 1
            yield batch
        self._epoch += 1
        self._batches_done = 0

    # -- the reader thread ------------------------------------------------------------------
    def _read_groups(self, batches: list[np.ndarray]) -> Iterator[tuple[RowBlock, list[np.ndarray]]]:
        """(device block, its batches) for consecutive groups of about chunk_size*window cells."""
        if self._preload and self._preloaded is None:
            try:
                self._preloaded = self._to_device(
                    self.store.read_block(self.positions, self.backend.host_empty)
                )
            except MemoryError as e:  # cupy's OutOfMemoryError is a MemoryError
                warnings.warn(
                    f"gpuload: preloading {self.positions.size} cells failed ({e}); streaming instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._preload = False
        if self._preload:
            yield self._preloaded, batches
            return
        per_group = max(1, (self.epoch_sampler.chunk_size * self.epoch_sampler.window) // self.batch_size)
        # The first batch is read on its own: the first batch arrives without waiting for a group.
        starts = [0, *range(1, len(batches), per_group)] if batches else []
        for start, stop in zip(starts, [*starts[1:], len(batches)], strict=True):
            group = batches[start:stop]
            block = self.store.read_block(self._rows_to_read(np.concatenate(group)), self.backend.host_empty)
            yield self._to_device(block), group

    def _rows_to_read(self, rows: np.ndarray) -> np.ndarray:
        """Sorted rows to read for a group: its own rows, or, when they fill at least half of the
        chunks they touch (block shuffle), those whole chunks: few long contiguous reads instead
        of many short ones (a group that straddles two windows takes random halves of chunks)."""
        rows = np.unique(rows)
        size = self.epoch_sampler.chunk_size
        chunks = np.unique(np.searchsorted(self.positions, rows) // size)
        if chunks.size * size > 2 * rows.size:
            return rows
        positions = (chunks[:, None] * size + np.arange(size)).ravel()
        return self.positions[positions[positions < self.positions.size]]

    def _to_device(self, block: RowBlock) -> RowBlock:
        b = self.backend
        moved = RowBlock(
            block.rows, b.to_device(block.indptr), b.to_device(block.indices), b.to_device(block.data)
        )
        b.synchronize()  # the pinned host buffers may be reused once this returns
        return moved

    def assemble(self, block: RowBlock, rows: np.ndarray) -> dict:
        """One batch: the gather kernel over ``block`` for file ``rows``, plus obs and masks."""
        b, xp, layout = self.backend, self.backend.xp, self._layout
        local = xp.asarray(block.local(rows))
        rows_dev = xp.asarray(rows)
        n = rows.size
        kernel_dtype = torch.float32 if self.dtype in (torch.float16, torch.bfloat16) else self.dtype
        with b.torch_stream():
            present = torch.zeros((n, len(layout.names)), dtype=torch.int8, device=b.torch_device)
        if self.output == "sparse_csr":
            batch = self._sparse_matrices(block, local, present, n, rows, rows_dev, kernel_dtype)
        else:
            out = b.empty_output(n * sum(layout.widths), kernel_dtype)
            status = b.gather(block, local, layout.for_batch(xp, n), self._row_scale[rows_dev], out, present)
            if int(status[0]) != ops.OK:
                self._raise_kernel_error(int(status[0]), int(rows[int(status[1])]))
            batch = {}
            start = 0
            for name, width in zip(layout.names, layout.widths, strict=True):
                view = out[start : start + n * width].view(n, width)
                batch[name] = view if kernel_dtype == self.dtype else view.to(self.dtype)
                start += n * width
        batch["mask"] = {name: present[:, i].bool() for i, name in enumerate(layout.names)}
        batch["index"] = b.to_torch(rows_dev)
        batch["obs"], batch["obs_codes"] = self.gather_obs(rows, rows_dev)
        b.synchronize()
        return batch

    def _sparse_matrices(self, block, local, present, n, rows, rows_dev, kernel_dtype) -> dict:
        """``output="sparse_csr"``: one ``torch.sparse_csr_tensor`` per modality."""
        b, layout = self.backend, self._layout
        value_dtype = torch.empty(0, dtype=kernel_dtype).numpy().dtype
        offsets, indices, values, status = b.gather_sparse(
            block, local, layout, self._row_scale[rows_dev], present, value_dtype
        )
        if int(status[0]) != ops.OK:
            self._raise_kernel_error(int(status[0]), int(rows[int(status[1])]))
        batch = {}
        for m, (name, width) in enumerate(zip(layout.names, layout.widths, strict=True)):
            crow = offsets[m * n : (m + 1) * n + 1]
            lo, hi = int(crow[0]), int(crow[-1])
            matrix = torch.sparse_csr_tensor(
                b.to_torch(crow - lo), b.to_torch(indices[lo:hi]), b.to_torch(values[lo:hi]), size=(n, width)
            )
            batch[name] = matrix if kernel_dtype == self.dtype else matrix.to(self.dtype)
        return batch

    def gather_obs(self, rows: np.ndarray, rows_dev) -> tuple[dict, dict]:
        """obs of ``rows``: numeric columns as tensors, categoricals as strings and codes."""
        to_torch = self.backend.to_torch
        obs = {k: to_torch(v[rows_dev]) for k, v in self._obs_device.items()}
        codes = {k: to_torch(v[rows_dev]) for k, v in self._codes_device.items()}
        for k, host_codes in self.obs_columns.codes.items():
            cats = self.obs_columns.categories[k]
            obs[k] = [cats[c] if c >= 0 else None for c in host_codes[rows]]
        return obs, codes

    def _raise_kernel_error(self, code: int, row: int) -> None:
        where = f"{self.store.path}:{self.store.key} row {row}"
        if code == ops.NOT_FINITE:
            raise DataValueError(f"{where}: a stored value is NaN or infinite")
        if code == ops.NEGATIVE_UNDER_LOG:
            raise DataValueError(
                f"{where}: a negative value cannot go through a log1p transform {self.transforms}"
            )
        raise DataValueError(
            f"{where}: a column index lies outside [0, {self.store.n_vars}); the file is corrupt"
        )

    def _produce_in_background(self, batches: list[np.ndarray]) -> Iterator[dict]:
        """Yield ``batches`` assembled by two background threads; stop them however the
        consumer leaves (end, break, exception, garbage collection).

        The reader thread reads group k+1 from the file (and copies it to the device) while the
        assembler thread runs the kernels on group k: double buffering, one group ahead.
        """
        stop = threading.Event()
        self._active_stop = stop

        def read_groups() -> Iterator:
            with self.backend.device_context():
                yield from self._read_groups(batches)

        def assemble_batches(groups: _Background) -> Iterator[dict]:
            numba.set_num_threads(min(self.num_threads, numba.config.NUMBA_NUM_THREADS))
            with self.backend.device_context():
                for block, group in groups:
                    for rows in group:
                        yield self.assemble(block, rows)

        groups = _Background(read_groups(), 1, "gpuload-reader", stop)
        ready = _Background(assemble_batches(groups), self.prefetch, "gpuload-assembler", stop)
        try:
            yield from ready
        finally:
            stop.set()
            for stage in (ready, groups):
                stage.join()
            if self._active_stop is stop:
                self._active_stop = None


class _Background:
    """Runs an iterator in a daemon thread and hands its items over through a bounded queue.

    An exception in the thread is re-raised in the consumer; setting ``stop`` ends the thread
    at its next item (every wait polls it, so nothing blocks forever).
    """

    def __init__(self, items: Iterator, maxsize: int, name: str, stop: threading.Event) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._stop = stop
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(_Failure(e))
        finally:
            items.close()  # a generator's own cleanup (with-blocks) runs in its thread

    def __iter__(self) -> Iterator:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise GpuloadError(f"{self._thread.name} thread ended without a result") from None
                continue
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def join(self) -> None:
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            warnings.warn(
                f"{self._thread.name} thread did not stop within 30 s", RuntimeWarning, stacklevel=3
            )
