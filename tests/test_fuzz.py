"""Fuzzing: mutated h5ad files either load (every cell exactly once, finite values) or fail with a
``GpuloadError``; never another exception, a crash or a hang, and the file is never written.

A corrupt HDF5 file can crash the HDF5 C library, and a segfault inside pytest would take the
whole run down, so every case runs in a worker subprocess (:class:`Worker`): the test process
writes the mutated file, sends its path and the loader arguments over a pipe, and waits for a
one-line JSON verdict with a timeout. A worker that dies (signal, exit) or stays silent is a
failure of that case, reported with its stderr tail, and a fresh worker takes the next case. The
worker opens each file with ``MultiomeLoader(..., device="cpu")``, iterates one epoch, and runs
``gpuload info`` on it in-process.

The templates are a CSR, a CSC and a dense h5ad, and an ``.h5mu`` of the CSR one's two modalities
(written by mudata), whose mutations of X, layers and var land on its ATAC modality.

Mutations are plain tuples, so hypothesis prints a falsifying example that can be replayed:

- ``("flip", region, where, xor)``: xor one byte at fraction ``where`` of a region's bytes
  (``"any"``, ``"metadata"`` = everything outside raw dataset storage, or one dataset's storage).
- ``("cut", fraction)`` / ``("extend", n_bytes)``: truncate the file, or append random bytes.
- ``("dtype", dataset, dtype)``, ``("reshape", dataset, how)``, ``("attr", object, name, value)``,
  ``("delete", name)``: structural edits made with h5py before any byte-level change.
- ``("set", dataset, where, value)``, ``("swap", dataset, where)``: corrupt single values
  (``indptr``, ``indices``, codes, size factors...).

The default run is bounded (``max_examples``) to well under 90 s once numba's on-disk cache is
warm; ``-m slow`` runs the same properties with many more examples.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuload.bmmc.synth import write_synthetic

from .conftest import file_digest

REPO = Path(__file__).resolve().parents[1]
N_CELLS, N_GENES, N_PEAKS = 200, 40, 200
N_VARS = N_GENES + N_PEAKS
CASE_TIMEOUT_S = 60.0  # a first numba compile for a new dtype takes a few seconds; a hang takes forever
STARTUP_TIMEOUT_S = 120.0
REPLY_MARK = "@@gpuload-fuzz@@ "
TEMPLATES = ("csr", "csc", "dense", "h5mu")
# The .h5mu template keeps X, layers and var per modality (mod/GEX, mod/ATAC) and obs globally:
# an h5ad mutation of X, layers or var lands on the ATAC modality's copy.
H5MU_PREFIX = "mod/ATAC/"

# -- what gets mutated ---------------------------------------------------------------------------
MATRIX_DATASETS = (
    "X/data",
    "X/indices",
    "X/indptr",
    "X",  # the dense template's X
    "layers/counts/data",
    "layers/counts/indices",
    "layers/counts/indptr",
    "layers/counts",
)
FRAME_DATASETS = (
    "obs/_index",
    "obs/GEX_size_factors",
    "obs/GEX_n_genes",
    "obs/batch/codes",
    "obs/batch/categories",
    "obs/cell_type/codes",
    "var/_index",
    "var/feature_types/codes",
    "var/feature_types/categories",
)
DATASETS = MATRIX_DATASETS + FRAME_DATASETS
REGIONS = ("any", "metadata", "X/data", "X/indices", "X/indptr", "X", "var/feature_types/codes", "obs/_index")
ATTR_OWNERS = ("X", "layers/counts", "obs", "var", "var/feature_types", "obs/batch", "/")
ATTR_NAMES = ("encoding-type", "encoding-version", "shape", "_index", "column-order", "ordered")
ATTR_VALUES = (
    "<delete>",
    "",
    "csr_matrix",
    "csc_matrix",
    "array",
    "dataframe",
    "categorical",
    "string-array",
    "garbage",
    0,
    -1,
    7,
    2.5,
    [N_CELLS, N_VARS],
    [N_VARS, N_CELLS],
    [0, N_VARS],
    [N_CELLS, 0],
    [-1, N_VARS],
    [N_CELLS, N_VARS, 1],
    [2**40, N_VARS],
    [1.5, 2.5],
    ["a", "b"],
    ["csr_matrix", "x"],
)
DTYPES = ("int8", "uint8", "int16", "int64", "uint64", "float16", "float64", "bool", "complex64", "S6")
RESHAPES = ("2d", "3d", "scalar", "empty", "drop_last", "extra")
VALUES = (
    -1,
    0,
    1,
    N_VARS - 1,
    N_VARS,
    N_CELLS,
    2**31 - 1,
    2**31,
    -(2**31),
    2**62,
    "nan",
    "inf",
    "-inf",
    1e38,
)

flips = st.tuples(
    st.just("flip"),
    st.sampled_from(REGIONS),
    st.floats(0, 1, exclude_max=True),
    st.integers(1, 255),
)
length_changes = st.one_of(
    st.tuples(st.just("cut"), st.floats(0, 1, exclude_min=True, exclude_max=True)),
    st.tuples(st.just("extend"), st.integers(1, 4096)),
)
structural = st.one_of(
    st.tuples(st.just("dtype"), st.sampled_from(DATASETS), st.sampled_from(DTYPES)),
    st.tuples(st.just("reshape"), st.sampled_from(DATASETS), st.sampled_from(RESHAPES)),
    st.tuples(
        st.just("attr"),
        st.sampled_from(ATTR_OWNERS),
        st.sampled_from(ATTR_NAMES),
        st.sampled_from(ATTR_VALUES),
    ),
    st.tuples(st.just("delete"), st.sampled_from(DATASETS + ("obs", "var", "obs/batch", "layers"))),
)
value_edits = st.one_of(
    st.tuples(
        st.just("set"),
        st.sampled_from(DATASETS),
        st.floats(0, 1, exclude_max=True),
        st.sampled_from(VALUES),
    ),
    st.tuples(st.just("swap"), st.sampled_from(DATASETS), st.floats(0, 1, exclude_max=True)),
)
# Loader configurations that are valid for the untouched templates: a failure is the file's doing.
CONFIGS = (
    {},
    {"layer": "counts", "transform": {"GEX": "log1p_size_factor", "ATAC": "binarize"}},
    {"layer": "counts", "transform": {"GEX": "normalize_total", "ATAC": "tfidf"}},
    {"modalities": "all", "transform": "log1p"},
    {"modalities": "GEX", "transform": "log1p", "obs_keys": ["batch", "cell_type"]},
    {"modalities": "ATAC", "transform": "binarize", "preload": True},
)
loader_kwargs = st.builds(
    lambda config, batch_size, shuffle: {**config, "batch_size": batch_size, "shuffle": shuffle},
    st.sampled_from(CONFIGS),
    st.integers(1, 256),
    st.sampled_from([False, True, "full"]),
)


# -- applying mutations (in the test process, on a fresh copy of a valid template) -------------------
def storage_regions(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Byte extents of every dataset's raw storage, plus ``metadata`` (the rest) and ``any``."""
    extents: dict[str, list[tuple[int, int]]] = {}

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        dsid = obj.id
        if obj.chunks is None:
            offset = dsid.get_offset()
            if offset is not None:  # None: compact storage, inside the object header
                extents[name] = [(offset, dsid.get_storage_size())]
        else:
            chunks = [dsid.get_chunk_info(i) for i in range(dsid.get_num_chunks())]
            extents[name] = [(c.byte_offset, c.size) for c in chunks]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    size = path.stat().st_size
    raw = sorted(e for spans in extents.values() for e in spans)
    metadata, pos = [], 0
    for offset, length in raw:
        if offset > pos:
            metadata.append((pos, offset - pos))
        pos = max(pos, offset + length)
    if pos < size:
        metadata.append((pos, size - pos))
    return {**extents, "metadata": metadata, "any": [(0, size)]}


