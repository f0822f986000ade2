"""Batch assembly: a device row block and consecutive batches in, one kernel launch, batches out.

A *super-batch* is as many consecutive batches of a read group as fit a byte budget of output.
One kernel launch assembles all of its rows: each modality's transformed values (dense,
:mod:`~gpuload.assembly.dense`, or CSR entries for ``output="sparse_csr"``,
:mod:`~gpuload.assembly.sparse_csr`; what the two share: :mod:`~gpuload.assembly.output_kind`),
each row's per-modality presence and status, and its obs values from the packed obs matrices.
The status is copied to page-locked memory behind the kernel, with no host wait: the consumer
reads it once the super-batch's event has passed (:meth:`BatchAssembler.settle`), just before
handing out its first batch, so a bad value is raised (naming its row) before any batch holding
it is handed out, while the batches before it still are. Each batch is then views of the
super-batch's buffers (:mod:`~gpuload.assembly.assembler`).
"""

from gpuload.assembly.assembler import (
    OUTPUT_DTYPES,
    OUTPUT_KINDS,
    OUTPUTS,
    SUPER_BATCH_BYTES,
    Assembled,
    BatchAssembler,
)

__all__ = ["OUTPUT_DTYPES", "OUTPUT_KINDS", "OUTPUTS", "SUPER_BATCH_BYTES", "Assembled", "BatchAssembler"]
