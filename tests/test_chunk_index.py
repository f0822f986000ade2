"""The chunk table walked in C (``H5Dchunk_iter`` with a compiled callback) is exactly h5py's
``chunk_iter`` table on real, anndata-written and h5py-written files (small chunks, unallocated
chunks, compression, an empty dataset), the Python walk takes over when the C walk is refused, and
direct reads through the table equal h5py's."""

from __future__ import annotations

import threading

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from gpuload import open_multiome
from gpuload.formats import chunk_index
from gpuload.formats.chunk_index import chunk_table, chunk_table_in_c, chunk_table_in_python
from gpuload.formats.csr import DirectArray, open_csr_rows

from .conftest import REAL_ATAC, REAL_GEX, REAL_H5MU


def _chunked_1d(file: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    file.visititems(
        lambda _, obj: (
            found.append(obj) if isinstance(obj, h5py.Dataset) and obj.ndim == 1 and obj.chunks else None
        )
    )
    return found


def _assert_walks_agree(dataset: h5py.Dataset) -> np.ndarray:
    in_c, in_python = chunk_table_in_c(dataset), chunk_table_in_python(dataset)
    assert in_c is not None and in_python is not None, dataset.name
    assert in_c.dtype == np.int64 and in_c.shape == in_python.shape, dataset.name
    np.testing.assert_array_equal(in_c, in_python, err_msg=dataset.name)
    np.testing.assert_array_equal(chunk_table(dataset), in_python, err_msg=dataset.name)
    return in_c


def _anndata_file(path, n_cells=400, n_vars=300, chunk=64, dtype=np.float32, seed=1):
    """An .h5ad written by anndata whose every dataset has ``chunk``-value chunks."""
    matrix = sp.random(n_cells, n_vars, density=0.2, format="csr", dtype=dtype, random_state=seed)
    var = pd.DataFrame(
        {"feature_types": ["GEX"] * (n_vars // 3) + ["ATAC"] * (n_vars - n_vars // 3)},
        index=[f"f{i}" for i in range(n_vars)],
    )
    with h5py.File(path, "w") as file:
        ad.io.write_elem(file, "/", ad.AnnData(matrix, var=var), dataset_kwargs={"chunks": (chunk,)})
    return path


@pytest.mark.parametrize("path", [REAL_GEX, REAL_ATAC, REAL_H5MU], ids=lambda p: p.name)
def test_real_files_tables_agree(path):
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is absent)")
    with h5py.File(path, "r") as file:
        datasets = _chunked_1d(file)
        assert any(d.name.endswith("/X/data") for d in datasets)
        for dataset in datasets:  # compressed (the .h5ad pair) and uncompressed (the .h5mu)
            _assert_walks_agree(dataset)


def test_anndata_small_chunks(tmp_path):
    path = _anndata_file(tmp_path / "small_chunks.h5ad")
    with h5py.File(path, "r") as file:
        indices = file["X/indices"]
        table = _assert_walks_agree(indices)
        assert len(table) >= chunk_index.MIN_CHUNKS_FOR_C_WALK  # chunk_table took the C walk
        np.testing.assert_array_equal(table[:, 0], np.arange(len(table)) * indices.chunks[0])
        for dataset in _chunked_1d(file):
            _assert_walks_agree(dataset)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reads_through_the_table_equal_anndata(tmp_path, dtype, rng):
    path = _anndata_file(tmp_path / "reads.h5ad", n_cells=500, chunk=48, dtype=dtype, seed=3)
    expected = ad.read_h5ad(path).X
    with open_multiome(path) as store:
        for rows in (np.arange(500), rng.integers(0, 500, 77), np.array([499, 0, 250, 250])):
            got = store.read_rows(rows)
            np.testing.assert_array_equal(
                sp.hstack([got["GEX"], got["ATAC"]]).toarray(), expected[rows].toarray()
            )


def test_direct_array_reads_equal_h5py(tmp_path, rng):
    path = _anndata_file(tmp_path / "direct.h5ad", chunk=40)
    with h5py.File(path, "r") as file, open(path, "rb", buffering=0) as raw:
        for key in ("X/indices", "X/data"):
            dataset = file[key]
            direct = DirectArray.open_direct(dataset, raw.fileno(), path.stat().st_size)
            assert direct is not None
            whole = dataset[:]
            for lo, hi in [(0, whole.size), (0, 1), (39, 41), (whole.size - 1, whole.size)] + [
                tuple(sorted(rng.integers(0, whole.size, 2))) for _ in range(20)
            ]:
                out = np.empty(hi - lo, dtype=dataset.dtype)
                direct.read_into(lo, hi, out)
                np.testing.assert_array_equal(out, whole[lo:hi])


def test_unallocated_chunks(tmp_path):
    path = tmp_path / "holes.h5"
    with h5py.File(path, "w") as file:
        holes = file.create_dataset("holes", shape=(16_000,), chunks=(16,), dtype=np.float32, fillvalue=7)
        for start in range(0, 16_000, 48):  # one chunk of every three written
            holes[start : start + 16] = np.arange(16, dtype=np.float32) + start
    with h5py.File(path, "r") as file, open(path, "rb", buffering=0) as raw:
        holes = file["holes"]
        table = _assert_walks_agree(holes)
        np.testing.assert_array_equal(table[:, 0], np.arange(0, 16_000, 48))
        assert DirectArray.open_direct(holes, raw.fileno(), path.stat().st_size) is None  # fill: HDF5's


def test_compressed_contiguous_and_empty(tmp_path):
    path = tmp_path / "layouts.h5"
    values = np.arange(20_000, dtype=np.int64)
    with h5py.File(path, "w") as file:
        file.create_dataset("gzip", data=values, chunks=(50,), compression="gzip")
        file.create_dataset("contiguous", data=values)
        file.create_dataset("empty", shape=(0,), chunks=(16,), maxshape=(None,), dtype=np.int32)
        file.create_dataset("big_endian", data=values.astype(">i8"), chunks=(50,))
    size = path.stat().st_size
    with h5py.File(path, "r") as file, open(path, "rb", buffering=0) as raw:
        assert len(_assert_walks_agree(file["gzip"])) == 400
        assert DirectArray.open_direct(file["gzip"], raw.fileno(), size) is None  # filters: h5py reads
        assert len(_assert_walks_agree(file["big_endian"])) == 400
        assert _assert_walks_agree(file["empty"]).shape == (0, 2)
        empty = DirectArray.open_direct(file["empty"], raw.fileno(), size)
        assert empty is not None and empty.offsets.size == 0
        contiguous = DirectArray.open_direct(file["contiguous"], raw.fileno(), size)
        assert contiguous is not None and contiguous.offsets.tolist() == [file["contiguous"].id.get_offset()]
        out = np.empty(1000, dtype=np.int64)
        contiguous.read_into(12_345, 13_345, out)
        np.testing.assert_array_equal(out, values[12_345:13_345])


def test_python_walk_when_the_c_walk_is_refused(tmp_path, monkeypatch):
    path = _anndata_file(tmp_path / "refused.h5ad")
    with h5py.File(path, "r") as file:
        expected = {k: chunk_table_in_c(file[k]) for k in ("X/indices", "X/data")}
    monkeypatch.setattr(chunk_index, "hdf5_chunk_iter", lambda: None)  # no H5Dchunk_iter found
    with h5py.File(path, "r") as file:
        for key, table in expected.items():
            assert chunk_table_in_c(file[key]) is None
            np.testing.assert_array_equal(chunk_table(file[key]), table)
        reader = open_csr_rows(path, "X", file["X"], (400, 300))
        try:
            assert all(isinstance(a, DirectArray) for a in (reader.indices, reader.data))
            block = reader.read(np.arange(400))
        finally:
            reader.close()
    np.testing.assert_array_equal(block.data, ad.read_h5ad(path).X.data)


def test_walks_from_several_threads(tmp_path):
    """Readers open files from their own threads: the walk holds h5py's lock, compiles once."""
    paths = [_anndata_file(tmp_path / f"thread{i}.h5ad", seed=i) for i in range(4)]
    expected = {}
    for path in paths:
        with h5py.File(path, "r") as file:
            expected[path] = chunk_table_in_python(file["X/data"])
    mismatches: list[str] = []

    def walk(path):
        with h5py.File(path, "r") as file:
            for _ in range(20):
                if not np.array_equal(chunk_table(file["X/data"]), expected[path]):
                    mismatches.append(str(path))

    threads = [threading.Thread(target=walk, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mismatches == []
