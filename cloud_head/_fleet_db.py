"""The fleet registry's SQLite file: the nodes and their telemetry history, written in batches.

Part of ``cloud_head.fleet``: ``FleetRegistry`` keeps what changes per message in memory and
hands it here once per flush; its queries read here.  One writer per file (the registry's
process); other processes read it through WAL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from continuum._fs import private_dir, private_file
from continuum.wire.messages import Telemetry

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

_NODE_COLUMNS = "SELECT node, status, reported, last_seen, refused FROM nodes"

#: Telemetry rows written between two prunes of the history past its retention.
_PRUNE_EVERY: Final = 1000

#: One telemetry window as stored: node, pipeline, ts, received_at, model_version, payload.
TelemetryRow = tuple[str, str, float, float, str, str]


@dataclass(slots=True)
class PendingNode:
    """A node's changes since the last flush; None keeps the stored value.

    ``beats_only``: nothing but heartbeats of a node already stored, so a plain UPDATE does.
    """

    last_seen: float
    status: bytes | str | None = None
    reported: str | None = None
    refused: str | None = None
    refused_set: bool = False
    beats_only: bool = False

    @property
    def status_text(self) -> str | None:
        """The status as stored: a heartbeat's payload is kept as the bytes it came in."""
        return self.status.decode() if isinstance(self.status, bytes) else self.status


class FleetDatabase:
    """The nodes and telemetry tables of one tenant's fleet.

    ``lock`` serialises the connection: the ``*_locked`` methods need it held (the registry
    takes it around its memory state's hand-over), the others take it themselves.

    Args:
        path: the SQLite file (created if missing, upgraded if it predates quotas).
        retention_s: how long telemetry windows are kept, by cloud receive time.
        clock: the cloud clock (Unix seconds), read when history is pruned.
    """

    def __init__(self, path: str | Path, *, retention_s: float, clock: Callable[[], float]) -> None:
        self.lock = threading.Lock()
        self._retention_s = retention_s
        self._clock = clock
        self._since_prune = 0
        db_path = Path(path)
        private_file(private_dir(db_path.parent) / db_path.name)  # 0600 in 0700
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(nodes)")}
        if "refused" not in columns:  # a registry file written before quotas were enforced
            self._db.execute("ALTER TABLE nodes ADD COLUMN refused TEXT")

    def admitted(self) -> set[str]:
        """Return the nodes stored with a status and no refusal (those the quota counts)."""
        with self.lock:
            return {
                row[0]
                for row in self._db.execute(
                    "SELECT node FROM nodes WHERE status IS NOT NULL AND refused IS NULL"
                )
            }

    def write_locked(self, pending: Mapping[str, PendingNode], rows: list[TelemetryRow]) -> None:
        """Write node changes and telemetry windows in one transaction (none on an error)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "UPDATE nodes SET status = ?, last_seen = ? WHERE node = ?",
                ((p.status_text, p.last_seen, node) for node, p in pending.items() if p.beats_only),
            )
            self._db.executemany(
                _FLUSH_NODE,
                (
                    (node, p.status_text, p.reported, p.last_seen, p.refused, p.refused_set)
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
            raise

    def delete_locked(self, node: str) -> tuple[int, int]:
        """Delete ``node`` and its telemetry; return the node rows and windows deleted."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rows = self._db.execute("DELETE FROM nodes WHERE node = ?", (node,)).rowcount
            windows = self._db.execute("DELETE FROM telemetry WHERE node = ?", (node,)).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return rows, windows

    def stored_online(self) -> list[tuple[str, str, float]]:
        """Return (node, status JSON, last_seen) of every node whose stored status is online."""
        with self.lock:
            return self._db.execute(
                "SELECT node, status, last_seen FROM nodes WHERE json_extract(status, '$.online')"
            ).fetchall()

    def exists(self, node: str) -> bool:
        """Return whether ``node`` has a row."""
        with self.lock:
            row = self._db.execute("SELECT 1 FROM nodes WHERE node = ?", (node,)).fetchone()
        return row is not None

    def nodes(self) -> tuple[list[tuple[Any, ...]], dict[str, dict[str, Telemetry]]]:
        """Return every node row, by name, and the newest telemetry per node and pipeline."""
        with self.lock:
            rows = self._db.execute(_NODE_COLUMNS + " ORDER BY node").fetchall()
            return rows, self._latest_telemetry_locked()

    def node(self, node: str) -> tuple[tuple[Any, ...] | None, dict[str, Telemetry]]:
        """Return one node's row (None if unknown) and its newest telemetry per pipeline."""
        with self.lock:
            row = self._db.execute(_NODE_COLUMNS + " WHERE node = ?", (node,)).fetchone()
            latest = self._latest_telemetry_locked(node) if row is not None else {}
        return row, latest.get(node, {})

    def liveness(self) -> dict[str, tuple[bool, float]]:
        """Return every node's stored online state and last-seen time, statuses unparsed."""
        with self.lock:
            rows = self._db.execute(
                "SELECT node, COALESCE(json_extract(status, '$.online'), 0), last_seen FROM nodes"
            ).fetchall()
        return {node: (bool(up), float(seen)) for node, up, seen in rows}

    def telemetry(
        self, node: str, pipeline: str, since_ts: float, model_version: str | None
    ) -> list[Telemetry]:
        """Return one node's telemetry of one pipeline with ``ts >= since_ts``, oldest first."""
        query = "SELECT payload FROM telemetry WHERE node = ? AND pipeline = ? AND ts >= ?"
        params: list[Any] = [node, pipeline, since_ts]
        if model_version is not None:
            query += " AND model_version = ?"
            params.append(model_version)
        with self.lock:
            rows = self._db.execute(query + " ORDER BY ts, rowid", params).fetchall()
        return [Telemetry.model_validate_json(r[0]) for r in rows]

    def reported(self, node: str) -> str | None:
        """Return the reported state JSON stored for ``node``, if any."""
        with self.lock:
            row = self._db.execute("SELECT reported FROM nodes WHERE node = ?", (node,)).fetchone()
        return None if row is None else row[0]

    def last_telemetry(self, node: str, pipeline: str) -> Telemetry | None:
        """Return the newest telemetry of one node and pipeline, or None if none is stored."""
        with self.lock:
            row = self._db.execute(
                "SELECT payload FROM telemetry WHERE node = ? AND pipeline = ? "
                "ORDER BY ts DESC, rowid DESC LIMIT 1",
                (node, pipeline),
            ).fetchone()
        return None if row is None else Telemetry.model_validate_json(row[0])

    def counts(self) -> tuple[int, int, int]:
        """Return how many nodes are stored, how many online, how many refused."""
        with self.lock:
            total, up, refused = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(json_extract(status, '$.online')), 0), "
                "COUNT(refused) FROM nodes"
            ).fetchone()
        return int(total), int(up), int(refused)

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self._db.close()

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
