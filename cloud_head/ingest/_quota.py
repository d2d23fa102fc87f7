"""The tenant's daily samples quota at ingest (``samples_per_day``).

Samples beyond the day's quota are held back (reason ``quota``): they get no receipt, so
their nodes keep them and send them again, and they fit another day.  What was stored today
is read once a day from the seen index, so restarts and other replicas count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from cloud_head.tenants import QuotaExceededError, Quotas

_log = logging.getLogger("cloud_head.ingest")


class QuotaGrant:
    """One write's share of the day's quota: ``take`` as samples are written, then
    ``DailyQuota.spend`` what was taken once they are durable."""

    def __init__(self, room: int | None) -> None:
        """Allow ``room`` more samples (None: any number)."""
        self.room = room
        self.taken = 0

    def take(self, wanted: int) -> int:
        """Return how many of ``wanted`` samples still fit, and count them as taken."""
        fits = wanted if self.room is None else min(wanted, max(0, self.room - self.taken))
        self.taken += fits
        return fits


class DailyQuota:
    """How many more samples ``tenant`` may store today, under its ``samples_per_day``."""

    def __init__(
        self,
        tenant: str,
        quotas: Quotas | None,
        stored_since: Callable[[int], int],
    ) -> None:
        """Enforce ``quotas`` (None: no quota); ``stored_since(ns)`` counts the samples of
        ``tenant`` stored at or after a time, by every replica."""
        self._tenant = tenant
        self._quotas = quotas
        self._stored_since = stored_since
        self._day = ""
        self._used = 0
        self._logged_day = ""

    def grant(self, now_ns: int) -> QuotaGrant:
        """Return the room left today at ``now_ns``, for one write to take from."""
        return QuotaGrant(self._room(now_ns))

    def spend(self, grant: QuotaGrant) -> None:
        """Count the samples ``grant`` took, now that they are stored."""
        self._used += grant.taken

    def _room(self, now_ns: int) -> int | None:
        """Return how many more samples today's quota allows (None: any)."""
        quotas = self._quotas
        if quotas is None:
            return None
        day = datetime.fromtimestamp(now_ns / 1e9, tz=UTC).strftime("%Y-%m-%d")
        if day != self._day:
            # Once per day: what this tenant stored today so far (other replicas, restarts).
            start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
            self._day, self._used = day, self._stored_since(int(start * 1e9))
        try:
            quotas.check(self._tenant, "samples_per_day", self._used, 1)
        except QuotaExceededError as exc:
            if self._logged_day != day:
                self._logged_day = day
                _log.warning(
                    "%s; samples beyond it are held back today (reason quota): their nodes "
                    "keep them and send them again",
                    exc,
                )
            return 0
        return max(0, int(quotas.samples_per_day) - self._used)
