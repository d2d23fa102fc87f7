"""Retrying well: capped exponential backoff with jitter, and a failure logged once.

One home for the two tools every long-running part needs (the edge link, the edge runtime's
sources, the multi-tenant host, the demo's supervisor): a fleet that lost its broker at once
must not come back in lockstep, and a log must say when a failure starts and when it ends,
not every retry.
"""

from __future__ import annotations

import logging
import random
import time

__all__ = ["Backoff", "FailureLog"]

log = logging.getLogger(__name__)


class Backoff:
    """Capped exponential backoff with jitter; ``reset`` after a success.

    The n-th delay is drawn uniformly from ``[b/2, b]`` with ``b = min(max_s, min_s * 2**n)``
    so a fleet that lost the broker at once does not come back in lockstep.
    """

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"need 0 < min_s <= max_s, got {min_s=} {max_s=}")
        self.min_s = min_s
        self.max_s = max_s
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Failures since the last reset."""
        return self._attempt

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count this failure."""
        base = min(self.max_s, self.min_s * 2.0 ** min(self._attempt, 62))
        self._attempt += 1
        return base * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        """Start again from ``min_s`` (call after a success)."""
        self._attempt = 0


class FailureLog:
    """Log a failure once when it starts and once when it recovers, not on every retry."""

    def __init__(self, what: str, logger: logging.Logger = log) -> None:
        self.what = what
        self._log = logger
        self._since: float | None = None
        self._attempts = 0

    @property
    def failing(self) -> bool:
        """Whether the thing is failing now."""
        return self._since is not None

    def failed(self, detail: str) -> None:
        """Record a failed attempt; logs a warning only for the first one."""
        self._attempts += 1
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning("%s failed: %s (retrying with backoff)", self.what, detail)

    def recovered(self) -> None:
        """Record success; logs once if it had been failing."""
        if self._since is not None:
            self._log.warning(
                "%s recovered after %.1f s and %d failed attempt(s)",
                self.what,
                time.monotonic() - self._since,
                self._attempts,
            )
        self._since = None
        self._attempts = 0
