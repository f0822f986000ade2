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
