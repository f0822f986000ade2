"""The contenders of ``benchmarks/compare.py``, and the child process that times one of them.

``compare.py`` runs every (contender, batch size) in its own process, so that peak RSS
(``ru_maxrss``) belongs to one loader alone::

    python benchmarks/peers.py run NAME --file F --batch-size B --cells N --work DIR --out R.json
    python benchmarks/peers.py prepare annbatch --file F --work DIR --out P.json

Every contender delivers the same thing: shuffled batches of dense float32 GEX and ATAC rows
(split by ``var["feature_types"]``) and the ``cell_type`` of those cells, as a :class:`Batch`.
The timing loop mirrors ``gpuload.reference.bench.time_loader``: time to the first batch, three warm-up
batches, then a fixed number of cells. One more batch is then checked against reference rows
read with anndata + scipy.

This file imports nothing heavy at module level: annbatch needs Python >= 3.12 and runs from
its own virtual environment (``benchmarks/.venv-annbatch``) without torch or gpuload there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

WARMUP_BATCHES = 3
ANNBATCH_STORE = "annbatch.zarr"
# annbatch's README: chunk_size=32, preload_nchunks=256 (8,192 cells read per fetch).
ANNBATCH_CHUNK, ANNBATCH_PRELOAD = 32, 256
# scDataset's AnnData example: BlockShuffling(block_size=16), fetch_factor=16.
SCDATASET_BLOCK, SCDATASET_FETCH = 16, 16
VERSIONED = (
    "gpuload",
    "torch",
    "numpy",
    "scipy",
    "h5py",
    "anndata",
    "scdataset",
    "annbatch",
    "zarr",
    "zarrs",
    "pandas",
)


class Skip(Exception):
    """This contender cannot run here; the message says why (reported, never faked)."""


@dataclass
class Batch:
    """What every contender yields: dense float32 rows of both modalities and their cell types."""

    gex: object  # [n, n_genes] torch tensor (numpy where torch is not installed)
    atac: object  # [n, n_peaks]
    cell_type: Sequence
    rows: np.ndarray | None  # file rows of the cells, when the loader says which they are


@dataclass
class Contender:
    """A ready loader: ``epoch()`` iterates one epoch of :class:`Batch`."""

    label: str
    epoch: Callable[[], Iterable[Batch]]
    setup_s: float  # constructing the loader in this process (opening, loading into memory)
    prepare_s: float = 0.0  # one-off work outside this process (annbatch's zarr store)
    output: str = "torch"
    notes: list[str] = field(default_factory=list)


# -- shared helpers ------------------------------------------------------------------------


class Columns:
    """Where GEX and ATAC sit in the full width, from ``var["feature_types"]`` (never by position).

    A modality whose columns are contiguous is cut with a slice (a view, no copy).
    """

    def __init__(self, feature_types: np.ndarray) -> None:
        self.gex = _selector(np.flatnonzero(feature_types == "GEX"))
        self.atac = _selector(np.flatnonzero(feature_types == "ATAC"))

    def split(self, x) -> tuple:
        return x[:, self.gex], x[:, self.atac]


def _selector(columns: np.ndarray) -> slice | np.ndarray:
    if columns.size and columns[-1] - columns[0] + 1 == columns.size:
        return slice(int(columns[0]), int(columns[-1]) + 1)
    return columns


def _as_torch(x):
    """Wrap a numpy array as a torch tensor (zero-copy); numpy itself where torch is missing."""
    try:
        import torch
    except ImportError:
        return x
    return torch.from_numpy(x)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def peak_rss_mb() -> float:
    """This process's peak RSS since it started its program: ``VmHWM``. Linux's ``ru_maxrss``
    keeps the high-water mark of the process before ``exec``, so a child forked from a parent
    that once held 2 GB reported at least 2 GB (``scale.py`` saw it); ``ru_maxrss`` elsewhere."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- the contenders ------------------------------------------------------------------------


