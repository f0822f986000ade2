"""benchmarks/scale.py at tiny sizes: its datasets are hard links of one written file, a case's child
opens and times the loader over them, and the per-cell numbers are the arithmetic the table says."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale  # noqa: E402
import scale_report  # noqa: E402

TINY = ["--base-cells", "300", "--genes", "40", "--peaks", "120", "--batch-size", "32", "--batches", "3"]


def _args(tmp_path: Path, *extra: str):
    return scale.parse_args(["--out", str(tmp_path), *TINY, *extra])


def test_datasets_are_hard_links_of_one_base_file(tmp_path):
    args = _args(tmp_path, "--sizes", "300", "1200")
    data = scale.Data(tmp_path / "data", args)
    many = scale.Case("s", "narrow", "many files", "dense", "cell_type", 1200, 4, 3)
    paths = data.paths(many)
    assert len(paths) == 4
    assert {p.stat().st_ino for p in paths} == {data.file("narrow", 300).stat().st_ino}
    assert data.paths(scale.Case("s", "narrow", "many files", "dense", "cell_type", 300, 1, 3)) == [
        data.file("narrow", 300)
    ]
    assert len(data.bases) == 1  # one file written, whatever the number of links


def test_cases_run_the_size_series_first_and_the_largest_last(tmp_path):
    args = _args(tmp_path, "--sizes", "300", "3000", "3000000", "--variant-sizes", "300", "--files", "1", "5")
    order = scale.cases(args)
    assert [c.cells for c in order if c.series == scale.SERIES_SIZE] == [300, 3000, 3_000_000]
    assert order[-1].cells == 3_000_000 and order[-1].files == 10_000
    assert [c.files for c in order if c.batches == 0] == [1, 5]


def test_bytes_per_cell_are_above_the_series_smallest_size():
    rows = [
        {"series": "s", "status": "ok", "cells": n, "files": f, "open_s": o, "peak_rss_mb": p,
         "rss_open_mb": p - 100, "cells_per_s": c}
        for n, f, o, p, c in ((1000, 1, 0.5, 500.0, 100.0), (3000, 3, 0.7, 502.0, 90.0))
    ]  # fmt: skip
    scale_report.per_cell_bytes(rows)
    assert rows[1]["bytes_per_cell_peak"] == pytest.approx(2 * 2**20 / 2000)
    assert rows[1]["ms_per_extra_file"] == pytest.approx(100.0)
    assert rows[1]["cells_per_s_vs_base"] == pytest.approx(0.9)
    assert "bytes_per_cell_peak" not in rows[0]
    assert "1,049" in scale_report.format_table(rows)  # 2 MiB over 2,000 cells


def test_a_case_child_opens_and_times_the_loader(tmp_path):
    """The child's work, in this process: open two linked files, say what the loader holds, time."""
    args = _args(tmp_path)
    data = scale.Data(tmp_path / "data", args)
    listing = tmp_path / "paths.txt"
    case = scale.Case("s", "narrow", "many files", "sparse_csr", "all", 600, 2, 3)
    listing.write_text("\n".join(map(str, data.paths(case))))
    child = scale.child_args(
        ["--paths", str(listing), "--batch-size", "32", "--batches", "3", "--output", "sparse_csr"]
        + ["--obs", "all", "--out", str(tmp_path / "r.json")]
    )
    result = scale.child_main(child)
    assert (
        result["n_cells"] == 600
        and result["cells"] >= 32
        and len(result["rounds_cells_per_s"]) == scale.ROUNDS
    )
    assert result["open_s"] > 0 and result["cells_per_s"] > 0 and result["held_mb"] > 0
    held = {path: size for path, size, _ in result["held_top"]}
    assert any("plan.obs" in path for path in held) and sum(held.values()) <= result["held_mb"] * 2**20 + 1
    json.dumps(result, default=str)


@pytest.mark.slow
def test_the_whole_run_at_tiny_sizes_writes_its_table_and_plots(tmp_path):
    out = tmp_path / "out"
    argv = ["--out", str(out), *TINY, "--sizes", "300", "900", "--variant-sizes", "--single-file-sizes"]
    argv += ["--files", "1", "3", "--open-base-cells", "100", "--no-full-width", "--peers", "--no-record"]
    assert scale.main(argv) == 0
    run = json.loads((out / "results.json").read_text())
    measured = [r for r in run["results"] if r["status"] == "ok"]
    assert len(measured) == 5, run["results"]  # warm-up, 2 sizes, 2 numbers of files
    assert {p.name for p in out.glob("*.png")} == set(scale_report.PLOTS)
    assert not (out / "data").exists()  # the files and links are removed
