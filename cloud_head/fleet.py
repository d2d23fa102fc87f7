"""The fleet registry: which edge nodes exist, what they are, what they run and how it goes.

Fed by the retained node status (the last will turns it offline) and reported state, and by
telemetry, whose history is kept for the rollout controller and reports for
``telemetry_retention_s`` (default 7 days; older windows are pruned as new ones are written).
``FleetRegistry`` is the protocol logic; its rooms are ``_fleet_liveness`` (who is online by
the clock, the heartbeat fast path), ``_fleet_db`` (the SQLite file, written in batches) and
``_fleet_records`` (what it answers); ``FleetWorker`` (in ``_fleet_mqtt``) is the thin MQTT
runner around it.

No message makes the registry forget a node.  An empty status or reported message (a cleared
retained message, or a stray publish with the tenant's credential) is counted, logged once and
otherwise ignored: the node keeps its last status, labels and telemetry history.  Removing a
node is an operator's decision, ``continuum fleet remove NODE`` (``FleetRegistry.remove``),
which deletes the node and its history, frees its quota place and is recorded in the audit
log; a removed node that sends a status again is admitted again as a new node.

A node is admitted against the tenant's ``edge_nodes`` quota when its first status arrives:
admitted nodes (online or not, until removed) count against it, and a node beyond it is
recorded with the refusal as its ``refused`` reason, counted, and given no desired state (the
rollout controller skips it).  A refused node is checked again at each status it sends, so
raising the quota (or removing a node) lets it in.

At fleet scale (DESIGN.md §5: every agent re-publishes its retained status each heartbeat
period) the registry keeps what changes per message in memory and writes it to SQLite in one
transaction per ``flush_interval_s``: a heartbeat that repeats the node's last status but for
its ``ts`` is recognised without parsing the JSON, and only the latest state of each node is
written.  Its own queries flush first, so they are always current; other processes reading
the same file (the controllers, ``continuum fleet``) see it at most ``flush_interval_s`` late.

Online means heard from: a node with no message of any kind for more than two of its stated
heartbeat periods is marked offline by the clock, counted as ``timed_out``, whether no last
will came (a half-open connection) or the registry's own broker connection is down (then
nothing is heard, and a dead broker shows as an offline fleet within two periods).  It comes
back online with its next status, which the broker replays at once on resubscribe.

Silence proves nothing while the registry itself is behind: when the heartbeats it handles are
late by a quarter period or more beyond their nodes' usual lag, their successors may be waiting
in its queue, so it withholds offline verdicts by silence until it catches up, and says so
(``stats()["behind"]``, the ``continuum_fleet_registry_behind`` gauge, one log line when it
starts and one when it ends); last wills and offline statuses still apply at once.
``_fleet_backlog`` owns that rule.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from cloud_head._fleet_backlog import BacklogState, log_change
from cloud_head._fleet_db import FleetDatabase, PendingNode, TelemetryRow
from cloud_head._fleet_liveness import Liveness, LiveNode, heartbeat_prefix
from cloud_head._fleet_mqtt import FleetWorker, subscriptions
from cloud_head._fleet_records import FleetUpdate, NodeInfo, node_info
from cloud_head._mqtt import RejectLog
from continuum.errors import ConfigError, NotFoundError, ProtocolError
from continuum.labels import LabelSelector
from continuum.wire import topics
from continuum.wire.messages import NodeStatus, ReportedModel, ReportedState, Telemetry

if TYPE_CHECKING:
    from cloud_head.tenants import Quotas

__all__ = [
    "TELEMETRY_RETENTION_S",
    "BacklogState",
    "FleetRegistry",
    "FleetUpdate",
    "FleetWorker",
    "NodeInfo",
    "removal_record",
    "subscriptions",
]

_log = logging.getLogger(__name__)

#: How long telemetry history is kept by default (``continuum fleet --help`` says it too).
TELEMETRY_RETENTION_S: Final = 7 * 24 * 3600.0


class FleetRegistry:
    """Keep the fleet of one tenant in SQLite, from status, reported and telemetry messages.

    Args:
        tenant: the tenant whose nodes these are.
        path: the SQLite file (created if missing).
        telemetry_retention_s: how long telemetry history is kept (default 7 days): windows
            older than this (by cloud receive time) are pruned as new ones are written.
        clock: the cloud clock (Unix seconds).
        quotas: returns the tenant's quotas when a new node is to be admitted (None, or a None
            result: no limit on edge nodes).
        heartbeat_interval_s: the heartbeat period of nodes whose status does not state
            their own (``heartbeat_s``; agents state it); a node silent for more than two of
            its periods is marked offline by ``tick()``, heard from or not for lack of a broker.
        flush_interval_s: how long changes may wait in memory before ``tick()`` writes them.
    """

    def __init__(
        self,
        tenant: str,
        path: str | Path,
        *,
        telemetry_retention_s: float = TELEMETRY_RETENTION_S,
        clock: Callable[[], float] = time.time,
        quotas: Callable[[], Quotas | None] | None = None,
        heartbeat_interval_s: float = 30.0,
        flush_interval_s: float = 1.0,
    ) -> None:
        """Open (or create) the registry of ``tenant`` at ``path``."""
        self._tenant = topics.check_name(tenant, "tenant")
        if not 0 < heartbeat_interval_s <= 3600:
            raise ConfigError(
                f"heartbeat_interval_s must be in (0, 3600] like the agents', "
                f"got {heartbeat_interval_s}"
            )
        if not 0 < flush_interval_s <= 60:
            raise ConfigError(f"flush_interval_s must be in (0, 60], got {flush_interval_s}")
        self._quotas = quotas
        self._clock = clock
        self._heartbeat_s = heartbeat_interval_s
        self._flush_s = flush_interval_s
        # Lock order: self._db.lock, then _lock.  _lock guards the memory state and is never
        # held across SQLite work, so handle() does not wait for a flush.
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._reject_log = RejectLog(_log)
        self._status_root = topics.nodes_filter(self._tenant, "status")[: -len("+/status")]
        self._liveness = Liveness()
        self._resumed = False  # whether tick() took up the nodes stored online
        self._pending: dict[str, PendingNode] = {}
        self._telemetry_rows: list[TelemetryRow] = []
        self._db = FleetDatabase(path, retention_s=telemetry_retention_s, clock=clock)
        self._admitted = self._db.admitted()

    @property
    def tenant(self) -> str:
        """The tenant whose nodes this registry tracks."""
        return self._tenant

    @property
    def heartbeat_interval_s(self) -> float:
        """The heartbeat period of nodes whose status does not state their own."""
        return self._heartbeat_s

    @property
    def tick_interval_s(self) -> float:
        """How often ``tick()`` should run to keep the flush and offline bounds."""
        with self._lock:
            shortest = min([self._heartbeat_s, *self._liveness.periods()])
        return min(self._flush_s, shortest / 4)

    # -- protocol --------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> FleetUpdate:
        """Apply one status, reported or telemetry message; never raises."""
        payload = bytes(payload)
        if topic.startswith(self._status_root) and topic.endswith("/status"):
            node = topic[len(self._status_root) : -len("/status")]
            now = self._clock()
            with self._lock:
                if self._heartbeat_locked(node, payload, now):
                    self._counts["status"] += 1
                    return FleetUpdate(kind="status", node=node)
        try:
            update = self._apply(topic, payload)
        except ProtocolError as exc:
            update = FleetUpdate(kind="rejected", reason=exc.reason, detail=str(exc))
        except Exception as exc:  # a bug must not stop the registry; count it and go on
            _log.exception("unexpected error applying a message on %s", topic)
            update = FleetUpdate(kind="rejected", reason="internal_error", detail=repr(exc))
        with self._lock:
            self._liveness.backlog.handled(self._clock())
            if update.kind == "rejected":
                self._rejected[update.reason] += 1
            else:
                self._counts[update.kind] += 1
        if update.kind == "rejected":
            self._reject_log.reject(update.reason, topic, update.detail)
        return update

    def _heartbeat_locked(self, node: str, payload: bytes, now: float) -> bool:
        """Apply ``payload`` if it repeats the live node's last status but for ``ts``."""
        if not self._liveness.beat(node, payload, now):
            return False
        pending = self._pending.get(node)
        if pending is None:  # a live node without pending changes is stored already
            self._pending[node] = PendingNode(now, payload, beats_only=True)
        else:
            pending.last_seen, pending.status = now, payload
        return True

    def _apply(self, topic: str, payload: bytes) -> FleetUpdate:
        parsed = topics.parse(topic)
        if parsed.tenant != self._tenant:
            raise ProtocolError(
                f"topic of tenant {parsed.tenant!r}, this is {self._tenant!r}",
                reason="wrong_tenant",
            )
        node = parsed.node
        now = self._clock()
        if not payload and parsed.kind in ("status", "reported"):
            return self._empty(parsed.kind, node)
        if parsed.kind == "status":
            status = NodeStatus.from_payload(payload)
            _same_node(status.node, node)
            if status.tenant != self._tenant:
                raise ProtocolError(
                    f"status of tenant {status.tenant!r} on a topic of {self._tenant!r}",
                    reason="wrong_tenant",
                )
            with self._lock:
                admitted = node in self._admitted
            refused = None if admitted else self._admit(node)
            self._set_status(node, status, payload, now, admitted=refused is None)
            if refused is not None:
                return FleetUpdate(kind="status", node=node, reason="over_quota", detail=refused)
            return FleetUpdate(kind="status", node=node)
        if parsed.kind == "reported":
            reported = ReportedState.from_payload(payload)
            _same_node(reported.node, node)
            with self._lock:
                self._pending_locked(node, now).reported = reported.model_dump_json()
                self._liveness.touch(node, now)
            return FleetUpdate(kind="reported", node=node)
        if parsed.kind == "telemetry":
            telemetry = Telemetry.from_payload(payload)
            _same_node(telemetry.node, node)
            if telemetry.pipeline != parsed.pipeline:
                raise ProtocolError(
                    f"telemetry of pipeline {telemetry.pipeline!r} on the topic of "
                    f"{parsed.pipeline!r}",
                    reason="pipeline_mismatch",
                )
            row = (
                telemetry.node,
                telemetry.pipeline,
                telemetry.ts,
                now,
                telemetry.model_version,
                telemetry.model_dump_json(),
            )
            with self._lock:
                self._telemetry_rows.append(row)
                self._pending_locked(node, now)
                self._liveness.touch(node, now)
            return FleetUpdate(kind="telemetry", node=node)
        raise ProtocolError(
            f"the fleet registry does not take {parsed.kind} messages", reason="unexpected_topic"
        )

    def _empty(self, kind: str, node: str) -> FleetUpdate:
        """Keep a known node as it is when its status or reported topic is emptied.

        Anyone holding the tenant's credential can clear a retained topic or publish an
        empty message; neither says the node left nor is news from it (its ``last_seen``
        stays).  Decommissioning is ``remove()``, an operator's audited action.
        """
        if not self._known(node):
            return FleetUpdate(kind="cleared", node=node)
        raise ProtocolError(
            f"empty {kind} message for node {node!r} (a cleared retained message or a stray "
            "publish): ignored, the node keeps its last state and telemetry history; "
            "decommission a node with `continuum fleet remove NODE`",
            reason=f"empty_{kind}",
        )

    def _known(self, node: str) -> bool:
        with self._lock:
            if node in self._pending or node in self._liveness or node in self._admitted:
                return True
        return self._db.exists(node)

    def _set_status(
        self, node: str, status: NodeStatus, payload: bytes, now: float, *, admitted: bool
    ) -> None:
        # A refused node is checked again at each status: no shortcut for it.
        prefix = heartbeat_prefix(payload, status) if admitted else None
        with self._lock:
            self._pending_locked(node, now).status = status.model_dump_json()
            previous = self._liveness.drop(node)
            if status.online:
                period = status.heartbeat_s or self._heartbeat_s
                live = LiveNode(status=status, prefix=prefix, last_seen=now, period=period)
                self._liveness.watch(node, live, previous)

    def _pending_locked(self, node: str, now: float) -> PendingNode:
        pending = self._pending.get(node)
        if pending is None:
            pending = self._pending[node] = PendingNode(now)
        else:
            pending.last_seen, pending.beats_only = now, False
        return pending

    def _admit(self, node: str) -> str | None:
        """Check a node not admitted yet against the ``edge_nodes`` quota; return any refusal."""
        from cloud_head.tenants import QuotaExceededError

        refusal = None
        try:
            quotas = None if self._quotas is None else self._quotas()
        except Exception as exc:  # fail closed: an unchecked node is not admitted
            quotas = None
            refusal = (
                f"the edge_nodes quota could not be read ({exc}); checked again at its next status"
            )
        with self._lock:
            if quotas is not None:
                try:
                    quotas.check(self._tenant, "edge_nodes", len(self._admitted - {node}), 1)
                except QuotaExceededError as exc:
                    refusal = f"over quota: {exc}"
            if refusal is None:
                self._admitted.add(node)
            else:
                self._counts["refused"] += 1
            pending = self._pending_locked(node, self._clock())
            pending.refused, pending.refused_set = refusal, True
        if refusal is not None:
            self._reject_log.reject("over_quota", topics.node_status(self._tenant, node), refusal)
        return refusal

    # -- upkeep ----------------------------------------------------------------------------

    def tick(self, *, unread: bool = False) -> list[str]:
        """Mark nodes silent for over two of their heartbeat periods offline, then flush.

        Call it every ``tick_interval_s`` (``FleetWorker`` does), whether or not the broker
        is reachable: online means heard from, so while the registry hears nothing (its own
        broker connection down) its nodes go offline after two periods, and a dead broker
        shows.  No grace is needed after a reconnect: the broker replays every retained status
        at once on resubscribe.  A node marked offline keeps its last-seen time and comes back
        online with its next status.  The first call also takes up the nodes the file says are
        online but no message has named yet (a restart, or a node whose retained status was
        cleared), counting their silence from then.

        While the registry is behind (see the module's docstring) no node is marked offline
        for silence; the nodes that would be are counted as ``overdue`` in ``stats()``.

        Args:
            unread: whether messages wait unread on the registry's connection now
                (``FleetWorker`` asks its socket): with no heartbeat handled lately, the
                registry's handling stalled, not its nodes, and silence proves nothing.

        Returns:
            The nodes marked offline by this call.
        """
        now = self._clock()
        if not self._resumed:
            self._resume(now)
        silent: list[str] = []
        with self._lock:
            backlog = self._liveness.backlog
            before = backlog.state()
            shortest = min([self._heartbeat_s, *self._liveness.periods()])
            change = backlog.judge(
                now, quiet_after_s=2 * shortest, stall_after_s=shortest / 2, unread=unread
            )
            for node, live in self._liveness.silent(now):
                offline = live.status.model_copy(update={"online": False})
                pending = self._pending_locked(node, live.last_seen)
                pending.status = offline.model_dump_json()
                silent.append(node)
            self._counts["timed_out"] += len(silent)
            after = backlog.state()
        if change is not None:
            log_change(_log, self._tenant, change, before, after, now)
        if silent:
            _log.warning(
                "marked %d node(s) offline after more than two heartbeat periods without a "
                "message (half-open connections, or no broker: see the fleet's `connected`): "
                "%s%s",
                len(silent),
                ", ".join(silent[:5]),
                " ..." if len(silent) > 5 else "",
            )
        self._flush()
        return silent

    def _resume(self, now: float) -> None:
        """Watch the nodes stored online that no message has named since the registry opened."""
        resumed: list[tuple[str, NodeStatus, float]] = []
        for node, status_json, last_seen in self._db.stored_online():
            try:
                resumed.append((node, NodeStatus.model_validate_json(status_json), last_seen))
            except ValueError:  # written by an older version: its next status replaces it
                _log.warning("stored status of node %s does not parse; not watched", node)
        with self._lock:
            self._resumed = True
            for node, status, last_seen in resumed:
                pending = self._pending.get(node)
                if node in self._liveness or (pending is not None and pending.status is not None):
                    continue  # a message named it since: that is newer than the file
                if pending is not None:
                    last_seen = max(last_seen, pending.last_seen)
                period = status.heartbeat_s or self._heartbeat_s
                live = LiveNode(
                    status=status, prefix=None, last_seen=float(last_seen), period=period, since=now
                )
                self._liveness.watch(node, live)

    def _flush(self) -> None:
        """Write the pending node changes and telemetry in one transaction."""
        with self._db.lock:
            with self._lock:
                if not self._pending and not self._telemetry_rows:
                    return
                pending, self._pending = self._pending, {}
                rows, self._telemetry_rows = self._telemetry_rows, []
            try:
                self._db.write_locked(pending, rows)
            except BaseException:
                with self._lock:  # keep what was not written; newer changes win
                    for node, p in pending.items():
                        self._pending.setdefault(node, p)
                    self._telemetry_rows[:0] = rows
                raise

    # -- queries (each flushes first, so it sees every message handled before it) ---------

    def nodes(
        self, selector: LabelSelector | None = None, *, online: bool | None = None
    ) -> list[NodeInfo]:
        """Return the nodes whose labels match ``selector`` (all if None), by name.

        With ``online`` set, only nodes whose online state equals it.
        """
        self._flush()
        rows, latest = self._db.nodes()
        found = []
        for row in rows:
            info = node_info(row, latest.get(row[0], {}))
            if selector is not None and not selector.matches(info.labels):
                continue
            if online is not None and info.online != online:
                continue
            found.append(info)
        return found

    def get(self, node: str) -> NodeInfo | None:
        """Return what is known about ``node``, or None if it never sent anything."""
        self._flush()
        row, latest = self._db.node(node)
        return None if row is None else node_info(row, latest)

    def liveness(self) -> dict[str, tuple[bool, float]]:
        """Return every node's online state and last-seen time, without parsing statuses.

        The cheap view for watching a large fleet (how current each node is, who flipped).
        """
        self._flush()
        return self._db.liveness()

    def telemetry(
        self,
        node: str,
        pipeline: str,
        since_ts: float = 0.0,
        *,
        model_version: str | None = None,
    ) -> list[Telemetry]:
        """Return a node's telemetry windows of one pipeline with ``ts >= since_ts``, oldest first.

        ``ts`` is the edge's own timestamp of the window (Unix seconds; edges keep NTP time).
        """
        self._flush()
        return self._db.telemetry(node, pipeline, since_ts, model_version)

    def reported_model(self, node: str, pipeline: str) -> ReportedModel | None:
        """Return the model ``node`` last reported for ``pipeline``, or None if it reported none."""
        self._flush()
        reported = self._db.reported(node)
        if reported is None:
            return None
        return ReportedState.model_validate_json(reported).pipelines.get(pipeline)

    def last_telemetry(self, node: str, pipeline: str) -> Telemetry | None:
        """Return the newest telemetry of one node and pipeline, or None if none came yet."""
        self._flush()
        return self._db.last_telemetry(node, pipeline)

    def remove(self, node: str) -> int:
        """Remove ``node`` and its telemetry history, freeing its quota place; an operator's act.

        Nothing else removes a node (an empty status does not): ``continuum fleet remove``
        calls this through the fleet service, which records it in the audit log first.  A
        removed node that sends a status again is admitted again as a new node, against the
        ``edge_nodes`` quota, with no history.

        Returns:
            The number of telemetry windows deleted with it.

        Raises:
            NotFoundError: the registry does not know ``node``.
        """
        with self._db.lock:
            with self._lock:
                known = node in self._pending or node in self._liveness or node in self._admitted
                self._pending.pop(node, None)
                self._liveness.drop(node)
                self._admitted.discard(node)
                kept = [r for r in self._telemetry_rows if r[0] != node]
                windows = len(self._telemetry_rows) - len(kept)
                self._telemetry_rows = kept
            rows, stored_windows = self._db.delete_locked(node)
            windows += stored_windows
        if not known and rows == 0:
            raise NotFoundError(
                f"the fleet of tenant {self._tenant!r} has no node {node!r}; "
                "`continuum fleet` lists its nodes"
            )
        with self._lock:
            self._counts["removed"] += 1
        _log.info("removed node %s and %d telemetry window(s)", node, windows)
        return windows

    def backlog(self) -> BacklogState:
        """Return how late the registry handles heartbeats, as last judged by ``tick()``."""
        with self._lock:
            return self._liveness.backlog.state()

    def stats(self) -> dict[str, Any]:
        """Return a snapshot of the counters, the fleet size and the backlog.

        ``behind``: whether offline verdicts by silence are withheld now; ``lag_s``: the
        median age of the heartbeats handled in the last tick (None if none); ``overdue``:
        nodes silent for over two periods whose verdict is withheld; ``behind_episodes``.
        """
        self._flush()
        total, up, refused = self._db.counts()
        with self._lock:
            backlog = self._liveness.backlog.state()
            return {
                "nodes": total,
                "online": up,
                "status": self._counts["status"],
                "reported": self._counts["reported"],
                "telemetry": self._counts["telemetry"],
                "removed": self._counts["removed"],
                "cleared": self._counts["cleared"],
                "timed_out": self._counts["timed_out"],
                "refused_nodes": refused,
                "refusals": self._counts["refused"],
                "rejected": dict(self._rejected),
                "behind": backlog.behind,
                "lag_s": None if math.isnan(backlog.lag_s) else backlog.lag_s,
                "overdue": backlog.overdue,
                "behind_episodes": backlog.episodes,
            }

    def close(self) -> None:
        """Write what is pending and close the database."""
        self._flush()
        self._db.close()

    def __enter__(self) -> FleetRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def removal_record(info: NodeInfo, reason: str) -> dict[str, Any]:
    """Return what the audit record of a node's removal keeps of it: why, and what it was."""
    return {
        "reason": reason,
        "labels": info.labels,
        "online": info.online,
        "last_seen": info.last_seen,
        "refused": info.refused,
        "pipelines": info.pipelines,
        "models": {p: m.version for p in info.pipelines if (m := info.model(p)) is not None},
        "telemetry": "deleted with the node",
    }


def _same_node(in_message: str, in_topic: str) -> None:
    if in_message != in_topic:
        raise ProtocolError(
            f"message of node {in_message!r} on the topic of {in_topic!r}", reason="node_mismatch"
        )
