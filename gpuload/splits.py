"""``split=``: which cells a split selects, as data the plan takes: ``{obs column: allowed
values}``. gpuload knows one named split, the NeurIPS 2021 BMMC competition's by obs ``batch``
(``gpuload.bmmc.schema.SPLITS``: a fact of that dataset); any other dataset passes its own split
as such a mapping. The plan finds the columns in obs and knows no dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpuload.bmmc.schema import SPLITS as NAMED_SPLITS
from gpuload.errors import ArgumentError


def split_by(split: str | Mapping[str, Any]) -> dict[str, tuple]:
    """``split=`` as ``{obs column: allowed values}``: a name of :data:`NAMED_SPLITS` (the split
    gpuload knows: the NeurIPS 2021 competition's, by obs ``batch``), or such a mapping given (a
    single value for a column stands for itself)."""
    if isinstance(split, str) and split in NAMED_SPLITS:
        return {"batch": NAMED_SPLITS[split]}
    allowed = (
        f"split must be one of {list(NAMED_SPLITS)} (the NeurIPS 2021 BMMC competition's split by obs "
        "'batch'), an {obs column: allowed values} mapping such as {'batch': ['s1d1', 's1d2']}, or None"
    )
    if not isinstance(split, Mapping) or not split:
        raise ArgumentError(f"{allowed}; got {split!r}")
    resolved = {}
    for column, values in split.items():
        if not isinstance(column, str):
            raise ArgumentError(f"{allowed}; got the column {column!r}, which is not an obs column name")
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            values = [values]
        resolved[column] = tuple(values)
        if not resolved[column]:
            raise ArgumentError(f"{allowed}; got no values for obs {column!r}, which selects no cells")
    return resolved