def make_seed(path: str, batch_size: int, work: Path) -> Contender:
    """The seed's approach: one backed-h5ad row per ``__getitem__`` through torch's DataLoader."""
    from gpuload.reference.bench import seed_loader

    t0 = time.perf_counter()
    loader = seed_loader(path, batch_size)
    setup = time.perf_counter() - t0

    def epoch() -> Iterator[Batch]:
        for b in loader:
            yield Batch(b["GEX"], b["ATAC"], b["cell_type"], None)

    return Contender(
        "seed (per-row Dataset)",
        epoch,
        setup,
        notes=[
            "gpuload.reference.bench.seed_loader, num_workers=0; it does not say which "
            "cells it returned: checked by row hash"
        ],
    )


def _annloader(path: str, batch_size: int, *, backed: bool) -> Contender:
    import anndata as ad
    from anndata.experimental import AnnLoader

    t0 = time.perf_counter()
    if backed:
        adata = ad.read_h5ad(path, backed="r")
    else:  # X, obs and var only: layers and obsm are not needed to deliver these batches
        import h5py

        with h5py.File(path, "r") as f:
            adata = ad.AnnData(
                X=ad.io.read_elem(f["X"]), obs=ad.io.read_elem(f["obs"]), var=ad.io.read_elem(f["var"])
            )
    columns = Columns(adata.var["feature_types"].to_numpy())
    loader = AnnLoader(adata, batch_size=batch_size, shuffle=True)
    setup = time.perf_counter() - t0

    def epoch() -> Iterator[Batch]:
        for view in loader:
            gex, atac = columns.split(view.X)  # the default converter densifies to torch
            rows = np.asarray(view.oidx, dtype=np.int64)
            yield Batch(gex, atac, view.obs["cell_type"].to_numpy(), rows)

    mode = "backed" if backed else "in memory"
    where = (
        "read_h5ad(backed='r'), rows read from the h5ad per batch"
        if backed
        else "X, obs, var read into memory first (counted in setup)"
    )
    return Contender(
        f"AnnLoader ({mode})",
        epoch,
        setup,
        notes=[
            f"anndata.experimental.AnnLoader(shuffle=True), {where}; dense full-width torch X split after"
        ],
    )


def make_annloader_backed(path: str, batch_size: int, work: Path) -> Contender:
    return _annloader(path, batch_size, backed=True)


def make_annloader_memory(path: str, batch_size: int, work: Path) -> Contender:
    return _annloader(path, batch_size, backed=False)


@dataclass
class _Fetched:
    """One scDataset fetch (sorted rows): sparse X, cell types and file rows."""

    x: object
    cell_type: np.ndarray
    rows: np.ndarray


def make_scdataset(path: str, batch_size: int, work: Path) -> Contender:
    """scDataset over backed AnnData: block shuffling, fetch_factor batches read at once."""
    try:
        from scdataset import BlockShuffling, scDataset
    except ImportError as e:
        raise Skip(f"scdataset is not installed ({e}); pip install 'scdataset>=0.3'") from None
    import anndata as ad
    import torch

    t0 = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r")
    columns = Columns(adata.var["feature_types"].to_numpy())
    cell_type = adata.obs["cell_type"].to_numpy()

    def fetch(data, indices: np.ndarray) -> _Fetched:  # scDataset sorts indices first
        return _Fetched(data[indices].X, cell_type[indices], np.asarray(indices, dtype=np.int64))

    def take(fetched: _Fetched, positions: np.ndarray) -> _Fetched:
        return _Fetched(fetched.x[positions], fetched.cell_type[positions], fetched.rows[positions])

    def densify(b: _Fetched) -> Batch:
        gex, atac = columns.split(torch.from_numpy(b.x.toarray().astype(np.float32, copy=False)))
        return Batch(gex, atac, b.cell_type, b.rows)

    dataset = scDataset(
        adata,
        BlockShuffling(block_size=SCDATASET_BLOCK),
        batch_size=batch_size,
        fetch_factor=SCDATASET_FETCH,
        fetch_callback=fetch,
        batch_callback=take,
        batch_transform=densify,
        seed=0,
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=0)
    setup = time.perf_counter() - t0
    return Contender(
        f"scDataset (block {SCDATASET_BLOCK}, fetch x{SCDATASET_FETCH})",
        lambda: iter(loader),
        setup,
        notes=[
            f"scDataset(backed AnnData, BlockShuffling({SCDATASET_BLOCK}), "
            f"fetch_factor={SCDATASET_FETCH}) in DataLoader(batch_size=None, "
            "num_workers=0); fetch_callback adata[idx].X keeps each fetch sparse, "
            "batch_transform densifies one batch (the docs' adata_to_mindex "
            "densifies the whole fetch: 2 GB at B=256, full width)"
        ],
    )


