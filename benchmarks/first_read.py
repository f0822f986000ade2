"""What a file's first read costs: opening its CSR row reader, over hard links of one file.

    python benchmarks/first_read.py FILE [--links 300] [--key X] [--loader-batches 400]

A file of several is opened lazily: its row reader (``indptr`` checked, each array's chunk table)
is built at the first read of one of its rows. FILE is hard-linked ``--links`` times into a
temporary folder beside it (one inode: the page cache is warm, as in ``scale.py``).

Alone: each link opened with h5py, each part timed on links of its own, so that every timing
starts from a fresh HDF5 handle (its metadata cache cold). Prints the median per file, in ms, of:
the whole reader (``open_csr_rows``), ``checked_indptr``, and the two arrays' chunk tables walked
in C (``H5Dchunk_iter``) and by h5py's ``chunk_iter``.

In a loader (``--loader-batches N``): a fresh ``MultiomeLoader`` over all the links (B = 256,
``obs_keys=["cell_type"]``, CPU face) runs N batches after its first, with the csr entry of
``ROW_READERS`` wrapped in a timer: each reader open as the reader thread sees it (GIL waits
included), and the batches' wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's gpuload

from gpuload import MultiomeLoader  # noqa: E402
from gpuload.formats.csr import checked_indptr, open_csr_rows  # noqa: E402
from gpuload.formats.encoding import ROW_READERS  # noqa: E402

try:
    from gpuload.formats.chunk_index import chunk_table_in_c, chunk_table_in_python
except ImportError:  # a checkout from before the C walk (92c585a and older): the reader alone
    chunk_table_in_c = chunk_table_in_python = None


def _median_ms(files: list[h5py.File], part: Callable[[h5py.File], object]) -> float:
    times = []
    for file in files:
        start = time.perf_counter()
        result = part(file)
        times.append(time.perf_counter() - start)
        if hasattr(result, "close"):
            result.close()
    return float(np.median(times) * 1e3)


def parts_alone(paths: list[Path], key: str) -> None:
    files = [h5py.File(path, "r") for path in paths]
    shape = tuple(int(n) for n in files[0][key].attrs["shape"])
    arrays = ("indices", "data")
    open_csr_rows(paths[0], key, files[0][key], shape).close()  # compile / load once
    parts: dict[str, Callable[[h5py.File], object]] = {
        "open_csr_rows (the first read's reader)": lambda f: open_csr_rows(f.filename, key, f[key], shape),
        "  checked_indptr": lambda f: checked_indptr(f[key], shape[0] + 1, f.filename),
    }
    if chunk_table_in_c is not None and chunk_table_in_python is not None:
        in_c, in_python = chunk_table_in_c, chunk_table_in_python
        parts["  chunk tables in C (H5Dchunk_iter)"] = lambda f: [in_c(f[key][a]) for a in arrays]
        parts["  chunk tables by h5py's chunk_iter"] = lambda f: [in_python(f[key][a]) for a in arrays]
    share = (len(files) - 1) // len(parts)
    chunks = sum(files[0][key][a].id.get_num_chunks() for a in arrays)
    print(f"{shape[0]:,} cells, {chunks:,} chunks in indices + data; median of {share} files each")
    for i, (name, part) in enumerate(parts.items()):
        print(f"{name:42s} {_median_ms(files[1 + i * share : 1 + (i + 1) * share], part):7.3f} ms")
    for file in files:
        file.close()


def in_a_loader(paths: list[Path], batches: int) -> None:
    opens: list[float] = []
    inner = ROW_READERS["csr"]

    def timed_open(*args, **kwargs):
        start = time.perf_counter()
        reader = inner(*args, **kwargs)
        opens.append(time.perf_counter() - start)
        return reader

    ROW_READERS["csr"] = timed_open
    try:
        loader = MultiomeLoader(paths, batch_size=256, obs_keys=["cell_type"], device="cpu", seed=1)
        batch_iter = iter(loader)
        next(batch_iter)
        first = len(opens)
        start = time.perf_counter()
        for _ in range(batches):
            next(batch_iter)
        wall = time.perf_counter() - start
        loader.close()
    finally:
        ROW_READERS["csr"] = inner
    timed = np.array(opens[first:]) * 1e3
    p50, p90, p99 = np.percentile(timed, [50, 90, 99])
    print(
        f"{batches} batches: {batches * 256 / wall:,.0f} cells/s; {timed.size} reader opens in them, "
        f"{timed.sum() / 1e3:.2f} s in all, p50 / p90 / p99 {p50:.1f} / {p90:.1f} / {p99:.1f} ms "
        f"(the first batch's {first}: {sum(opens[:first]) * 1e3:.0f} ms)"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path)
    p.add_argument("--links", type=int, default=300)
    p.add_argument("--key", default="X", help="the csr_matrix group")
    p.add_argument("--loader-batches", type=int, default=0, help="time N batches of a loader instead")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.file.parent) as folder:  # a hard link: same file system
        paths = [Path(folder) / f"link{i:05d}.h5ad" for i in range(args.links)]
        for path in paths:
            os.link(args.file, path)
        print(f"{args.file.name} x {args.links} hard links")
        if args.loader_batches:
            in_a_loader(paths, args.loader_batches)
        else:
            parts_alone(paths, args.key)


if __name__ == "__main__":
    main()
