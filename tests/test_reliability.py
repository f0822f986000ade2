"""Reliability (issue 9): bad input gives a clear ``GpuloadError`` every time, through the API and
the CLI; faults during iteration reach the consumer promptly and leave no thread or process
behind; no cell is lost; the input file is never written.

Every broken file is a real ``.h5ad`` written by ``gpuload.bmmc.synth`` (through anndata) and then
edited with h5py or at the byte level.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from gpuload import (
    ArgumentError,
    DataValueError,
    DeviceError,
    GpuloadError,
    InputFileError,
    MultiomeLoader,
    ObsKeyError,
    SchemaError,
    cli,
    open_multiome,
)
from gpuload.bmmc.synth import write_synthetic

from .conftest import file_digest, gpuload_threads
from .reference import check_rows, epoch_rows

N_CELLS, N_GENES, N_PEAKS = 200, 40, 200
MAX_MESSAGE = 500  # a clear error is one line a person reads, not a dump


# -- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(synthetic) -> Path:
    """200 cells x (40 genes + 200 peaks), CSR float32, X and layers['counts']."""
    return synthetic("reliability.h5ad", n_cells=N_CELLS, n_genes=N_GENES, n_peaks=N_PEAKS, seed=3)


@pytest.fixture(scope="module")
def base_x(base) -> np.ndarray:
    """X of ``base`` as a dense array: what every delivered batch is checked against."""
    return ad.read_h5ad(base).X.toarray()


@pytest.fixture
def untouched():
    """``untouched(path)`` records a file's hash and mtime; the test's teardown checks them."""
    watched: dict[Path, tuple[str, int]] = {}

    def watch(path: Path) -> Path:
        if Path(path).is_file():
            watched[Path(path)] = file_digest(path)
        return path

    yield watch
    for path, digest in watched.items():
        assert file_digest(path) == digest, f"{path} was modified"


def child_processes() -> list[int]:
    """Live child processes of this process (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                children.append(int(entry.name))
    return children


def wait_until(condition, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def no_leftovers():
    """After the test: no gpuload thread within 2 s, and no new child process."""
    children = set(child_processes())
    yield
    assert wait_until(lambda: not gpuload_threads()), f"threads left: {gpuload_threads()}"
    assert set(child_processes()) <= children


def assert_clear(error: BaseException, *needles: str) -> None:
    """A GpuloadError whose one-line message names each of ``needles``."""
    assert isinstance(error, GpuloadError), f"{type(error).__name__} is not a GpuloadError: {error}"
    message = str(error)
    assert "\n" not in message, f"the message spans lines: {message!r}"
    assert len(message) <= MAX_MESSAGE, f"the message has {len(message)} characters: {message[:300]!r}..."
    for needle in needles:
        assert needle in message, f"{needle!r} is not in the message {message!r}"


def edited(base: Path, folder: Path, edit, name: str = "bad.h5ad") -> Path:
    """A copy of ``base`` changed by ``edit(h5py.File)``."""
    path = folder / name
    shutil.copyfile(base, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def replace_dataset(f: h5py.File, key: str, data, **kwargs) -> None:
    attrs = dict(f[key].attrs) if key in f else {}
    if key in f:
        del f[key]
    f.create_dataset(key, data=data, **kwargs).attrs.update(attrs)


# -- 1. bad files: the catalogue -------------------------------------------------------------------
def _missing(base, d):
    return d / "missing.h5ad"


def _directory(base, d):
    (d / "folder.h5ad").mkdir()
    return d / "folder.h5ad"


def _empty(base, d):
    (d / "empty.h5ad").touch()
    return d / "empty.h5ad"


def _random_bytes(base, d):
    (d / "random.h5ad").write_bytes(np.random.default_rng(0).bytes(64 * 1024))
    return d / "random.h5ad"


def _truncated(base, d):
    raw = base.read_bytes()
    (d / "truncated.h5ad").write_bytes(raw[: len(raw) // 2])
    return d / "truncated.h5ad"


def _dense_x(data):
    def edit(f):
        del f["X"]
        f.create_dataset("X", data=data)

    return edit


def _drop_feature_types(f):
    del f["var/feature_types"]
    f["var"].attrs["column-order"] = np.array(["gene_id"], dtype=h5py.string_dtype())


def _feature_type_missing(f):
    codes = f["var/feature_types/codes"][()]
    codes[7] = -1  # the eighth feature has no type
    replace_dataset(f, "var/feature_types/codes", codes)


def _short_obs(f):
    obs = ad.io.read_elem(f["obs"])
    del f["obs"]
    ad.io.write_elem(f, "obs", obs.iloc[:150])


def _obs_as_array(f):
    del f["obs"]
    f.create_dataset("obs", data=np.zeros(N_CELLS))


BROKEN_FILES = {
    # id: (make(base, folder) -> path, error, words the message must hold besides the file name)
    "missing": (_missing, InputFileError, ["no such file"]),
    "directory": (_directory, InputFileError, ["directory", ".h5ad"]),
    "empty": (_empty, InputFileError, ["empty", ".h5ad"]),
    "random-bytes": (_random_bytes, InputFileError, ["not an HDF5 file"]),
    "truncated-50%": (_truncated, InputFileError, ["truncated"]),
    "no-X": (lambda b, d: edited(b, d, lambda f: f.__delitem__("X")), SchemaError, ["no 'X'"]),
    "X-rank-1": (lambda b, d: edited(b, d, _dense_x(np.zeros(N_CELLS))), SchemaError, ["X", "(200,)", "2-D"]),
    "X-rank-3": (
        lambda b, d: edited(b, d, _dense_x(np.zeros((N_CELLS, 24, 10)))),
        SchemaError,
        ["X", "(200, 24, 10)", "2-D"],
    ),
    "X-dense-strings": (
        lambda b, d: edited(b, d, _dense_x(np.zeros((N_CELLS, N_GENES + N_PEAKS), "S3"))),
        SchemaError,
        ["X", "S3"],
    ),
    "X-csr-without-indptr": (
        lambda b, d: edited(b, d, lambda f: f.__delitem__("X/indptr")),
        SchemaError,
        ["X", "indptr"],
    ),
    "indptr-not-rising": (
        lambda b, d: edited(b, d, lambda f: f["X/indptr"].__setitem__(50, 10**6)),
        SchemaError,
        ["X", "indptr"],
    ),
    "data-of-strings": (
        lambda b, d: edited(b, d, lambda f: replace_dataset(f, "X/data", f["X/data"][:].astype("S4"))),
        SchemaError,
        ["X", "data", "S4"],
    ),
    "data-complex": (
        lambda b, d: edited(
            b, d, lambda f: replace_dataset(f, "X/data", f["X/data"][:].astype(np.complex64))
        ),
        SchemaError,
        ["X", "data", "complex64"],
    ),
    "data-2-D": (
        lambda b, d: edited(b, d, lambda f: replace_dataset(f, "X/data", f["X/data"][:].reshape(-1, 1))),
        SchemaError,
        ["X", "data"],
    ),
    "indices-float": (
        lambda b, d: edited(b, d, lambda f: replace_dataset(f, "X/indices", f["X/indices"][:].astype(float))),
        SchemaError,
        ["X", "indices", "float64"],
    ),
    "shape-attr-not-two-ints": (
        lambda b, d: edited(b, d, lambda f: f["X"].attrs.__setitem__("shape", "200x240")),
        SchemaError,
        ["X", "shape"],
    ),
    "encoding-type-not-a-string": (
        lambda b, d: edited(
            b,
            d,
            lambda f: f["X"].attrs.__setitem__(
                "encoding-type", np.array(["csr_matrix", "x"], dtype=h5py.string_dtype())
            ),
        ),
        SchemaError,
        ["X", "encoding-type"],
    ),
    "feature_types-missing": (
        lambda b, d: edited(b, d, _drop_feature_types),
        SchemaError,
        ["feature_types", "var"],
    ),
    "feature_type-of-one-feature-missing": (
        lambda b, d: edited(b, d, _feature_type_missing),
        SchemaError,
        ["feature_types", "missing", "7"],
    ),
    "obs-shorter-than-X": (lambda b, d: edited(b, d, _short_obs), SchemaError, ["150", "200"]),
    "obs-missing": (lambda b, d: edited(b, d, lambda f: f.__delitem__("obs")), SchemaError, ["obs"]),
    "obs-not-a-dataframe": (lambda b, d: edited(b, d, _obs_as_array), SchemaError, ["obs"]),
}


@pytest.fixture(params=sorted(BROKEN_FILES))
def broken(request, base, tmp_path, untouched):
    """(path, expected error, needles) for each broken file; the file is watched."""
    make, error, needles = BROKEN_FILES[request.param]
    path = untouched(make(base, tmp_path))
    return path, error, [path.name, *needles]


def test_open_reports_a_clear_error(broken):
    """``open_multiome`` and ``MultiomeLoader`` raise the documented GpuloadError subclass."""
    path, error, needles = broken
    for opener in (open_multiome, lambda p: MultiomeLoader(p, device="cpu")):
        with pytest.raises(GpuloadError) as excinfo:
            opener(path)
        assert_clear(excinfo.value, *needles)
        assert isinstance(excinfo.value, error), f"{type(excinfo.value).__name__}, expected {error.__name__}"


def test_cli_info_reports_one_line(broken, capsys):
    """``gpuload info FILE``: exit code 2 and a single ``gpuload: error: ...`` line, no traceback."""
    path, _error, needles = broken
    code = cli.main(["info", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuload: error: "), err
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("x_format", ["csr", "csc", "dense"])
def test_float16_x_loads(base, tmp_path, untouched, base_x, x_format):
    """float16 values (anndata writes them for dense X; other writers for sparse data) come
    through as stored, in every encoding."""
    adata = ad.read_h5ad(base)
    half = base_x.astype(np.float16)
    adata.X = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[x_format](base_x)
    path = tmp_path / f"half-{x_format}.h5ad"
    adata.write_h5ad(path)
    with h5py.File(path, "r+") as f:
        key = "X" if x_format == "dense" else "X/data"
        replace_dataset(f, key, f[key][()].astype(np.float16))
    untouched(path)
    loader = MultiomeLoader(path, batch_size=64, shuffle=False, device="cpu", modalities="all", obs_keys=[])
    got = np.concatenate([b["X"].numpy() for b in loader])
    np.testing.assert_array_equal(got, half.astype(np.float32))


# -- 1b. bad values, found when the batch holding them is assembled ---------------------------------------
def _with_value(base: Path, folder: Path, x_format: str, row: int, value: float, key: str = "X") -> Path:
    """A file (CSR, CSC or dense) whose stored value in ``row`` is ``value``."""
    path = folder / f"value-{x_format}.h5ad"
    if x_format == "csr":
        shutil.copyfile(base, path)
        with h5py.File(path, "r+") as f:
            f[f"{key}/data"][f[f"{key}/indptr"][row]] = value
        return path
    adata = ad.read_h5ad(base)
    matrix = (adata.X if key == "X" else adata.layers["counts"]).toarray()
    matrix[row, np.flatnonzero(matrix[row])[0]] = value
    matrix = sp.csc_matrix(matrix) if x_format == "csc" else matrix
    if key == "X":
        adata.X = matrix
    else:
        adata.layers["counts"] = matrix
    adata.write_h5ad(path)
    return path


@pytest.mark.parametrize("x_format", ["csr", "csc", "dense"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_value_raises_at_its_batch(
    base, tmp_path, untouched, base_x, x_format, value, no_leftovers
):
    """Every batch before the one holding the bad row arrives intact, then a DataValueError names
    the file, the matrix and the row."""
    path = untouched(_with_value(base, tmp_path, x_format, 120, value))
    loader = MultiomeLoader(path, batch_size=50, shuffle=False, device="cpu", obs_keys=[], cache_dir=tmp_path)
    seen = []
    with pytest.raises(DataValueError) as excinfo:
        for batch in loader:
            seen.append(batch)
    assert_clear(excinfo.value, path.name, "X", "row 120", "NaN or infinite")
    assert len(seen) == 2
    for b in seen:
        rows = b["index"].numpy()
        np.testing.assert_array_equal(b["GEX"].numpy(), base_x[rows, :N_GENES])


@pytest.mark.parametrize(
    "transform",
    ["log1p", "normalize_total", {"name": "normalize_total", "log1p": True}, "tfidf"],
    ids=["log1p", "normalize_total", "normalize_total+log1p", "tfidf"],
)
def test_negative_value_under_log_raises_at_its_batch(base, tmp_path, untouched, transform, no_leftovers):
    """A negative count where a log1p is asked: DataValueError naming the row and the transform."""
    path = untouched(_with_value(base, tmp_path, "csr", 77, -3.0, key="layers/counts"))
    loader = MultiomeLoader(
        path, batch_size=50, shuffle=False, device="cpu", layer="counts", transform=transform, obs_keys=[]
    )
    seen = []
    with pytest.raises(DataValueError) as excinfo:
        for batch in loader:
            seen.append(batch)
    assert_clear(excinfo.value, path.name, "layers/counts", "row 77", "negative", "log1p")
    assert len(seen) == 1


@pytest.mark.parametrize("transform", [None, "binarize"])
def test_negative_values_are_fine_without_a_log(base, tmp_path, untouched, transform):
    """Identity and binarize take negative values as they are."""
    path = untouched(_with_value(base, tmp_path, "csr", 77, -3.0, key="layers/counts"))
    loader = MultiomeLoader(
        path, batch_size=50, device="cpu", layer="counts", transform=transform, obs_keys=[]
    )
    assert np.unique(epoch_rows(loader)).size == N_CELLS


@pytest.mark.parametrize("index", [-1, N_GENES + N_PEAKS], ids=["negative", "n_vars"])
@pytest.mark.parametrize("transform", [None, "normalize_total", "tfidf"])
def test_column_index_out_of_range_is_reported(base, tmp_path, untouched, index, transform, no_leftovers):
    """A CSR column index outside [0, n_vars): a clear error, also from the statistics pass that
    normalize_total and tfidf make before the first batch (found by tests/test_fuzz.py)."""

    def corrupt(f):
        f["layers/counts/indices"][f["layers/counts/indptr"][30] + 1] = index

    path = untouched(edited(base, tmp_path, corrupt))
    with pytest.raises(GpuloadError) as excinfo:
        for _ in MultiomeLoader(path, device="cpu", layer="counts", transform=transform, obs_keys=[]):
            pass
    assert_clear(excinfo.value, path.name, "layers/counts", "column index", f"[0, {N_GENES + N_PEAKS})")


@pytest.mark.parametrize("factor", [0.0, np.nan, -1.0, np.inf], ids=["zero", "nan", "negative", "inf"])
def test_bad_size_factor_is_reported_up_front(base, tmp_path, untouched, factor):
    """log1p_size_factor checks every selected size factor before the first batch."""
    path = untouched(edited(base, tmp_path, lambda f: f["obs/GEX_size_factors"].__setitem__(5, factor)))
    with pytest.raises(DataValueError) as excinfo:
        MultiomeLoader(path, device="cpu", layer="counts", transform={"GEX": "log1p_size_factor"})
    assert_clear(excinfo.value, path.name, "GEX_size_factors", "row 5", "> 0")
    # A subset without the bad cell is fine.
    MultiomeLoader(
        path, device="cpu", layer="counts", transform={"GEX": "log1p_size_factor"}, subset=np.arange(10, 50)
    )


# -- 1c. bad arguments -----------------------------------------------------------------------------
BAD_ARGUMENTS = {
    # id: (loader kwargs, error, needles)
    "batch_size=0": ({"batch_size": 0}, ArgumentError, ["batch_size", "positive integer", "0"]),
    "batch_size=-4": ({"batch_size": -4}, ArgumentError, ["batch_size", "positive integer", "-4"]),
    "batch_size=2.5": ({"batch_size": 2.5}, ArgumentError, ["batch_size", "positive integer", "2.5"]),
    "batch_size='8'": ({"batch_size": "8"}, ArgumentError, ["batch_size", "positive integer", "'8'"]),
    "batch_size=None": ({"batch_size": None}, ArgumentError, ["batch_size", "None"]),
    "subset-query-no-match": (
        {"subset": "batch == 'nowhere'"},
        ArgumentError,
        ["reliability.h5ad", "nowhere", "no cells"],
    ),
    "subset-empty-mask": (
        {"subset": np.zeros(N_CELLS, dtype=bool)},
        ArgumentError,
        ["reliability.h5ad", "no cells"],
    ),
    "subset-empty-indices": ({"subset": np.array([], dtype=int)}, ArgumentError, ["no cells"]),
    "subset-bad-column": ({"subset": "nocolumn > 1"}, ArgumentError, ["nocolumn"]),
    "world_size>cells": ({"rank": 0, "world_size": N_CELLS + 1}, ArgumentError, ["world_size=201", "200"]),
    "world_size>subset": (
        {"rank": 0, "world_size": 4, "subset": np.arange(3)},
        ArgumentError,
        ["world_size=4", "3 selected cells"],
    ),
    "world_size='x'": ({"rank": 0, "world_size": "x"}, ArgumentError, ["world_size", "'x'"]),
    "world_size=2.5": ({"rank": 0, "world_size": 2.5}, ArgumentError, ["world_size", "2.5"]),
    "rank=world_size": ({"rank": 2, "world_size": 2}, ArgumentError, ["rank", "2"]),
    "seed='abc'": ({"seed": "abc"}, ArgumentError, ["seed", "'abc'"]),
    "seed=-1": ({"seed": -1}, ArgumentError, ["seed", "-1"]),
    "dtype='float32'": ({"dtype": "float32"}, ArgumentError, ["dtype", "float32"]),
    "device=cuda": (
        {"device": "cuda"},
        DeviceError,
        ["device='cuda'", "cupy", "pip install 'gpuload[gpu-cu12]'"],
    ),
    "device=cuda:1": ({"device": "cuda:1"}, DeviceError, ["cuda:1", "cupy", "gpuload[gpu-cu12]"]),
    "device=cuda:x": ({"device": "cuda:x"}, ArgumentError, ["cuda:x", "'cpu'", "'cuda:N'"]),
    "device=tpu": ({"device": "tpu"}, ArgumentError, ["'tpu'", "'cpu'", "'cuda'"]),
    "transform-unknown": (
        {"transform": "zscore"},
        ArgumentError,
        ["zscore", "log1p", "normalize_total", "binarize", "tfidf", "log1p_size_factor", "identity"],
    ),
    "transform-unknown-in-dict": ({"transform": {"GEX": "zscore"}}, ArgumentError, ["zscore", "log1p"]),
    "transform-bad-parameter": (
        {"transform": {"name": "binarize", "thr": 1}},
        ArgumentError,
        ["binarize", "thr"],
    ),
    "transform-for-unloaded-modality": (
        {"transform": {"RNA": "log1p"}},
        ArgumentError,
        ["RNA", "GEX", "ATAC"],
    ),
    "modality-unknown": ({"modalities": "RNA"}, ArgumentError, ["RNA", "GEX", "ATAC", "all"]),
    "modality-absent": ({"modalities": ("GEX", "ADT")}, ArgumentError, ["ADT", "GEX", "ATAC"]),
    "modalities-empty": ({"modalities": ()}, ArgumentError, ["modalities", "GEX", "ATAC"]),
    "modalities=3": ({"modalities": 3}, ArgumentError, ["modalities", "3"]),
    "layer-unknown": ({"layer": "raw"}, SchemaError, ["'raw'", "counts"]),
    "obs_keys-unknown": ({"obs_keys": ["celltype"]}, ObsKeyError, ["celltype", "cell_type"]),
    "split-unknown": ({"split": "holdout"}, ArgumentError, ["holdout", "train", "test"]),
    "shuffle-unknown": ({"shuffle": "sometimes"}, ArgumentError, ["shuffle", "sometimes"]),
    "prefetch=0": ({"prefetch": 0}, ArgumentError, ["prefetch"]),
    "chunk_size=0": ({"chunk_size": 0}, ArgumentError, ["chunk_size"]),
    "pipeline-unknown": ({"pipeline": "ray"}, ArgumentError, ["pipeline", "ray", "native"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_argument_is_reported(base, untouched, case, no_leftovers):
    """Each bad argument raises its GpuloadError (at construction or, at the latest, at the first
    batch), naming the argument, the value and what is valid."""
    kwargs, error, needles = BAD_ARGUMENTS[case]
    untouched(base)
    kwargs = {"device": "cpu", **kwargs}
    with pytest.raises(GpuloadError) as excinfo:
        loader = MultiomeLoader(base, **kwargs)
        next(iter(loader))
    assert_clear(excinfo.value, *needles)
    assert isinstance(excinfo.value, error), f"{type(excinfo.value).__name__}, expected {error.__name__}"


def test_failed_construction_closes_the_file(base):
    """A loader that raises in ``__init__`` holds no handle on the file it opened, even while the
    exception (and its traceback) is still alive."""

    def open_handles():
        out = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                out += os.readlink(f"/proc/self/fd/{fd}") == str(base.resolve())
        return out

    before = open_handles()
    with pytest.raises(ArgumentError) as excinfo:
        MultiomeLoader(base, device="cpu", modalities="RNA")
    assert excinfo.value is not None
    assert open_handles() == before


# -- 2. the CLI ------------------------------------------------------------------------------------
def _cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["bench", "{missing}"], ["missing.h5ad", "no such file"]),
        (["bench", "{random}"], ["random.h5ad", "not an HDF5 file"]),
        (["bench", "{nofeatures}"], ["nofeatures.h5ad", "feature_types"]),
        (
            ["bench", "{base}", "--device", "cuda", "--batch-size", "8", "--cells", "8", "--seed-cells", "8"],
            ["cupy", "gpuload[gpu-cu12]"],
        ),
        (["train", "{missing}", "--out", "{out}"], ["missing.h5ad", "no such file"]),
        (["train", "{base}", "--device", "cuda", "--out", "{out}"], ["cupy", "gpuload[gpu-cu12]"]),
        (["train", "{base}", "--batch-size", "0", "--out", "{out}"], ["batch_size", "0"]),
        (["train", "{base}", "--epochs", "0", "--out", "{out}"], ["epochs", "0"]),
        (["train", "{nan}", "--epochs", "1", "--device", "cpu", "--out", "{out}"], ["value-csr.h5ad", "NaN"]),
    ],
    ids=[
        "bench-missing",
        "bench-random-bytes",
        "bench-no-feature_types",
        "bench-cuda",
        "train-missing",
        "train-cuda",
        "train-batch-size-0",
        "train-epochs-0",
        "train-nan",
    ],
)
def test_cli_bench_and_train_report_one_line(base, tmp_path, capsys, untouched, argv, needles, no_leftovers):
    """``gpuload bench`` / ``train``: exit code 2, one ``gpuload: error:`` line, no traceback."""
    files = {
        "base": base,
        "missing": tmp_path / "missing.h5ad",
        "random": _random_bytes(base, tmp_path),
        "nofeatures": edited(base, tmp_path, _drop_feature_types, "nofeatures.h5ad"),
        "nan": _with_value(base, tmp_path, "csr", 3, np.nan, key="layers/counts"),
        "out": tmp_path / "out",
    }
    for key in ("base", "random", "nofeatures", "nan"):
        untouched(files[key])
    code, err = _cli(capsys, *(a.format(**files) for a in argv))
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gpuload: error: "), err
    assert [line for line in err.splitlines() if line.startswith("gpuload")] == [last]
    for needle in needles:
        assert needle in last


@pytest.fixture(scope="module")
def cli_runs(base, tmp_path_factory):
    """A few real ``python -m gpuload`` processes, started together (each imports torch)."""
    d = tmp_path_factory.mktemp("cli")
    missing, truncated = d / "missing.h5ad", _truncated(base, d)
    commands = {
        "info-missing": ["info", missing],
        "info-truncated": ["info", truncated],
        "debug-info-missing": ["--debug", "info", missing],
        "train-cuda": ["train", base, "--device", "cuda", "--out", d / "out"],
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "gpuload", *map(str, argv)],
            cwd=d,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in commands.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        results[name] = (proc.returncode, out, err)
    return results


@pytest.mark.parametrize(
    "name,needles",
    [
        ("info-missing", ["missing.h5ad", "no such file"]),
        ("info-truncated", ["truncated.h5ad", "truncated"]),
        ("train-cuda", ["cupy", "pip install 'gpuload[gpu-cu12]'"]),
    ],
)
def test_cli_process_exit_code_and_stderr(cli_runs, name, needles):
    """In a real process: exit status 2 and exactly one ``gpuload: error:`` line on stderr."""
    code, _out, err = cli_runs[name]
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("gpuload: error: "), err
    assert sum(line.startswith("gpuload") for line in lines) == 1
    for needle in needles:
        assert needle in lines[-1]


def test_cli_debug_shows_the_traceback(cli_runs):
    """``--debug`` re-raises: a traceback ending in the GpuloadError."""
    code, _out, err = cli_runs["debug-info-missing"]
    assert code == 1
    assert "Traceback" in err and "InputFileError: " in err and "missing.h5ad" in err


# -- 3. faults during iteration -------------------------------------------------------------------------
FAULT_KWARGS = dict(batch_size=8, shuffle=True, seed=1, device="cpu", chunk_size=16, window=2, prefetch=2)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_file_deleted_or_replaced_mid_epoch(base, tmp_path, base_x, how, no_leftovers):
    """Unlinking the file, or ``os.replace``-ing another file onto its path, mid-epoch: the open
    file is still the one being read, so the epoch completes with the original cells."""
    path = tmp_path / "moving.h5ad"
    shutil.copyfile(base, path)
    loader = MultiomeLoader(path, obs_keys=[], **FAULT_KWARGS)
    order = np.concatenate(loader.batch_rows())
    batches = []
    for i, b in enumerate(loader):
        batches.append(b)
        if i == 3:
            if how == "deleted":
                path.unlink()
            else:
                other = write_synthetic(
                    tmp_path / "other.h5ad", n_cells=50, n_genes=20, n_peaks=30, progress=False
                )
                os.replace(other, path)
    np.testing.assert_array_equal(np.concatenate([b["index"].numpy() for b in batches]), order)
    for b in batches:
        check_rows(b, base_x, N_GENES)


def overwrite_scenario(path: str, replacement: str, how: str, original: str) -> dict:
    """Read ``path`` and, after the 4th batch, overwrite it in place (``cp replacement path``) or
    truncate it; what the consumer saw. Runs in a subprocess (see the test)."""
    x = ad.read_h5ad(original).X.toarray()
    loader = MultiomeLoader(path, obs_keys=[], **FAULT_KWARGS)
    batches, error = [], None
    try:
        for i, b in enumerate(loader):
            batches.append(b)
            if i == 3:
                if how == "truncated":
                    os.truncate(path, Path(path).stat().st_size // 3)
                else:
                    shutil.copyfile(replacement, path)
    except Exception as e:
        error = e
    wrong = [
        int(i)
        for i, b in enumerate(batches)
        if not np.array_equal(b["GEX"].numpy(), x[b["index"].numpy(), :N_GENES])
        or not np.array_equal(b["ATAC"].numpy(), x[b["index"].numpy(), N_GENES:])
    ]
    return {
        "error": None if error is None else f"{type(error).__module__}.{type(error).__name__}",
        "message": str(error),
        "batches": len(batches),
        "wrong_batches": wrong,
        "threads_left": wait_until(lambda: not gpuload_threads()) is False,
    }


def _larger(base: Path, folder: Path) -> Path:
    return write_synthetic(
        folder / "larger.h5ad", n_cells=2 * N_CELLS, n_genes=N_GENES, n_peaks=N_PEAKS, seed=9, progress=False
    )


def _same_size(base: Path, folder: Path) -> Path:
    def change_values(f):
        f["X/data"][:] = f["X/data"][:] * 2 + 1

    return edited(base, folder, change_values, "same-size.h5ad")


@pytest.mark.parametrize(
    "how",  # the same-size copy (only fstat tells it apart) runs always; the others in test-all
    [
        pytest.param("copied-over-larger", marks=pytest.mark.slow),
        "copied-over-same-size",
        pytest.param("truncated", marks=pytest.mark.slow),
    ],
)
def test_file_overwritten_in_place_mid_epoch(base, tmp_path, how):
    """``cp other.h5ad FILE`` (a larger file, or one of the same size and layout) or a
    truncation while FILE is read: an InputFileError naming the file, before any batch mixes in
    bytes that are not the original's. Runs in a subprocess: a memory-mapped read of a file
    truncated under it is a SIGBUS, which would end pytest."""
    path = tmp_path / "changing.h5ad"
    shutil.copyfile(base, path)
    replacement = {"copied-over-larger": _larger, "copied-over-same-size": _same_size}.get(how, _missing)(
        base, tmp_path
    )
    code = (
        "import json, sys; from tests.test_reliability import overwrite_scenario as run; "
        "print(json.dumps(run(*sys.argv[1:])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), str(replacement), how, str(base)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"the reading process ended with {proc.returncode}: {proc.stderr[-2000:]}"
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not seen["wrong_batches"], f"batches {seen['wrong_batches']} hold values that are not the file's"
    assert seen["error"] is not None, (
        f"the epoch ended ({seen['batches']} batches) without noticing the change"
    )
    assert seen["error"] == "gpuload.errors.InputFileError", seen
    assert path.name in seen["message"] and "\n" not in seen["message"]
    assert not seen["threads_left"]


class FailingRead:
    """Wraps a read function: the first ``calls`` calls succeed, every later one raises ``error``
    (the time of the first failure is kept)."""

    def __init__(self, calls: int, original, error: BaseException) -> None:
        self.calls, self.original, self.error = calls, original, error
        self.done = 0
        self.failed_at: float | None = None

    def __call__(self, *args, **kwargs):
        if self.done >= self.calls:
            self.failed_at = self.failed_at or time.monotonic()
            raise self.error
        self.done += 1
        return self.original(*args, **kwargs)


@pytest.fixture(scope="module")
def warm(base):
    """One epoch first, so that one-time costs (numba's thread pool) do not count as latency."""
    epoch_rows(MultiomeLoader(base, obs_keys=[], **FAULT_KWARGS))


@pytest.mark.parametrize("where", ["read_block", "h5py-read"])
def test_reader_error_reaches_the_consumer(base, warm, where, monkeypatch, no_leftovers):
    """The background reader fails on its 3rd read: the consumer gets the batches before it, in
    order, then the error, promptly (an OSError from h5py as InputFileError naming the file);
    the threads end, the loader stays usable, and a fresh loader resumed from ``state_dict``
    delivers exactly the missing cells."""
    loader = MultiomeLoader(base, obs_keys=[], **FAULT_KWARGS)
    batches = loader.batch_rows()
    if where == "read_block":
        target, name, injected = loader.store, "read_block", RuntimeError("injected reader failure")
    else:
        target, name, injected = loader.store.reader, "read", OSError("injected I/O error")
    failing = FailingRead(2, getattr(target, name), injected)
    monkeypatch.setattr(target, name, failing)
    seen = []
    with pytest.raises(Exception) as excinfo:
        for b in loader:
            seen.append(b["index"].numpy())
    received = time.monotonic()
    if where == "read_block":
        assert excinfo.value is injected
    else:
        assert isinstance(excinfo.value, InputFileError)
        assert_clear(excinfo.value, base.name, "X", "injected I/O error")
    assert received - failing.failed_at < 2.0, "the error took more than 2 s to reach the consumer"
    assert wait_until(lambda: not gpuload_threads())
    assert 0 < len(seen) < len(batches)
    for got, want in zip(seen, batches, strict=False):
        np.testing.assert_array_equal(got, want)
    state = loader.state_dict()
    resumed = MultiomeLoader(base, obs_keys=[], **FAULT_KWARGS)
    resumed.load_state_dict(state)
    after = [b["index"].numpy() for b in resumed]
    np.testing.assert_array_equal(np.concatenate(seen + after), np.concatenate(batches))
    monkeypatch.undo()  # the fault is gone: the same loader works again
    assert np.unique(epoch_rows(loader)).size == N_CELLS


def test_keyboard_interrupt_in_the_consumer(base, warm, no_leftovers):
    """Ctrl-C inside the training loop: KeyboardInterrupt propagates unchanged, the threads end
    at once, and resuming from ``state_dict`` loses no cell."""
    loader = MultiomeLoader(base, obs_keys=[], **FAULT_KWARGS)
    full = np.concatenate(loader.batch_rows())
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for i, b in enumerate(loader):
            seen.append(b["index"].numpy())
            if i == 5:
                raise KeyboardInterrupt
    assert wait_until(lambda: not gpuload_threads(), timeout=1.0)
    resumed = MultiomeLoader(base, obs_keys=[], **FAULT_KWARGS)
    resumed.load_state_dict(loader.state_dict())
    np.testing.assert_array_equal(np.concatenate(seen + [b["index"].numpy() for b in resumed]), full)


def test_consumer_leaving_early_stops_the_threads(base, no_leftovers):
    """``break``, ``close()`` on the iterator, or dropping an abandoned one: the background
    threads end, and the next iteration is a complete epoch (an abandoned iterator still
    referenced keeps its own run, as a DataLoader iterator does, until it is dropped)."""
    loader = MultiomeLoader(base, obs_keys=[], **{**FAULT_KWARGS, "prefetch": 1})
    for i, _ in enumerate(loader):
        if i == 2:
            break
    assert not gpuload_threads()
    it = iter(loader)
    next(it)
    it.close()
    assert not gpuload_threads()
    abandoned = iter(loader)
    next(abandoned)  # kept alive, never closed
    rows = epoch_rows(loader)
    np.testing.assert_array_equal(np.sort(rows), np.arange(N_CELLS))
    del abandoned
    assert wait_until(lambda: not gpuload_threads())


def test_slow_consumer_gets_the_batches_then_the_error(base, warm, monkeypatch, no_leftovers):
    """The reader fails while the consumer is busy: the batches assembled before the failure
    are still delivered, in order, then the error."""
    loader = MultiomeLoader(base, obs_keys=[], **{**FAULT_KWARGS, "prefetch": 8})
    batches = loader.batch_rows()
    failing = FailingRead(1, loader.store.read_block, RuntimeError("late"))
    monkeypatch.setattr(loader.store, "read_block", failing)
    seen = []
    with pytest.raises(RuntimeError, match="late"):
        for b in loader:
            time.sleep(0.05)
            seen.append(b["index"].numpy())
    assert 0 < len(seen) < len(batches)
    for got, want in zip(seen, batches, strict=False):
        np.testing.assert_array_equal(got, want)


def _sigint_as_in_a_terminal() -> None:
    """The child's SIGINT as a terminal's foreground job has it. A shell starts background jobs
    (``make test &``, a CI runner's) with SIGINT ignored, and Python keeps an ignored SIGINT, so
    without this the signal would never reach the process under test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _group_processes(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def test_sigint_stops_the_cli_promptly(base, tmp_path):
    """A real Ctrl-C (SIGINT) during ``gpuload bench``: exit status 130, 'gpuload: interrupted',
    no traceback, within 15 s, and nothing of its process group left running."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [
        "bench",
        base,
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--seed-cells",
        "8",
        "--cells",
        "1000000000",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuload", *map(str, argv)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_sigint_as_in_a_terminal,
    )
    try:
        for line in proc.stdout:
            if "gpuload (cpu)" in line:
                break
        time.sleep(1.0)  # well inside the endless gpuload timing loop
        assert _group_processes(proc.pid) == [proc.pid]
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        _out, err = proc.communicate(timeout=15)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "gpuload: interrupted"
    assert took < 15
    assert wait_until(lambda: not _group_processes(proc.pid), timeout=5)
