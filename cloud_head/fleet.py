"""The fleet registry: which edge nodes exist, what they are, what they run and how it goes.

Fed by the retained node status (the last will turns it offline) and reported state, and by
telemetry, whose history is kept for the rollout controller and reports. ``FleetRegistry`` is
the protocol logic over SQLite; ``FleetWorker`` is the thin MQTT runner around it.

A node is admitted against the tenant's ``edge_nodes`` quota when its first status arrives:
admitted nodes (online or not; a node that leaves with an empty retained status frees its
place) count against it, and a node beyond it is recorded with the refusal as its ``refused``
reason, counted, and given no desired state (the rollout controller skips it).  A refused node
is checked again at each status it sends, so raising the quota lets it in.

At fleet scale (DESIGN.md §5: every agent re-publishes its retained status each heartbeat
period) the registry keeps what changes per message in memory and writes it to SQLite in one
transaction per ``flush_interval_s``: a heartbeat that repeats the node's last status but for
its ``ts`` is recognised without parsing the JSON, and only the latest state of each node is
written.  Its own queries flush first, so they are always current; other processes reading
the same file (the controllers, ``continuum fleet``) see it at most ``flush_interval_s`` late.
A node silent for more than two heartbeat periods is marked offline even when no last will
came (a half-open connection the broker has not noticed yet), and counted as ``timed_out``.
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

from cloud_head._mqtt import RejectLog, reason_code_failed
from continuum.errors import ConfigError, ProtocolError
from continuum.labels import LabelSelector
from continuum.wire import topics
from continuum.wire.messages import (
    MAX_MESSAGE_BYTES,
    NodeStatus,
    ReportedModel,
    ReportedState,
    Telemetry,
)
from continuum.wire.mqtt import BrokerSettings, connect, make_client

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from cloud_head.tenants import Quotas

__all__ = ["FleetRegistry", "FleetUpdate", "FleetWorker", "NodeInfo", "subscriptions"]

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
#: Telemetry rows written between two prunes of the history past its retention.
_PRUNE_EVERY: Final = 1000

UpdateKind = Literal["status", "removed", "reported", "telemetry", "rejected"]


@dataclass(frozen=True, slots=True)
class FleetUpdate:
    """What the registry did with one message."""

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
    """

    status: NodeStatus
    prefix: bytes | None
    last_seen: float
    period: float


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
        telemetry_retention_s: how long telemetry history is kept.
        clock: the cloud clock (Unix seconds).
        quotas: returns the tenant's quotas when a new node is to be admitted (None, or a None
            result: no limit on edge nodes).
        heartbeat_interval_s: the heartbeat period of nodes whose status does not state
            their own (``heartbeat_s``; agents state it); a node silent for more than two of
            its periods is marked offline by ``tick()``.
        flush_interval_s: how long changes may wait in memory before ``tick()`` writes them.
    """

    def __init__(
        self,
        tenant: str,
        path: str | Path,
        *,
        telemetry_retention_s: float = 7 * 24 * 3600.0,
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
    def longest_heartbeat_s(self) -> float:
        """The longest heartbeat period of a live node (or the default): after a reconnect,
        the fleet has been heard from once this long has passed."""
        with self._lock:
            return max([self._heartbeat_s, *self._by_period])

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
        if parsed.kind == "status":
            if not payload:  # an empty retained message clears the topic: the node left
                self.forget(node)
                return FleetUpdate("removed", node=node)
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
            if not payload:
                return FleetUpdate("reported", node=node)
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

    def tick(self, *, expire_silent: bool = True) -> list[str]:
        """Mark nodes silent for over two of their heartbeat periods offline, then flush.

        Call it every ``tick_interval_s`` (``FleetWorker`` does), with ``expire_silent`` False
        while the registry itself cannot hear the fleet (no broker): silence then says nothing
        about the nodes.  A node marked offline keeps its last-seen time and comes back online
        with its next status.

        Returns:
            The nodes marked offline by this call.
        """
        now = self._clock()
        silent: list[str] = []
        with self._lock:
            for period, bucket in list(self._by_period.items()) if expire_silent else ():
                cutoff = now - 2 * period
                while bucket:
                    node = next(iter(bucket))
                    live = self._live[node]
                    if live.last_seen >= cutoff:
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
                "message and without a last will (half-open connections?): %s%s",
                len(silent),
                ", ".join(silent[:5]),
                " ..." if len(silent) > 5 else "",
            )
        self._flush()
        return silent

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

    def forget(self, node: str) -> None:
        """Remove a node and its telemetry history."""
        with self._db_lock:
            with self._lock:
                self._pending.pop(node, None)
                self._drop_live_locked(node)
                self._admitted.discard(node)
                self._telemetry_rows = [r for r in self._telemetry_rows if r[0] != node]
            self._db.execute("DELETE FROM nodes WHERE node = ?", (node,))
            self._db.execute("DELETE FROM telemetry WHERE node = ?", (node,))

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


def subscriptions(tenant: str) -> list[tuple[str, int]]:
    """Return the (filter, QoS) pairs the fleet registry of ``tenant`` subscribes to.

    Status at QoS 0: it is retained and the worker subscribes again at every connect, so the
    broker replays every node's latest status (and any last will that fired meanwhile) after
    an outage; QoS 1 would only add a PUBACK per heartbeat, which made a bare paho subscriber
    spend 79 instead of 56 us per status here.  Reported state likewise is retained, but
    rare; telemetry is not retained, so both stay at QoS 1 and queue in the session.
    """
    return [
        (topics.nodes_filter(tenant, "status"), 0),
        (topics.nodes_filter(tenant, "reported"), 1),
        (topics.pipeline_filter(tenant, "telemetry"), 1),
    ]


def _same_node(in_message: str, in_topic: str) -> None:
    if in_message != in_topic:
        raise ProtocolError(
            f"message of node {in_message!r} on the topic of {in_topic!r}", reason="node_mismatch"
        )


class FleetWorker:
    """Run a ``FleetRegistry`` on MQTT: subscribe to status, reported and telemetry of a tenant.

    A plain (not shared) subscription, because the broker only replays retained status and
    reported state to plain subscriptions; every replica sees every node.  A named thread
    calls the registry's ``tick()`` (flush, silent nodes offline) every ``tick_interval_s``.
    """

    def __init__(
        self, registry: FleetRegistry, broker: BrokerSettings, *, client_id: str | None = None
    ) -> None:
        """Prepare a worker; ``client_id`` names its persistent session."""
        self._registry = registry
        self._broker = broker
        self._client_id = client_id or f"ctm-fleet-{registry.tenant}"
        self._subscriptions = subscriptions(registry.tenant)
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None
        self._connected_at = 0.0

    @property
    def connected(self) -> bool:
        """Whether the MQTT session is up and subscribed."""
        return self._connected.is_set()

    def start(self) -> None:
        """Connect and subscribe; raises NotReadyError if the broker is down."""
        if self._client is not None:
            raise RuntimeError("the fleet worker is already running")
        self._stopping.clear()
        client = make_client(self._client_id, self._broker)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        connect(client, self._broker)
        self._client = client
        self._ticker = threading.Thread(
            target=self._tick, name=f"ctm-fleet-tick-{self._registry.tenant}", daemon=True
        )
        self._ticker.start()

    def stop(self) -> None:
        """Disconnect (the session persists) and flush the registry."""
        self._stopping.set()
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.join(10.0)
        self._connected.clear()

    def stats(self) -> dict[str, Any]:
        """Return the registry counters plus the connection state."""
        snapshot = self._registry.stats()
        snapshot["connected"] = self.connected
        return snapshot

    def __enter__(self) -> FleetWorker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _tick(self) -> None:
        while True:
            stopping = self._stopping.wait(self._registry.tick_interval_s)
            # After a (re)connect the broker replays every retained status; until then, and
            # while the broker is away, the fleet's silence is the worker's own.
            heard = self.connected and (
                time.monotonic() - self._connected_at >= self._registry.longest_heartbeat_s
            )
            try:
                self._registry.tick(expire_silent=heard)
            except Exception:  # e.g. a locked or full disk: log, keep the changes, try again
                _log.exception("fleet registry tick failed; retrying")
            if stopping:
                return

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code_failed(reason_code):
            _log.warning("broker refused the fleet session: %s", reason_code)
            return
        client.subscribe(self._subscriptions)
        self._connected_at = time.monotonic()
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if self._connected.is_set() and not self._stopping.is_set():
            _log.warning(
                "fleet %s lost the broker (%s); reconnecting", self._client_id, reason_code
            )
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._registry.handle(message.topic, bytes(message.payload))