def _annbatch_settings():
    try:
        import annbatch  # noqa: F401
        import zarr
    except ImportError as e:
        raise Skip(
            f"annbatch is not importable here ({e}); it needs Python >= 3.12 "
            "and benchmarks/.venv-annbatch (see benchmarks/README.md)"
        ) from None
    # annbatch's README: zarrs' codec pipeline is needed for local file-system performance.
    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})


def prepare_annbatch(paths: Sequence[str], work: Path) -> dict:
    """annbatch's one-off conversion: the h5ad files into one pre-shuffled, sharded zarr collection."""
    _annbatch_settings()
    import anndata as ad
    from annbatch import DatasetCollection

    def x_obs_var_only(p):  # the custom loader of annbatch's docstring: keep X, obs and var
        lazy = ad.experimental.read_lazy(p)
        return ad.AnnData(X=lazy.X, obs=lazy.obs.to_memory(), var=lazy.var.to_memory())

    store = work / ANNBATCH_STORE
    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    DatasetCollection(store).add_adatas(
        list(paths), load_adata=x_obs_var_only, shuffle=True, rng=np.random.default_rng(0), merge="same"
    )  # merge="same": var columns equal in every file are kept (feature_types splits the modalities)
    seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    return {"prepare_s": seconds, "peak_rss_mb": peak_rss_mb(), "store_mb": size / 2**20, "store": str(store)}


def make_annbatch(path: str, batch_size: int, work: Path) -> Contender:
    """annbatch's Loader over the pre-shuffled zarr collection that ``prepare`` wrote."""
    _annbatch_settings()
    import anndata as ad
    from annbatch import DatasetCollection, Loader

    prepared = work / "prepare-annbatch.json"
    if not prepared.exists():
        raise Skip(f"no annbatch store: {prepared} is missing (run `peers.py prepare annbatch`)")
    prepare = json.loads(prepared.read_text())

    def x_and_cell_type(g):  # README: load only the obs columns training needs
        return ad.AnnData(X=ad.io.sparse_dataset(g["X"]), obs=ad.io.read_elem(g["obs"])[["cell_type"]])

    t0 = time.perf_counter()
    collection = DatasetCollection(prepare["store"], mode="r")
    var = ad.io.read_elem(next(iter(collection))["var"])
    columns = Columns(var["feature_types"].to_numpy())
    names = ad.read_h5ad(path, backed="r").obs_names
    with ad.settings.override(remove_unused_categories=False):
        loader = Loader(
            batch_size=batch_size,
            chunk_size=ANNBATCH_CHUNK,
            preload_nchunks=ANNBATCH_PRELOAD,
            shuffle=True,
            return_index=True,
            preload_to_gpu=False,
            rng=np.random.default_rng(0),
        )
        loader.use_collection(collection, load_adata=x_and_cell_type)
    setup = time.perf_counter() - t0

    def epoch() -> Iterator[Batch]:
        for b in loader:
            dense = b["X"].toarray().astype(np.float32, copy=False)
            gex, atac = columns.split(_as_torch(dense))
            rows = names.get_indexer(b["obs"].index)  # the store is shuffled: map back by name
            yield Batch(
                gex,
                atac,
                b["obs"]["cell_type"].to_numpy(),
                rows.astype(np.int64) if (rows >= 0).all() else None,
            )

    output = "numpy" if isinstance(_as_torch(np.zeros(1)), np.ndarray) else "torch"
    notes = [
        f"Loader(chunk_size={ANNBATCH_CHUNK}, preload_nchunks={ANNBATCH_PRELOAD}, "
        "shuffle=True, preload_to_gpu=False) over DatasetCollection(shuffle=True) with the "
        "zarrs codec pipeline; yields scipy CSR, densified per batch here; obs = cell_type "
        f"only; store {prepare['store_mb']:.0f} MB, written in {prepare['prepare_s']:.1f} s "
        f"(peak RSS {prepare['peak_rss_mb']:.0f} MB)"
    ]
    if output == "numpy":
        notes.append(
            "no torch in annbatch's Python 3.12 venv (PyPI has only the CUDA build for "
            "3.12: ~555 MB + ~3 GB of nvidia-* wheels): timed as dense float32 numpy, "
            "which torch.from_numpy would wrap without a copy"
        )
    return Contender("annbatch (zarr, preshuffled)", epoch, setup, prepare["prepare_s"], output, notes)