def _byte_at(spans: list[tuple[int, int]], where: float) -> int:
    total = sum(length for _, length in spans)
    k = int(where * total)
    for offset, length in spans:
        if k < length:
            return offset + k
        k -= length
    return spans[-1][0]


def _scalar(value, dtype: np.dtype):
    if isinstance(value, str):
        value = float(value)
    with np.errstate(all="ignore"):
        return np.array(value).astype(dtype) if dtype.kind != "S" else str(value).encode()


def _attr_value(value):
    if isinstance(value, list) and value and isinstance(value[0], str):
        return np.array(value, dtype=h5py.string_dtype())
    return np.array(value) if isinstance(value, list) else value


def _apply_h5py(f: h5py.File, mutation: tuple, rng: np.random.Generator) -> None:
    kind, target = mutation[0], mutation[1]
    if kind == "attr":
        owner, name, value = target, mutation[2], mutation[3]
        if owner not in f:
            return
        if value == "<delete>":
            f[owner].attrs.pop(name, None)
        else:
            f[owner].attrs[name] = _attr_value(value)
        return
    if target not in f:
        return
    if kind == "delete":
        del f[target]
        return
    node = f[target]
    if not isinstance(node, h5py.Dataset):
        return
    array, attrs = node[()], dict(node.attrs)
    if kind == "dtype":
        try:
            with np.errstate(all="ignore"):
                array = np.asarray(array).astype(mutation[2])
        except (ValueError, TypeError):  # strings that are not numbers: nothing to swap
            return
    elif kind == "reshape":
        array = np.asarray(array)
        how = mutation[2]
        if how == "2d":
            array = array.reshape(-1, 1)
        elif how == "3d":
            array = array.reshape(*array.shape, 1)
        elif how == "scalar":
            array = array.reshape(-1)[0] if array.size else np.zeros((), array.dtype)
        elif how in ("empty", "drop_last"):
            array = np.atleast_1d(array)  # an earlier "scalar" left a 0-d array
            array = array[:0] if how == "empty" else array[:-1]
        else:
            array = np.concatenate([array, array[-1:]]) if array.ndim and array.size else array
    elif kind in ("set", "swap"):
        array = np.array(array)
        if array.ndim == 0 or array.size == 0:
            return
        flat = array.reshape(-1)
        i = int(mutation[2] * flat.size)
        if kind == "set":
            if flat.dtype.kind == "O":
                flat[i] = str(mutation[3])
            else:
                flat[i] = _scalar(mutation[3], flat.dtype)
        else:
            j = int(rng.integers(flat.size))
            flat[i], flat[j] = flat[j], flat[i]
    del f[target]
    kwargs = {"dtype": h5py.string_dtype()} if np.asarray(array).dtype.kind == "O" else {}
    new = f.create_dataset(target, data=array, **kwargs)
    new.attrs.update(attrs)


