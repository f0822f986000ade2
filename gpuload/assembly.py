"""Batch assembly: a device row block and consecutive batches in, one kernel launch, batches out.

A *super-batch* is as many consecutive batches of a read group as fit a byte budget of output.
One kernel launch assembles all of its rows: each modality's transformed values (dense, or CSR
entries for ``output="sparse_csr"``), each row's per-modality presence and status, and its obs
values from the packed obs matrices. The status is copied to page-locked memory behind the
kernel, with no host wait: the consumer reads it once the super-batch's event has passed
(:meth:`BatchAssembler.settle`), just before handing out its first batch, so a bad value is
raised (naming its row) before any batch holding it is handed out, while the batches before it
still are. Each batch is then views of the super-batch's buffers.

Dense layout: batch ``k`` of a super-batch owns one contiguous region of the flat output, its
modalities' ``[B_k, width]`` blocks back to back. A batch the user keeps keeps that buffer alive,
and a buffer is reused only once no view of it is left (the host pool on the CPU, torch's
caching allocator, with ``record_stream``, on a GPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from gpuload.batch_columns import CategoryStrings, LazyColumns
from gpuload.device import Backend, Carver, Fence, RunRings, span
from gpuload.errors import DataValueError
from gpuload.fetch import DeviceBlock
from gpuload.kernels import arithmetic as ops
from gpuload.plan import LoaderPlan

OUTPUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
OUTPUTS = ("dense", "sparse_csr")
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
        ``"dense"`` or ``"sparse_csr"``.
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
        self.kernel_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        self.budget = super_batch_bytes or SUPER_BATCH_BYTES[backend.name]
        layout, obs = plan.layout, plan.obs
        self.names, self.widths = layout.names, np.asarray(layout.widths, dtype=np.int64)
        self.prefix = np.concatenate([[0], np.cumsum(self.widths)[:-1]]).astype(np.int64)
        self.width = int(self.widths.sum())
        value = torch.empty(0, dtype=self.kernel_dtype).numpy().dtype
        host = {
            "col_dest": layout.col_dest,
            "mod_width": self.widths,
            "mod_code": layout.mod_code,
            "mod_threshold": layout.mod_threshold.astype(value),
            "row_scale": plan.row_scale.astype(value, copy=False),
            "col_weight": layout.col_weight.astype(value),
            "obs_f": obs.floats,
            "obs_i": obs.ints,
            "obs_u": obs.bools,
        }
        built = obs_matrices or {}
        with backend.device_context(), backend.on_stream():
            device: dict[str, torch.Tensor] = {}
            for k, a in host.items():
                given = built.get(k)
                device[k] = given if given is not None else backend.upload(np.ascontiguousarray(a), k)
            self.lasting = {k: backend.kernel_view(t) for k, t in device.items()}
            self.obsm = {k: backend.upload(a, f"obsm {k}") for k, a in plan.obsm.items()}
            self.ready = backend.fence("assembler inputs")  # every run's compute stream waits on it
        kinds = {"float": 0, "int": 1, "bool": 2}
        index = {"float": obs.float_keys, "int": obs.int_keys, "bool": obs.bool_keys}
        self.numeric_slots = {key: (kinds[kind], index[kind].index(key)) for key, kind in obs.numeric}
        self.code_slots = {key: len(obs.int_keys) + i for i, key in enumerate(obs.code_keys)}
        self.obs_order = (*self.numeric_slots, *obs.code_keys)  # numeric columns, then categoricals
        self.host_codes = {key: obs.codes(key) for key in obs.code_keys}

    # -- grouping ---------------------------------------------------------------------------
    def super_batches(self, block: DeviceBlock, batches: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
        """Consecutive ``batches`` in groups whose output fits the byte budget (at least one)."""
        if self.output == "dense":
            row_bytes = self.width * torch.empty(0, dtype=self.kernel_dtype).element_size()
        else:  # a CSR entry is an int64 column and a value
            assert block.counts is not None, "the fetcher counts a block's values for the sparse output"
            per_row = block.counts.sum() / max(1, block.counts.shape[0])
            row_bytes = max(1.0, per_row) * (8 + torch.empty(0, dtype=self.kernel_dtype).element_size())
        limit = max(1, int(self.budget // row_bytes))
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
        sizes = np.array([b.size for b in batches], dtype=np.int64)
        rows = np.concatenate(batches)
        n = rows.size
        batch_of = np.repeat(np.arange(sizes.size), sizes)
        first = np.cumsum(sizes) - sizes
        b = self.backend
        with b.on_stream():
            if self.output == "dense":
                meta, slot, buffers, tail, status = self._dense(block, rows, sizes, batch_of, first, rings)
            else:
                meta, slot, buffers, tail, status = self._sparse(block, rows, sizes, batch_of, first, rings)
            rows_on_device = meta[n : 2 * n]
            obsm = {k: b.take_rows(m, rows_on_device, f"obsm {k}") for k, m in self.obsm.items()}
            fence = b.fence("super-batch")
            if rings is not None and slot is not None:
                rings.meta.release(slot, fence)
        present = buffers["present"].view(torch.bool)
        obs = (buffers["obs_f"], buffers["obs_i"], buffers["obs_u"].view(torch.bool))
        out = []
        for k, (start, stop) in enumerate(zip(first.tolist(), (first + sizes).tolist(), strict=True)):
            # One as_strided view each (the cheapest tensor to make): a batch's host cost is the
            # handful of tensor objects it is made of.
            batch = tail(k)
            rows_k = (stop - start,)
            batch["mask"] = {
                name: present.as_strided(rows_k, (1,), m * n + start) for m, name in enumerate(self.names)
            }
            batch["index"] = meta.as_strided(rows_k, (1,), n + start)
            if self.plan.deliver_file:
                batch["file"] = meta.as_strided(rows_k, (1,), meta.numel() - n + start)
            batch["obs"], batch["obs_codes"] = self._obs(obs, start, stop, batches[k])
            if obsm:
                batch["obsm"] = {key: values[start:stop] for key, values in obsm.items()}
            out.append(batch)
        handed = (meta, *buffers.values(), *obsm.values())
        return Assembled(out, fence, handed, None, status[0], status[1], rows, batch_of)

    def _status(self, buffers: dict, rings: RunRings | None) -> tuple[np.ndarray, Fence | None]:
        """The kernel's row status on its way to the host (page-locked, no wait), and the event
        after that copy: recorded before the casts and gathers that follow, so the host's read
        of the status orders it after the kernel only, and the consumer's stream still waits for
        the rest (:meth:`~gpuload.device.Backend.hand_off`)."""
        b = self.backend
        slot, buffer = rings.status.take(4 * buffers["status"].numel()) if rings is not None else (None, None)
        host = b.status_to_host(buffers.pop("status"), buffer)
        fence = b.fence("status copied")
        if rings is not None and slot is not None:
            rings.status.release(slot, fence)
        return host, fence

    def settle(self, assembled: Assembled) -> Assembled:
        """``assembled`` with its status read: the batches before the first bad row's batch and
        that row's error. Waits for the status copy (on a GPU, usually long passed: the
        assembler runs ahead), so call it where the batches are about to be handed out."""
        if assembled.status is None or assembled.rows is None or assembled.batch_of is None:
            return assembled
        self.backend.wait_host(assembled.status_fence)
        self.backend.note_host("host_read", "status", arrays=(assembled.status,))
        bad = np.flatnonzero(assembled.status)
        if not bad.size:
            assembled.status = None
            return assembled
        kept = int(assembled.batch_of[bad[0]])
        error = self._error(int(assembled.status[bad[0]]), int(assembled.rows[bad[0]]))
        return Assembled(assembled.batches[:kept], assembled.fence, assembled.buffers, error)

    def _meta(self, parts: list[np.ndarray], rings: RunRings | None) -> tuple[torch.Tensor, int | None]:
        """The super-batch's int64 host arrays uploaded as one (from the page-locked ring on the
        stream faces): one copy per super-batch. ``parts[1]`` are the rows; with
        ``plan.deliver_file``, each row's file id follows the parts, as the last ``n`` values."""
        if self.plan.deliver_file:
            parts = [*parts, self.plan.file_of(parts[1])]
        n = sum(p.size for p in parts)
        slot = None
        if rings is None:
            host = np.empty(n, dtype=np.int64)
        else:
            slot, buffer = rings.meta.take(Carver.size_of([(n, np.int64)]))
            host = Carver(buffer)(n, np.int64)
        np.concatenate([p.ravel() for p in parts], out=host)
        if rings is not None:
            self.backend.note_host("host_write", "super-batch rows", arrays=(buffer,))
        return self.backend.upload(host, "super-batch rows"), slot

    def _scratch(self, n: int) -> dict[str, torch.Tensor]:
        obs, b = self.plan.obs, self.backend
        return {
            "present": b.empty((len(self.names), n), torch.uint8, "present"),
            "status": b.empty(n, torch.int32, "status"),
            "obs_f": b.empty((obs.floats.shape[0], n), torch.float32, "obs"),
            "obs_i": b.empty((obs.ints.shape[0], n), torch.int64, "obs"),
            "obs_u": b.empty((obs.bools.shape[0], n), torch.uint8, "obs"),
        }

    def _written(self, args: tuple, buffers: dict, *outputs: torch.Tensor) -> list:
        """The kernel arguments a launch writes (its outputs and scratch), for the ledger."""
        if not self.backend.ledger.record:
            return []
        targets = {t.data_ptr() for t in (*outputs, *buffers.values())}
        return [a for a in args if hasattr(a, "shape") and span(a)[0] in targets]

    def _common_args(self, block: DeviceBlock, meta: torch.Tensor, n: int) -> tuple:
        v = self.backend.kernel_view
        return block.indptr, block.indices, block.data, v(meta[:n]), v(meta[n : 2 * n])

    def _obs_args(self, buffers: dict) -> tuple:
        v, lasting = self.backend.kernel_view, self.lasting
        return (
            v(buffers["present"]),
            v(buffers["status"]),
            lasting["obs_f"],
            v(buffers["obs_f"]),
            lasting["obs_i"],
            v(buffers["obs_i"]),
            lasting["obs_u"],
            v(buffers["obs_u"]),
        )

    def _dense(self, block, rows, sizes, batch_of, first, rings):
        n, widths, b, v, p = rows.size, self.widths, self.backend, self.backend.kernel_view, self.lasting
        starts = np.concatenate([[0], np.cumsum(sizes * self.width)[:-1]])
        within = np.arange(n) - first[batch_of]
        row_out = starts[batch_of, None] + sizes[batch_of, None] * self.prefix + within[:, None] * widths
        meta, slot = self._meta([block.local(rows), rows, row_out], rings)
        out = b.output(n * self.width, self.kernel_dtype)
        buffers = self._scratch(n)
        args = (
            *self._common_args(block, meta, n),
            *(p[k] for k in ("col_dest", "mod_width", "mod_code", "mod_threshold")),
            p["row_scale"],
            p["col_weight"],
            v(meta[2 * n : 2 * n + n * widths.size].view(n, widths.size)),
            v(out),
            *self._obs_args(buffers),
        )
        b.launch("gather_rows", n, self.width, args, self._written(args, buffers, out))
        status = self._status(buffers, rings)
        if self.kernel_dtype != self.dtype:
            out = b.cast(out, self.dtype, "output dtype")
        buffers["out"] = out
        shapes = [[(int(size), int(w)) for w in widths] for size in sizes]
        offsets = (starts[:, None] + sizes[:, None] * self.prefix).tolist()  # batch k, modality m

        def tail(k: int) -> dict:
            return {
                name: out.as_strided(shapes[k][m], (shapes[k][m][1], 1), offsets[k][m])
                for m, name in enumerate(self.names)
            }

        return meta, slot, buffers, tail, status

    def _sparse(self, block, rows, sizes, batch_of, first, rings):
        n, widths, b, v, p = rows.size, self.widths, self.backend, self.backend.kernel_view, self.lasting
        local = block.local(rows)
        counts = block.counts[local]  # [n, modalities]
        seg = np.zeros((sizes.size, widths.size), dtype=np.int64)  # entries per (batch, modality)
        np.add.at(seg, batch_of, counts)
        seg_start = (np.cumsum(seg.ravel()) - seg.ravel()).reshape(seg.shape)
        running = np.cumsum(counts, axis=0) - counts  # entries before each row, per modality
        within = running - running[first[batch_of]]
        cursor = seg_start[batch_of] + within
        crows = [
            np.concatenate([[0], np.cumsum(counts[first[k] : first[k] + sizes[k], m])])
            for k in range(sizes.size)
            for m in range(widths.size)
        ]
        meta, slot = self._meta([local, rows, cursor, *crows], rings)
        total = int(counts.sum())
        indices = b.empty(total, torch.int64, "sparse indices")
        values = b.empty(total, self.kernel_dtype, "sparse values")
        buffers = self._scratch(n)
        args = (
            *self._common_args(block, meta, n),
            *(p[k] for k in ("col_dest", "mod_code", "mod_threshold", "row_scale", "col_weight")),
            v(meta[2 * n : 2 * n + cursor.size].view(n, widths.size)),
            v(indices),
            v(values),
            *self._obs_args(buffers),
        )
        b.launch("fill_rows", n, self.width, args, self._written(args, buffers, indices, values))
        status = self._status(buffers, rings)
        if self.kernel_dtype != self.dtype:
            values = b.cast(values, self.dtype, "output dtype")
        buffers["indices"], buffers["values"] = indices, values
        crow_start = 2 * n + cursor.size + np.cumsum([0, *(c.size for c in crows)])

        def tail(k: int) -> dict:
            batch = {}
            for m, name in enumerate(self.names):
                s, e = int(seg_start[k, m]), int(seg_start[k, m] + seg[k, m])
                i = k * widths.size + m
                batch[name] = torch.sparse_csr_tensor(
                    meta[crow_start[i] : crow_start[i + 1]],
                    indices[s:e],
                    values[s:e],
                    size=(int(sizes[k]), int(widths[m])),
                    check_invariants=False,
                )
            return batch

        return meta, slot, buffers, tail, status

    def _obs(self, obs: tuple, start: int, stop: int, rows: np.ndarray) -> tuple[LazyColumns, LazyColumns]:
        """The obs of the batch in columns ``[start, stop)`` of the gathered matrices ``obs``
        (float32, int64, bool): numeric columns as slices of them, categoricals as lazy strings
        (from the host codes, no device read) and as code slices; each made when first read."""
        numeric, codes, cats = self.numeric_slots, self.code_slots, self.plan.obs.categories

        def value(key: str):
            if key in cats:
                return CategoryStrings(self.host_codes[key], rows, cats[key])
            kind, i = numeric[key]
            return obs[kind][i, start:stop]

        return LazyColumns(self.obs_order, value), LazyColumns(
            codes, lambda key: obs[1][codes[key], start:stop]
        )

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
