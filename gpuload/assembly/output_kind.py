"""What every output kind shares: its kernel's lasting inputs on the device, a super-batch's row
arrays uploaded as one, the per-row scratch (presence, status, obs) and the status copy back.

An output kind (:mod:`~gpuload.assembly.dense`, :mod:`~gpuload.assembly.sparse_csr`) lays out
its kernel's output, launches it over a :class:`SuperBatch` and returns a :class:`Launched`:
the named pieces the assembler turns into batches, each batch's modalities made by
:meth:`Launched.modalities`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from gpuload.device import Backend, Fence, RunRings, span
from gpuload.fetch import DeviceBlock
from gpuload.plan import LoaderPlan


class SuperBatch(NamedTuple):
    """Consecutive batches of file rows assembled by one launch: ``rows`` (every batch's, in
    order), ``sizes`` (rows per batch), ``batch_of`` (each row's batch) and ``first`` (each
    batch's first row). A named tuple: made once per super-batch in one call."""

    rows: np.ndarray
    sizes: np.ndarray
    batch_of: np.ndarray
    first: np.ndarray

    @classmethod
    def of(cls, batches: list[np.ndarray]) -> SuperBatch:
        sizes = np.array([b.size for b in batches], dtype=np.int64)
        return cls(
            np.concatenate(batches), sizes, np.repeat(np.arange(sizes.size), sizes), np.cumsum(sizes) - sizes
        )

    @property
    def n(self) -> int:
        return self.rows.size


@dataclass
class KernelRun:
    """What a launch of any kind leaves besides its outputs, by name.

    ``meta``: the super-batch's int64 host arrays uploaded as one (block rows, then file rows,
    then the kind's own; each row's file id last with ``plan.deliver_file``), its page-locked
    ring slot ``meta_slot`` (None on the CPU); ``scratch``: per-row presence ``[modalities, n]``
    and the gathered obs matrices ``obs_f``, ``obs_i``, ``obs_u`` ``[columns, n]``; ``status``:
    each row's error code in host memory, final once ``status_fence`` has passed; ``names``:
    the modalities; ``shapes[k][m]``: the shape of batch ``k``'s modality ``m``.
    """

    meta: torch.Tensor
    meta_slot: int | None
    scratch: dict[str, torch.Tensor]
    status: np.ndarray
    status_fence: Fence | None
    names: tuple[str, ...]
    shapes: list[tuple[tuple[int, int], ...]]

    @property
    def n(self) -> int:
        return self.scratch["present"].shape[1]

    @property
    def file_rows(self) -> torch.Tensor:
        """The super-batch's file rows on the device."""
        return self.meta[self.n : 2 * self.n]


@dataclass
class Launched(ABC):
    """One launch's result: its :class:`KernelRun` and the kind's own outputs and layout."""

    run: KernelRun

    @property
    @abstractmethod
    def outputs(self) -> tuple[torch.Tensor, ...]:
        """The output buffers the batches' modalities view."""

    @abstractmethod
    def modalities(self, k: int) -> dict[str, torch.Tensor]:
        """Batch ``k``'s modalities: views of :attr:`outputs` (one cheap tensor each: a batch's
        host cost is the handful of tensor objects it is made of)."""

    def every_batch(self) -> list[dict[str, torch.Tensor]]:
        """Every batch's modalities (a kind may make them together, cheaper than one by one)."""
        return [self.modalities(k) for k in range(len(self.run.shapes))]


class OutputKind(ABC):
    """One kind of output, its kernel and the layout it writes, for the ``plan``, ``backend``,
    ``dtype`` and ``obs_matrices`` of a :class:`~gpuload.assembly.BatchAssembler` (see there).

    It uploads on the backend's current stream: build it inside ``backend.on_stream()``.
    """

    def __init__(
        self,
        plan: LoaderPlan,
        backend: Backend,
        *,
        dtype: torch.dtype,
        obs_matrices: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.plan, self.backend, self.dtype = plan, backend, dtype
        self.kernel_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        self.value_bytes = torch.empty(0, dtype=self.kernel_dtype).element_size()
        layout, obs = plan.layout, plan.obs
        self.names, self.widths = layout.names, np.asarray(layout.widths, dtype=np.int64)
        self.prefix = np.concatenate([[0], np.cumsum(self.widths)[:-1]]).astype(np.int64)
        self.width = int(self.widths.sum())
        self.batch_shapes: dict[int, tuple[tuple[int, int], ...]] = {}  # by batch size (shapes())
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
        device: dict[str, torch.Tensor] = {}
        for k, a in host.items():
            given = built.get(k)
            device[k] = given if given is not None else backend.upload(np.ascontiguousarray(a), k)
        self.lasting = {k: backend.kernel_view(t) for k, t in device.items()}

    @abstractmethod
    def row_bytes(self, block: DeviceBlock) -> float:
        """Output bytes of one row of ``block`` (what sizes a super-batch)."""

    @abstractmethod
    def launch(self, block: DeviceBlock, sb: SuperBatch, rings: RunRings | None) -> Launched:
        """The kernel over super-batch ``sb`` from ``block``, on the current stream, its row
        arrays and status through the page-locked ``rings`` of the calling run (None on the CPU)."""

    # -- what a launch shares ------------------------------------------------------------------
    def upload_meta(self, parts: list[np.ndarray], rings: RunRings | None) -> tuple[torch.Tensor, int | None]:
        """The super-batch's int64 host arrays uploaded as one (from the page-locked ring on the
        stream faces): one copy per super-batch. ``parts[1]`` are the rows; with
        ``plan.deliver_file``, each row's file id follows the parts, as the last ``n`` values."""
        if self.plan.deliver_file:
            parts = [*parts, self.plan.file_of(parts[1])]
        flat = [p.ravel() for p in parts]
        n = sum(p.size for p in flat)
        slot = None
        if rings is None:
            host = np.empty(n, dtype=np.int64)
        else:
            slot, buffer = rings.meta.take(8 * n)
            host = buffer[: 8 * n].view(np.int64)  # a ring buffer starts aligned
        np.concatenate(flat, out=host)
        if rings is not None:
            self.backend.note_host("host_write", "super-batch rows", arrays=(buffer,))
        return self.backend.upload(host, "super-batch rows"), slot

    def scratch(self, n: int) -> dict[str, torch.Tensor]:
        """Per-row presence, status and obs buffers of an ``n``-row launch."""
        obs, b = self.plan.obs, self.backend
        return {
            "present": b.empty((len(self.names), n), torch.uint8, "present"),
            "status": b.empty(n, torch.int32, "status"),
            "obs_f": b.empty((obs.floats.shape[0], n), torch.float32, "obs"),
            "obs_i": b.empty((obs.ints.shape[0], n), torch.int64, "obs"),
            "obs_u": b.empty((obs.bools.shape[0], n), torch.uint8, "obs"),
        }

    def rows_args(self, block: DeviceBlock, meta: torch.Tensor, n: int) -> tuple:
        """The kernel's leading arguments: the block's CSR, the block rows and the file rows."""
        v = self.backend.kernel_view
        return block.indptr, block.indices, block.data, v(meta[:n]), v(meta[n : 2 * n])

    def scratch_args(self, scratch: dict[str, torch.Tensor]) -> tuple:
        """The kernel's trailing arguments: presence, status, each obs matrix and its gather."""
        v, lasting = self.backend.kernel_view, self.lasting
        return (
            v(scratch["present"]),
            v(scratch["status"]),
            lasting["obs_f"],
            v(scratch["obs_f"]),
            lasting["obs_i"],
            v(scratch["obs_i"]),
            lasting["obs_u"],
            v(scratch["obs_u"]),
        )

    def run_kernel(
        self,
        kernel: str,
        sb: SuperBatch,
        args: tuple,
        meta: tuple[torch.Tensor, int | None],
        scratch: dict[str, torch.Tensor],
        outputs: tuple[torch.Tensor, ...],
        rings: RunRings | None,
    ) -> KernelRun:
        """Launch ``kernel`` over ``sb``'s rows, then copy its row status to the host
        (page-locked, no wait). The event after that copy is recorded before the casts and
        gathers that follow, so the host's read of the status orders it after the kernel only,
        and the consumer's stream still waits for the rest
        (:meth:`~gpuload.device.Backend.hand_off`). ``meta``: :meth:`upload_meta`'s result;
        takes ``"status"`` out of ``scratch``."""
        b = self.backend
        b.launch(kernel, sb.n, self.width, args, self._written(args, scratch, outputs))
        slot, buffer = rings.status.take(4 * scratch["status"].numel()) if rings is not None else (None, None)
        host = b.status_to_host(scratch.pop("status"), buffer)
        fence = b.fence("status copied")
        if rings is not None and slot is not None:
            rings.status.release(slot, fence)
        return KernelRun(*meta, scratch, host, fence, self.names, self.shapes(sb.sizes))

    def _written(self, args: tuple, scratch: dict, outputs: tuple) -> list:
        """The kernel arguments a launch writes (its outputs and scratch), for the ledger."""
        if not self.backend.ledger.record:
            return []
        targets = {t.data_ptr() for t in (*outputs, *scratch.values())}
        return [a for a in args if hasattr(a, "shape") and span(a)[0] in targets]

    def shapes(self, sizes: np.ndarray) -> list[tuple[tuple[int, int], ...]]:
        """The shape of each batch's (``sizes``) modalities: ``[batch][modality]`` (one tuple per
        batch size, made once and shared)."""
        made, widths = self.batch_shapes, self.widths.tolist()
        return [
            made.get(size) or made.setdefault(size, tuple((size, w) for w in widths))
            for size in sizes.tolist()
        ]

    def cast(self, values: torch.Tensor) -> torch.Tensor:
        """The kernel's ``values`` in the output dtype (float16/bfloat16 from float32)."""
        return (
            values
            if self.kernel_dtype == self.dtype
            else self.backend.cast(values, self.dtype, "output dtype")
        )
