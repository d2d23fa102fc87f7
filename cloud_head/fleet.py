"""The fleet registry: which edge nodes exist, what they are, what they run and how it goes.

Fed by the retained node status (the last will turns it offline) and reported state, and by
telemetry, whose history is kept for the rollout controller and reports. ``FleetRegistry`` is
the protocol logic over SQLite; ``FleetWorker`` is the thin MQTT runner around it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from cloud_head._mqtt import RejectLog, reason_code_failed
from continuum.errors import ProtocolError
from continuum.labels import LabelSelector
from continuum.wire import topics
from continuum.wire.messages import NodeStatus, ReportedModel, ReportedState, Telemetry
from continuum.wire.mqtt import BrokerSettings, connect, make_client

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

__all__ = ["FleetRegistry", "FleetUpdate", "FleetWorker", "NodeInfo"]

_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    status TEXT,
    reported TEXT,
    last_seen REAL NOT NULL
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
    as offline); ``last_seen`` is the cloud time of the node's last message of any kind.
    """

    node: str
    status: NodeStatus | None
    reported: ReportedState | None
    last_seen: float
    telemetry: dict[str, Telemetry] = field(default_factory=dict)

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


class FleetRegistry:
    """Keep the fleet of one tenant in SQLite, from status, reported and telemetry messages."""

    def __init__(
        self,
        tenant: str,
        path: str | Path,
        *,
        telemetry_retention_s: float = 7 * 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (or create) the registry of ``tenant`` at ``path``."""
        self._tenant = topics.check_name(tenant, "tenant")
        self._retention_s = telemetry_retention_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._reject_log = RejectLog(_log)
        self._since_prune = 0
        db_path = Path(path)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    @property
    def tenant(self) -> str:
        """The tenant whose nodes this registry tracks."""
        return self._tenant

    # -- protocol --------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> FleetUpdate:
        """Apply one status, reported or telemetry message; never raises."""
        try:
            update = self._apply(topic, bytes(payload))
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
            self._upsert(node, "status", status.model_dump_json(), now)
            return FleetUpdate("status", node=node)
        if parsed.kind == "reported":
            if not payload:
                return FleetUpdate("reported", node=node)
            reported = ReportedState.from_payload(payload)
            _same_node(reported.node, node)
            self._upsert(node, "reported", reported.model_dump_json(), now)
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
            self._add_telemetry(telemetry, now)
            return FleetUpdate("telemetry", node=node)
        raise ProtocolError(
            f"the fleet registry does not take {parsed.kind} messages", reason="unexpected_topic"
        )

    def _upsert(
        self, node: str, column: Literal["status", "reported"], value: str, now: float
    ) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT INTO nodes (node, {column}, last_seen) VALUES (?, ?, ?) "
                f"ON CONFLICT (node) DO UPDATE SET {column} = excluded.{column}, "
                "last_seen = excluded.last_seen",
                (node, value, now),
            )

    def _add_telemetry(self, telemetry: Telemetry, now: float) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO telemetry VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        telemetry.node,
                        telemetry.pipeline,
                        telemetry.ts,
                        now,
                        telemetry.model_version,
                        telemetry.model_dump_json(),
                    ),
                )
                self._db.execute(
                    "INSERT INTO nodes (node, last_seen) VALUES (?, ?) "
                    "ON CONFLICT (node) DO UPDATE SET last_seen = excluded.last_seen",
                    (telemetry.node, now),
                )
                self._since_prune += 1
                if self._since_prune >= 1000:
                    self._since_prune = 0
                    self._db.execute(
                        "DELETE FROM telemetry WHERE received_at < ?", (now - self._retention_s,)
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- queries ---------------------------------------------------------------------------

    def nodes(
        self, selector: LabelSelector | None = None, *, online: bool | None = None
    ) -> list[NodeInfo]:
        """Return the nodes whose labels match ``selector`` (all if None), by name.

        With ``online`` set, only nodes whose online state equals it.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT node, status, reported, last_seen FROM nodes ORDER BY node"
            ).fetchall()
            latest = self._latest_telemetry_locked()
        found = []
        for node, status_json, reported_json, last_seen in rows:
            info = NodeInfo(
                node=node,
                status=None if status_json is None else NodeStatus.model_validate_json(status_json),
                reported=(
                    None
                    if reported_json is None
                    else ReportedState.model_validate_json(reported_json)
                ),
                last_seen=float(last_seen),
                telemetry=latest.get(node, {}),
            )
            if selector is not None and not selector.matches(info.labels):
                continue
            if online is not None and info.online != online:
                continue
            found.append(info)
        return found

    def get(self, node: str) -> NodeInfo | None:
        """Return what is known about ``node``, or None if it never sent anything."""
        return next((n for n in self.nodes() if n.node == node), None)

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
        with self._lock:
            rows = self._db.execute(query + " ORDER BY ts, rowid", params).fetchall()
        return [Telemetry.model_validate_json(r[0]) for r in rows]

    def reported_model(self, node: str, pipeline: str) -> ReportedModel | None:
        """Return the model ``node`` last reported for ``pipeline``, or None if it reported none."""
        with self._lock:
            row = self._db.execute("SELECT reported FROM nodes WHERE node = ?", (node,)).fetchone()
        if row is None or row[0] is None:
            return None
        return ReportedState.model_validate_json(row[0]).pipelines.get(pipeline)

    def last_telemetry(self, node: str, pipeline: str) -> Telemetry | None:
        """Return the newest telemetry of one node and pipeline, or None if none came yet."""
        with self._lock:
            row = self._db.execute(
                "SELECT payload FROM telemetry WHERE node = ? AND pipeline = ? "
                "ORDER BY ts DESC, rowid DESC LIMIT 1",
                (node, pipeline),
            ).fetchone()
        return None if row is None else Telemetry.model_validate_json(row[0])

    def forget(self, node: str) -> None:
        """Remove a node and its telemetry history."""
        with self._lock:
            self._db.execute("DELETE FROM nodes WHERE node = ?", (node,))
            self._db.execute("DELETE FROM telemetry WHERE node = ?", (node,))

    def stats(self) -> dict[str, Any]:
        """Return a snapshot of the counters and the fleet size."""
        with self._lock:
            total, up = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(json_extract(status, '$.online')), 0) FROM nodes"
            ).fetchone()
            return {
                "nodes": int(total),
                "online": int(up),
                "status": self._counts["status"],
                "reported": self._counts["reported"],
                "telemetry": self._counts["telemetry"],
                "removed": self._counts["removed"],
                "rejected": dict(self._rejected),
            }

    def close(self) -> None:
        """Close the database."""
        with self._lock:
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

    def _latest_telemetry_locked(self) -> dict[str, dict[str, Telemetry]]:
        rows = self._db.execute(
            "SELECT t.node, t.pipeline, t.payload FROM telemetry t "
            "WHERE t.rowid = (SELECT u.rowid FROM telemetry u WHERE u.node = t.node "
            "AND u.pipeline = t.pipeline ORDER BY u.ts DESC, u.rowid DESC LIMIT 1)"
        ).fetchall()
        latest: dict[str, dict[str, Telemetry]] = {}
        for node, pipeline, payload in rows:
            latest.setdefault(node, {})[pipeline] = Telemetry.model_validate_json(payload)
        return latest


