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
carries the edge clock's offset.  Each node's lag is measured against a floor, its usual lag:
a new node's starts at the fleet's (the median floor of the last heartbeats judged; zero -
clocks in sync, as NTP keeps them - before any), drops at once to any lower lag (a clock
ahead of the cloud's) and rises per heartbeat by ``FLOOR_RISE`` of a period or of its excess,
whichever is more.  So a node whose clock is minutes behind, or a whole fleet after a clock
step, reads as late only for a while, while a queue that grows - the only thing that can
condemn a live node - reads as late for as long as it grows.  A node's floor does not start
at its own first lag: nodes joining a registry that is behind would take its queue for their
offsets.  Where the two cannot be told apart (a registry started on a fleet whose clocks are
all behind its own), it reads as behind until the floors have risen, and its log line names
both causes.  The backlog is the median excess over the floors of the newest heartbeats
handled when it is judged, so a few nodes with skewed or jumping clocks do not move it.

Stalled.  A registry whose handling stops altogether (a paused process, a blocked thread)
handles no late heartbeat to show it: ``FleetWorker`` tells each tick whether bytes wait unread
on its connection, and bytes waiting with nothing handled for half a period make it behind
too (``Backlog.judge``).  A registry that hears nothing and has nothing waiting is not behind:
its nodes, or its broker, are silent, and that shows.
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass
from typing import Final, Literal

#: Median excess lag, in heartbeat periods, at which silence verdicts are withheld.  A live
#: node can only be condemned once the queue's age grew by a whole period; a quarter leaves
#: room for a queue growing up to ~3 periods per period between two ticks (a quarter period).
ENTER_BEHIND: Final = 0.25
#: Median excess lag, in periods, under which they resume (hysteresis: no flapping).
LEAVE_BEHIND: Final = 0.1
#: The newest heartbeats of a window that decide: the queue's age now, not a tick ago.
NEWEST: Final = 64
#: How far a node's lag floor rises per heartbeat: this share of a period or of its excess,
#: whichever is more (clock offsets wear off: a 6 s step at a 10 s period in ~10 beats).
FLOOR_RISE: Final = 0.05
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

    ``lag_s``: median raw lag (cloud clock minus the edge's ``ts``, so it includes clock
    offsets) of the heartbeats handled in the last judged window; ``excess_periods``: the
    median lag beyond each node's floor, in its periods, of the newest ``NEWEST`` of them, which
    decides ``behind``; NaN when none was handled.  ``lag_max_s``:
    the largest raw lag in that window.  ``overdue``: live nodes silent for over two periods
    whose offline verdict is withheld now.  ``lag_buckets``: cumulative heartbeat counts by
    raw lag since the registry started, as ``(upper bound s, count)`` pairs.
    """

    behind: bool
    stalled: bool
    behind_since: float | None
    episodes: int
    lag_s: float
    lag_max_s: float
    excess_periods: float
    overdue: int
    heartbeats: int
    heard_at: float | None
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
        self._floors: list[float] = []
        #: A new node's first floor: the median floor of the last window judged.
        self.fleet_floor = 0.0
        self._count = 0  # heartbeats recorded since the last judgement
        self._buckets = [0] * len(LAG_BUCKETS_S)
        self._heartbeats = 0
        self._last_heard: float | None = None  # the last judgement that had heartbeats
        self._last_record: float | None = None  # when the newest heartbeat was handled
        self._last_handled: float | None = None  # when the newest message of any kind was
        self._stalls = 0  # consecutive judgements that found the handling stalled
        #: Withhold this tick's silence verdicts without calling it a backlog yet (one
        #: stalled-looking tick: a message may just have arrived as the tick looked).
        self.hold = False
        self.stalled = False
        self.behind = False
        self.behind_since: float | None = None
        self.episodes = 0
        self.overdue = 0
        self._lag_s = math.nan
        self._lag_max_s = math.nan
        self._excess_periods = math.nan

    def record(self, lag_s: float, floor_s: float | None, period_s: float, now: float) -> float:
        """Record one heartbeat handled at ``now``, ``lag_s`` after its ``ts``; return its
        node's new lag floor (``floor_s``: the old one, None for a node new to it)."""
        self._last_record = self._last_handled = now
        old = self.fleet_floor if floor_s is None else floor_s
        rise = max(FLOOR_RISE * period_s, FLOOR_RISE * (lag_s - old))
        floor = min(lag_s, old + rise)
        excess = (lag_s - floor) / period_s
        count = self._count
        if count < WINDOW_MAX:
            self._lags.append(lag_s)
            self._excess.append(excess)
            self._floors.append(floor)
        else:  # keep the newest: overwrite in turn
            self._lags[count % WINDOW_MAX] = lag_s
            self._excess[count % WINDOW_MAX] = excess
            self._floors[count % WINDOW_MAX] = floor
        self._count = count + 1
        self._heartbeats += 1
        self._buckets[bisect.bisect_left(LAG_BUCKETS_S, lag_s)] += 1
        return floor

    def handled(self, now: float) -> None:
        """Note that a message of any kind was handled at ``now`` (the handling goes on)."""
        self._last_handled = now

    def judge(
        self, now: float, quiet_after_s: float, stall_after_s: float, *, unread: bool = False
    ) -> Change | None:
        """Judge the heartbeats handled since the last call; return a change of state, if any.

        With none handled, the state stands, except:

        - stalled: messages wait unread on the registry's connection (``unread``) and no
          message was handled for ``stall_after_s`` - its handling stopped (a paused
          process, a blocked thread), not its nodes.  One such judgement withholds that
          tick's silence verdicts (``hold``); two in a row make the registry behind.
        - quiet: nothing handled for ``quiet_after_s`` and nothing waiting: the registry is
          not behind on anything (its own broker connection may be down: then its nodes go
          offline by silence, as a dead broker should show).
        """
        self.hold = False
        if self._count:
            self._stalls, self.stalled = 0, False
            return self._judge_window(now)
        if self._last_handled is None:  # the first judgement: stalls count from now
            self._last_handled = now
        if unread and now - self._last_handled > stall_after_s:
            self._stalls += 1
            if self._stalls < 2:
                self.hold = True
                return None
            self.stalled = True
            return None if self.behind else self._enter(now)
        self._stalls = 0
        if self._last_heard is None or now - self._last_heard > quiet_after_s:
            self._lag_s = self._lag_max_s = self._excess_periods = math.nan
            if self.behind and not unread:
                return self._leave()
        return None

    def _judge_window(self, now: float) -> Change | None:
        count = self._count
        end = count % WINDOW_MAX if count > WINDOW_MAX else count
        newest = (self._excess[end:] + self._excess[:end])[-NEWEST:]
        newest.sort()
        self._excess_periods = newest[len(newest) // 2]
        lags = sorted(self._lags)
        self._lag_s = lags[len(lags) // 2]
        self._lag_max_s = lags[-1]
        floors = sorted(self._floors)
        self.fleet_floor = floors[len(floors) // 2]
        self._lags, self._excess, self._floors, self._count = [], [], [], 0
        self._last_heard = now
        if not self.behind and self._excess_periods > ENTER_BEHIND:
            return self._enter(now)
        if self.behind and self._excess_periods < LEAVE_BEHIND:
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
            stalled=self.stalled,
            behind_since=self.behind_since,
            episodes=self.episodes,
            lag_s=self._lag_s,
            lag_max_s=self._lag_max_s,
            excess_periods=self._excess_periods,
            overdue=self.overdue,
            heartbeats=self._heartbeats,
            heard_at=self._last_handled,
            lag_buckets=tuple(buckets),
        )

    def _enter(self, now: float) -> Change:
        self.behind, self.behind_since = True, now
        self.episodes += 1
        return "behind"

    def _leave(self) -> Change:
        self.behind, self.behind_since, self.overdue, self.stalled = False, None, 0, False
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
    if change == "behind" and after.stalled:
        log.warning(
            "fleet registry of tenant %s is behind: messages wait unread on its connection but "
            "it handled none for %.1f s (a paused process or a blocked thread), so offline "
            "verdicts by silence are withheld until it catches up (last wills still apply) "
            "(continuum_fleet_registry_behind, stats()['behind'])",
            tenant,
            now - (after.heard_at if after.heard_at is not None else now),
        )
    elif change == "behind":
        log.warning(
            "fleet registry of tenant %s is behind: the heartbeats it handles are %.2f s old "
            "(median; %.2f of a period past their nodes' usual lag), so offline verdicts by "
            "silence are withheld until it catches up (last wills still apply); give it CPU "
            "or fewer nodes per registry, or, if the nodes' clocks are behind the cloud's, "
            "set up NTP on them (continuum_fleet_registry_behind, stats()['behind'])",
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
