"""The gather kernels: CUDA (under the simulator) == CPU twin == independent references.

References: scipy ``toarray`` for the gather, scanpy ``normalize_total`` + ``log1p``, muon
``atac.pp.binarize`` / ``atac.pp.tfidf`` (both flavours), and the REAL BMMC GEX file, whose X
equals ln(1 + counts / size_factors).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuload import MultiomeLoader
from gpuload.assembly import BatchAssembler
from gpuload.device import RunRings, get_backend
from gpuload.errors import DataValueError
from gpuload.fetch import DeviceBlock
from gpuload.formats import Modality
from gpuload.kernels import arithmetic as ops
from gpuload.kernels.cpu import count_modalities
from gpuload.plan import Layout, LoaderPlan
from gpuload.plan.layout import column_destinations
from gpuload.plan.obs import ObsColumns

FACES = ["cpu", pytest.param("cudasim", marks=pytest.mark.cudasim)]
ROOT = Path(__file__).resolve().parents[1]


def gather(
    face,
    csr,
    rows,
    groups,
    codes,
    row_scale,
    col_weight=None,
    threshold=0.0,
    output="dense",
    dtype=torch.float32,
):
    """Run one face's kernel on a CSR matrix through the assembler; ``groups`` lists each
    modality's columns. Returns (each modality's block: dense, or (crow, col, values) for
    ``output="sparse_csr"``; present [rows, modalities]; the error the assembler reports or None)."""
    backend = get_backend(face)
    n_cells, n_vars = csr.shape
    widths = tuple(len(c) for c in groups)
    layout = Layout(
        names=tuple(f"m{i}" for i in range(len(groups))),
        widths=widths,
        col_dest=column_destinations(n_vars, [np.asarray(c, np.int64) for c in groups]),
        mod_code=np.array(codes, np.int64),
        mod_threshold=np.full(len(groups), threshold),
        col_weight=np.ones(n_vars, np.float32) if col_weight is None else col_weight.astype(np.float32),
    )
    plan = LoaderPlan(
        where="test.h5ad:X",
        files=("test.h5ad",),
        file_starts=np.array([0, n_cells]),
        key="X",
        deliver_file=False,
        n_vars=n_vars,
        modalities=tuple(
            Modality(n, np.asarray(c, np.int64)) for n, c in zip(layout.names, groups, strict=True)
        ),
        positions=np.arange(n_cells),
        transforms={},
        layout=layout,
        row_scale=np.ascontiguousarray(np.broadcast_to(row_scale, (n_cells, len(groups))), dtype=np.float32),
        obs_keys=(),
        obs=ObsColumns.from_frame(pd.DataFrame(index=np.arange(n_cells).astype(str)), []),
        var_names={n: [str(j) for j in c] for n, c in zip(layout.names, groups, strict=True)},
        feature_masks={n: np.ones(len(c), dtype=bool) for n, c in zip(layout.names, groups, strict=True)},
        obsm={},
    )
    assembler = BatchAssembler(plan, backend, dtype=dtype, output=output)
    arrays = (csr.indptr.astype(np.int64), csr.indices, csr.data)
    counts = count_modalities(arrays[0], arrays[1], layout.col_dest, len(groups))  # where sparse rows start
    block = DeviceBlock(
        np.arange(n_cells), *(backend.kernel_view(backend.upload(a, "test")) for a in arrays), counts
    )
    rings = RunRings.for_run(backend, prefetch=1) if backend.streams else None
    assembled = assembler.settle(assembler.assemble(block, [np.asarray(rows, np.int64)], rings))
    if assembled.error is not None:
        return None, None, assembled.error
    (batch,) = assembled.batches
    if output == "dense":
        parts = [batch[name].numpy().copy() for name in layout.names]
    else:
        parts = [
            tuple(t.numpy().copy() for t in (x.crow_indices(), x.col_indices(), x.values()))
            for x in (batch[name] for name in layout.names)
        ]
    present = np.stack([batch["mask"][name].numpy() for name in layout.names], 1)
    return parts, present, None


def random_csr(rng, n_rows, n_cols, density, dtype=np.float32, index_dtype=np.int32):
    m = sp.random(n_rows, n_cols, density=density, format="csr", random_state=rng, dtype=np.float64)
    m.data = np.ceil(m.data * 5).astype(dtype)
    m.indices = m.indices.astype(index_dtype)
    m.indptr = m.indptr.astype(index_dtype)
    return m


@pytest.mark.parametrize("face", FACES)
def test_gather_identity_matches_scipy(face, rng):
    csr = random_csr(rng, 20, 30, 0.2)
    csr.data[csr.indptr[3] : csr.indptr[4]] = 0  # an empty row
    csr.eliminate_zeros()
    assert csr.indptr[3] == csr.indptr[4]
    rows = np.array([5, 3, 3, 19, 0])
    groups = [np.arange(0, 12), np.arange(12, 30)]
    (a, b), present, status = gather(face, csr, rows, groups, [ops.IDENTITY] * 2, np.ones((20, 2)))
    dense = csr[rows].toarray()
    np.testing.assert_array_equal(a, dense[:, :12])
    np.testing.assert_array_equal(b, dense[:, 12:])
    np.testing.assert_array_equal(present, np.stack([(a != 0).any(1), (b != 0).any(1)], 1))
    assert status is None


@pytest.mark.parametrize("face", FACES)
def test_scattered_columns_and_unrequested_columns(face, rng):
    """A modality's columns need not be contiguous; columns of no modality are skipped."""
    csr = random_csr(rng, 10, 25, 0.4)
    groups = [np.array([24, 0, 7, 3]), np.array([10, 11, 20])]
    (a, b), _, _ = gather(face, csr, np.arange(10), groups, [ops.IDENTITY] * 2, np.ones((10, 2)))
    dense = csr.toarray()
    np.testing.assert_array_equal(a, dense[:, groups[0]])
    np.testing.assert_array_equal(b, dense[:, groups[1]])