def _same_node(in_message: str, in_topic: str) -> None:
    if in_message != in_topic:
        raise ProtocolError(
            f"message of node {in_message!r} on the topic of {in_topic!r}", reason="node_mismatch"
        )


class FleetWorker:
    """Run a ``FleetRegistry`` on MQTT: subscribe to status, reported and telemetry of a tenant.

    A plain (not shared) subscription, because the broker only replays retained status and
    reported state to plain subscriptions; every replica sees every node.
    """

    def __init__(
        self, registry: FleetRegistry, broker: BrokerSettings, *, client_id: str | None = None
    ) -> None:
        """Prepare a worker; ``client_id`` names its persistent session."""
        self._registry = registry
        self._broker = broker
        self._client_id = client_id or f"ctm-fleet-{registry.tenant}"
        self._filters = [
            topics.nodes_filter(registry.tenant, "status"),
            topics.nodes_filter(registry.tenant, "reported"),
            topics.pipeline_filter(registry.tenant, "telemetry"),
        ]
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._stopping = threading.Event()

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

    def stop(self) -> None:
        """Disconnect (the session persists)."""
        self._stopping.set()
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
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

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code_failed(reason_code):
            _log.warning("broker refused the fleet session: %s", reason_code)
            return
        client.subscribe([(f, 1) for f in self._filters])
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
