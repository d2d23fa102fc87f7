"""Sample sequence numbers: a hi/lo allocator persisted in the outbox's own database.

Seqs never repeat or go back, across restarts too.  A new database starts them at the
current Unix time in microseconds, so a box whose state dir was wiped does not reuse sample
ids that the cloud already holds (ingest would drop the new samples as duplicates).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

#: Seqs reserved per database write; a restart skips the unused rest of a block.
SEQ_BLOCK = 4096


class SeqAllocator:
    """Hand out seqs from a block reserved in ``meta.seq_hi``; the caller serialises calls."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._next = 0
        self._limit = 0

    def load(self) -> None:
        """Start above every seq handed out before (inside the caller's transaction)."""
        db = self._db
        row = db.execute("SELECT value FROM meta WHERE key = 'seq_hi'").fetchone()
        max_seq = db.execute("SELECT MAX(seq) FROM samples").fetchone()[0] or 0
        if row is None:
            hi = max(time.time_ns() // 1000, max_seq + 1)
            db.execute("INSERT INTO meta VALUES ('seq_hi', ?)", (hi,))
        else:
            hi = max(int(row[0]), max_seq + 1)
        self._next = self._limit = hi

    def reserve(
        self, count: int, transaction: Callable[[], AbstractContextManager[object]]
    ) -> range:
        """Return ``count`` new seqs, writing a new block bound in ``transaction`` if needed."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if self._next + count > self._limit:
            new_limit = self._next + max(count, SEQ_BLOCK)
            with transaction():
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'seq_hi'", (new_limit,))
            self._limit = new_limit
        start = self._next
        self._next += count
        return range(start, start + count)
