"""Per-modality transforms and the per-cell / per-column numbers they need, computed once.

Every transform reduces to the kernel form ``f(x * row_scale, col_weight)`` (see
:mod:`gpuload.kernels.arithmetic`); this module computes ``row_scale`` for every cell and
``col_weight`` for every column before the first batch, so the kernels only gather.

======================  ===============================  ==========================================
name                    value                            row_scale / col_weight
======================  ===============================  ==========================================
``identity`` / None     x                                -
``log1p``               ln(1 + x)                        1
``log1p_size_factor``   ln(1 + x / s_i)                  1 / s_i (obs ``GEX_size_factors``)
``normalize_total``     x * T / t_i, then ln(1 + .)      T / t_i (t_i = cell total, T = target or
                        when ``log1p=True``              the median total, as scanpy)
``binarize``            1[x > threshold]                 -
``tfidf`` (muon)        ln(1 + 1e4 x / t_i) ln(1 + idf)  1e4 / t_i ; ln(1 + n / colsum_j)
``tfidf`` (signac)      ln(1 + 1e4 x / t_i * idf)        1e4 / t_i ; n / colsum_j
======================  ===============================  ==========================================

Totals, column sums and the median are over the selected cells (``subset``/``split``), within
the modality's own columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from gpuload.errors import ArgumentError, DataValueError
from gpuload.kernels import arithmetic as ops
from gpuload.plan.obs import find_column

if TYPE_CHECKING:
    import pandas as pd

    from gpuload.plan.stats import DatasetStats


@dataclass(frozen=True)
class Prepared:
    """What the kernels need for one modality: per-cell scales and per-column weights."""

    code: int
    threshold: float
    row_scale: np.ndarray | None  # [n_cells] float32, None = 1
    col_weight: np.ndarray | None  # [modality width] float32, None = 1


class Transform:
    """Base class: a named transform with its parameters."""

    name: ClassVar[str]
    needs_stats: ClassVar[bool] = False

    def prepare(
        self,
        modality: str,
        obs: pd.DataFrame,
        stats: DatasetStats | None,
        columns: np.ndarray,
        positions: np.ndarray,
        path,
    ) -> Prepared:
        raise NotImplementedError


@dataclass(frozen=True)
class Identity(Transform):
    name: ClassVar[str] = "identity"

    def prepare(self, modality, obs, stats, columns, positions, path) -> Prepared:
        return Prepared(ops.IDENTITY, 0.0, None, None)


@dataclass(frozen=True)
class Log1p(Transform):
    name: ClassVar[str] = "log1p"

    def prepare(self, modality, obs, stats, columns, positions, path) -> Prepared:
        return Prepared(ops.SCALE_LOG1P, 0.0, None, None)


@dataclass(frozen=True)
class Binarize(Transform):
    threshold: float = 0.0
    name: ClassVar[str] = "binarize"

    def prepare(self, modality, obs, stats, columns, positions, path) -> Prepared:
        return Prepared(ops.BINARIZE, float(self.threshold), None, None)


@dataclass(frozen=True)
class Log1pSizeFactor(Transform):
    """The competition's GEX ``X``: ln(1 + counts / size_factor)."""

    size_factor_key: str | None = None  # None: GEX_size_factors, else size_factors
    name: ClassVar[str] = "log1p_size_factor"

    def prepare(self, modality, obs, stats, columns, positions, path) -> Prepared:
        candidates = (
            (self.size_factor_key,)
            if self.size_factor_key
            else (f"{modality}_size_factors", f"{modality}:size_factors", "size_factors")
        )
        key = find_column(obs, candidates)
        if key is None:
            raise DataValueError(
                f"{path}: transform 'log1p_size_factor' needs an obs column {' or '.join(candidates)}"
            )
        factors = obs[key].to_numpy(dtype=np.float64, na_value=np.nan)
        selected = factors[positions]
        bad = ~np.isfinite(selected) | (selected <= 0)
        if bad.any():
            first = int(positions[np.flatnonzero(bad)[0]])
            raise DataValueError(
                f"{path}: obs[{key!r}] must be finite and > 0 for log1p_size_factor; "
                f"{int(bad.sum())} selected cells are not (first: row {first}, value {factors[first]})"
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(np.isfinite(factors) & (factors > 0), 1.0 / factors, 0.0)
        return Prepared(ops.SCALE_LOG1P, 0.0, scale.astype(np.float32), None)


def _inverse_totals(totals: np.ndarray, numerator: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(totals > 0, numerator / totals, 0.0).astype(np.float32)


@dataclass(frozen=True)
class NormalizeTotal(Transform):
    """scanpy's ``normalize_total(target_sum)`` then, by default, ``log1p``."""

    target_sum: float | None = None
    log1p: bool = True
    name: ClassVar[str] = "normalize_total"
    needs_stats: ClassVar[bool] = True

    def prepare(self, modality, obs, stats, columns, positions, path) -> Prepared:
        totals = stats.row_totals[modality]
        target = self.target_sum
        if target is None:
            selected = totals[positions]
            positive = selected[selected > 0]
            target = float(np.median(positive)) if positive.size else 1.0
        code = ops.SCALE_LOG1P if self.log1p else ops.SCALE
        return Prepared(code, 0.0, _inverse_totals(totals, target), None)


@dataclass(frozen=True)
class TfIdf(Transform):
    """ATAC TF-IDF: muon's ``ln(1+TF) * ln(1+IDF)`` or Signac's ``ln(1 + TF * IDF)``."""

    flavor: str = "muon"
    scale_factor: float = 1e4
    name: ClassVar[str] = "tfidf"
    needs_stats: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.flavor not in ("muon", "signac"):
            raise ArgumentError(f"tfidf flavor must be 'muon' or 'signac', got {self.flavor!r}")

    def prepare(self, modality, obs, stats, columns, positions, path) -> Prepared:
        col_sums = stats.col_sums[columns]
        with np.errstate(divide="ignore"):
            idf = np.where(col_sums > 0, stats.n_measured[modality] / col_sums, 0.0)
        if self.flavor == "muon":
            return Prepared(
                ops.TFIDF_LOGTF_LOGIDF,
                0.0,
                _inverse_totals(stats.row_totals[modality], self.scale_factor),
                np.log1p(idf).astype(np.float32),
            )
        return Prepared(
            ops.TFIDF_LOG_TFIDF,
            0.0,
            _inverse_totals(stats.row_totals[modality], self.scale_factor),
            idf.astype(np.float32),
        )


TRANSFORMS: dict[str, type[Transform]] = {
    t.name: t for t in (Identity, Log1p, Binarize, Log1pSizeFactor, NormalizeTotal, TfIdf)
}


def parse_transform(spec) -> Transform:
    """A Transform from None, a name, a ``{"name": ..., **params}`` dict or a Transform."""
    if spec is None:
        return Identity()
    if isinstance(spec, Transform):
        return spec
    params = {}
    if isinstance(spec, dict):
        params = dict(spec)
        spec = params.pop("name", None)
    if not isinstance(spec, str) or spec not in TRANSFORMS:
        raise ArgumentError(f"unknown transform {spec!r}; valid transforms are {sorted(TRANSFORMS)}")
    try:
        return TRANSFORMS[spec](**params)
    except TypeError as e:
        raise ArgumentError(f"transform {spec!r}: bad parameters {params} ({e})") from e
