"""Past one machine, planned without reading: 64 DDP ranks over 1,000 files.

torchrun across nodes is the engine; what must hold before any process reads a row is the plan:
the ranks' shares of an epoch are disjoint, complete and equal (as ``DistributedSampler``'s), and a
rank opens only the files its share lies in. This builds every rank's loader over one store of
1,000 files (hard links to one small file: the same headers a rank of a real atlas reads), checks
the shares, that planning opened no file's matrix, and that a rank that reads opens only its files.
Planning time and memory per rank are printed (``-s``) for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os
import time
import tracemalloc

import numpy as np
import pytest

from gpuload import MultiomeLoader
from gpuload.bmmc.synth import write_synthetic
from gpuload.formats import open_multiome
from gpuload.formats.store import file_of

WORLD, FILES, CELLS_PER_FILE, BATCH = 64, 1000, 64, 32


@pytest.fixture(scope="module")
def thousand_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas")
    base = write_synthetic(
        folder / "plate.h5ad", n_cells=CELLS_PER_FILE, n_genes=20, n_peaks=40, progress=False
    )
    paths = [folder / f"plate{i:04d}.h5ad" for i in range(FILES)]
    for path in paths:
        os.link(base, path)
    return paths


def test_64_ranks_over_1000_files_plan_disjoint_complete_equal_shares(thousand_files):
    started = time.perf_counter()
    with open_multiome(thousand_files) as store:
        opened = time.perf_counter() - started
        n = store.n_cells
        assert n == FILES * CELLS_PER_FILE
        shares, files_of_rank, seconds, traced = [], [], [], []
        for rank in range(WORLD):
            tracemalloc.start()
            t0 = time.perf_counter()
            loader = MultiomeLoader(
                store, batch_size=BATCH, rank=rank, world_size=WORLD, shuffle=True, obs_keys=[], device="cpu"
            )
            rows = np.concatenate(loader.batch_rows(epoch=0))
            seconds.append(time.perf_counter() - t0)
            traced.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            shares.append(rows)
            files_of_rank.append(set(np.unique(file_of(store.file_starts, rows))))
            loader.close()
        assert store.reader.touched == set(), "planning opened a file's matrix"

        sizes = {s.size for s in shares}
        assert sizes == {-(-n // WORLD)}, "equal shares"
        every = np.concatenate(shares)
        assert np.array_equal(np.unique(every), np.arange(n)), "complete"
        padding = every.size - n  # DistributedSampler pads with the epoch's first cells
        assert every.size - np.unique(every).size == padding < WORLD, "disjoint (but for the padding)"

        # A rank that reads opens only the files its share lies in.
        loader = MultiomeLoader(
            store, batch_size=BATCH, rank=5, world_size=WORLD, shuffle=True, obs_keys=[], device="cpu"
        )
        for _ in loader:
            pass
        loader.close()
        assert store.reader.touched == files_of_rank[5]
    per_rank_files = [len(f) for f in files_of_rank]
    print(
        f"\n{WORLD} ranks over {FILES} files ({n} cells): open {opened:.2f} s "
        f"({1000 * opened / FILES:.1f} ms/file); planning per rank median "
        f"{1000 * np.median(seconds):.1f} ms, "
        f"peak traced {np.median(traced) / 2**20:.2f} MiB ({np.median(traced) / n:.1f} B/cell); "
        f"files per rank {min(per_rank_files)}-{max(per_rank_files)}"
    )