def _gpuload(path: str, batch_size: int, device: str, preload: bool = False) -> Contender:
    from gpuload import MultiomeLoader
    from gpuload.device import gpu_available

    if device == "cuda" and not gpu_available():
        raise Skip("not measured (no GPU)")
    t0 = time.perf_counter()
    # obs: cell_type, like every peer here (all 28 columns cost ~5% more at B=32).
    loader = MultiomeLoader(
        path, batch_size=batch_size, shuffle=True, device=device, preload=preload, obs_keys=["cell_type"]
    )
    setup = time.perf_counter() - t0

    def epoch() -> Iterator[Batch]:
        for b in loader:
            yield Batch(b["GEX"], b["ATAC"], b["obs"]["cell_type"], _to_numpy(b["index"]))

    mode = "preload=True: the selected CSR read into memory once" if preload else "streaming"
    return Contender(
        f"gpuload ({loader.backend.name}{', preloaded' if preload else ''})",
        epoch,
        setup,
        notes=[
            f"MultiomeLoader(shuffle=True, device={device!r}, obs_keys=['cell_type']), {mode}; "
            f"block shuffle (chunk 256 x window 16), reader + assembler threads, "
            f"{loader.num_threads} kernel thread(s)"
        ],
    )


def make_gpuload_cpu(path: str, batch_size: int, work: Path) -> Contender:
    return _gpuload(path, batch_size, "cpu")


def make_gpuload_cpu_preload(path: str, batch_size: int, work: Path) -> Contender:
    return _gpuload(path, batch_size, "cpu", preload=True)


def make_gpuload_gpu(path: str, batch_size: int, work: Path) -> Contender:
    return _gpuload(path, batch_size, "cuda")


@dataclass(frozen=True)
class Spec:
    """How ``compare.py`` runs a contender."""

    make: Callable[[str, int, Path], Contender]
    label: str  # for rows where the contender did not run
    slow: bool = False  # timed on fewer cells (the seed's per-row reads: ~300 cells/s)
    python312: bool = False  # runs from annbatch's virtual environment


CONTENDERS: dict[str, Spec] = {
    "seed": Spec(make_seed, "seed (per-row Dataset)", slow=True),
    "annloader-backed": Spec(make_annloader_backed, "AnnLoader (backed)"),
    "annloader-memory": Spec(make_annloader_memory, "AnnLoader (in memory)"),
    "scdataset": Spec(make_scdataset, "scDataset"),
    "annbatch": Spec(make_annbatch, "annbatch", python312=True),
    "gpuload-cpu": Spec(make_gpuload_cpu, "gpuload (cpu)"),
    "gpuload-cpu-preload": Spec(make_gpuload_cpu_preload, "gpuload (cpu, preloaded)"),
    "gpuload-gpu": Spec(make_gpuload_gpu, "gpuload (cuda)"),
}


# -- timing and checking ---------------------------------------------------------------------


def _endless(epoch: Callable[[], Iterable[Batch]]) -> Iterator[Batch]:
    while True:
        yield from epoch()


def measure(
    contender: Contender, cells: int, max_seconds: float, warmup: int = WARMUP_BATCHES
) -> tuple[dict, Batch]:
    """First batch, warm-up, then ``cells`` cells timed (stopping early after ``max_seconds``);
    returns the numbers and one more batch, for the check."""
    iterator = _endless(contender.epoch)
    t0 = time.perf_counter()
    next(iterator)
    first_batch_s = time.perf_counter() - t0
    for _ in range(warmup):
        next(iterator)
    seen = batches = 0
    t0 = time.perf_counter()
    while seen < cells and time.perf_counter() - t0 < max_seconds:
        seen += int(next(iterator).gex.shape[0])
        batches += 1
    seconds = time.perf_counter() - t0
    numbers = {
        "cells": seen,
        "batches": batches,
        "seconds": seconds,
        "cells_per_s": seen / seconds if seconds > 0 else 0.0,
        "first_batch_s": first_batch_s,
        "peak_rss_mb": peak_rss_mb(),
        "stopped_early": seen < cells,
    }
    return numbers, next(iterator)


