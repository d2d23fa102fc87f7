"""Who in the fleet is online by the clock: the live nodes, their heartbeat fast path, the silent.

Part of ``cloud_head.fleet``: ``FleetRegistry`` holds one ``Liveness`` and calls it under its
memory lock, so nothing here locks.  Every heartbeat's lag goes to the ``Backlog``
(``_fleet_backlog``), and no node is found silent while it says the registry is behind.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from cloud_head._fleet_backlog import Backlog
from continuum.wire.messages import MAX_MESSAGE_BYTES, NodeStatus

#: The key that ends a status as pydantic writes it (``ts`` is its last field).
_TS_KEY: Final = b',"ts":'
#: What may follow ``_TS_KEY`` in a heartbeat: a JSON number >= 0 and the closing brace.
_TS_TAIL: Final = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\}")
_TS_TAIL_MAX: Final = 40


@dataclass(slots=True, kw_only=True)
class LiveNode:
    """A node whose last status said online: when it was last heard of, how to spot its beat.

    ``prefix`` is its last status payload up to the ``ts`` value, or None when that status was
    not laid out as pydantic writes it (or the node is refused): then every status is parsed.
    ``since``: when the registry began to watch it, for a node it found online in its file
    rather than heard from (its silence is counted from then, not from before the restart).
    ``lag_floor``: its usual lag (cloud clock minus the status's ``ts``: its clock's offset
    plus the transit; see ``_fleet_backlog``), None until its first heartbeat.
    """

    status: NodeStatus
    prefix: bytes | None
    last_seen: float
    period: float
    since: float = 0.0
    lag_floor: float | None = None


def heartbeat_prefix(payload: bytes, status: NodeStatus) -> bytes | None:
    """Return ``payload`` up to its ``ts`` value when it ends as pydantic writes ``status``."""
    head, key, tail = payload.rpartition(_TS_KEY)
    if key and _TS_TAIL.fullmatch(tail) and float(tail[:-1]) == status.ts:
        return head + key
    return None


class Liveness:
    """The live nodes, grouped by heartbeat period with the longest silent first in each.

    ``silent`` finds the nodes past two of their periods at the front of each group, so one
    check costs what the silent nodes cost, whatever the fleet's size.
    """

    def __init__(self) -> None:
        self._live: dict[str, LiveNode] = {}
        self._by_period: dict[float, OrderedDict[str, None]] = {}
        self.backlog = Backlog()

    def __contains__(self, node: object) -> bool:
        return node in self._live

    def periods(self) -> Iterable[float]:
        """Return the heartbeat periods of the live nodes (each once)."""
        return self._by_period.keys()

    def beat(self, node: str, payload: bytes, now: float) -> bool:
        """Take ``payload`` as a heartbeat if it repeats the node's last status but for ``ts``.

        The rest of the payload was validated with that status, and the new ``ts`` is a JSON
        number >= 0 that closes the object, so the full parse would accept it too.  Returns
        whether it was one (the node's last-seen time is then ``now``).
        """
        live = self._live.get(node)  # only valid node names are keys
        if live is None or live.prefix is None or len(payload) > MAX_MESSAGE_BYTES:
            return False
        if not payload.startswith(live.prefix):
            return False
        tail = payload[len(live.prefix) :]
        if len(tail) > _TS_TAIL_MAX or not _TS_TAIL.fullmatch(tail):
            return False
        ts = float(tail[:-1])
        if not math.isfinite(ts):
            return False
        self._lag(live, now - ts, now)
        self._heard(node, live, now)
        return True

    def watch(self, node: str, live: LiveNode, previous: LiveNode | None = None) -> None:
        """Watch ``node`` as ``live`` says, replacing what was known of it.

        ``previous``: what was watched of it until this status (already dropped), whose lag
        floor carries over; the status then counts as one of its heartbeats.
        """
        self.drop(node)
        if previous is not None:
            live.lag_floor = previous.lag_floor
            self._lag(live, live.last_seen - live.status.ts, live.last_seen)
        self._live[node] = live
        self._by_period.setdefault(live.period, OrderedDict())[node] = None

    def drop(self, node: str) -> LiveNode | None:
        """Stop watching ``node``; return what was known of it, if it was live."""
        live = self._live.pop(node, None)
        if live is not None:
            bucket = self._by_period[live.period]
            del bucket[node]
            if not bucket:
                del self._by_period[live.period]
        return live

    def touch(self, node: str, now: float) -> None:
        """Record that ``node`` was heard from at ``now`` (by any message), if it is live."""
        live = self._live.get(node)
        if live is not None:
            self._heard(node, live, now)

    def silent(self, now: float) -> list[tuple[str, LiveNode]]:
        """Stop watching the nodes silent for more than two of their periods; return them.

        None while the backlog says the registry is behind (or holds this tick's verdicts):
        their heartbeats may be in its queue.  How many would be is the backlog's ``overdue``.
        """
        if self.backlog.behind or self.backlog.hold:
            self.backlog.overdue = self._overdue(now)
            return []
        found: list[tuple[str, LiveNode]] = []
        for period, bucket in list(self._by_period.items()):
            cutoff = now - 2 * period
            while bucket:
                node = next(iter(bucket))
                live = self._live[node]
                if max(live.last_seen, live.since) >= cutoff:
                    break
                self.drop(node)
                found.append((node, live))
        return found

    def _overdue(self, now: float) -> int:
        """Count the nodes silent for more than two of their periods, watching them still."""
        count = 0
        for period, bucket in self._by_period.items():
            cutoff = now - 2 * period
            for node in bucket:
                live = self._live[node]
                if max(live.last_seen, live.since) >= cutoff:
                    break
                count += 1
        return count

    def _lag(self, live: LiveNode, lag_s: float, now: float) -> None:
        live.lag_floor = self.backlog.record(lag_s, live.lag_floor, live.period, now)

    def _heard(self, node: str, live: LiveNode, now: float) -> None:
        live.last_seen = now
        self._by_period[live.period].move_to_end(node)
