"""A tenant's quotas: what it may use, and the error that names the limit and how to raise it.

Public through ``cloud_head.tenants``; the registry stores them and services check them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from continuum.errors import ContinuumError, SpecError

QuotaKind = Literal["edge_nodes", "samples_per_day", "training_gpu_hours"]
QUOTA_KINDS: tuple[QuotaKind, ...] = get_args(QuotaKind)


class QuotaExceededError(ContinuumError, RuntimeError):
    """A tenant asked for more than its quota allows; free some or raise the quota.

    Retrying does not help until the quota is raised or usage goes down.
    """

    def __init__(
        self, tenant: str, kind: QuotaKind, *, limit: float, current: float, requested: float
    ) -> None:
        self.tenant = tenant
        self.kind = kind
        self.limit = limit
        self.current = current
        self.requested = requested
        flag = "--" + kind.replace("_", "-").replace("training-gpu", "gpu")
        needed = _number(current + requested)
        super().__init__(
            f"tenant {tenant!r} is over its {kind} quota: limit {_number(limit)}, current "
            f"{_number(current)}, requested {_number(requested)}; free some, or raise the "
            f"limit with `continuum tenant quota {tenant} {flag} {needed}`"
        )


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True, slots=True)
class Quotas:
    """What a tenant may use: edge nodes enrolled, samples stored per UTC day, GPU-hours."""

    edge_nodes: int = 10
    samples_per_day: int = 1_000_000
    training_gpu_hours: float = 100.0

    def __post_init__(self) -> None:
        for kind in QUOTA_KINDS:
            value = getattr(self, kind)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise SpecError(
                    f"must be a number >= 0, got {value!r}",
                    field=f"quotas.{kind}",
                    fix="give 0 to forbid it entirely",
                )
        for kind in ("edge_nodes", "samples_per_day"):
            if not isinstance(getattr(self, kind), int):
                raise SpecError(
                    f"must be a whole number, got {getattr(self, kind)!r}", field=f"quotas.{kind}"
                )

    def check(self, tenant: str, kind: QuotaKind, current: float, requested: float = 1) -> None:
        """Return if ``current + requested`` fits the ``kind`` limit, else raise.

        Raises:
            QuotaExceededError: it does not fit; the message names the limit and the fix.
            SpecError: ``kind`` is not a quota, or a count is negative.
        """
        if kind not in QUOTA_KINDS:
            raise SpecError(f"unknown quota {kind!r}", field="kind", fix=f"one of {QUOTA_KINDS}")
        if current < 0 or requested < 0:
            raise SpecError(f"current ({current}) and requested ({requested}) must be >= 0")
        limit: float = getattr(self, kind)
        if current + requested > limit:
            raise QuotaExceededError(
                tenant, kind, limit=limit, current=current, requested=requested
            )
