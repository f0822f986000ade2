"""Where each full-width column goes in the output: the column routing every kernel reads.

One flat output buffer holds every modality's block back to back, so that each modality's
``[B, width]`` view is contiguous: modality ``m`` of batch row ``r`` starts at
``mod_base[m] + r * mod_width[m]``. A full-width column ``j`` belongs to modality ``col_mod[j]``
(``-1``: not requested) at output column ``col_out[j]`` (see :mod:`gpuload.kernels.arithmetic`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """Column routing and per-modality transform codes, as arrays of one array module."""

    names: tuple[str, ...]
    widths: tuple[int, ...]
    col_mod: object  # [n_vars] int64, -1 = not requested
    col_out: object  # [n_vars] int64
    mod_width: object  # [n_mod] int64
    mod_code: object  # [n_mod] int64
    mod_threshold: object  # [n_mod] float64
    col_weight: object  # [n_vars] float32
    mod_base: object = None  # [n_mod] int64, set per batch size by ``for_batch``

    def for_batch(self, xp, n_rows: int) -> Layout:
        """This layout with ``mod_base`` for a batch of ``n_rows`` rows, as ``xp`` arrays."""
        base = np.concatenate([[0], np.cumsum(np.asarray(self.widths, dtype=np.int64) * n_rows)[:-1]])
        return Layout(**{**self.__dict__, "mod_base": xp.asarray(base)})

    def to(self, to_device) -> Layout:
        """The same layout with its arrays moved by ``to_device`` (the backend's copy)."""
        arrays = ("col_mod", "col_out", "mod_width", "mod_code", "mod_threshold", "col_weight")
        return Layout(**{**self.__dict__, **{k: to_device(getattr(self, k)) for k in arrays}})
