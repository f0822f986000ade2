"""Argument checks shared by the loader's parts: each failure is an ``ArgumentError`` naming the
argument, what was expected and what was given."""

from __future__ import annotations

import numpy as np

from gpuload.errors import ArgumentError


def is_int(value) -> bool:
    """A true integer (``bool`` is not one, although Python says so)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def positive_int(name: str, value) -> int:
    if not is_int(value) or value < 1:
        raise ArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name: str, value) -> int:
    if not is_int(value) or value < 0:
        raise ArgumentError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def one_of(name: str, value, valid: tuple):
    if value not in valid:
        raise ArgumentError(f"{name} must be one of {valid}, got {value!r}")
    return value


def weight_array(values, n: int) -> np.ndarray:
    """``weights=`` as float64: ``n`` finite, non-negative values, not all zero (a sampler
    cannot draw from nothing)."""
    try:
        given = np.asarray(values)
    except (TypeError, ValueError) as e:  # ragged nesting
        raise ArgumentError(
            f"weights must be one number per selected cell, got {type(values).__name__}"
        ) from e
    if given.dtype.kind not in "biuf":
        raise ArgumentError(f"weights must be real numbers, one per selected cell; got dtype {given.dtype}")
    weights = given.astype(np.float64)
    if weights.shape != (n,):
        raise ArgumentError(
            f"weights must hold one weight per selected cell ({n}, in loader.positions order), "
            f"got shape {weights.shape}"
        )
    if not np.isfinite(weights).all():
        raise ArgumentError(
            f"weights must be finite; entry {int(np.flatnonzero(~np.isfinite(weights))[0])} is not"
        )
    if (weights < 0).any():
        raise ArgumentError(
            f"weights must be non-negative; entry {int(np.flatnonzero(weights < 0)[0])} is negative"
        )
    if not weights.any():
        raise ArgumentError("weights are all zero: at least one cell needs a positive weight")
    return weights
