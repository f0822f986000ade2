"""The dense output: each modality a ``[B, width]`` block of transformed values.

Batch ``k`` of a super-batch owns one contiguous region of the flat output, its modalities'
blocks back to back. A batch the user keeps keeps that buffer alive, and a buffer is reused only
once no view of it is left (the host pool on the CPU, torch's caching allocator, with
``record_stream``, on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpuload.assembly.output_kind import Launched, OutputKind, SuperBatch
from gpuload.device import RunRings
from gpuload.fetch import DeviceBlock


@dataclass
class DenseLaunched(Launched):
    """A dense launch: the flat output ``out``; batch ``k``'s modality ``m`` is the
    ``run.shapes[k][m]`` block at ``offsets[k][m]``."""

    out: torch.Tensor
    offsets: list[list[int]]

    @property
    def outputs(self) -> tuple[torch.Tensor, ...]:
        return (self.out,)

    def modalities(self, k: int) -> dict[str, torch.Tensor]:
        shapes, offsets = self.run.shapes[k], self.offsets[k]
        return {
            name: self.out.as_strided(shapes[m], (shapes[m][1], 1), offsets[m])
            for m, name in enumerate(self.run.names)
        }

    def every_batch(self) -> list[dict[str, torch.Tensor]]:
        """The leading batches of one size are, per modality, one ``[batches, B, width]`` view
        unbound in one call (a batch's region is ``B * total width`` long); the rest one by one."""
        shapes, names = self.run.shapes, self.run.names
        if not shapes:
            return []
        first = shapes[0]
        rows = first[0][0]
        same = len(shapes)  # the leading batches shaped as the first (list.count: one C call)
        if shapes.count(first) != same:
            same = next(k for k, shape in enumerate(shapes) if shape != first)
        region = rows * sum(width for _, width in first)
        blocks = [
            self.out.as_strided((same, rows, width), (region, width, 1), self.offsets[0][m]).unbind(0)
            for m, (_, width) in enumerate(first)
        ]
        made = [dict(zip(names, views, strict=True)) for views in zip(*blocks, strict=True)]
        return made + [self.modalities(k) for k in range(same, len(shapes))]


class DenseOutput(OutputKind):
    """Dense batches through the ``gather_rows`` kernel."""

    def row_bytes(self, block: DeviceBlock) -> float:
        return self.width * self.value_bytes

    def launch(self, block: DeviceBlock, sb: SuperBatch, rings: RunRings | None) -> DenseLaunched:
        n, sizes, widths, v, p = sb.n, sb.sizes, self.widths, self.backend.kernel_view, self.lasting
        starts = np.concatenate([[0], np.cumsum(sizes * self.width)[:-1]])
        within = np.arange(n) - sb.first[sb.batch_of]
        row_out = (
            starts[sb.batch_of, None] + sizes[sb.batch_of, None] * self.prefix + within[:, None] * widths
        )
        meta, slot = self.upload_meta([block.local(sb.rows), sb.rows, row_out], rings)
        out = self.backend.output(n * self.width, self.kernel_dtype)
        scratch = self.scratch(n)
        args = (
            *self.rows_args(block, meta, n),
            *(
                p[k]
                for k in ("col_dest", "mod_width", "mod_code", "mod_threshold", "row_scale", "col_weight")
            ),
            v(meta[2 * n : 2 * n + n * widths.size].view(n, widths.size)),
            v(out),
            *self.scratch_args(scratch),
        )
        run = self.run_kernel("gather_rows", sb, args, (meta, slot), scratch, (out,), rings)
        offsets = (starts[:, None] + sizes[:, None] * self.prefix).tolist()  # batch k, modality m
        return DenseLaunched(run, self.cast(out), offsets)
