"""The output kinds behind the assembler (gpuload.assembly): what a launch leaves, by name, and
the per-value step every kernel takes, written once in gpuload.kernels.arithmetic."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from gpuload import MultiomeLoader
from gpuload.assembly import OUTPUT_KINDS
from gpuload.assembly.output_kind import SuperBatch

KERNELS = Path(__file__).resolve().parents[1] / "gpuload" / "kernels"


def launch(path: Path, output: str, batches: list[np.ndarray]):
    """One launch of ``output``'s kind over ``batches`` (file rows) on the CPU face."""
    loader = MultiomeLoader(path, device="cpu", output=output, layer="counts", obs_keys=[])
    kind = loader.assembler.kind
    assert isinstance(kind, OUTPUT_KINDS[output])
    block = loader.fetcher.read(np.unique(np.concatenate(batches)), None)
    return kind.launch(block, SuperBatch.of(batches), None), loader


def test_each_kind_names_what_its_launch_left(small_h5ad):
    batches = [np.array([3, 4]), np.array([10, 11, 12])]
    dense, loader = launch(small_h5ad, "dense", batches)
    sparse, _ = launch(small_h5ad, "sparse_csr", batches)
    widths = [loader.plan.layout.widths[m] for m in range(len(loader.plan.layout.names))]
    for launched in (dense, sparse):
        assert launched.run.file_rows.tolist() == [3, 4, 10, 11, 12]
        assert launched.run.shapes == [tuple((2, w) for w in widths), tuple((3, w) for w in widths)]
        assert not launched.run.status.any()
        assert set(launched.run.scratch) == {"present", "obs_f", "obs_i", "obs_u"}  # status: to the host
    assert len(dense.outputs) == 1 and len(sparse.outputs) == 2  # values; column indices and values
    for k in range(2):
        for name, block in dense.modalities(k).items():
            assert block.untyped_storage().data_ptr() == dense.outputs[0].untyped_storage().data_ptr()
            assert torch.equal(sparse.modalities(k)[name].to_dense(), block)


def test_the_per_value_step_is_written_once():
    """The transform and check of a stored value are called only from arithmetic's shared step:
    the CUDA dense row walk, the CPU dense and sparse twins and the CUDA sparse kernel each call
    locate and entry_value, and no kernel module calls the arithmetic under them itself."""
    step = {"locate", "entry_value"}
    under = {"checked_value", "transform_value", "check_value"}
    trees = {m: ast.parse((KERNELS / m).read_text()) for m in ("arithmetic.py", "cpu.py", "cuda.py")}
    walks = [
        ("arithmetic.py", "scatter_row"),
        ("cpu.py", "fill_dense_row"),
        ("cpu.py", "fill_row"),
        ("cuda.py", "fill_rows"),
    ]
    for module, name in walks:
        (walk,) = [n for n in ast.walk(trees[module]) if getattr(n, "name", None) == name]
        assert step <= called(walk), f"{module}:{name} does not call {step}"
    for module in ("cpu.py", "cuda.py"):
        assert not called(trees[module]) & under, f"{module} calls the arithmetic outside the shared step"


def called(node: ast.AST) -> set[str]:
    """The names of the functions called under ``node``."""
    return {c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}


@pytest.mark.parametrize("output", list(OUTPUT_KINDS))
def test_a_kind_sizes_its_super_batches_by_its_rows(small_h5ad, output):
    """Dense rows cost the full width; a CSR row its block's mean entries (column and value)."""
    loader = MultiomeLoader(small_h5ad, device="cpu", output=output, layer="counts", obs_keys=[])
    rows = np.arange(40)
    block = loader.fetcher.read(rows, None)
    per_row = loader.assembler.kind.row_bytes(block)
    if output == "dense":
        assert per_row == sum(loader.plan.layout.widths) * 4
    else:
        assert block.counts is not None
        assert per_row == pytest.approx(max(1.0, block.counts.sum() / rows.size) * 12)