def apply_mutations(template: Path, out: Path, mutations, regions) -> None:
    """``out`` = ``template`` with ``mutations``: h5py edits first, then byte-level changes."""
    shutil.copyfile(template, out)
    rng = np.random.default_rng(len(repr(mutations)))
    edits = [m for m in mutations if m[0] not in ("flip", "cut", "extend")]
    if edits:
        with h5py.File(out, "r+") as f:
            for m in edits:
                _apply_h5py(f, m, rng)
    raw = bytearray(out.read_bytes())
    for m in mutations:
        if m[0] == "flip":
            spans = regions.get(m[1]) or regions["any"]
            pos = _byte_at(spans, m[2])
            if pos < len(raw):
                raw[pos] ^= m[3]
        elif m[0] == "cut":
            del raw[max(1, int(m[1] * len(raw))) :]
        elif m[0] == "extend":
            raw += rng.bytes(m[1])
    out.write_bytes(bytes(raw))


# -- the worker: runs one case at a time, in its own process -------------------------------------------
def _check_epoch(path: str, kwargs: dict) -> dict:
    """One epoch through the loader; on success every selected cell came exactly once."""
    import torch

    from gpuload import MultiomeLoader

    loader = MultiomeLoader(path, device="cpu", **kwargs)
    rows, nonfinite = [], []
    for batch in loader:
        rows.append(batch["index"].numpy().copy())
        for name, value in batch.items():  # the [B, width] matrices: GEX, ATAC or X
            if isinstance(value, torch.Tensor) and value.ndim == 2 and not torch.isfinite(value).all():
                nonfinite.append(name)
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if not np.array_equal(np.sort(rows), loader.positions):
        raise AssertionError(
            f"the epoch delivered {rows.size} rows, not each of {loader.positions.size} once"
        )
    if nonfinite:
        raise AssertionError(f"a batch holds NaN or inf in {sorted(set(nonfinite))} without an error")
    return {"cells": int(rows.size)}