@pytest.mark.cudasim
def test_every_transform_cuda_equals_cpu(rng):
    csr = random_csr(rng, 12, 16, 0.3, dtype=np.float64, index_dtype=np.int64)
    rows = np.array([11, 0, 4, 4])
    scale = rng.uniform(0.1, 3.0, (12, 1))
    weight = rng.uniform(0.5, 2.0, 16)
    for code in (
        ops.IDENTITY,
        ops.BINARIZE,
        ops.SCALE,
        ops.SCALE_LOG1P,
        ops.TFIDF_LOGTF_LOGIDF,
        ops.TFIDF_LOG_TFIDF,
    ):
        cpu, _, _ = gather("cpu", csr, rows, [np.arange(16)], [code], scale, weight, threshold=1.5)
        sim, _, _ = gather("cudasim", csr, rows, [np.arange(16)], [code], scale, weight, threshold=1.5)
        np.testing.assert_allclose(sim[0], cpu[0], rtol=1e-6, err_msg=f"code {code}")


@st.composite
def csr_cases(draw):
    n_rows = draw(st.integers(1, 8))
    n_cols = draw(st.integers(1, 12))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    index_dtype = draw(st.sampled_from([np.int32, np.int64]))
    csr = random_csr(rng, n_rows, n_cols, density, dtype, index_dtype)
    if draw(st.booleans()):  # unsorted indices within rows
        for r in range(n_rows):
            lo, hi = csr.indptr[r], csr.indptr[r + 1]
            order = rng.permutation(hi - lo)
            csr.indices[lo:hi] = csr.indices[lo:hi][order]
            csr.data[lo:hi] = csr.data[lo:hi][order]
        csr.has_sorted_indices = False
    rows = rng.integers(0, n_rows, draw(st.integers(1, 6)))
    split = draw(st.integers(0, n_cols))
    scale = rng.uniform(0.2, 4.0, (n_rows, 2))
    return csr, rows, split, scale


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csr_cases(), st.sampled_from([ops.IDENTITY, ops.BINARIZE, ops.SCALE, ops.SCALE_LOG1P]))
def test_cpu_twin_properties(case, code):
    csr, rows, split, scale = case
    groups = [np.arange(split), np.arange(split, csr.shape[1])]
    parts, present, status = gather("cpu", csr, rows, groups, [code, code], scale)
    dense = csr[rows].toarray()
    assert status is None
    for m, (part, cols) in enumerate(zip(parts, groups, strict=True)):
        x = dense[:, cols]
        s = scale[rows, m][:, None]
        expected = {
            ops.IDENTITY: x,
            ops.BINARIZE: (x > 0).astype(float),
            ops.SCALE: x * s,
            ops.SCALE_LOG1P: np.log1p(x * s),
        }[code]
        np.testing.assert_allclose(part, expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(present[:, m], (x != 0).any(axis=1))


@pytest.mark.cudasim
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csr_cases())
def test_cuda_simulator_equals_cpu_twin(case):
    csr, rows, split, scale = case
    groups = [np.arange(split), np.arange(split, csr.shape[1])]
    codes = [ops.SCALE_LOG1P, ops.BINARIZE]
    cpu, cpu_present, _ = gather("cpu", csr, rows, groups, codes, scale)
    sim, sim_present, _ = gather("cudasim", csr, rows, groups, codes, scale)
    for a, b in zip(cpu, sim, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6)
    np.testing.assert_array_equal(cpu_present, sim_present)


