"""What every part of the outbox shares: its database, lock, leases, bounds and drop counts.

``Outbox`` is assembled from this core and the parts beside it (``_samples``,
``_feedback``, ``_receipts``, ``_upkeep``), each a class of the core's state.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from continuum.errors import ConfigError, NotReadyError
from edge_agent.outbox._checkpoint import Checkpointer
from edge_agent.outbox._db import Transaction, connect, migrate
from edge_agent.outbox._episodes import DropEpisodes
from edge_agent.outbox._ledger import add_counts
from edge_agent.outbox._partitions import Partitions
from edge_agent.outbox._records import FEEDBACK_SIZE, SampleEntry
from edge_agent.outbox._seqs import SeqAllocator

log = logging.getLogger(__name__)

FullPolicy = Literal["drop_oldest", "drop_newest", "block"]


class OutboxCore:
    """The shared state of the outbox and the helpers its parts use (see ``Outbox``)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        ttl_s: float,
        partitions: Mapping[str, int] | None = None,
        full_policy: FullPolicy = "drop_oldest",
        block_timeout_s: float = 5.0,
        synchronous: Literal["normal", "full"] = "normal",
        resend_unconfirmed_s: float | None = None,
        on_drop: Callable[[str, str, int], None] | None = None,
        admit: Callable[[Sequence[SampleEntry]], Sequence[SampleEntry]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if resend_unconfirmed_s is not None and not (
            math.isfinite(resend_unconfirmed_s) and resend_unconfirmed_s > 0
        ):
            raise ConfigError(
                f"resend_unconfirmed_s must be a positive number, got {resend_unconfirmed_s}"
            )
        if max_bytes < 1 or not math.isfinite(ttl_s) or ttl_s <= 0:
            raise ConfigError(f"outbox bounds must be positive, got {max_bytes=} {ttl_s=}")
        self.path = Path(path)
        self._parts = Partitions(max_bytes, partitions, self.path)
        self.max_bytes = self._parts.max_bytes
        self.ttl_s = float(ttl_s)
        self.full_policy: FullPolicy = full_policy
        self.block_timeout_s = float(block_timeout_s)
        self._resend_s = resend_unconfirmed_s
        self._on_drop = on_drop
        self._admit = admit
        self._clock = clock
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._leased_samples: set[int] = set()
        self._last_pipeline: str | None = None
        self._leased_feedback: set[int] = set()
        self._dropped: Counter[tuple[str, str]] = Counter()  # (pipeline, reason) -> records
        self._episodes = DropEpisodes(self.path, self._parts, self.ttl_s, full_policy)
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._checkpoints: Checkpointer | None = None  # started once the database is set up
        db: sqlite3.Connection | None = None
        try:
            db = self._db = connect(self.path, synchronous)
            self._seqs = SeqAllocator(self._db)
            self._load()
            self._checkpoints = Checkpointer(self.path, synchronous)
        except sqlite3.DatabaseError as exc:
            # The agent refuses to start on it; the connection must not outlive the refusal
            # (a supervisor that retries would pile up open files).
            if db is not None:
                db.close()
            raise ConfigError(
                f"cannot open the outbox database {self.path}: {exc} (if the file is corrupt, "
                "move it aside; its unsent samples are lost)"
            ) from exc

    def _load(self) -> None:
        """Migrate the file, start the seqs, and sum the byte totals (the only aggregate
        over the whole database: from here on they are kept in memory by every write)."""
        with self._transaction():
            migrate(self._db, self.path)
            self._seqs.load()
        for pipeline, size in self._db.execute(
            "SELECT pipeline, SUM(size) FROM samples GROUP BY 1"
        ):
            self._parts.count(pipeline, int(size))
        for pipeline, rows in self._db.execute(
            "SELECT pipeline, COUNT(*) FROM feedback GROUP BY 1"
        ):
            self._parts.count(pipeline, int(rows) * FEEDBACK_SIZE)

    def _transaction(self, record_bytes: int = 0) -> Transaction:
        """A write transaction that adds ``record_bytes`` toward the next checkpoint."""
        checkpoints = self._checkpoints
        if checkpoints is None:
            return Transaction(self._db)
        return Transaction(self._db, lambda: checkpoints.committed(record_bytes))

    def reserve_seqs(self, count: int) -> range:
        """Return ``count`` new sample seqs, strictly above every seq handed out before."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        with self._lock:
            self._check_open()
            return self._seqs.reserve(count, self._transaction)

    @property
    def bytes_used(self) -> int:
        """Bytes currently counted against ``max_bytes`` (all pipelines)."""
        with self._lock:
            return self._parts.total

    def close(self) -> None:
        """Checkpoint and close the database; wake any appender blocked on space."""
        with self._space:
            if self._closed:
                return
            self._closed = True
            self._space.notify_all()
            if self._checkpoints is not None:
                self._checkpoints.close()
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # closing must not fail on a busy checkpoint
                log.warning("outbox checkpoint at close failed: %s", exc)
            self._db.close()

    def _check_open(self) -> None:
        if self._closed:
            raise NotReadyError(f"the outbox {self.path} is closed")

    def _ledger(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` to the durable ledger, inside the caller's transaction."""
        add_counts(self._db, counts)

    def _count_drop(self, pipeline: str, reason: str, count: int) -> None:
        with self._lock:
            self._dropped[(pipeline, reason)] += count
        self._notify_drop(pipeline, reason, count)

    def _notify_drop(self, pipeline: str, reason: str, count: int) -> None:
        # Called without the lock held: the callback may take locks of its own.
        self._episodes.dropped(pipeline, reason, count)
        if self._on_drop is not None:
            self._on_drop(pipeline, reason, count)
