"""Checkpoints: the outbox's WAL copied into its database file on a thread of their own.

They never run inside a commit: SQLite's automatic checkpoint would make the inference
thread that commits a selected sample wait for them (10-13 ms per 4 MB on a VM disk, far
more on an SD card).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from edge_agent.outbox._db import synchronous_pragma

log = logging.getLogger(__name__)

#: The background checkpoint runs once this many record bytes were committed since the
#: last one (SQLite's own default is 1,000 pages, about 4 MB), and at least every
#: ``CHECKPOINT_EVERY_S`` while anything was committed.
CHECKPOINT_AFTER_BYTES = 4 << 20
CHECKPOINT_EVERY_S = 1.0


class Checkpointer:
    """Copies the outbox's WAL into its database file on a thread and connection of its own.

    The outbox's own connection runs with ``wal_autocheckpoint = 0``.  Checkpoints here are
    ``PASSIVE``: they copy what no transaction still needs and never block a writer, so a
    commit on the inference thread only ever appends to the WAL.  The WAL keeps every
    commit durable meanwhile (a crash replays it at the next open), and the next write
    after a complete checkpoint starts it over; ``reclaim`` and ``close`` still truncate it.
    The connection syncs as the outbox's does (``synchronous``), so a checkpoint never
    makes a commit less durable than the WAL held it.
    """

    def __init__(self, path: Path, synchronous: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute(synchronous_pragma(synchronous))
        self._pending_bytes = 0
        self._dirty = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"ctm-outbox-checkpoint-{path.name}", daemon=True
        )
        self._thread.start()

    def committed(self, record_bytes: int) -> None:
        """Note a commit of ``record_bytes``; wake the thread once enough piled up."""
        self._dirty = True
        self._pending_bytes += record_bytes
        if self._pending_bytes >= CHECKPOINT_AFTER_BYTES:
            self._pending_bytes = 0
            self._wake.set()

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running) and close its connection."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._db.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(CHECKPOINT_EVERY_S)
            self._wake.clear()
            if not self._dirty or self._stop.is_set():
                continue
            self._dirty = False
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # e.g. reclaim's checkpoint running: the next one
                log.debug("outbox background checkpoint skipped: %s", exc)
                self._dirty = True
