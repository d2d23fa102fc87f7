"""The fleet registry: which edge nodes exist, what they are, what they run and how it goes.

Fed by the retained node status (the last will turns it offline) and reported state, and by
telemetry, whose history is kept for the rollout controller and reports for
``telemetry_retention_s`` (default 7 days; older windows are pruned as new ones are written).
``FleetRegistry`` is the protocol logic over SQLite; ``FleetWorker`` (in ``_fleet_mqtt``) is
the thin MQTT runner around it.

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
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

from cloud_head._fleet_mqtt import FleetWorker, subscriptions
from cloud_head._mqtt import RejectLog
from continuum.errors import ConfigError, NotFoundError, ProtocolError
from continuum.labels import LabelSelector
from continuum.wire import topics
from continuum.wire.messages import (
    MAX_MESSAGE_BYTES,
    NodeStatus,
    ReportedModel,
    ReportedState,
    Telemetry,
)

if TYPE_CHECKING:
    from cloud_head.tenants import Quotas

__all__ = [
    "TELEMETRY_RETENTION_S",
    "FleetRegistry",
    "FleetUpdate",
    "FleetWorker",
    "NodeInfo",
    "removal_record",
    "subscriptions",
]

_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    status TEXT,
    reported TEXT,
    last_seen REAL NOT NULL,
    refused TEXT
);
CREATE TABLE IF NOT EXISTS telemetry (
    node TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    ts REAL NOT NULL,
    received_at REAL NOT NULL,
    model_version TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_by_node ON telemetry (node, pipeline, ts);
CREATE INDEX IF NOT EXISTS telemetry_by_time ON telemetry (received_at);
"""

# One statement writes every pending change of a node; NULL status or reported keeps the
# stored value, and the refused column changes only when the sixth parameter says so.
_FLUSH_NODE = """
INSERT INTO nodes (node, status, reported, last_seen, refused) VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (node) DO UPDATE SET
    status = COALESCE(excluded.status, nodes.status),
    reported = COALESCE(excluded.reported, nodes.reported),
    last_seen = excluded.last_seen,
    refused = CASE WHEN ?6 THEN excluded.refused ELSE nodes.refused END
"""

#: The key that ends a status as pydantic writes it (``ts`` is its last field).
_TS_KEY: Final = b',"ts":'
#: What may follow ``_TS_KEY`` in a heartbeat: a JSON number >= 0 and the closing brace.
_TS_TAIL: Final = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\}")
_TS_TAIL_MAX: Final = 40
#: How long telemetry history is kept by default (``continuum fleet --help`` says it too).
TELEMETRY_RETENTION_S: Final = 7 * 24 * 3600.0
#: Telemetry rows written between two prunes of the history past its retention.
_PRUNE_EVERY: Final = 1000

UpdateKind = Literal["status", "reported", "telemetry", "cleared", "rejected"]


@dataclass(frozen=True, slots=True)
class FleetUpdate:
    """What the registry did with one message.

    ``cleared``: an empty status or reported message about a node the registry does not
    know (e.g. ``continuum fleet remove`` clearing the retained topics of the node it
    removed): nothing to keep, nothing done.  The same about a known node is ``rejected``
    (``empty_status``, ``empty_reported``) and the node is kept as it was.
    """

    kind: UpdateKind
    node: str = ""
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Everything known about one node.

    ``status`` is None until the node published its status (then it has no labels and counts
    as offline); ``last_seen`` is the cloud time of the node's last message of any kind;
    ``refused`` says why the node was not admitted (over the ``edge_nodes`` quota), else None.
    """

    node: str
    status: NodeStatus | None
    reported: ReportedState | None
    last_seen: float
    telemetry: dict[str, Telemetry] = field(default_factory=dict)
    refused: str | None = None

    @property
    def online(self) -> bool:
        """Whether the node's last status said it is online."""
        return self.status is not None and self.status.online

    @property
    def labels(self) -> dict[str, str]:
        """The node's labels (empty until its status arrived)."""
        return dict(self.status.labels) if self.status is not None else {}

    @property
    def pipelines(self) -> list[str]:
        """The pipelines the node's status says it runs (empty until its status arrived)."""
        return list(self.status.pipelines) if self.status is not None else []

    def model(self, pipeline: str) -> ReportedModel | None:
        """Return the model the node reports for ``pipeline``, if any."""
        return None if self.reported is None else self.reported.pipelines.get(pipeline)


