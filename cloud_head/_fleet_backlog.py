"""Whether the fleet registry hears its heartbeats late, and so may not judge nodes by silence.

Part of ``cloud_head.fleet``: ``Liveness`` records the lag of every heartbeat it takes here
and asks ``behind`` before it marks silent nodes offline; the registry judges the backlog once
per ``tick()`` and reports it (``stats()``, ``continuum_fleet_registry_behind``, a log line
when it starts and one when it ends).  Nothing here locks: the registry's lock covers it.

Why withhold.  One MQTT connection delivers in order, so when the registry falls behind, the
heartbeat it handles now is as old as its queue.  A live node can only look silent for two of
its periods if its next heartbeat sits in that queue, which takes the queue's age to grow by
more than a period beyond the age of the node's previous heartbeat.  So while the heartbeats
being handled are late by a large share of a period, silence proves nothing: the registry
withholds those verdicts rather than condemn live nodes, and says so.  Last wills, the broker's
own disconnect signal, still mark nodes offline at once, as does a status that says offline.

Late compared with what.  A heartbeat's age is the cloud's clock minus the edge's ``ts``, so it
carries the edge clock's offset.  Each node's lag is measured against a floor, the least lag
seen from that node (its offset plus the transit), which rises by at most
``FLOOR_RISE`` of a period per heartbeat: a node whose clock is minutes off, or a whole fleet
after a clock step, does not read as a backlog for long, while a queue that grows by more than
that per period - the only kind that can condemn a live node - does.  The backlog is the
median excess over the floors of the heartbeats handled since the last judgement, so a few
nodes with jumping clocks do not move it.
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass
from typing import Final, Literal

#: Median excess lag, in heartbeat periods, at which silence verdicts are withheld.
ENTER_BEHIND: Final = 0.5
#: Median excess lag, in periods, under which they resume (hysteresis: no flapping).
LEAVE_BEHIND: Final = 0.25
#: How far, in periods, a node's lag floor may rise per heartbeat (clock steps wear off).
FLOOR_RISE: Final = 0.02
#: Heartbeats kept per judgement for the median: past this, newer ones replace older ones.
WINDOW_MAX: Final = 4096
#: Upper bounds (seconds) of the cumulative heartbeat lag histogram (Prometheus' ``le``).
LAG_BUCKETS_S: Final = (
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    60.0,
    120.0,
    300.0,
    600.0,
    math.inf,
)

Change = Literal["behind", "caught_up"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BacklogState:
    """How late the registry handles heartbeats, and whether it withholds silence verdicts.

    ``lag_s``, ``excess_periods``: median raw lag (cloud clock minus the edge's ``ts``, so it
    includes clock offsets) and median lag beyond each node's floor (in its periods) of the
    heartbeats handled in the last judged window; NaN when none was handled.  ``lag_max_s``:
    the largest raw lag in that window.  ``overdue``: live nodes silent for over two periods
    whose offline verdict is withheld now.  ``lag_buckets``: cumulative heartbeat counts by
    raw lag since the registry started, as ``(upper bound s, count)`` pairs.
    """

    behind: bool
    behind_since: float | None
    episodes: int
    lag_s: float
    lag_max_s: float
    excess_periods: float
    overdue: int
    heartbeats: int
    lag_buckets: tuple[tuple[float, int], ...]

    def lag_quantile(self, q: float, since: BacklogState | None = None) -> float:
        """Return the upper bound of the lag bucket holding quantile ``q`` of the heartbeats
        handled (since the ``since`` state, if given); NaN if there were none.

        A bucket's bound, not an interpolation: ``p99 <= 2.0 s`` is what the histogram shows.
        """
        before = dict(since.lag_buckets) if since is not None else {}
        counts = [(bound, n - before.get(bound, 0)) for bound, n in self.lag_buckets]
        total = counts[-1][1] if counts else 0
        if total <= 0:
            return math.nan
        for bound, count in counts:
            if count >= q * total:
                return bound
        return math.inf


class Backlog:
    """The lag of the heartbeats handled, judged once per tick into ``behind`` or not."""

    def __init__(self) -> None:
        self._lags: list[float] = []
        self._excess: list[float] = []
        self._count = 0  # heartbeats recorded since the last judgement
        self._buckets = [0] * len(LAG_BUCKETS_S)
        self._heartbeats = 0
        self._last_heard: float | None = None
        self.behind = False
        self.behind_since: float | None = None
        self.episodes = 0
        self.overdue = 0
        self._lag_s = math.nan
        self._lag_max_s = math.nan
        self._excess_periods = math.nan

    def record(self, lag_s: float, floor_s: float, period_s: float) -> None:
        """Record one heartbeat handled ``lag_s`` after its ``ts``; ``floor_s``: its node's."""
        excess = (lag_s - floor_s) / period_s
        count = self._count
        if count < WINDOW_MAX:
            self._lags.append(lag_s)
            self._excess.append(excess)
        else:  # keep the newest: overwrite in turn
            self._lags[count % WINDOW_MAX] = lag_s
            self._excess[count % WINDOW_MAX] = excess
        self._count = count + 1
        self._heartbeats += 1
        self._buckets[bisect.bisect_left(LAG_BUCKETS_S, lag_s)] += 1

    def judge(self, now: float, quiet_after_s: float) -> Change | None:
        """Judge the heartbeats handled since the last call; return a change of state, if any.

        With none handled, the state stands, except that a registry that has handled nothing
        for ``quiet_after_s`` is not behind on anything (its own broker connection may be
        down: then its nodes go offline by silence, as a dead broker should show).
        """
        if self._count:
            excess = sorted(self._excess)
            lags = sorted(self._lags)
            self._excess_periods = excess[len(excess) // 2]
            self._lag_s = lags[len(lags) // 2]
            self._lag_max_s = lags[-1]
            self._lags, self._excess, self._count = [], [], 0
            self._last_heard = now
            if not self.behind and self._excess_periods > ENTER_BEHIND:
                return self._enter(now)
            if self.behind and self._excess_periods < LEAVE_BEHIND:
                return self._leave()
            return None
        quiet = self._last_heard is None or now - self._last_heard > quiet_after_s
        if quiet:
            self._lag_s = self._lag_max_s = self._excess_periods = math.nan
            if self.behind:
                return self._leave()
        return None

    def state(self) -> BacklogState:
        """Return the backlog as last judged."""
        running = 0
        buckets = []
        for bound, count in zip(LAG_BUCKETS_S, self._buckets, strict=True):
            running += count
            buckets.append((bound, running))
        return BacklogState(
            behind=self.behind,
            behind_since=self.behind_since,
            episodes=self.episodes,
            lag_s=self._lag_s,
            lag_max_s=self._lag_max_s,
            excess_periods=self._excess_periods,
            overdue=self.overdue,
            heartbeats=self._heartbeats,
            lag_buckets=tuple(buckets),
        )

    def _enter(self, now: float) -> Change:
        self.behind, self.behind_since = True, now
        self.episodes += 1
        return "behind"

    def _leave(self) -> Change:
        self.behind, self.behind_since, self.overdue = False, None, 0
        return "caught_up"


def log_change(
    log: logging.Logger,
    tenant: str,
    change: Change,
    before: BacklogState,
    after: BacklogState,
    now: float,
) -> None:
    """Log that the registry fell behind (how late, what it withholds) or caught up."""
    if change == "behind":
        log.warning(
            "fleet registry of tenant %s is behind: the heartbeats it handles are %.2f s old "
            "(median; %.2f of a period past their nodes' usual lag), so offline verdicts by "
            "silence are withheld until it catches up (last wills still apply); give it CPU "
            "or fewer nodes per registry (continuum_fleet_registry_behind, stats()['behind'])",
            tenant,
            after.lag_s,
            after.excess_periods,
        )
    else:
        log.warning(
            "fleet registry of tenant %s caught up after %.1f s behind (%d node(s) were "
            "overdue); offline verdicts by silence resume",
            tenant,
            now - (before.behind_since if before.behind_since is not None else now),
            before.overdue,
        )
