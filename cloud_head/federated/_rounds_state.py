"""The federated rounds' durable state: sessions and their completed rounds, in SQLite.

A session is one federated training from one parent model; each completed round stores its
global weights file, their sha256 and who took part.  A head that restarts mid-training finds
the open session of the same parent and resumes after its last completed round, once the
weights file's digest checks out.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from cloud_head.federated.aggregate import state_digest
from continuum._fs import private_dir, private_file

__all__ = ["RoundRecord", "RoundsState"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS federated_sessions (
    session INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    parent TEXT NOT NULL,
    runs TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS federated_rounds (
    session INTEGER NOT NULL,
    round INTEGER NOT NULL,
    weights_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    record TEXT NOT NULL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (session, round)
);
"""


@dataclass(frozen=True, kw_only=True)
class RoundRecord:
    """One completed round: its number, global weights file and digest, and its record."""

    round: int
    weights_path: Path
    sha256: str
    record: dict[str, Any]


class RoundsState:
    """Sessions and rounds of one pipeline's federated training, next to its controller state."""

    def __init__(self, path: Path, tenant: str, pipeline: str) -> None:
        """Open (or create) the database at ``path``; weights files go beside it."""
        self.path = Path(path)
        self.tenant = tenant
        self.pipeline = pipeline
        private_file(private_dir(self.path.parent) / self.path.name)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def open_session(self, parent: str | None, run: str, now: float) -> tuple[int, int]:
        """Return the session to train in and its last completed round (0: a new session).

        An open session from the same parent is resumed (the run is added to its runs); an
        open one from another parent is closed as superseded.
        """
        key = parent or ""
        with self._lock:
            rows = self._db.execute(
                "SELECT session, parent, runs FROM federated_sessions WHERE tenant=? AND "
                "pipeline=? AND finished_at IS NULL ORDER BY session",
                (self.tenant, self.pipeline),
            ).fetchall()
            for session, session_parent, runs in rows:
                if session_parent == key:
                    self._db.execute(
                        "UPDATE federated_sessions SET runs=? WHERE session=?",
                        (json.dumps([*json.loads(runs), run]), session),
                    )
                    last = self._db.execute(
                        "SELECT COALESCE(MAX(round), 0) FROM federated_rounds WHERE session=?",
                        (session,),
                    ).fetchone()[0]
                    return int(session), int(last)
                self._db.execute(
                    "UPDATE federated_sessions SET finished_at=?, outcome=? WHERE session=?",
                    (now, "superseded: the current model changed", session),
                )
            cursor = self._db.execute(
                "INSERT INTO federated_sessions (tenant, pipeline, parent, runs, started_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.tenant, self.pipeline, key, json.dumps([run]), now),
            )
            return int(cursor.lastrowid or 0), 0

    def session_dir(self, session: int) -> Path:
        """Return the folder of a session's files (weights per round, the graph)."""
        return private_dir(self.path.parent / "federated" / f"session-{session}")

    def save_round(
        self,
        session: int,
        number: int,
        state: dict[str, np.ndarray],
        record: dict[str, Any],
        now: float,
    ) -> RoundRecord:
        """Store a completed round: the weights file first, then its row (the commit point)."""
        directory = self.session_dir(session)
        final = directory / f"round-{number}.npz"
        staging = directory / f".round-{number}.npz"
        with staging.open("wb") as handle:
            cast(Any, np.savez)(handle, **state)
        staging.replace(final)
        digest = state_digest(state)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO federated_rounds VALUES (?, ?, ?, ?, ?, ?)",
                (session, number, str(final), digest, json.dumps(record), now),
            )
        return RoundRecord(round=number, weights_path=final, sha256=digest, record=record)

    def rounds(self, session: int) -> list[RoundRecord]:
        """Return a session's completed rounds in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT round, weights_path, sha256, record FROM federated_rounds WHERE "
                "session=? ORDER BY round",
                (session,),
            ).fetchall()
        return [
            RoundRecord(round=int(r), weights_path=Path(p), sha256=str(d), record=json.loads(rec))
            for r, p, d, rec in rows
        ]

    def load_weights(self, record: RoundRecord) -> dict[str, np.ndarray]:
        """Load a round's global weights; raise ``ValueError`` if their digest does not match."""
        with np.load(record.weights_path) as data:
            state = {k: np.asarray(data[k]) for k in data.files}
        if state_digest(state) != record.sha256:
            raise ValueError(
                f"the weights of round {record.round} ({record.weights_path}) do not match "
                "their recorded sha256"
            )
        return state

    def finish(self, session: int, outcome: str, now: float) -> None:
        """Close a session (trained, failed): a later run starts a new one."""
        with self._lock:
            self._db.execute(
                "UPDATE federated_sessions SET finished_at=?, outcome=? WHERE session=?",
                (now, outcome, session),
            )
