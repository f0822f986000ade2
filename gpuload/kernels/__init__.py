"""Batch-assembly kernels: the arithmetic once (``arithmetic``), walked by a CPU twin (``cpu``)
and a CUDA kernel (``cuda``). Which one runs is decided in :mod:`gpuload.device.backend`."""
