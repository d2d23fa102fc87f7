"""The base of every spec class and the bounds check they share.

Apart from ``_stage_specs`` so that spec parts the stages hold (``continuum.imaging``) can
build on them without an import cycle.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from continuum.errors import SpecError

__all__ = ["FrozenSpec", "bounded"]


class FrozenSpec(BaseModel):
    """The base of every spec class: immutable, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def bounded(
    value: float,
    *,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    example: str,
) -> float:
    """Return ``value`` if it lies in the interval; else raise ``SpecError`` naming it."""
    ok = math.isfinite(value) and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if ok:
        return value
    left = "(" if low_open else "["
    if high is None:
        interval = f"{left}{low:g}, inf)"
    else:
        interval = f"{left}{low:g}, {high:g}{')' if high_open else ']'}"
    raise SpecError(f"must be in {interval}, got {value!r}", fix=f"use e.g. {example}")