def _check_info(path: str) -> dict:
    """``gpuload info`` in-process: exit 0, or 2 with one ``gpuload: error:`` line."""
    from gpuload import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["info", path, "--sample", "50"])
    last = err.getvalue().rstrip("\n").rpartition("\n")[2]  # after any progress bars
    if code == 2 and not last.startswith("gpuload: error: "):
        raise AssertionError(f"gpuload info exited 2 without a 'gpuload: error:' line: {err.getvalue()!r}")
    if code not in (0, 2):
        raise AssertionError(f"gpuload info exited {code}")
    return {"exit": code}


def _innermost_gpuload_frame(error: BaseException) -> str:
    """``gpuload/file.py:line in function`` of the deepest gpuload frame the error passed."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if f"{os.sep}gpuload{os.sep}" in f.filename
    ]
    if not frames:
        return "?"
    f = frames[-1]
    return f"gpuload/{Path(f.filename).name}:{f.lineno} in {f.name}"


def run_case(request: dict) -> dict:
    """Every check of one file; each ends ``ok``, ``error`` (a GpuloadError) or ``bug``."""
    from gpuload import GpuloadError

    if request.get("selftest") == "segfault":
        import ctypes

        ctypes.string_at(0)
    if request.get("selftest") == "hang":
        time.sleep(3600)
    verdict = {}
    checks = {"loader": lambda: _check_epoch(request["path"], request["kwargs"])}
    if request.get("info", True):
        checks["info"] = lambda: _check_info(request["path"])
    for name, check in checks.items():
        try:
            verdict[name] = {"outcome": "ok", **check()}
        except GpuloadError as e:
            verdict[name] = {"outcome": "error", "type": type(e).__name__, "message": str(e)[:500]}
        except BaseException as e:  # anything else escaping gpuload is a bug
            verdict[name] = {
                "outcome": "bug",
                "type": f"{type(e).__module__}.{type(e).__qualname__}",
                "message": str(e)[:1000],
                "where": _innermost_gpuload_frame(e),
                "traceback": traceback.format_exc()[-4000:],
            }
    return verdict


def serve() -> None:
    """Worker main loop: a JSON request per stdin line, a marked JSON verdict per stdout line."""
    import faulthandler

    faulthandler.enable()  # a segfault leaves the C and Python stacks in the worker's stderr
    reply = sys.stdout
    sys.stdout = sys.stderr  # whatever else prints cannot be mistaken for a verdict
    reply.write(REPLY_MARK + json.dumps({"ready": True}) + "\n")
    reply.flush()
    for line in sys.stdin:
        verdict = run_case(json.loads(line))
        reply.write(REPLY_MARK + json.dumps(verdict) + "\n")
        reply.flush()


class WorkerDied(Exception):
    """The worker crashed, exited or hung on a case."""


class Worker:
    """A ``serve()`` subprocess and the pipe to it; restarted after a crash or a hang."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _start(self) -> None:
        self.starts += 1
        self.stderr_path = self.folder / f"worker-{self.starts}.stderr"
        env = {**os.environ, "GPULOAD_CACHE_DIR": str(self.folder / "cache"), "PYTHONFAULTHANDLER": "1"}
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from tests.test_fuzz import serve; serve()"],
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                bufsize=0,
                start_new_session=True,
            )
        self._buffer = b""
        self._read_reply(STARTUP_TIMEOUT_S)

    def _stderr_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def _read_reply(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    text = line.decode(errors="replace")
                    if text.startswith(REPLY_MARK):
                        return json.loads(text[len(REPLY_MARK) :])
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise WorkerDied(f"no verdict within {timeout:.0f} s (hang?)\n{self._stderr_tail()}")
                if sel.select(timeout=min(left, 1.0)):
                    chunk = os.read(self.proc.stdout.fileno(), 65536)
                    if not chunk:
                        code = self.proc.wait(timeout=10)
                        self.kill()
                        how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
                        raise WorkerDied(f"worker {how}\n{self._stderr_tail()}")
                    self._buffer += chunk

    def ask(self, request: dict, timeout: float = CASE_TIMEOUT_S) -> dict:
        if self.proc is None:
            self._start()
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
        except BrokenPipeError:
            self.kill()
            raise WorkerDied(f"worker pipe closed\n{self._stderr_tail()}") from None
        return self._read_reply(timeout)

    def kill(self) -> None:
        """End the worker and everything in its session; the next ``ask`` starts a fresh one."""
        if self.proc is not None:
            if self.proc.poll() is None:  # its own process group: nothing it started survives
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None


# -- the test side ------------------------------------------------------------------------------
class FuzzFailure(AssertionError):
    """A case that escaped the guarantee."""


_FAILURE_CLASSES: dict[tuple[str, str], type[FuzzFailure]] = {}


def failure_class(kind: str, where: str) -> type[FuzzFailure]:
    """One FuzzFailure subclass per (exception type, gpuload frame): hypothesis tells failures
    apart by type and line, so each distinct bug is shrunk and reported on its own."""
    key = (kind, where)
    if key not in _FAILURE_CLASSES:
        name = "".join(c if c.isalnum() else "_" for c in f"{kind.rpartition('.')[2]}_at_{where}")
        _FAILURE_CLASSES[key] = type(name, (FuzzFailure,), {})
    return _FAILURE_CLASSES[key]


def _compact_copy(full: Path, out: Path) -> Path:
    """Only what gpuload reads (X, layers, obs, var): byte flips land where they matter."""
    with h5py.File(full, "r") as src, h5py.File(out, "w") as dst:
        dst.attrs.update(src.attrs)
        for key in ("X", "layers", "obs", "var"):
            src.copy(src[key], dst, key)
    return out


def _h5mu_copy(full: Path, out: Path) -> Path:
    """The h5ad's GEX and ATAC columns as the two modalities of a MuData, obs kept global."""
    import mudata as md

    adata = ad.read_h5ad(full)
    adata.obsm, adata.uns = {}, {}
    gex = adata.var["feature_types"].to_numpy() == "GEX"
    parts = {}
    for name, columns in (("GEX", gex), ("ATAC", ~gex)):
        part = adata[:, columns].copy()
        part.obs = part.obs[[]]
        parts[name] = part
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData(parts)
        mdata.obs = adata.obs.copy()
        mdata.write(out)
    return out


def _h5mu_target(target):
    """Where an h5ad mutation's target lives in the .h5mu template."""
    if isinstance(target, str) and target.startswith(("X", "layers", "var")):
        return H5MU_PREFIX + target
    return target


def _for_h5mu(mutations) -> list:
    return [(m[0], _h5mu_target(m[1]), *m[2:]) if m[0] != "cut" else m for m in mutations]


class Fuzzer:
    """Templates, their byte regions, the worker, and the check of one case."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.templates, self.regions = {}, {}
        for fmt in TEMPLATES:
            if fmt == "h5mu":
                self.templates[fmt] = _h5mu_copy(self.folder / "full-csr.h5ad", folder / "template.h5mu")
                self.regions[fmt] = storage_regions(self.templates[fmt])
                continue
            full = write_synthetic(
                folder / f"full-{fmt}.h5ad",
                n_cells=N_CELLS,
                n_genes=N_GENES,
                n_peaks=N_PEAKS,
                x_format=fmt,
                seed=7,
                progress=False,
            )
            self.templates[fmt] = _compact_copy(full, folder / f"template-{fmt}.h5ad")
            self.regions[fmt] = storage_regions(self.templates[fmt])
        self.worker = Worker(folder)
        self.cases = itertools.count()

    def check(self, template: str, mutations, kwargs: dict, info: bool = True) -> dict:
        path = self.folder / f"case-{next(self.cases)}{self.templates[template].suffix}"
        edits = _for_h5mu(mutations) if template == "h5mu" else mutations
        apply_mutations(self.templates[template], path, edits, self.regions[template])
        before = file_digest(path)
        try:
            verdict = self.worker.ask({"path": str(path), "kwargs": kwargs, "info": info})
        except WorkerDied as e:
            raise failure_class("WorkerDied", str(e).partition("\n")[0])(
                f"{template} file with {mutations}, loader {kwargs}: {e}"
            ) from None
        assert file_digest(path) == before, f"{path} was modified"
        bugs = {k: v for k, v in verdict.items() if v["outcome"] == "bug"}
        if bugs:
            detail = "\n".join(
                f"[{k}] {v['type']} at {v['where']}: {v['message']}\n{v['traceback']}"
                for k, v in bugs.items()
            )
            first = next(iter(bugs.values()))
            raise failure_class(first["type"], first["where"])(
                f"{template} file with {mutations}, loader {kwargs}:\n{detail}"
            )
        path.unlink()
        shutil.rmtree(self.folder / "cache", ignore_errors=True)
        return verdict

    def close(self) -> None:
        self.worker.kill()


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    f = Fuzzer(tmp_path_factory.mktemp("fuzz"))
    yield f
    f.close()


FAST = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
LONG = settings(FAST, max_examples=2000)
templates = st.sampled_from(TEMPLATES)


def test_untouched_templates_load(fuzzer):
    """The harness itself: each unmutated template loads in the worker, every cell once."""
    for template in TEMPLATES:
        for config in CONFIGS:
            verdict = fuzzer.check(template, [], {**config, "batch_size": 64})
            assert verdict["loader"]["outcome"] == "ok", (template, config, verdict)
            assert verdict["loader"]["cells"] == N_CELLS
            assert verdict["info"]["exit"] == 0


def test_worker_survives_a_crash_and_a_hang(fuzzer):
    """The harness catches what an in-process test cannot: a segfault and a hang fail the case,
    and the next case gets a fresh worker."""
    with pytest.raises(WorkerDied, match="signal 11"):
        fuzzer.worker.ask({"selftest": "segfault"})
    with pytest.raises(WorkerDied, match="hang"):
        fuzzer.worker.ask({"selftest": "hang"}, timeout=5)
    verdict = fuzzer.check("csr", [], {"batch_size": 50})
    assert verdict["loader"]["outcome"] == "ok"


@settings(FAST, max_examples=50)
@given(template=templates, mutations=st.lists(flips, min_size=1, max_size=8), kwargs=loader_kwargs)
def test_byte_flips(fuzzer, template, mutations, kwargs):
    """Bytes flipped anywhere, in the HDF5 metadata or in one dataset's storage."""
    fuzzer.check(template, mutations, kwargs)


@settings(FAST, max_examples=15)
@given(template=templates, change=length_changes, kwargs=loader_kwargs)
def test_cut_or_extended_files(fuzzer, template, change, kwargs):
    """A file cut at any length or with trailing garbage."""
    fuzzer.check(template, [change], kwargs)


@FAST
@given(template=templates, mutations=st.lists(structural, min_size=1, max_size=3), kwargs=loader_kwargs)
def test_structural_edits(fuzzer, template, mutations, kwargs):
    """dtypes, shapes, attributes and whole objects swapped or removed with h5py."""
    fuzzer.check(template, mutations, kwargs)


@FAST
@given(template=templates, mutations=st.lists(value_edits, min_size=1, max_size=4), kwargs=loader_kwargs)
def test_corrupt_values(fuzzer, template, mutations, kwargs):
    """indptr / indices / codes / size factors set to out-of-range values or swapped."""
    fuzzer.check(template, mutations, kwargs)


@pytest.mark.slow
@LONG
@given(
    template=templates,
    mutations=st.lists(st.one_of(flips, length_changes, structural, value_edits), min_size=1, max_size=6),
    kwargs=loader_kwargs,
)
def test_everything_long(fuzzer, template, mutations, kwargs):
    """All mutation kinds mixed, many more examples (``make test-all``)."""
    fuzzer.check(template, mutations, kwargs)
