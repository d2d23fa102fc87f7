"""The uplink's byte budget: a ``TokenBucket`` that the edge runtime takes from per batch."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from continuum.errors import InputMismatchError, SpecError

__all__ = ["TokenBucket"]


class TokenBucket:
    """Byte budget for the uplink: refills at ``rate_bytes_per_s`` up to ``burst_bytes``.

    Time is passed in (``now_s``, any monotonic clock in seconds); the bucket starts full
    at the first time it sees.  A clock that steps back refills nothing.  A request larger
    than ``burst_bytes`` can never be granted: ``try_take`` returns False for it (check
    ``fits`` first and split or drop such a payload).  Not thread-safe.
    """

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int) -> None:
        if not (math.isfinite(rate_bytes_per_s) and rate_bytes_per_s > 0):
            raise SpecError(
                f"must be a positive number of bytes per second, got {rate_bytes_per_s}",
                field="rate_bytes_per_s",
                fix="use e.g. 32000 for 256 kbit/s",
            )
        if burst_bytes < 1:
            raise SpecError(
                f"must be at least 1 byte, got {burst_bytes}",
                field="burst_bytes",
                fix="use at least the size of the largest payload, e.g. one second of rate",
            )
        self._rate = float(rate_bytes_per_s)
        self._burst = int(burst_bytes)
        self._tokens = float(burst_bytes)
        self._last_s: float | None = None

    @classmethod
    def from_kbps(cls, budget_kbps: float, burst_s: float = 1.0) -> TokenBucket:
        """Build a bucket from a link budget in kilobits (1000 bits) per second.

        The burst is ``burst_s`` seconds of budget (at least one byte).
        """
        if not (math.isfinite(budget_kbps) and budget_kbps > 0):
            raise SpecError(
                f"must be a positive number, got {budget_kbps}",
                field="budget_kbps",
                fix="use e.g. budget_kbps=256",
            )
        if not (math.isfinite(burst_s) and burst_s > 0):
            raise SpecError(
                f"must be a positive number of seconds, got {burst_s}",
                field="burst_s",
                fix="use burst_s=1.0",
            )
        rate = budget_kbps * 1000.0 / 8.0
        return cls(rate, max(1, math.floor(rate * burst_s)))

    @property
    def rate_bytes_per_s(self) -> float:
        """Refill rate in bytes per second."""
        return self._rate

    @property
    def burst_bytes(self) -> int:
        """Capacity: the largest request that can ever be granted."""
        return self._burst

    def fits(self, n_bytes: int) -> bool:
        """Return whether a request of ``n_bytes`` can ever be granted."""
        return 0 <= n_bytes <= self._burst

    def level(self, now_s: float) -> float:
        """Return the bytes available at ``now_s`` (after refilling)."""
        self._refill(now_s)
        return self._tokens

    def try_take(self, n_bytes: int, now_s: float) -> bool:
        """Take ``n_bytes`` if available at ``now_s`` and return True; else take nothing."""
        if n_bytes < 0:
            raise InputMismatchError(
                "a token bucket request cannot be negative",
                expected="n_bytes >= 0",
                got=str(n_bytes),
            )
        self._refill(now_s)
        if n_bytes > self._tokens:
            return False
        self._tokens -= n_bytes
        return True

    def admit(self, sizes_bytes: npt.ArrayLike, now_s: float) -> npt.NDArray[np.bool_]:
        """Try to take each size in order at ``now_s``; return which were granted."""
        sizes = np.atleast_1d(np.asarray(sizes_bytes, dtype=np.int64))
        return np.array([self.try_take(int(n), now_s) for n in sizes], dtype=np.bool_)

    def _refill(self, now_s: float) -> None:
        if not math.isfinite(now_s):
            raise InputMismatchError(
                "now_s must be a finite time",
                expected="seconds from a monotonic clock",
                got=str(now_s),
            )
        if self._last_s is None:
            self._last_s = now_s
            return
        elapsed = now_s - self._last_s
        if elapsed > 0:
            self._tokens = min(float(self._burst), self._tokens + elapsed * self._rate)
            self._last_s = now_s
