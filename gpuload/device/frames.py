"""obs on the device: a cuDF frame on a GPU when cuDF is installed, pandas everywhere else.

On the GPU face the obs frame is a ``cudf.DataFrame``: ``subset=`` queries are evaluated by
cuDF, and the packed obs matrices the kernels gather from (numeric columns as one float32 and
one int64 matrix, categoricals as codes) are built from its columns on the device. Both faces
must give identical batches, so the device matrices are compared once with the host ones the
plan built (a few MB) and a query that cuDF cannot evaluate, or evaluates differently, falls
back to pandas, with one warning. Without cuDF the GPU face uses pandas and copies the host
matrices, and says so once; it never raises ImportError.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from gpuload.device.backend import Backend
from gpuload.plan.obs import ObsColumns, query_mask

CUDF_MISSING = (
    "gpuload: cuDF is not installed, so the GPU face keeps obs in pandas and copies its columns to "
    "the device once (install the gpu-cu12 extra or the conda environment for cuDF)"
)


class ObsFrames:
    """The frame library of a backend's face (see the module docstring)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.cudf = None
        if backend.on_gpu:
            try:
                import cudf
            except ImportError:
                warnings.warn(CUDF_MISSING, RuntimeWarning, stacklevel=3)
            else:
                self.cudf = cudf

    @property
    def library(self) -> str:
        return "cudf" if self.cudf is not None else "pandas"

    def frame(self, obs: pd.DataFrame):
        """``obs`` in this face's frame library (on the backend's GPU)."""
        if self.cudf is None:
            return obs
        with self.backend.device_context():
            return self.cudf.DataFrame.from_pandas(obs)

    def query(self, obs: pd.DataFrame, expression: str) -> np.ndarray:
        """The boolean mask of ``obs.query(expression)``, evaluated by cuDF where it can."""
        expected = query_mask(obs, expression)  # also what reports a bad expression clearly
        if self.cudf is None:
            return expected
        try:
            with self.backend.device_context():
                frame = self.cudf.DataFrame.from_pandas(obs.assign(_gpuload_pos=np.arange(len(obs))))
                mask = np.zeros(len(obs), dtype=bool)
                mask[frame.query(expression)["_gpuload_pos"].to_numpy()] = True
        except Exception as e:  # cuDF supports a subset of pandas' query language
            warnings.warn(
                f"gpuload: cuDF cannot evaluate {expression!r} ({e}); pandas did", RuntimeWarning, 3
            )
            return expected
        if not np.array_equal(mask, expected):
            message = f"gpuload: cuDF and pandas disagree on {expression!r}; pandas' answer is used"
            warnings.warn(message, RuntimeWarning, 3)
            return expected
        return mask

    def matrices(self, obs: ObsColumns, frame) -> dict[str, torch.Tensor] | None:
        """The packed obs matrices built by cuDF on the backend's GPU (what the kernels gather
        from), or None (the assembler copies the host ones)."""
        if self.cudf is None:
            return None
        with self.backend.device_context():
            return self._matrices(obs, frame)

    def _matrices(self, obs: ObsColumns, frame) -> dict[str, torch.Tensor]:
        import cupy

        def packed(columns: list, dtype, missing):
            if not columns:
                return None
            return cupy.ascontiguousarray(
                cupy.stack([c.astype(dtype).fillna(missing).to_cupy() for c in columns])
            )

        codes = [frame[k].astype("category").cat.codes for k in obs.code_keys]
        built = {
            "obs_f": packed([frame[k] for k in obs.float_keys], "float32", np.nan),
            "obs_i": packed([frame[k] for k in obs.int_keys] + codes, "int64", -1),
            "obs_u": packed([frame[k].fillna(False) for k in obs.bool_keys], "uint8", 0),
        }
        host = {"obs_f": obs.floats, "obs_i": obs.ints, "obs_u": obs.bools}
        for key, matrix in built.items():
            if matrix is not None and not np.array_equal(cupy.asnumpy(matrix), host[key], equal_nan=True):
                message = f"gpuload: cuDF built {key} differently from pandas; the pandas one is used"
                warnings.warn(message, RuntimeWarning, 3)
                built[key] = None
        return {k: torch.from_dlpack(m) for k, m in built.items() if m is not None}