def wide_rows(rng):
    """Three modalities over 70 scattered columns, 7 rows (more than a sparse block's 4) of 0 to
    all stored values, unsorted within rows: every row spans many dense blocks of threads and
    many sparse rounds, and the rows of one sparse block need different numbers of rounds."""
    dense = np.ceil(rng.uniform(0, 5, (7, 70))) * (
        rng.uniform(size=(7, 70)) < [[0.0], [0.1], [0.3], [0.6], [1.0], [0.2], [0.05]]
    )
    csr = sp.csr_matrix(dense.astype(np.float32))
    for r in range(7):
        lo, hi = csr.indptr[r], csr.indptr[r + 1]
        order = rng.permutation(hi - lo)
        csr.indices[lo:hi], csr.data[lo:hi] = csr.indices[lo:hi][order], csr.data[lo:hi][order]
    columns = rng.permutation(70)
    groups = [columns[:20], np.sort(columns[20:45]), columns[45:68]]  # two columns in no modality
    return csr, np.array([4, 0, 1, 2, 3, 4, 6, 5, 3]), groups


@pytest.mark.cudasim
@pytest.mark.parametrize("threads, dtype", [(3, torch.float32), (8, torch.float32), (8, torch.float64)])
@pytest.mark.parametrize("output", ["dense", "sparse_csr"])
def test_cuda_kernels_equal_cpu_twin_bit_for_bit(monkeypatch, rng, threads, dtype, output):
    """The CUDA kernels (simulated with ``threads`` per dense block / lanes per sparse row, so a
    row spans many of them; float32 and float64 output, each its own dispatcher) write what the
    CPU twin writes, bit for bit; the log transforms within two ulps (the simulator computes
    log1p in float64, numba in the output's precision)."""
    from gpuload.device import simulated

    monkeypatch.setattr(simulated, "SIMULATOR_THREADS", threads)
    csr, rows, groups = wide_rows(rng)
    scale = rng.uniform(0.2, 4.0, (7, 3))
    weight = rng.uniform(0.5, 2.0, 70)
    for codes in (
        [ops.IDENTITY, ops.BINARIZE, ops.SCALE],
        [ops.SCALE_LOG1P, ops.TFIDF_LOGTF_LOGIDF, ops.TFIDF_LOG_TFIDF],
    ):
        args = (csr, rows, groups, codes, scale, weight, 1.5)
        cpu, cpu_present, _ = gather("cpu", *args, output=output, dtype=dtype)
        sim, sim_present, _ = gather("cudasim", *args, output=output, dtype=dtype)
        np.testing.assert_array_equal(sim_present, cpu_present)
        for code, a, b in zip(codes, cpu, sim, strict=True):
            if output == "sparse_csr":  # the same entries in the same (file) order
                np.testing.assert_array_equal(b[0], a[0])
                np.testing.assert_array_equal(b[1], a[1])
                a, b = a[2], b[2]
            assert a.dtype == b.dtype == torch.empty(0, dtype=dtype).numpy().dtype
            if code >= ops.SCALE_LOG1P:
                np.testing.assert_array_max_ulp(b, a, maxulp=2)
            else:
                np.testing.assert_array_equal(b.view(np.int32), a.view(np.int32))


