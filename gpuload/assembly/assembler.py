"""The assembler: super-batches planned, launched by the plan's output kind, cut into batches
with their masks, file rows and obs, and their status settled before they are handed out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from gpuload.assembly.dense import DenseOutput
from gpuload.assembly.output_kind import OutputKind, SuperBatch
from gpuload.assembly.sparse_csr import SparseCsrOutput
from gpuload.batch_columns import LazyColumns, ObsLayout, SuperBatchObs
from gpuload.device import Backend, Fence, RunRings
from gpuload.errors import DataValueError
from gpuload.fetch import DeviceBlock
from gpuload.kernels import arithmetic as ops
from gpuload.plan import LoaderPlan

OUTPUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
OUTPUT_KINDS: dict[str, type[OutputKind]] = {"dense": DenseOutput, "sparse_csr": SparseCsrOutput}
OUTPUTS = tuple(OUTPUT_KINDS)
# Output bytes per super-batch, by face (set by hand, not from a recorded measurement; a run holds
# up to prefetch + 2 super-batches of output).
SUPER_BATCH_BYTES = {"cpu": 128 << 20, "cudasim": 32 << 20, "cuda": 512 << 20}


@dataclass
class Assembled:
    """A super-batch's batches, the event after their last device operation, the buffers they
    view (to give to the consumer's stream), and its rows' status: ``status`` (host memory that
    is final once ``fence`` has passed) until :meth:`BatchAssembler.settle` reads it into
    ``error``, the first bad row's (raised after ``batches``, then the ones before its batch)."""

    batches: list[dict]
    fence: Fence | None
    buffers: tuple[torch.Tensor, ...]
    error: DataValueError | None = None
    status: np.ndarray | None = None
    status_fence: Fence | None = None  # ``status`` is final once this has passed
    rows: np.ndarray | None = None  # the file rows of ``status``
    batch_of: np.ndarray | None = None  # the batch of each row


class BatchAssembler:
    """Assembles the batches of one plan on one backend.

    Parameters
    ----------
    plan
        What to deliver (modalities, layout, transforms, obs columns).
    backend
        Where the kernels run and the outputs live.
    dtype
        Output dtype; float16/bfloat16 are cast, once per super-batch, from the kernel's float32.
    output
        ``"dense"`` or ``"sparse_csr"`` (:data:`OUTPUT_KINDS`).
    super_batch_bytes
        Output bytes per kernel launch (default: by face, :data:`SUPER_BATCH_BYTES`).
    obs_matrices
        Packed obs matrices already on the device (built by cuDF: ``obs_f``, ``obs_i``,
        ``obs_u``), used instead of uploading the plan's host copies.
    """

    def __init__(
        self,
        plan: LoaderPlan,
        backend: Backend,
        *,
        dtype: torch.dtype,
        output: str,
        super_batch_bytes: int | None = None,
        obs_matrices: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.plan, self.backend, self.dtype, self.output = plan, backend, dtype, output
        self.budget = super_batch_bytes or SUPER_BATCH_BYTES[backend.name]
        with backend.device_context(), backend.on_stream():
            self.kind = OUTPUT_KINDS[output](plan, backend, dtype=dtype, obs_matrices=obs_matrices)
            self.obsm = {k: backend.upload(a, f"obsm {k}") for k, a in plan.obsm.items()}
            self.ready = backend.fence("assembler inputs")  # every run's compute stream waits on it
        self.obs_layout = ObsLayout(plan.obs)

    # -- grouping ---------------------------------------------------------------------------
    def super_batches(self, block: DeviceBlock, batches: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
        """Consecutive ``batches`` in groups whose output fits the byte budget (at least one)."""
        limit = max(1, int(self.budget // self.kind.row_bytes(block)))
        group: list[np.ndarray] = []
        rows = 0
        for batch in batches:
            if group and rows + batch.size > limit:
                yield group
                group, rows = [], 0
            group.append(batch)
            rows += batch.size
        if group:
            yield group

    # -- one super-batch --------------------------------------------------------------------
    def take_block(self, block: DeviceBlock) -> None:
        """Order the compute stream after ``block``'s copy, and keep the block's memory from
        reuse (it was allocated on the copy stream) until the kernels reading it have run."""
        b = self.backend
        with b.on_stream():
            b.wait_stream(self.ready)
            b.wait_stream(block.ready)
            b.mark_in_use(block.tensors, "block")

    def assemble(self, block: DeviceBlock, batches: list[np.ndarray], rings: RunRings | None) -> Assembled:
        """The batches of file rows ``batches`` (consecutive, in order) from ``block``, written
        through the page-locked ``rings`` of the calling run (None on the CPU)."""
        sb = SuperBatch.of(batches)
        b = self.backend
        with b.on_stream():
            launched = self.kind.launch(block, sb, rings)
            run = launched.run
            obsm = (
                {k: b.take_rows(m, run.file_rows, f"obsm {k}") for k, m in self.obsm.items()}
                if self.obsm
                else {}
            )
            fence = b.fence("super-batch")
            if rings is not None and run.meta_slot is not None:
                rings.meta.release(run.meta_slot, fence)
        n, names, meta, scratch = sb.n, run.names, run.meta, run.scratch
        starts, stops, sizes = sb.first.tolist(), (sb.first + sb.sizes).tolist(), sb.sizes.tolist()
        # A batch's host cost is the handful of objects it is made of: each per-row array is cut
        # into every batch's view in one call (split_with_sizes), not one view at a time, and its obs
        # columns are two lazy mappings over one object per super-batch.
        present = scratch["present"].view(torch.bool).unbind(0)
        masks = zip(*(m.split_with_sizes(sizes) for m in present), strict=True)
        index_of = meta[n : 2 * n].split_with_sizes(sizes)
        file_of = meta[meta.numel() - n :].split_with_sizes(sizes) if self.plan.deliver_file else None
        obs = SuperBatchObs(
            self.obs_layout,
            (scratch["obs_f"], scratch["obs_i"], scratch["obs_u"].view(torch.bool)),
            starts,
            stops,
            batches,
        )
        keys, codes = self.obs_layout.keys, self.obs_layout.code_keys
        out: list[dict] = launched.every_batch()
        for k, (batch, mask, index) in enumerate(zip(out, masks, index_of, strict=True)):
            batch["mask"] = dict(zip(names, mask, strict=True))
            batch["index"] = index
            if file_of is not None:
                batch["file"] = file_of[k]
            batch["obs"], batch["obs_codes"] = (
                LazyColumns(keys, obs.value, k),
                LazyColumns(codes, obs.code, k),
            )
            if obsm:
                batch["obsm"] = {key: values[starts[k] : stops[k]] for key, values in obsm.items()}
        handed = (meta, *run.scratch.values(), *launched.outputs, *obsm.values())
        return Assembled(out, fence, handed, None, run.status, run.status_fence, sb.rows, sb.batch_of)

    def settle(self, assembled: Assembled) -> Assembled:
        """``assembled`` with its status read: the batches before the first bad row's batch and
        that row's error. Waits for the status copy (on a GPU, usually long passed: the
        assembler runs ahead), so call it where the batches are about to be handed out."""
        if assembled.status is None or assembled.rows is None or assembled.batch_of is None:
            return assembled
        self.backend.wait_host(assembled.status_fence)
        self.backend.note_host("host_read", "status", arrays=(assembled.status,))
        if not assembled.status.any():  # one C call in the common case
            assembled.status = None
            return assembled
        bad = np.flatnonzero(assembled.status)
        kept = int(assembled.batch_of[bad[0]])
        error = self._error(int(assembled.status[bad[0]]), int(assembled.rows[bad[0]]))
        return Assembled(assembled.batches[:kept], assembled.fence, assembled.buffers, error)

    def _error(self, code: int, row: int) -> DataValueError:
        """What the kernel reported for file ``row``, as an error naming it."""
        where = self.plan.where_row(row)
        if code == ops.NOT_FINITE:
            return DataValueError(f"{where}: a stored value is NaN or infinite")
        if code == ops.NEGATIVE_UNDER_LOG:
            return DataValueError(
                f"{where}: a negative value cannot go through a log1p transform {self.plan.transforms}"
            )
        return DataValueError(
            f"{where}: a column index lies outside [0, {self.plan.n_vars}); the file is corrupt"
        )
