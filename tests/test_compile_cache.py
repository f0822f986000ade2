"""Compiled kernels cached between processes, and never served stale: an edit to any kernel
source, including the arithmetic the kernels inline from another module, recompiles them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gpuload.kernels import compile_cache

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
import gpuload
from gpuload.kernels import cpu, cuda
loader = gpuload.MultiomeLoader(sys.argv[1], batch_size=16, shuffle=False, device="cpu", layer="counts",
                                obs_keys=[])
batch = next(iter(loader))
stats = cpu.gather_rows.stats
dispatchers = [d for kernel in (cuda.gather_rows, cuda.fill_rows) for d in kernel.dispatchers.values()]
print(json.dumps({"sum": float(batch["GEX"].sum()), "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values()), "package": gpuload.__file__,
                  "cuda_caches": [d.stats.cache_path for d in dispatchers],
                  "cuda_names": [d.py_func.__qualname__ for d in dispatchers]}))
"""


def test_cache_folder_is_keyed_by_sources_and_respects_numba_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    mine = compile_cache.kernel_cache_dir()
    assert mine == tmp_path / "cache" / "numba" / f"gpuload-kernels-{compile_cache.sources_key()}"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    assert compile_cache.kernel_cache_dir().parent == tmp_path / "numba"


def test_edited_arithmetic_is_recompiled_not_served_stale(tmp_path, small_h5ad):
    """Fresh processes on a copy of the package: the second is served from the cache; after an
    edit to arithmetic.py (which cpu.py inlines, unknown to numba's own staleness check), the
    third compiles again and computes the edited arithmetic. Nothing is written into the package.
    (The CUDA kernels' dispatchers are only checked to cache in the same folder, under names of
    their own: compiling them needs a GPU.)"""
    package = tmp_path / "site"
    shutil.copytree(ROOT / "gpuload", package / "gpuload", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "user-cache"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(package), GPULOAD_CACHE_DIR=str(cache), NUMBA_ENABLE_CUDASIM="0")

    def run() -> dict:
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(small_h5ad)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first["package"].startswith(str(package))
    keyed = cache / "numba" / f"gpuload-kernels-{compile_cache.sources_key()}"
    # Every CUDA dispatcher (one per kernel and output dtype) caches there too, each under a name
    # of its own: numba names a cache index after the function, and keys it on argument types only.
    assert all(Path(path).is_relative_to(keyed) for path in first["cuda_caches"])
    assert sorted(first["cuda_names"]) == [
        f"{kernel}_{dtype}" for kernel in ("fill_rows", "gather_rows") for dtype in ("float32", "float64")
    ]
    assert first["misses"] > 0 and first["hits"] == 0
    assert second["hits"] > 0 and second["misses"] == 0 and second["sum"] == first["sum"]

    arithmetic = package / "gpuload" / "kernels" / "arithmetic.py"
    source = arithmetic.read_text()
    identity = "        return math.log1p(x * row_scale * col_weight[j])\n    return x\n"
    assert source.count(identity) == 1
    arithmetic.write_text(source.replace(identity, identity.replace("return x\n", "return x * 2\n")))
    third = run()
    assert third["misses"] > 0 and third["hits"] == 0
    assert third["sum"] == 2 * first["sum"]

    assert len(list((cache / "numba").glob("gpuload-kernels-*"))) == 2
    assert not list((package / "gpuload" / "kernels").rglob("*.nbi"))