@pytest.mark.cudasim
@pytest.mark.parametrize("output", ["dense", "sparse_csr"])
def test_cuda_loader_equals_cpu_loader_over_read_groups(small_h5ad, output):
    """Through the loader, over several read groups and super-batches: the simulated CUDA
    kernels' batches equal the CPU twin's, bit for bit (transforms without a log)."""
    kwargs = dict(
        batch_size=5,
        shuffle=True,
        seed=3,
        layer="counts",
        subset=np.arange(SIM_CELLS - 4),
        chunk_size=4,
        window=2,
        super_batch_bytes=8_000,
        output=output,
        obs_keys=["GEX_n_counts"],
        transform={"GEX": {"name": "normalize_total", "log1p": False}, "ATAC": "binarize"},
    )
    cpu = list(MultiomeLoader(small_h5ad, device="cpu", **kwargs))
    sim = list(MultiomeLoader(small_h5ad, device="cudasim", **kwargs))
    assert len(cpu) == len(sim) == 4
    for a, b in zip(cpu, sim, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(
            a["obs"]["GEX_n_counts"], b["obs"]["GEX_n_counts"]
        )
        for name in ("GEX", "ATAC"):
            assert torch.equal(a["mask"][name], b["mask"][name])
            x, y = a[name], b[name]
            if output == "sparse_csr":
                assert torch.equal(x.crow_indices(), y.crow_indices())
                assert torch.equal(x.col_indices(), y.col_indices())
                x, y = x.values(), y.values()
            assert torch.equal(x.view(torch.int32), y.view(torch.int32))


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize(
    "bad, code", [(np.nan, ops.NOT_FINITE), (np.inf, ops.NOT_FINITE), (-2.0, ops.NEGATIVE_UNDER_LOG)]
)
def test_bad_values_are_reported_not_silent(face, bad, code):
    csr = sp.csr_matrix(np.array([[1.0, 0, 2], [0, 3.0, 0]], np.float32))
    csr.data[2] = bad  # row 1's only value
    _, _, error = gather(face, csr, np.array([0, 1]), [np.arange(3)], [ops.SCALE_LOG1P], np.ones((2, 1)))
    assert isinstance(error, DataValueError) and "row 1:" in str(error)
    assert ("NaN or infinite" if code == ops.NOT_FINITE else "negative value") in str(error)


# -- transforms end to end, against scanpy and muon ------------------------------------------


def _modality(adata, name, layer="counts"):
    mask = (adata.var["feature_types"] == name).to_numpy()
    return ad.AnnData(X=sp.csr_matrix(adata.layers[layer][:, mask], dtype=np.float64), obs=adata.obs.copy())


def _load(path, face, transform, modality, n_cells=None):
    subset = None if n_cells is None else np.arange(n_cells)
    loader = MultiomeLoader(
        path,
        batch_size=64,
        shuffle=False,
        device=face,
        layer="counts",
        modalities=modality,
        transform=transform,
        subset=subset,
        obs_keys=[],
    )
    return torch.cat([b[modality] for b in loader]).numpy()


SIM_CELLS = 24  # the simulator runs every thread in Python: keep its batches tiny


@pytest.mark.parametrize("face", FACES)
def test_normalize_total_log1p_matches_scanpy(face, small_h5ad, small_adata):
    import scanpy as sc

    n = SIM_CELLS if face == "cudasim" else None
    ref = _modality(small_adata[:n] if n else small_adata, "GEX")
    sc.pp.normalize_total(ref)
    sc.pp.log1p(ref)
    got = _load(small_h5ad, face, "normalize_total", "GEX", n)
    np.testing.assert_allclose(got, ref.X.toarray(), rtol=2e-5, atol=1e-6)
    ref2 = _modality(small_adata, "GEX")
    sc.pp.normalize_total(ref2, target_sum=1e4)
    got2 = _load(small_h5ad, "cpu", {"name": "normalize_total", "target_sum": 1e4, "log1p": False}, "GEX")
    np.testing.assert_allclose(got2, ref2.X.toarray(), rtol=2e-5)


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("flavor", ["muon", "signac"])
def test_tfidf_matches_muon(face, flavor, small_h5ad, small_adata):
    import muon as mu

    n = SIM_CELLS if face == "cudasim" else None
    ref = _modality(small_adata[:n] if n else small_adata, "ATAC")
    if flavor == "muon":
        mu.atac.pp.tfidf(ref)
    else:
        mu.atac.pp.tfidf(ref, log_tf=False, log_idf=False, log_tfidf=True)
    got = _load(small_h5ad, face, {"name": "tfidf", "flavor": flavor}, "ATAC", n)
    np.testing.assert_allclose(got, np.asarray(ref.X.todense()), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("face", FACES)
def test_binarize_matches_muon(face, small_h5ad, small_adata):
    import muon as mu

    n = SIM_CELLS if face == "cudasim" else None
    ref = _modality(small_adata[:n] if n else small_adata, "ATAC")
    mu.atac.pp.binarize(ref)
    np.testing.assert_array_equal(_load(small_h5ad, face, "binarize", "ATAC", n), ref.X.toarray())


@pytest.mark.parametrize("face", FACES)
def test_log1p_size_factor_rebuilds_x_on_the_real_file(face, real_gex):
    """The organisers' X equals ln(1 + counts / size_factors): rebuild it from counts."""
    adata = ad.read_h5ad(real_gex)
    n = SIM_CELLS if face == "cudasim" else 500
    got = _load(real_gex, face, "log1p_size_factor", "GEX", n)
    np.testing.assert_allclose(got, adata.X[:n].toarray(), atol=1e-5)


@pytest.mark.parametrize("bad", [0.0, np.nan, -1.0])
def test_bad_size_factors_raise(tmp_path, small_adata, bad):
    adata = small_adata.copy()
    adata.obs.loc[adata.obs.index[5], "GEX_size_factors"] = bad
    path = tmp_path / "badsf.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(DataValueError, match="GEX_size_factors.*row 5"):
        MultiomeLoader(path, layer="counts", transform={"GEX": "log1p_size_factor"}, device="cpu")


def test_cuda_kernels_compile_for_sm80_and_sm90_without_spills():
    """Real PTX for both CUDA kernels, for sm_80 and sm_90 (NVVM, no GPU), outside the simulator;
    a float32 batch of float32 values runs no float64 instruction. Where ptxas is installed: no
    kernel spills or keeps a stack frame, and both kernels reach 75% theoretical occupancy for
    float32 output (float64 output: 62.5% dense, 56.25% sparse, where their launch bounds put
    them), as benchmarks/kernel_resources.py prints them."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_resources.py"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    rows = report["rows"]
    assert {(row["kernel"], row["arch"]) for row in rows} == {
        (kernel, arch) for kernel in ("gather_rows", "fill_rows") for arch in ("sm_80", "sm_90")
    }
    for row in rows:
        if row["dtypes"] == "float32/int32/float32":
            assert row["f64_instructions"] == 0, row
    if report["ptxas"] is None:
        pytest.skip("no ptxas (CUDA toolkit or the nvidia-cuda-nvcc wheel): registers, spills unchecked")
    floor = {
        "float32": {"gather_rows": 0.75, "fill_rows": 0.75},
        "float64": {"gather_rows": 0.625, "fill_rows": 0.5625},
    }
    for row in rows:
        assert row["spill_stores"] == row["spill_loads"] == row["stack"] == 0, row
        assert row["occupancy"] >= floor[row["dtypes"].rsplit("/", 1)[1]][row["kernel"]], row


@pytest.mark.parametrize("face", FACES)
def test_sparse_output_equals_dense_output(face, small_h5ad):
    """``output="sparse_csr"``: the same transformed values as the dense batch, as CSR."""
    # The simulator runs each of a sparse row's 32 lanes in Python: a third of SIM_CELLS.
    subset = np.arange(SIM_CELLS // 3) if face == "cudasim" else None
    kwargs = dict(
        batch_size=16 if face == "cpu" else 3,
        shuffle=True,
        seed=2,
        device=face,
        layer="counts",
        subset=subset,
        obs_keys=[],
        transform={"GEX": "log1p_size_factor", "ATAC": {"name": "tfidf", "flavor": "signac"}},
    )
    dense = list(MultiomeLoader(small_h5ad, **kwargs))
    sparse = list(MultiomeLoader(small_h5ad, output="sparse_csr", **kwargs))
    for d, s in zip(dense, sparse, strict=True):
        assert torch.equal(d["index"], s["index"]) and torch.equal(d["mask"]["ATAC"], s["mask"]["ATAC"])
        for name in ("GEX", "ATAC"):
            assert s[name].layout == torch.sparse_csr and s[name].shape == d[name].shape
            torch.testing.assert_close(s[name].to_dense(), d[name])
            crow, col = s[name].crow_indices(), s[name].col_indices()
            for r in range(crow.numel() - 1):  # columns in file order within each row
                assert torch.all(col[crow[r] + 1 : crow[r + 1]] > col[crow[r] : crow[r + 1] - 1])


def test_cpu_kernels_split_over_threads_give_what_one_thread_gives(tmp_path):
    """The CPU twin run as blocks of rows taken in turn by several threads writes exactly the
    batches one thread writes; every block runs once; an error in a block is raised once every
    block another thread had started has finished."""
    from gpuload import MultiomeLoader
    from gpuload.bmmc.synth import write_synthetic
    from gpuload.kernels import threads

    path = write_synthetic(tmp_path / "s.h5ad", n_cells=257, n_genes=30, n_peaks=50, seed=5)

    def epoch(num_threads, output):
        loader = MultiomeLoader(
            path, batch_size=64, shuffle=True, seed=2, num_threads=num_threads, output=output
        )
        return [{m: b[m] for m in ("GEX", "ATAC")} for b in loader]

    for output in ("dense", "sparse_csr"):
        for one, three in zip(epoch(1, output), epoch(3, output), strict=True):
            for m in one:
                torch.testing.assert_close(one[m].to_dense(), three[m].to_dense(), rtol=0, atol=0)

    threads.use_threads(3)
    blocks = []
    threads.run_rows(lambda start, stop: blocks.append((start, stop)), (), 100)
    assert sorted(blocks) == [(100 * b // 12, 100 * (b + 1) // 12) for b in range(12)]

    finished = []

    def kernel(start, stop):
        if start == 0:
            time.sleep(0.05)  # the other threads take blocks meanwhile
            raise ValueError("block 0 failed")
        time.sleep(0.01)
        finished.append(start)

    with pytest.raises(ValueError, match="block 0"):
        threads.run_rows(kernel, (), 12)
    assert finished  # other threads' blocks had finished when the error was raised
    threads.use_threads(1)


def test_a_forked_child_runs_cpu_kernels_on_threads_of_its_own(tmp_path):
    """After a fork the parent's pool threads do not exist in the child: its kernels must not
    wait on them (a DataLoader-style worker, a multiprocessing fork)."""
    from gpuload.kernels import threads

    threads.use_threads(2)
    threads.run_rows(lambda start, stop: None, (), 4)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # the child: run a split kernel, exit 0 if it returns
        done = []
        threads.use_threads(2)
        threads.run_rows(lambda start, stop: done.append(start), (), 4)
        os._exit(0 if sorted(done) == [0, 1, 2, 3] else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        waited, status = os.waitpid(pid, os.WNOHANG)
        if waited:
            assert os.waitstatus_to_exitcode(status) == 0
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("the forked child's kernel never finished")
    threads.use_threads(1)
