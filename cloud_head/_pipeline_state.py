"""A pipeline controller's own state: named JSON records, durable, in the controller's file.

The rollout's state (``ROLLOUT_RECORD``) and the training bookkeeping (``TRAINING_RECORD``)
are stored here before the step they announce is carried out, so a controller built again
on the same file resumes where the last one stopped. The table sits in the same SQLite file
as the desired-state book (``cloud_head.desired_state``), and is the one written by state
files from before the two were apart, so those resume too.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from continuum._fs import private_dir, private_file

__all__ = ["ROLLOUT_RECORD", "TRAINING_RECORD", "PipelineStateStore", "connect_state_file"]

#: The record that holds a pipeline's ``RolloutState``.
ROLLOUT_RECORD = "rollout"
#: The record that holds the trigger bookkeeping and training records.
TRAINING_RECORD = "training"


def connect_state_file(path: Path) -> sqlite3.Connection:
    """Open (creating its folder) a controller's SQLite file: WAL, every commit synced.

    Autocommit: each statement is its own durable transaction, shared by threads (callers
    hold their own lock around it).
    """
    private_file(private_dir(Path(path).parent) / Path(path).name)  # 0600 in 0700
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


class PipelineStateStore:
    """The durable records of one pipeline's controller, by kind (``save``, ``load``)."""

    def __init__(self, path: Path, tenant: str, pipeline: str) -> None:
        self.path = Path(path)
        self.tenant = tenant
        self.pipeline = pipeline
        self._lock = threading.Lock()
        self._db = connect_state_file(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pipeline_records (tenant TEXT, pipeline TEXT, "
            "kind TEXT, body TEXT NOT NULL, saved_at REAL NOT NULL, "
            "PRIMARY KEY (tenant, pipeline, kind))"
        )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def save(self, kind: str, body: Mapping[str, Any]) -> None:
        """Durably store ``body`` (JSON-able) as the pipeline's record ``kind``."""
        text = json.dumps(body, sort_keys=True)
        with self._lock:
            self._db.execute(
                "INSERT INTO pipeline_records VALUES (?,?,?,?,?) "
                "ON CONFLICT(tenant, pipeline, kind) DO UPDATE SET body=excluded.body, "
                "saved_at=excluded.saved_at",
                (self.tenant, self.pipeline, kind, text, time.time()),
            )

    def load(self, kind: str) -> dict[str, Any] | None:
        """Return the record ``save`` stored last under ``kind``, or None if there is none."""
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM pipeline_records WHERE tenant=? AND pipeline=? AND kind=?",
                (self.tenant, self.pipeline, kind),
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))
