"""Registers, spills, shared memory and theoretical occupancy of the CUDA kernels, no GPU needed.

    NUMBA_ENABLE_CUDASIM=0 python benchmarks/kernel_resources.py [--json]

numba compiles each kernel to PTX (NVVM) for sm_80 and sm_90 with the argument types the
assembler launches it with, under the launch bounds of its dispatcher for that output dtype
(:class:`gpuload.kernels.cuda.PerOutputDtype`: threads per block, blocks per SM); ``ptxas -v``
(on PATH, else the one in the nvidia-cuda-nvcc wheel) assembles it and reports registers, spills
and static shared memory. Occupancy is the CUDA occupancy calculator's, from those and the launch
geometry of :func:`gpuload.kernels.cuda.launch`: resident blocks per SM are the fewest allowed by
threads (2,048 per SM), blocks (32 per SM), registers (65,536 per SM, allocated per warp in units
of 256) and shared memory (164 KiB on sm_80, 228 KiB on sm_90, 1 KiB reserved per block, 128-byte
units); occupancy is their warps over 64. ``f64_instructions`` counts PTX lines computing in
float64 (none for float32 data and output).
``--json`` prints the rows as JSON (what tests/test_kernels.py checks).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import types
from pathlib import Path

import numpy as np

ARCHES = {(8, 0): 164 * 1024, (9, 0): 228 * 1024}  # compute capability: shared memory per SM
THREADS_PER_SM, BLOCKS_PER_SM, WARPS_PER_SM, REGISTERS_PER_SM = 2048, 32, 64, 65536
OBS = "float32[:, ::1], float32[:, ::1], int64[:, ::1], int64[:, ::1], uint8[:, ::1], uint8[:, ::1]"
# (data, index, output) dtypes: float32 files, float64 files, float64 values into float32 output.
DTYPES = (("float32", "int32", "float32"), ("float64", "int64", "float64"), ("float64", "int32", "float32"))


def signatures(data: str, index: str, out: str) -> dict[str, str]:
    """Each kernel's argument types as the assembler launches it (C-contiguous arrays)."""
    head = f"int64[::1], {index}[::1], {data}[::1], int64[::1], int64[::1], int32[::1]"
    values = f"int64[::1], {out}[::1], {out}[:, ::1], {out}[::1]"  # code, threshold, scale, weight
    tail = f"uint8[:, ::1], int32[::1], {OBS}"  # present, status, obs
    return {
        "gather_rows": f"{head}, int64[::1], {values}, int64[:, ::1], {out}[::1], {tail}",
        "fill_rows": f"{head}, {values}, int64[:, ::1], int64[::1], {out}[::1], {tail}",
    }


def find_ptxas() -> str | None:
    """ptxas on PATH, else the nvidia-cuda-nvcc wheel's."""
    found = shutil.which("ptxas")
    if found:
        return found
    spec = importlib.util.find_spec("nvidia.cuda_nvcc")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "ptxas"
        if candidate.exists():
            return str(candidate)
    return None


def assemble(ptxas: str, ptx: str, cc: tuple[int, int]) -> dict[str, int]:
    """Registers, spill bytes and static shared memory ptxas reports for one entry."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        arch = f"sm_{cc[0]}{cc[1]}"
        report = subprocess.run(
            [ptxas, f"-arch={arch}", "-v", "-o", os.devnull, f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stderr

    def number(pattern: str) -> int:
        found = re.search(pattern, report)
        return int(found.group(1)) if found else 0

    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "stack": number(r"(\d+) bytes stack frame"),
        "smem": number(r"(\d+) bytes smem"),
    }


def occupancy(registers: int, threads: int, smem: int, smem_per_sm: int) -> float:
    """Theoretical occupancy (resident warps / 64) of blocks of ``threads``."""
    warps = -(-threads // 32)
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = (REGISTERS_PER_SM // per_warp) // warps if registers else BLOCKS_PER_SM
    by_smem = smem_per_sm // (-(-(smem + 1024) // 128) * 128)
    blocks = min(THREADS_PER_SM // (warps * 32), BLOCKS_PER_SM, by_registers, by_smem)
    return blocks * warps / WARPS_PER_SM


def measure() -> list[dict]:
    """One row per (kernel, dtypes, architecture); ptxas-derived columns are None without ptxas."""
    import numba.cuda.dispatcher as dispatcher

    # Device functions ask the current device for its compute capability; there may be none.
    current = types.SimpleNamespace(compute_capability=(8, 0))
    dispatcher.get_current_device = lambda: current
    from numba import cuda

    from gpuload.kernels import cuda as kernels

    threads = {"gather_rows": kernels.THREADS, "fill_rows": kernels.WARP * kernels.ROWS_PER_BLOCK}
    ptxas = find_ptxas()
    rows = []
    for cc, smem_per_sm in ARCHES.items():
        current.compute_capability = cc
        for dtypes in DTYPES:
            for name, signature in signatures(*dtypes).items():
                kernel = getattr(kernels, name)
                dtype = np.dtype(dtypes[2])
                bounds = kernel.launch_bounds[dtype]
                source = kernel.dispatchers[dtype].py_func
                ptx, _ = cuda.compile_ptx(source, signature, cc=cc, launch_bounds=bounds)
                row = {"kernel": name, "dtypes": "/".join(dtypes), "arch": f"sm_{cc[0]}{cc[1]}"}
                row["threads"] = threads[name]
                row["launch_bounds"] = list(bounds)
                row["f64_instructions"] = sum(".f64" in line for line in ptx.splitlines())
                if ptxas:
                    row.update(assemble(ptxas, ptx, cc))
                    row["occupancy"] = occupancy(row["registers"], threads[name], row["smem"], smem_per_sm)
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = measure()
    if args.json:
        print(json.dumps({"ptxas": find_ptxas(), "rows": rows}))
        return
    print(f"ptxas: {find_ptxas()}")
    columns = (
        "kernel",
        "dtypes",
        "arch",
        "threads",
        "launch_bounds",
        "registers",
        "spill_stores",
        "spill_loads",
        "stack",
        "smem",
        "f64_instructions",
    )
    print("| " + " | ".join((*columns, "occupancy")) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for row in rows:
        cells = [str(row.get(c, "n/a")) for c in columns]
        cells[columns.index("launch_bounds")] = "{}, {}".format(*row["launch_bounds"])
        cells.append(f"{row['occupancy']:.1%}" if "occupancy" in row else "n/a")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