@dataclass(slots=True)
class _Live:
    """A node whose last status said online: when it was last heard of, how to spot its beat.

    ``prefix`` is its last status payload up to the ``ts`` value, or None when that status was
    not laid out as pydantic writes it (or the node is refused): then every status is parsed.
    ``since``: when the registry began to watch it, for a node it found online in its file
    rather than heard from (its silence is counted from then, not from before the restart).
    """

    status: NodeStatus
    prefix: bytes | None
    last_seen: float
    period: float
    since: float = 0.0


@dataclass(slots=True)
class _Pending:
    """A node's changes since the last flush; None keeps the stored value.

    ``beats_only``: nothing but heartbeats of a node already stored, so a plain UPDATE does.
    """

    last_seen: float
    status: bytes | str | None = None
    reported: str | None = None
    refused: str | None = None
    refused_set: bool = False
    beats_only: bool = False


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
        self._retention_s = telemetry_retention_s
        self._clock = clock
        self._heartbeat_s = heartbeat_interval_s
        self._flush_s = flush_interval_s
        # Lock order: _db_lock, then _lock.  _lock guards the memory state and is never held
        # across SQLite work, so handle() does not wait for a flush.
        self._lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._reject_log = RejectLog(_log)
        self._since_prune = 0
        self._status_root = topics.nodes_filter(self._tenant, "status")[: -len("+/status")]
        self._live: dict[str, _Live] = {}
        self._resumed = False  # whether tick() took up the nodes stored online
        # The live nodes of each heartbeat period, oldest last_seen first: tick() finds the
        # silent ones at the front of each, whatever the fleet's size.
        self._by_period: dict[float, OrderedDict[str, None]] = {}
        self._pending: dict[str, _Pending] = {}
        self._telemetry_rows: list[tuple[str, str, float, float, str, str]] = []
        db_path = Path(path)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(nodes)")}
        if "refused" not in columns:  # a registry file written before quotas were enforced
            self._db.execute("ALTER TABLE nodes ADD COLUMN refused TEXT")
        self._admitted = {
            row[0]
            for row in self._db.execute(
                "SELECT node FROM nodes WHERE status IS NOT NULL AND refused IS NULL"
            )
        }

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
            shortest = min([self._heartbeat_s, *self._by_period])
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
                    return FleetUpdate("status", node=node)
        try:
            update = self._apply(topic, payload)
        except ProtocolError as exc:
            update = FleetUpdate("rejected", reason=exc.reason, detail=str(exc))
        except Exception as exc:  # a bug must not stop the registry; count it and go on
            _log.exception("unexpected error applying a message on %s", topic)
            update = FleetUpdate("rejected", reason="internal_error", detail=repr(exc))
        with self._lock:
            if update.kind == "rejected":
                self._rejected[update.reason] += 1
            else:
                self._counts[update.kind] += 1
        if update.kind == "rejected":
            self._reject_log.reject(update.reason, topic, update.detail)
        return update

    def _heartbeat_locked(self, node: str, payload: bytes, now: float) -> bool:
        """Apply ``payload`` if it repeats the live node's last status but for ``ts``.

        The rest of the payload was validated with that status, and the new ``ts`` is a JSON
        number >= 0 that closes the object, so the full parse would accept it too.
        """
        live = self._live.get(node)  # only valid node names are keys
        if live is None or live.prefix is None or len(payload) > MAX_MESSAGE_BYTES:
            return False
        if not payload.startswith(live.prefix):
            return False
        tail = payload[len(live.prefix) :]
        if len(tail) > _TS_TAIL_MAX or not _TS_TAIL.fullmatch(tail):
            return False
        if not math.isfinite(float(tail[:-1])):
            return False
        live.last_seen = now
        self._by_period[live.period].move_to_end(node)
        pending = self._pending.get(node)
        if pending is None:  # a live node without pending changes is stored already
            self._pending[node] = _Pending(now, payload, beats_only=True)
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
                return FleetUpdate("status", node=node, reason="over_quota", detail=refused)
            return FleetUpdate("status", node=node)
        if parsed.kind == "reported":
            reported = ReportedState.from_payload(payload)
            _same_node(reported.node, node)
            with self._lock:
                self._pending_locked(node, now).reported = reported.model_dump_json()
                self._touch_locked(node, now)
            return FleetUpdate("reported", node=node)
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
                self._touch_locked(node, now)
            return FleetUpdate("telemetry", node=node)
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
            return FleetUpdate("cleared", node=node)
        raise ProtocolError(
            f"empty {kind} message for node {node!r} (a cleared retained message or a stray "
            "publish): ignored, the node keeps its last state and telemetry history; "
            "decommission a node with `continuum fleet remove NODE`",
            reason=f"empty_{kind}",
        )

    def _known(self, node: str) -> bool:
        with self._lock:
            if node in self._pending or node in self._live or node in self._admitted:
                return True
        with self._db_lock:
            row = self._db.execute("SELECT 1 FROM nodes WHERE node = ?", (node,)).fetchone()
        return row is not None

    def _set_status(
        self, node: str, status: NodeStatus, payload: bytes, now: float, *, admitted: bool
    ) -> None:
        prefix = None
        if admitted:  # a refused node is checked again at each status: no shortcut for it
            head, key, tail = payload.rpartition(_TS_KEY)
            if key and _TS_TAIL.fullmatch(tail) and float(tail[:-1]) == status.ts:
                prefix = head + key
        with self._lock:
            self._pending_locked(node, now).status = status.model_dump_json()
            self._drop_live_locked(node)
            if status.online:
                period = status.heartbeat_s or self._heartbeat_s
                self._live[node] = _Live(status, prefix, now, period)
                self._by_period.setdefault(period, OrderedDict())[node] = None

    def _drop_live_locked(self, node: str) -> None:
        live = self._live.pop(node, None)
        if live is not None:
            bucket = self._by_period[live.period]
            del bucket[node]
            if not bucket:
                del self._by_period[live.period]

    def _pending_locked(self, node: str, now: float) -> _Pending:
        pending = self._pending.get(node)
        if pending is None:
            pending = self._pending[node] = _Pending(now)
        else:
            pending.last_seen, pending.beats_only = now, False
        return pending

    def _touch_locked(self, node: str, now: float) -> None:
        live = self._live.get(node)
        if live is not None:
            live.last_seen = now
            self._by_period[live.period].move_to_end(node)

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

    def tick(self) -> list[str]:
        """Mark nodes silent for over two of their heartbeat periods offline, then flush.

        Call it every ``tick_interval_s`` (``FleetWorker`` does), whether or not the broker
        is reachable: online means heard from, so while the registry hears nothing (its own
        broker connection down) its nodes go offline after two periods, and a dead broker
        shows.  No grace is needed after a reconnect: the broker replays every retained status
        at once on resubscribe.  A node marked offline keeps its last-seen time and comes back
        online with its next status.  The first call also takes up the nodes the file says are
        online but no message has named yet (a restart, or a node whose retained status was
        cleared), counting their silence from then.

        Returns:
            The nodes marked offline by this call.
        """
        now = self._clock()
        if not self._resumed:
            self._resume(now)
        silent: list[str] = []
        with self._lock:
            for period, bucket in list(self._by_period.items()):
                cutoff = now - 2 * period
                while bucket:
                    node = next(iter(bucket))
                    live = self._live[node]
                    if max(live.last_seen, live.since) >= cutoff:
                        break
                    self._drop_live_locked(node)
                    offline = live.status.model_copy(update={"online": False})
                    pending = self._pending_locked(node, live.last_seen)
                    pending.status = offline.model_dump_json()
                    silent.append(node)
            self._counts["timed_out"] += len(silent)
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
        with self._db_lock:
            rows = self._db.execute(
                "SELECT node, status, last_seen FROM nodes WHERE json_extract(status, '$.online')"
            ).fetchall()
        resumed: list[tuple[str, NodeStatus, float]] = []
        for node, status_json, last_seen in rows:
            try:
                resumed.append((node, NodeStatus.model_validate_json(status_json), last_seen))
            except ValueError:  # written by an older version: its next status replaces it
                _log.warning("stored status of node %s does not parse; not watched", node)
        with self._lock:
            self._resumed = True
            for node, status, last_seen in resumed:
                pending = self._pending.get(node)
                if node in self._live or (pending is not None and pending.status is not None):
                    continue  # a message named it since: that is newer than the file
                if pending is not None:
                    last_seen = max(last_seen, pending.last_seen)
                period = status.heartbeat_s or self._heartbeat_s
                self._live[node] = _Live(status, None, float(last_seen), period, since=now)
                self._by_period.setdefault(period, OrderedDict())[node] = None

    def _flush(self) -> None:
        """Write the pending node changes and telemetry in one transaction."""
        with self._db_lock:
            with self._lock:
                if not self._pending and not self._telemetry_rows:
                    return
                pending, self._pending = self._pending, {}
                rows, self._telemetry_rows = self._telemetry_rows, []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE nodes SET status = ?, last_seen = ? WHERE node = ?",
                    (
                        (
                            p.status.decode() if isinstance(p.status, bytes) else p.status,
                            p.last_seen,
                            node,
                        )
                        for node, p in pending.items()
                        if p.beats_only
                    ),
                )
                self._db.executemany(
                    _FLUSH_NODE,
                    (
                        (
                            node,
                            p.status.decode() if isinstance(p.status, bytes) else p.status,
                            p.reported,
                            p.last_seen,
                            p.refused,
                            p.refused_set,
                        )
                        for node, p in pending.items()
                        if not p.beats_only
                    ),
                )
                if rows:
                    self._db.executemany("INSERT INTO telemetry VALUES (?, ?, ?, ?, ?, ?)", rows)
                    self._since_prune += len(rows)
                    if self._since_prune >= _PRUNE_EVERY:
                        self._since_prune = 0
                        self._db.execute(
                            "DELETE FROM telemetry WHERE received_at < ?",
                            (self._clock() - self._retention_s,),
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
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
        with self._db_lock:
            rows = self._db.execute(
                "SELECT node, status, reported, last_seen, refused FROM nodes ORDER BY node"
            ).fetchall()
            latest = self._latest_telemetry_locked()
        found = []
        for row in rows:
            info = _node_info(row, latest.get(row[0], {}))
            if selector is not None and not selector.matches(info.labels):
                continue
            if online is not None and info.online != online:
                continue
            found.append(info)
        return found

    def get(self, node: str) -> NodeInfo | None:
        """Return what is known about ``node``, or None if it never sent anything."""
        self._flush()
        with self._db_lock:
            row = self._db.execute(
                "SELECT node, status, reported, last_seen, refused FROM nodes WHERE node = ?",
                (node,),
            ).fetchone()
            latest = self._latest_telemetry_locked(node) if row is not None else {}
        return None if row is None else _node_info(row, latest.get(node, {}))

    def liveness(self) -> dict[str, tuple[bool, float]]:
        """Return every node's online state and last-seen time, without parsing statuses.

        The cheap view for watching a large fleet (how current each node is, who flipped).
        """
        self._flush()
        with self._db_lock:
            rows = self._db.execute(
                "SELECT node, COALESCE(json_extract(status, '$.online'), 0), last_seen FROM nodes"
            ).fetchall()
        return {node: (bool(up), float(seen)) for node, up, seen in rows}

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
        query = "SELECT payload FROM telemetry WHERE node = ? AND pipeline = ? AND ts >= ?"
        params: list[Any] = [node, pipeline, since_ts]
        if model_version is not None:
            query += " AND model_version = ?"
            params.append(model_version)
        self._flush()
        with self._db_lock:
            rows = self._db.execute(query + " ORDER BY ts, rowid", params).fetchall()
        return [Telemetry.model_validate_json(r[0]) for r in rows]

    def reported_model(self, node: str, pipeline: str) -> ReportedModel | None:
        """Return the model ``node`` last reported for ``pipeline``, or None if it reported none."""
        self._flush()
        with self._db_lock:
            row = self._db.execute("SELECT reported FROM nodes WHERE node = ?", (node,)).fetchone()
        if row is None or row[0] is None:
            return None
        return ReportedState.model_validate_json(row[0]).pipelines.get(pipeline)

    def last_telemetry(self, node: str, pipeline: str) -> Telemetry | None:
        """Return the newest telemetry of one node and pipeline, or None if none came yet."""
        self._flush()
        with self._db_lock:
            row = self._db.execute(
                "SELECT payload FROM telemetry WHERE node = ? AND pipeline = ? "
                "ORDER BY ts DESC, rowid DESC LIMIT 1",
                (node, pipeline),
            ).fetchone()
        return None if row is None else Telemetry.model_validate_json(row[0])

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
        with self._db_lock:
            with self._lock:
                known = node in self._pending or node in self._live or node in self._admitted
                self._pending.pop(node, None)
                self._drop_live_locked(node)
                self._admitted.discard(node)
                kept = [r for r in self._telemetry_rows if r[0] != node]
                windows = len(self._telemetry_rows) - len(kept)
                self._telemetry_rows = kept
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute("DELETE FROM nodes WHERE node = ?", (node,)).rowcount
                windows += self._db.execute(
                    "DELETE FROM telemetry WHERE node = ?", (node,)
                ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if not known and rows == 0:
            raise NotFoundError(
                f"the fleet of tenant {self._tenant!r} has no node {node!r}; "
                "`continuum fleet` lists its nodes"
            )
        with self._lock:
            self._counts["removed"] += 1
        _log.info("removed node %s and %d telemetry window(s)", node, windows)
        return windows

    def stats(self) -> dict[str, Any]:
        """Return a snapshot of the counters and the fleet size."""
        self._flush()
        with self._db_lock:
            total, up, refused = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(json_extract(status, '$.online')), 0), "
                "COUNT(refused) FROM nodes"
            ).fetchone()
        with self._lock:
            return {
                "nodes": int(total),
                "online": int(up),
                "status": self._counts["status"],
                "reported": self._counts["reported"],
                "telemetry": self._counts["telemetry"],
                "removed": self._counts["removed"],
                "cleared": self._counts["cleared"],
                "timed_out": self._counts["timed_out"],
                "refused_nodes": int(refused),
                "refusals": self._counts["refused"],
                "rejected": dict(self._rejected),
            }

    def close(self) -> None:
        """Write what is pending and close the database."""
        self._flush()
        with self._db_lock:
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

    def _latest_telemetry_locked(self, node: str | None = None) -> dict[str, dict[str, Telemetry]]:
        query = (
            "SELECT t.node, t.pipeline, t.payload FROM telemetry t "
            "WHERE t.rowid = (SELECT u.rowid FROM telemetry u WHERE u.node = t.node "
            "AND u.pipeline = t.pipeline ORDER BY u.ts DESC, u.rowid DESC LIMIT 1)"
        )
        rows = (
            self._db.execute(query).fetchall()
            if node is None
            else self._db.execute(query + " AND t.node = ?", (node,)).fetchall()
        )
        latest: dict[str, dict[str, Telemetry]] = {}
        for name, pipeline, payload in rows:
            latest.setdefault(name, {})[pipeline] = Telemetry.model_validate_json(payload)
        return latest


def _node_info(row: tuple[Any, ...], telemetry: dict[str, Telemetry]) -> NodeInfo:
    node, status_json, reported_json, last_seen, refused = row
    return NodeInfo(
        node=node,
        status=None if status_json is None else NodeStatus.model_validate_json(status_json),
        reported=None
        if reported_json is None
        else ReportedState.model_validate_json(reported_json),
        last_seen=float(last_seen),
        telemetry=telemetry,
        refused=refused,
    )


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
