"""What a file's first read costs: opening its CSR row reader, over hard links of one file.

    python benchmarks/first_read.py FILE [--links 300] [--key X]

A file of several is opened lazily: its row reader (``indptr`` checked, each array's chunk table)
is built at the first read of one of its rows. FILE is hard-linked ``--links`` times into a
temporary folder (one inode: the page cache is warm, as in ``scale.py``), each link opened with
h5py, and each part timed on links of its own, so that every timing starts from a fresh HDF5
handle (its metadata cache cold). Prints the median per file, in ms, of: the whole reader
(``open_csr_rows``), ``checked_indptr``, and the two arrays' chunk tables walked in C
(``H5Dchunk_iter``) and by h5py's ``chunk_iter``.
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

from gpuload.formats.csr import checked_indptr, open_csr_rows  # noqa: E402

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path)
    p.add_argument("--links", type=int, default=300)
    p.add_argument("--key", default="X", help="the csr_matrix group")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.file.parent) as folder:  # a hard link: same file system
        paths = [Path(folder) / f"link{i:05d}.h5ad" for i in range(args.links)]
        for path in paths:
            os.link(args.file, path)
        files = [h5py.File(path, "r") for path in paths]
        shape = tuple(int(n) for n in files[0][args.key].attrs["shape"])
        arrays = ("indices", "data")
        open_csr_rows(paths[0], args.key, files[0][args.key], shape).close()  # compile / load once
        parts: dict[str, Callable[[h5py.File], object]] = {
            "open_csr_rows (the first read's reader)": lambda f: open_csr_rows(
                f.filename, args.key, f[args.key], shape
            ),
            "  checked_indptr": lambda f: checked_indptr(f[args.key], shape[0] + 1, f.filename),
        }
        if chunk_table_in_c is not None and chunk_table_in_python is not None:
            in_c, in_python = chunk_table_in_c, chunk_table_in_python
            parts["  chunk tables in C (H5Dchunk_iter)"] = lambda f: [in_c(f[args.key][a]) for a in arrays]
            parts["  chunk tables by h5py's chunk_iter"] = lambda f: [
                in_python(f[args.key][a]) for a in arrays
            ]
        share = (len(files) - 1) // len(parts)
        chunks = sum(files[0][args.key][a].id.get_num_chunks() for a in arrays)
        title = f"{args.file.name}: {shape[0]:,} cells, {chunks:,} chunks in indices + data"
        print(f"{title}; median of {share} files each")
        for i, (name, part) in enumerate(parts.items()):
            print(f"{name:42s} {_median_ms(files[1 + i * share : 1 + (i + 1) * share], part):7.3f} ms")
        for file in files:
            file.close()


if __name__ == "__main__":
    main()
