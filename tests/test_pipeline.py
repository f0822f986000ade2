"""Hand-off to torch: the native path is zero-copy; the DALI external-source pipeline (run on
the CPU here, device_id=None) delivers the same batches and says honestly that it copies; a
user's own stage plugs in as an object or a registered name (gpuload.handoff)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import gpuload
from gpuload import ArgumentError, MultiomeLoader

pytestmark = pytest.mark.dali


def _loader(path, pipeline, **kw):
    return MultiomeLoader(
        path,
        batch_size=48,
        shuffle=True,
        seed=2,
        device="cpu",
        pipeline=pipeline,
        layer="counts",
        transform={"GEX": "log1p_size_factor", "ATAC": "binarize"},
        **kw,
    )


def test_dali_refuses_what_it_cannot_carry(small_h5ad):
    with pytest.raises(ArgumentError, match="bfloat16"):
        _loader(small_h5ad, "dali", dtype=torch.bfloat16)
    with pytest.raises(ArgumentError, match="dense"):
        _loader(small_h5ad, "dali", output="sparse_csr")


def test_dali_pipeline_equals_native(small_h5ad):
    pytest.importorskip("nvidia.dali")
    native = list(_loader(small_h5ad, "native"))
    dali = list(_loader(small_h5ad, "dali"))
    assert len(native) == len(dali) == 13  # 600 cells: the last batch has 24 (variable size)
    for a, b in zip(native, dali, strict=True):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["GEX"], b["GEX"]) and torch.equal(a["ATAC"], b["ATAC"])
        assert a["obs"]["cell_type"] == b["obs"]["cell_type"]
        assert torch.equal(a["mask"]["GEX"], b["mask"]["GEX"])


def test_dali_resume_and_early_stop(small_h5ad):
    pytest.importorskip("nvidia.dali")
    loader = _loader(small_h5ad, "dali")
    it = iter(loader)
    first = [next(it)["index"] for _ in range(4)]
    state = loader.state_dict()
    del it
    fresh = _loader(small_h5ad, "dali")
    fresh.load_state_dict(state)
    rest = [b["index"] for b in fresh]
    reference = [b["index"] for b in _loader(small_h5ad, "native")]
    assert torch.equal(torch.cat(first + rest), torch.cat(reference))


def test_native_hand_off_is_zero_copy(small_h5ad):
    """The tensors the user gets are the memory the kernel wrote: views of the output buffer the
    ledger saw allocated for it, each batch's modalities back to back."""
    loader = _loader(small_h5ad, "native")
    loader.backend.ledger.record = True
    b = next(iter(loader))
    (output,) = [op for op in loader.backend.ledger.ops if op.name == "output"][:1]
    assert b["GEX"].data_ptr() == output.address
    assert b["ATAC"].data_ptr() == output.address + b["GEX"].numel() * b["GEX"].element_size()


def test_dali_hand_off_copies(small_h5ad):
    """DALIGenericIterator copies into tensors it owns: measured, and documented as such."""
    pytest.importorskip("nvidia.dali")
    from gpuload.integrations import dali

    loader = _loader(small_h5ad, "native")
    produced = []

    def tap():
        for batch in loader:
            produced.append(batch["GEX"].data_ptr())
            yield batch

    batches = dali.dali_batches(tap(), names=("GEX", "ATAC"), batch_size=48, backend=loader.backend)
    b = next(batches)
    assert b["GEX"].data_ptr() not in produced
    assert "NOT zero-copy" in dali.__doc__
    assert np.isfinite(b["GEX"].numpy()).all()
    batches.close()


class Tagged:
    """A user's own stage: every batch gains a ``"seen"`` entry; float16 is refused."""

    def __init__(self) -> None:
        self.runs: list[tuple[tuple[str, ...], int]] = []
        self.closed = 0

    def check(self, *, dtype, output, batch_transform) -> None:
        if dtype == torch.float16:
            raise ArgumentError("pipeline=Tagged() cannot carry float16")

    def wrap(self, batches, *, names, batch_size, backend):
        self.runs.append((tuple(names), batch_size))
        try:
            for i, batch in enumerate(batches):
                yield {**batch, "seen": i}
        finally:
            self.closed += 1


def test_user_hand_off_object(small_h5ad):
    stage = Tagged()
    native = list(_loader(small_h5ad, "native"))
    mine = list(_loader(small_h5ad, stage))
    assert stage.runs == [(("GEX", "ATAC"), 48)] and stage.closed == 1
    assert [b["seen"] for b in mine] == list(range(len(native)))
    for a, b in zip(native, mine, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["GEX"], b["GEX"])
    with pytest.raises(ArgumentError, match="cannot carry float16"):
        _loader(small_h5ad, Tagged(), dtype=torch.float16)
    it = iter(_loader(small_h5ad, stage))
    next(it)
    it.close()  # an abandoned run closes the stage's generator too
    assert stage.closed == 2


def test_registered_hand_off_is_built_when_chosen(small_h5ad):
    built = []

    def factory():
        built.append(Tagged())
        return built[-1]

    gpuload.register_handoff("tagged-test", factory)
    assert built == []  # registering builds nothing
    loader = _loader(small_h5ad, "tagged-test")
    assert [b["seen"] for b in loader][:2] == [0, 1] and len(built) == 1
    with pytest.raises(ArgumentError, match=r"pipeline must be one of \['native', 'dali', 'tagged-test'\]"):
        _loader(small_h5ad, "tagged")
    with pytest.raises(ArgumentError, match="pipeline must be one of .* got 3"):
        _loader(small_h5ad, 3)
    with pytest.raises(ArgumentError, match="new non-empty name"):
        gpuload.register_handoff("native", factory)


def test_loader_does_not_import_the_dali_integration(small_h5ad):
    """``pipeline="dali"`` is looked up in the registry: the integration module loads then, and
    not for a native loader (nor does DALI itself load before a run starts)."""
    probe = (
        "import sys, gpuload\n"
        f"gpuload.MultiomeLoader({str(small_h5ad)!r}, device='cpu', obs_keys=[])\n"
        "print('gpuload.integrations.dali' in sys.modules, end=' ')\n"
        f"gpuload.MultiomeLoader({str(small_h5ad)!r}, device='cpu', obs_keys=[], pipeline='dali')\n"
        "print('gpuload.integrations.dali' in sys.modules, 'nvidia.dali' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-3:] == ["False", "True", "False"]
