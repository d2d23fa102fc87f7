"""The outbox's SQLite file: its schema and migrations, its pragmas, and write transactions.

Durability choice: WAL with ``synchronous=NORMAL`` (the default).  A committed transaction
is in the WAL file as soon as ``COMMIT`` returns, so it survives any crash or kill of the
agent process (invariant 7.1); only an OS crash or power cut can roll back the last few
commits, and never corrupts the database.  ``synchronous=FULL`` closes that gap at one
fsync per commit (milliseconds on eMMC/SD cards, paid on the inference thread), so it is an
opt-in (``outbox_synchronous: full``) for boxes without a reliable power supply.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from continuum.errors import ConfigError

#: 2 added the samples.fields column (the record field section of the wire codec); 3 the
#: samples.sent_at column (sent and acknowledged by the broker, awaiting ingest's receipt);
#: 4 the feedback.sent_at column (the same for delayed labels); 5 the refused table.
SCHEMA_VERSION = 5

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    seq            INTEGER PRIMARY KEY,
    pipeline       TEXT    NOT NULL,
    model_version  TEXT    NOT NULL,
    data_class     TEXT    NOT NULL,
    captured_at_ns INTEGER NOT NULL,
    enqueued_at    REAL    NOT NULL,
    prediction     INTEGER NOT NULL,
    confidence     REAL,
    label          INTEGER,
    dtype          TEXT    NOT NULL,
    shape          TEXT    NOT NULL,
    tensor         BLOB    NOT NULL,
    size           INTEGER NOT NULL,
    fields         BLOB,
    sent_at        REAL
);
-- due_at: when the label is next to be sent: when it falls due, then, once the broker
-- acknowledged it (sent_at) and while no receipt came, when it is sent again.
CREATE TABLE IF NOT EXISTS feedback (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline    TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    label       INTEGER NOT NULL,
    due_at      REAL    NOT NULL,
    enqueued_at REAL    NOT NULL,
    sent_at     REAL
);
CREATE INDEX IF NOT EXISTS feedback_due ON feedback (due_at, id);
-- Receipts name the sample seqs whose labels ingest recorded (confirm_feedback).
CREATE INDEX IF NOT EXISTS feedback_by_seq ON feedback (seq);
-- Samples ingest refused for good (refuse_samples), as runs of seqs: which ended how.
CREATE TABLE IF NOT EXISTS refused (
    id         INTEGER PRIMARY KEY,
    pipeline   TEXT    NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    reason     TEXT    NOT NULL,
    refused_at REAL    NOT NULL
);
"""


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """Open the outbox database at ``path`` in WAL mode, its tables created.

    Raises:
        ConfigError: the file cannot use WAL mode.
        sqlite3.DatabaseError: the file is not a database (or is corrupt).
    """
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        # auto_vacuum must be chosen before the first table exists; it lets `reclaim`
        # give freed pages back to the file system without a full VACUUM.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"the outbox at {path} cannot use WAL mode (got {mode})")
        db.execute(synchronous_pragma(synchronous))
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_size_limit = 67108864")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # see _checkpoint.Checkpointer
        db.executescript(SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring an older file up to ``SCHEMA_VERSION`` (inside the caller's transaction).

    Raises:
        ConfigError: the file was written by a newer agent.
    """
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None:
        db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
    elif row[0] > SCHEMA_VERSION:
        raise ConfigError(
            f"the outbox at {path} has schema {row[0]}, newer than this agent "
            f"({SCHEMA_VERSION}); upgrade the agent"
        )
    elif row[0] < SCHEMA_VERSION:
        columns = {r[1] for r in db.execute("PRAGMA table_info(samples)")}
        if "fields" not in columns:
            db.execute("ALTER TABLE samples ADD COLUMN fields BLOB")
        if "sent_at" not in columns:
            db.execute("ALTER TABLE samples ADD COLUMN sent_at REAL")
        columns = {r[1] for r in db.execute("PRAGMA table_info(feedback)")}
        if "sent_at" not in columns:
            db.execute("ALTER TABLE feedback ADD COLUMN sent_at REAL")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
    # Covers what picking the next samples to send reads, sent_at included, so it runs on
    # the index alone (made here: a schema-2 file gets sent_at just above).
    db.execute("DROP INDEX IF EXISTS samples_by_pipeline")
    db.execute("CREATE INDEX IF NOT EXISTS samples_to_send ON samples (pipeline, seq, sent_at)")


def synchronous_pragma(synchronous: str) -> str:
    """The statement that sets the outbox's ``synchronous`` mode on a connection."""
    return f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}"


class Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (then ``on_commit``), or ``ROLLBACK`` on an
    exception."""

    def __init__(self, db: sqlite3.Connection, on_commit: Callable[[], None] | None = None) -> None:
        self._db = db
        self._on_commit = on_commit

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
            if self._on_commit is not None:
                self._on_commit()
        else:
            self._db.execute("ROLLBACK")