def measure_best(
    contender: Contender, cells: int, max_seconds: float, rounds: int, warmup: int = WARMUP_BATCHES
) -> tuple[dict, Batch]:
    """``measure`` ``rounds`` times (a new iterator each), ``cells`` and ``max_seconds`` split
    between them: the fastest round's numbers (a shared machine's load only slows a round down),
    the first round's first batch (the process's), the last peak RSS, every round's cells/s, and
    the last round's batch (no earlier batch is held: each keeps its super-batch's buffer)."""
    rates, best, first_batch_s, batch = [], {}, None, None
    for _ in range(rounds):
        batch = None
        numbers, batch = measure(contender, max(1, cells // rounds), max_seconds / rounds, warmup)
        rates.append(numbers["cells_per_s"])
        first_batch_s = numbers["first_batch_s"] if first_batch_s is None else first_batch_s
        best = max(best, numbers, key=lambda n: n.get("cells_per_s", -1.0))
    best = {**best, "first_batch_s": first_batch_s, "peak_rss_mb": numbers["peak_rss_mb"]}
    return {**best, "rounds_cells_per_s": rates}, batch


class Reference:
    """The file read with anndata (backed) + scipy, independently of every contender."""

    def __init__(self, path: str) -> None:
        import anndata as ad

        self.adata = ad.read_h5ad(path, backed="r")
        types = self.adata.var["feature_types"].to_numpy()
        self.is_gex, self.is_atac = types == "GEX", types == "ATAC"
        # Position of each column inside its own modality (monotone in the file column).
        self.pos = np.where(self.is_gex, np.cumsum(self.is_gex) - 1, np.cumsum(self.is_atac) - 1)
        self.cell_type = self.adata.obs["cell_type"].astype(str).to_numpy()

    def dense(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        unique, inverse = np.unique(rows, return_inverse=True)
        x = self.adata.X[unique].toarray()[inverse]
        return x[:, self.is_gex], x[:, self.is_atac]

    def find_rows(self, gex: np.ndarray, atac: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """File rows whose content hashes like the given dense rows (-1: not in the file)."""
        wanted: dict[bytes, list[int]] = {}
        for i in range(gex.shape[0]):
            wanted.setdefault(_dense_key(gex[i], atac[i]), []).append(i)
        rows = np.full(gex.shape[0], -1, dtype=np.int64)
        n = self.adata.n_obs
        for lo in range(0, n, chunk):
            block = self.adata.X[lo : min(lo + chunk, n)]
            block.sum_duplicates()
            block.eliminate_zeros()
            for r in range(block.shape[0]):
                a, b = block.indptr[r], block.indptr[r + 1]
                key = self._sparse_key(block.indices[a:b], block.data[a:b])
                for i in wanted.get(key, ()):
                    if rows[i] < 0:
                        rows[i] = lo + r
        return rows

    def _sparse_key(self, cols: np.ndarray, vals: np.ndarray) -> bytes:
        g = self.is_gex[cols]
        a = self.is_atac[cols]
        return _key(self.pos[cols[g]], vals[g], self.pos[cols[a]], vals[a])


def _dense_key(gex_row: np.ndarray, atac_row: np.ndarray) -> bytes:
    g, a = np.flatnonzero(gex_row), np.flatnonzero(atac_row)
    return _key(g, gex_row[g], a, atac_row[a])


def _key(g_pos, g_val, a_pos, a_val) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (
        g_pos.astype(np.int64),
        g_val.astype(np.float32),
        a_pos.astype(np.int64),
        a_val.astype(np.float32),
    ):
        h.update(part.tobytes())
        h.update(b"|")
    return h.digest()


def check_batch(path: str, batch: Batch) -> dict:
    """Compare one batch with the reference rows of the same cells (exact float32 equality)."""
    ref = Reference(path)
    gex, atac = _to_numpy(batch.gex), _to_numpy(batch.atac)
    cell_type = [str(c) for c in batch.cell_type]
    out: dict = {
        "cells": int(gex.shape[0]),
        "dtype": f"{gex.dtype}/{atac.dtype}",
        "widths": [int(gex.shape[1]), int(atac.shape[1])],
    }
    if batch.rows is not None:
        rows, out["method"] = np.asarray(batch.rows, dtype=np.int64), "rows named by the loader"
    else:
        rows = ref.find_rows(gex, atac)
        out["method"] = "row hash (the loader does not say which cells)"
        if (rows < 0).any():
            out.update(ok=False, detail=f"{int((rows < 0).sum())} rows not found in the file")
            return out
    ref_gex, ref_atac = ref.dense(rows)
    out["gex_equal"] = gex.shape == ref_gex.shape and np.array_equal(gex, ref_gex)
    out["atac_equal"] = atac.shape == ref_atac.shape and np.array_equal(atac, ref_atac)
    out["cell_type_equal"] = cell_type == ref.cell_type[rows].tolist()
    out["distinct_cells"] = int(np.unique(rows).size)
    sorted_rows = np.sort(rows)
    out["contiguous_runs"] = int(1 + np.count_nonzero(np.diff(sorted_rows) != 1))
    out["ok"] = bool(
        out["gex_equal"]
        and out["atac_equal"]
        and out["cell_type_equal"]
        and out["dtype"] == "float32/float32"
    )
    if not out["ok"]:
        parts = [k for k in ("gex_equal", "atac_equal", "cell_type_equal") if not out[k]]
        out["detail"] = "mismatch: " + ", ".join(parts or ["dtype"])
    return out


# -- the child process -----------------------------------------------------------------------


def run_one(
    name: str,
    path: str,
    batch_size: int,
    cells: int,
    work: Path,
    max_seconds: float,
    rounds: int = 1,
    warmup: int = WARMUP_BATCHES,
) -> dict:
    result = {"contender": name, "batch_size": batch_size, "python": platform.python_version()}
    try:
        contender = CONTENDERS[name].make(path, batch_size, work)
    except Skip as e:
        return {**result, "status": "skipped", "reason": str(e), "versions": _versions()}
    numbers, batch = measure_best(contender, cells, max_seconds, rounds, warmup)
    result.update(
        status="ok",
        label=contender.label,
        setup_s=contender.setup_s,
        prepare_s=contender.prepare_s,
        output=contender.output,
        notes=contender.notes,
        **numbers,
    )
    result["check"] = check_batch(path, batch)
    result["versions"] = _versions()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="time one contender at one batch size")
    run.add_argument("name", choices=sorted(CONTENDERS))
    run.add_argument("--batch-size", type=int, required=True)
    run.add_argument("--cells", type=int, required=True, help="cells timed after the warm-up")
    run.add_argument("--max-seconds", type=float, default=60.0, help="stop timing after this long")
    run.add_argument("--rounds", type=int, default=1, help="timed rounds in this process; the best kept")
    run.add_argument("--warmup", type=int, default=WARMUP_BATCHES, help="untimed batches before each round")
    prep = sub.add_parser("prepare", help="a contender's one-off conversion")
    prep.add_argument("name", choices=["annbatch"])
    run.add_argument("--file", required=True)
    prep.add_argument("--file", required=True, nargs="+", help="one or more h5ad files")
    for p in (run, prep):
        p.add_argument("--work", type=Path, required=True, help="folder for stores and results")
        p.add_argument("--out", type=Path, required=True, help="JSON result")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            result = run_one(
                args.name,
                args.file,
                args.batch_size,
                args.cells,
                args.work,
                args.max_seconds,
                args.rounds,
                args.warmup,
            )
        else:
            result = {"contender": args.name, "status": "ok", **prepare_annbatch(args.file, args.work)}
    except Skip as e:
        result = {"contender": args.name, "status": "skipped", "reason": str(e)}
    except Exception as e:  # reported in the table, with the traceback in the JSON
        result = {
            "contender": args.name,
            "status": "failed",
            "reason": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
        }
    args.out.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
