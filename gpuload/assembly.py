"""Batch assembly: a device row block and a batch's file rows in, the batch dict out.

The gather kernel densifies (or, for ``output="sparse_csr"``, compacts) the rows into torch
memory, applying each modality's transform; the obs columns of those cells and the per-modality
masks ride along. A value the kernel cannot transform is raised here, naming the row.
"""

from __future__ import annotations

import numpy as np
import torch

from gpuload.backend import Backend
from gpuload.errors import DataValueError
from gpuload.formats import RowBlock
from gpuload.kernels import arithmetic as ops
from gpuload.plan import LoaderPlan

OUTPUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
OUTPUTS = ("dense", "sparse_csr")


class BatchAssembler:
    """Assembles batches of one plan on one backend.

    Parameters
    ----------
    plan
        What to deliver (modalities, layout, transforms, obs columns).
    backend
        Where the kernels run and the outputs live.
    dtype
        Output dtype; float16/bfloat16 are cast from the kernel's float32.
    output
        ``"dense"`` or ``"sparse_csr"``.
    """

    def __init__(self, plan: LoaderPlan, backend: Backend, *, dtype: torch.dtype, output: str) -> None:
        self.plan, self.backend, self.dtype, self.output = plan, backend, dtype, output
        xp = backend.xp
        self.layout = plan.layout.to(xp.asarray)
        self.row_scale = xp.asarray(plan.row_scale)
        self.obs_values = {k: backend.to_device(v) for k, v in plan.obs.numeric.items()}
        self.obs_codes = {k: backend.to_device(v) for k, v in plan.obs.codes.items()}
        self.kernel_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def assemble(self, block: RowBlock, rows: np.ndarray) -> dict:
        """One batch: the gather kernel over ``block`` for file ``rows``, plus obs and masks."""
        b, xp, layout = self.backend, self.backend.xp, self.layout
        local = xp.asarray(block.local(rows))
        rows_dev = xp.asarray(rows)
        n = rows.size
        with b.torch_stream():
            present = torch.zeros((n, len(layout.names)), dtype=torch.int8, device=b.torch_device)
        if self.output == "sparse_csr":
            batch = self._sparse_matrices(block, local, present, n, rows, rows_dev)
        else:
            out = b.empty_output(n * sum(layout.widths), self.kernel_dtype)
            status = b.gather(block, local, layout.for_batch(xp, n), self.row_scale[rows_dev], out, present)
            self._check(status, rows)
            batch = {}
            start = 0
            for name, width in zip(layout.names, layout.widths, strict=True):
                view = out[start : start + n * width].view(n, width)
                batch[name] = view if self.kernel_dtype == self.dtype else view.to(self.dtype)
                start += n * width
        batch["mask"] = {name: present[:, i].bool() for i, name in enumerate(layout.names)}
        batch["index"] = b.to_torch(rows_dev)
        batch["obs"], batch["obs_codes"] = self.gather_obs(rows, rows_dev)
        b.synchronize()
        return batch

    def _sparse_matrices(self, block, local, present, n, rows, rows_dev) -> dict:
        """``output="sparse_csr"``: one ``torch.sparse_csr_tensor`` per modality."""
        b, layout = self.backend, self.layout
        value_dtype = torch.empty(0, dtype=self.kernel_dtype).numpy().dtype
        offsets, indices, values, status = b.gather_sparse(
            block, local, layout, self.row_scale[rows_dev], present, value_dtype
        )
        self._check(status, rows)
        batch = {}
        for m, (name, width) in enumerate(zip(layout.names, layout.widths, strict=True)):
            crow = offsets[m * n : (m + 1) * n + 1]
            lo, hi = int(crow[0]), int(crow[-1])
            matrix = torch.sparse_csr_tensor(
                b.to_torch(crow - lo), b.to_torch(indices[lo:hi]), b.to_torch(values[lo:hi]), size=(n, width)
            )
            batch[name] = matrix if self.kernel_dtype == self.dtype else matrix.to(self.dtype)
        return batch

    def gather_obs(self, rows: np.ndarray, rows_dev) -> tuple[dict, dict]:
        """obs of ``rows``: numeric columns as tensors, categoricals as strings and codes."""
        to_torch = self.backend.to_torch
        obs = {k: to_torch(v[rows_dev]) for k, v in self.obs_values.items()}
        codes = {k: to_torch(v[rows_dev]) for k, v in self.obs_codes.items()}
        for k, host_codes in self.plan.obs.codes.items():
            cats = self.plan.obs.categories[k]
            obs[k] = [cats[c] if c >= 0 else None for c in host_codes[rows]]
        return obs, codes

    def _check(self, status, rows: np.ndarray) -> None:
        """Raise what the kernel reported (``status`` = (error code, batch row)), naming the row."""
        code = int(status[0])
        if code == ops.OK:
            return
        where = f"{self.plan.where} row {int(rows[int(status[1])])}"
        if code == ops.NOT_FINITE:
            raise DataValueError(f"{where}: a stored value is NaN or infinite")
        if code == ops.NEGATIVE_UNDER_LOG:
            raise DataValueError(
                f"{where}: a negative value cannot go through a log1p transform {self.plan.transforms}"
            )
        raise DataValueError(
            f"{where}: a column index lies outside [0, {self.plan.n_vars}); the file is corrupt"
        )
