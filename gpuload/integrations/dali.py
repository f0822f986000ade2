"""Hand-off of assembled batches to PyTorch through a DALI external-source pipeline
(:class:`DaliHandoff`, ``pipeline="dali"``: a :class:`~gpuload.handoff.Handoff` that
``gpuload/__init__.py`` registers; the loader never imports this module).

The native hand-off (the default, :class:`~gpuload.handoff.NativeHandoff`) needs nothing here:
the kernels write into torch memory, so a batch reaches the model without a copy (same
``data_ptr``).

``pipeline="dali"`` feeds the same device buffers to ``fn.external_source`` (``no_copy=True``,
on the GPU with the reader's CUDA stream) and takes the outputs back through
``DALIGenericIterator``. That iterator copies each output into a torch tensor it owns (DALI
reuses its own buffers), so this path is NOT zero-copy: it costs one device-to-device copy per
batch, which ``tests/test_pipeline.py`` verifies by pointer. It is there for users whose
training code already consumes DALI iterators or who add DALI operators to the pipeline.
On a machine without a GPU the same pipeline runs on the CPU (``device_id=None``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from gpuload.errors import ArgumentError, DeviceError

if TYPE_CHECKING:
    from gpuload.device import Backend

DALI_INSTALL_HINT = "pip install 'gpuload[dali]' (nvidia-dali-cuda120; dali-cu13 for CUDA 13)"


def _import_dali():
    try:
        from nvidia.dali import fn, pipeline_def
        from nvidia.dali.plugin.pytorch import DALIGenericIterator
    except ImportError as e:
        raise DeviceError(
            f"pipeline='dali' needs NVIDIA DALI, which is not installed; {DALI_INSTALL_HINT}"
        ) from e
    return fn, pipeline_def, DALIGenericIterator


class DaliHandoff:
    """``pipeline="dali"``: dense float32 or float16 batches through :func:`dali_batches`."""

    def check(self, *, dtype: torch.dtype, output: str, batch_transform: Callable | None) -> None:
        if dtype == torch.bfloat16:
            raise ArgumentError(
                "pipeline='dali' cannot carry bfloat16 (DALI has no such type); use float16 or float32"
            )
        if output != "dense":
            raise ArgumentError(
                f"pipeline='dali' carries dense batches only; use output='dense', not {output!r}"
            )
        if batch_transform is not None:
            raise ArgumentError(
                "batch_transform cannot be used with pipeline='dali': DALI hands over a fixed set of "
                "named tensors; transform the batches DALI yields, or use pipeline='native'"
            )

    def wrap(
        self, batches: Iterator[dict], *, names: Sequence[str], batch_size: int, backend: Backend
    ) -> Iterator[dict]:
        return dali_batches(batches, names=names, batch_size=batch_size, backend=backend)


def dali_batches(
    batches: Iterator[dict], *, names: Sequence[str], batch_size: int, backend: Backend
) -> Iterator[dict]:
    """Yield ``batches`` after a round trip of their ``names`` matrices (and ``"index"``) through
    a DALI external-source pipeline; obs and masks ride beside it, in order.

    ``batch_size`` is the pipeline's maximum batch size; ``backend`` says where the matrices
    live (a GPU pipeline on the backend's device and stream, else a CPU pipeline).
    """
    fn, pipeline_def, DALIGenericIterator = _import_dali()
    names = [*names, "index"]
    pending: deque[dict] = deque()  # the obs and masks that ride beside DALI, in order

    def source():
        batch = next(batches)  # StopIteration ends the DALI epoch
        pending.append(batch)
        return tuple(batch[n] if backend.on_gpu else batch[n].numpy() for n in names)

    @pipeline_def(
        batch_size=batch_size,
        num_threads=1,
        device_id=backend.torch_device.index if backend.on_gpu else None,
        exec_dynamic=True,
        prefetch_queue_depth=1,
    )
    def pipe():
        return tuple(
            fn.external_source(
                source=source,
                num_outputs=len(names),
                batch=True,
                no_copy=True,
                device="gpu" if backend.on_gpu else "cpu",
                cuda_stream=backend.stream_handle if backend.on_gpu else None,
            )
        )

    dali_pipe = pipe()
    dali_pipe.build()
    try:
        for outputs in DALIGenericIterator([dali_pipe], names, auto_reset=False):
            batch = pending.popleft()
            for name in names:
                batch[name] = outputs[0][name]
            yield batch
    finally:
        if hasattr(batches, "close"):  # a generator's threads stop now, not at collection
            batches.close()
        del dali_pipe
