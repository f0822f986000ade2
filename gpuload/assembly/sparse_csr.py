"""The sparse output (``output="sparse_csr"``): each modality a ``torch.sparse_csr_tensor`` of
the transformed stored values, columns in file order.

Where each row's entries go is known on the host before the kernel runs: the fetcher counts a
block's stored values per modality (:attr:`~gpuload.fetch.DeviceBlock.counts`), so there is no
count pass and no device-to-host wait. A super-batch's entries are laid out by batch, then
modality, then row; each (batch, modality) segment is one batch's CSR values and column indices,
its row pointers uploaded with the super-batch's other row arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpuload.assembly.output_kind import Launched, OutputKind, SuperBatch
from gpuload.device import RunRings
from gpuload.fetch import DeviceBlock


@dataclass
class SparseCsrLaunched(Launched):
    """A sparse launch: the entries' column ``indices`` and ``values``; batch ``k``'s modality
    ``m`` holds entries ``[seg_start[k, m], seg_stop[k, m])`` and row pointers
    ``run.meta[crow_start[i] : crow_start[i + 1]]`` (``i = k * modalities + m``)."""

    indices: torch.Tensor
    values: torch.Tensor
    seg_start: np.ndarray
    seg_stop: np.ndarray
    crow_start: np.ndarray

    @property
    def outputs(self) -> tuple[torch.Tensor, ...]:
        return self.indices, self.values

    def modalities(self, k: int) -> dict[str, torch.Tensor]:
        batch, run = {}, self.run
        for m, name in enumerate(run.names):
            s, e = int(self.seg_start[k, m]), int(self.seg_stop[k, m])
            i = k * len(run.names) + m
            batch[name] = torch.sparse_csr_tensor(
                run.meta[self.crow_start[i] : self.crow_start[i + 1]],
                self.indices[s:e],
                self.values[s:e],
                size=run.shapes[k][m],
                check_invariants=False,
            )
        return batch


class SparseCsrOutput(OutputKind):
    """Sparse CSR batches through the ``fill_rows`` kernel."""

    def row_bytes(self, block: DeviceBlock) -> float:
        """A CSR entry is an int64 column and a value; a row, the block's mean entries."""
        assert block.counts is not None, "the fetcher counts a block's values for the sparse output"
        per_row = block.counts.sum() / max(1, block.counts.shape[0])
        return max(1.0, per_row) * (8 + self.value_bytes)

    def launch(self, block: DeviceBlock, sb: SuperBatch, rings: RunRings | None) -> SparseCsrLaunched:
        assert block.counts is not None, "the fetcher counts a block's values for the sparse output"
        n, sizes, first, widths, v, p = (
            sb.n,
            sb.sizes,
            sb.first,
            self.widths,
            self.backend.kernel_view,
            self.lasting,
        )
        local = block.local(sb.rows)
        counts = block.counts[local]  # [n, modalities]
        seg = np.zeros((sizes.size, widths.size), dtype=np.int64)  # entries per (batch, modality)
        np.add.at(seg, sb.batch_of, counts)
        seg_start = (np.cumsum(seg.ravel()) - seg.ravel()).reshape(seg.shape)
        running = np.cumsum(counts, axis=0) - counts  # entries before each row, per modality
        within = running - running[first[sb.batch_of]]
        cursor = seg_start[sb.batch_of] + within
        crows = [
            np.concatenate([[0], np.cumsum(counts[first[k] : first[k] + sizes[k], m])])
            for k in range(sizes.size)
            for m in range(widths.size)
        ]
        meta, slot = self.upload_meta([local, sb.rows, cursor, *crows], rings)
        total = int(counts.sum())
        indices = self.backend.empty(total, torch.int64, "sparse indices")
        values = self.backend.empty(total, self.kernel_dtype, "sparse values")
        scratch = self.scratch(n)
        args = (
            *self.rows_args(block, meta, n),
            *(p[k] for k in ("col_dest", "mod_code", "mod_threshold", "row_scale", "col_weight")),
            v(meta[2 * n : 2 * n + cursor.size].view(n, widths.size)),
            v(indices),
            v(values),
            *self.scratch_args(scratch),
        )
        run = self.run_kernel("fill_rows", sb, args, (meta, slot), scratch, (indices, values), rings)
        crow_start = 2 * n + cursor.size + np.cumsum([0, *(c.size for c in crows)])
        return SparseCsrLaunched(run, indices, self.cast(values), seg_start, seg_start + seg, crow_start)
