"""Shared fixtures: small synthetic files written by gpuload's generator through anndata, and
the REAL 500-cell BMMC starter files from ../shared (skipped, with the reason, where they are
absent); the faces every face-parametrised test runs on, gpuload's threads, torchrun."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from gpuload.bmmc.synth import write_synthetic
from gpuload.device import SimulatedCudaBackend, simulator_enabled
from gpuload.kernels import threads as kernel_threads

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_GEX = REAL_DATA / "bmmc_multiome_starter_gex.h5ad"
REAL_ATAC = REAL_DATA / "bmmc_multiome_starter_atac.h5ad"
REAL_H5MU = REAL_DATA / "bmmc_multiome_starter.h5mu"
FACES = ["cpu", pytest.param("cudasim", marks=pytest.mark.cudasim)]
SMALL = {"n_cells": 600, "n_genes": 120, "n_peaks": 900}
PARTS = (0, 250, 420, 600)  # the small file cut in three (the ``parts`` fixture)
# The ``tiny_h5ad`` file: narrow, since the simulator runs every CUDA thread in Python.
TINY = {"n_cells": 120, "n_genes": 30, "n_peaks": 90}


def pytest_collection_modifyitems(config, items):
    skip_sim = pytest.mark.skip(
        reason="needs NUMBA_ENABLE_CUDASIM=1 before numba is imported (make test sets it)"
    )
    skip_gpu = pytest.mark.skip(reason="needs a real NVIDIA GPU")
    from gpuload.device import gpu_available

    for item in items:
        if "cudasim" in item.keywords and not simulator_enabled():
            item.add_marker(skip_sim)
        if "gpu" in item.keywords and not gpu_available():
            item.add_marker(skip_gpu)


def file_digest(path: Path) -> tuple[str, int]:
    """Content hash and mtime: what 'the input is never touched' is checked against."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), os.stat(path).st_mtime_ns


def face_cells(device: str, n_cells: int) -> dict:
    """Loader keywords for a face: the simulator runs each CUDA thread in Python, so it gets
    every 20th of the ``n_cells`` cells; the other faces get all."""
    return {"subset": np.arange(0, n_cells, 20)} if device == "cudasim" else {}


def gpuload_threads() -> list[threading.Thread]:
    """The background threads of gpuload's runs (``gpuload-reader-N``, ``gpuload-assembler-N``),
    which must end with their run; not the process-wide kernel pool, idle between kernels."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("gpuload-") and not t.name.startswith(kernel_threads.POOL_NAME)
    ]


def torchrun(nproc: int) -> list[str]:
    """The command that starts ``nproc`` ranks under ``torch.distributed.run`` on a free port
    (its static rendezvous hangs on ``--master-port 0``); the script and its arguments follow."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(port),
    ]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def synthetic(data_dir) -> Callable[..., Path]:
    """``synthetic(name, **shape)``: a synthetic file written once per session under ``name``
    (gpuload's generator through anndata, no progress bar); one name is one file."""

    def write(name: str, **shape) -> Path:
        path = data_dir / name
        return path if path.exists() else write_synthetic(path, progress=False, **shape)

    return write


@pytest.fixture(scope="session")
def small_h5ad(synthetic) -> Path:
    """600 cells x (120 genes + 900 peaks), CSR float32."""
    return synthetic("small.h5ad", **SMALL, seed=1)


@pytest.fixture(scope="session")
def tiny_h5ad(synthetic) -> Path:
    """120 cells x (30 genes + 90 peaks), CSR float32: for the simulated GPU face."""
    return synthetic("tiny.h5ad", **TINY, seed=5)


def recording_backend() -> SimulatedCudaBackend:
    """A simulated GPU face whose ledger records from the start: the happens-before checker and
    the stream tests need every operation."""
    backend = SimulatedCudaBackend()
    backend.ledger.record = True
    return backend


@pytest.fixture(scope="session")
def small_adata(small_h5ad) -> ad.AnnData:
    return ad.read_h5ad(small_h5ad)


@pytest.fixture(scope="session")
def parts(small_adata, data_dir) -> list[Path]:
    """The small file cut in three: CSR float32, CSC float32, dense float64."""
    paths = []
    for i, (start, stop) in enumerate(zip(PARTS[:-1], PARTS[1:], strict=True)):
        part = small_adata[start:stop].copy()
        part.obsm["X_pca"] = np.arange(part.n_obs * 2, dtype=np.float64).reshape(-1, 2) + start * 2
        if i == 1:
            part.X = sp.csc_matrix(part.X)
        if i == 2:
            part.X = part.X.toarray().astype(np.float64)
        paths.append(data_dir / f"part{i}.h5ad")
        part.write_h5ad(paths[-1])
    return paths


VARIANTS = {
    "csr-f32": {"x_format": "csr"},
    "csr-f64-gzip": {"x_format": "csr", "dtype": "float64", "compression": "gzip"},
    "csc-f32": {"x_format": "csc"},
    "csc-f64-lzf": {"x_format": "csc", "dtype": "float64", "compression": "lzf"},
    "dense-f32": {"x_format": "dense"},
    "dense-f64-gzip": {"x_format": "dense", "dtype": "float64", "compression": "gzip"},
}


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def variant_h5ad(request, synthetic) -> Path:
    """The same cells in every on-disk encoding gpuload supports."""
    return synthetic(
        f"variant-{request.param}.h5ad",
        n_cells=300,
        n_genes=60,
        n_peaks=400,
        seed=2,
        **VARIANTS[request.param],
    )


@pytest.fixture(scope="session")
def real_gex() -> Path:
    if not REAL_GEX.exists():
        pytest.skip(f"{REAL_GEX} not present")
    return REAL_GEX


@pytest.fixture(scope="session")
def real_h5mu() -> Path:
    if not REAL_H5MU.exists():
        pytest.skip(f"{REAL_H5MU} not present")
    return REAL_H5MU


@pytest.fixture(scope="session")
def real_pair() -> tuple[ad.AnnData, ad.AnnData]:
    """The real GEX and ATAC starter files as anndata reads them (tests copy before changing)."""
    if not (REAL_GEX.exists() and REAL_ATAC.exists()):
        pytest.skip(f"the real starter pair is not in {REAL_DATA} (../shared is absent)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the starter files' old categorical encoding
        return ad.read_h5ad(REAL_GEX), ad.read_h5ad(REAL_ATAC)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """CSC sidecars go to a per-test folder, never to the user's ~/.cache."""
    monkeypatch.setenv("GPULOAD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models gain nothing from intra-op threads, and on a busy 2-core runner OpenMP's
    spinning threads make a training step several times slower: one torch thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
