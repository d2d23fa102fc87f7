"""The durable outbox: selected samples and their delayed labels wait here until they are
safely in the cloud.

One SQLite database in WAL mode under the agent's state dir.  A record is deleted only
after its PUBACK (``ack_*``), or, with ``resend_unconfirmed_s``, only after ingest's receipt
says it is stored (``confirm_*``); a crash before that resends it, and ingest de-duplicates
samples by sample id and records a label again in place, so delivery is at-least-once end
to end and exactly-once in the store.

Durability choice: WAL with ``synchronous=NORMAL`` (the default here).  A committed
transaction is in the WAL file as soon as ``COMMIT`` returns, so it survives any crash or
kill of the agent process (invariant 7.1); only an OS crash or power cut can roll back the
last few commits, and never corrupts the database.  ``synchronous=FULL`` closes that gap
at one fsync per commit (milliseconds on eMMC/SD cards, paid on the inference thread), so
it is an opt-in (``outbox_synchronous: full``) for boxes without a reliable power supply.

Checkpoints (copying the WAL into the database file, with their fsyncs) run on a thread
and connection of their own, never inside a commit: SQLite's automatic checkpoint would
make the inference thread that commits a selected sample wait for them (10-13 ms per 4 MB
on a VM disk, far more on an SD card).

The byte bound is partitioned by pipeline: each pipeline owns its share of ``max_bytes``
and the full policy acts inside that share only, so one pipeline's backlog never evicts or
blocks another's records.  Byte totals per pipeline live in memory (summed from the
database once, at open), so the insert path runs no aggregate query.

A ledger in ``meta`` counts, in the same transaction as the records it counts, every sample
the outbox took per pipeline and every one its own bounds ended (full, expired, unsendable),
so ``read_ledger`` can say after any crash where each selected sample went: still here,
in the cloud's store, or ended with a count and a reason — never silently gone.  Samples
ingest refused for good (its receipt names them under ``refused``) are also listed, by
seq and reason, in the ``refused`` table (``refused``).

Sample sequence numbers come from a hi/lo allocator persisted in the same database: they
never repeat or go back, across restarts too.  A new database starts them at the current
Unix time in microseconds, so a box whose state dir was wiped does not reuse sample ids
that the cloud already holds (ingest would drop the new samples as duplicates).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from continuum.errors import ConfigError, NotReadyError
from continuum.sources import FieldValue
from continuum.wire.codec import NO_FIELDS, decode_fields, encode_fields
from continuum.wire.codec import FieldValue as WireValue

__all__ = [
    "AppendResult",
    "FeedbackEntry",
    "Outbox",
    "OutboxLedger",
    "OutboxStats",
    "PartitionStats",
    "PendingFeedback",
    "PendingSamples",
    "RefusedRange",
    "SampleEntry",
    "read_ledger",
]

log = logging.getLogger(__name__)

FullPolicy = Literal["drop_oldest", "drop_newest", "block"]

#: 2 added the samples.fields column (the record field section of the wire codec); 3 the
#: samples.sent_at column (sent and acknowledged by the broker, awaiting ingest's receipt);
#: 4 the feedback.sent_at column (the same for delayed labels); 5 the refused table.
_SCHEMA_VERSION = 5
#: Rows kept in the refused table (each a run of seqs); past it the oldest go.
MAX_REFUSED_ROWS = 10_000
#: Seqs reserved per database write; a restart skips the unused rest of a block.
_SEQ_BLOCK = 4096
#: Bytes counted per record on top of its tensor (row, index and metadata overhead).
_SAMPLE_OVERHEAD = 96
_FEEDBACK_SIZE = 48
#: The background checkpoint runs once this many record bytes were committed since the
#: last one (SQLite's own default is 1,000 pages, about 4 MB), and at least every
#: ``_CHECKPOINT_EVERY_S`` while anything was committed.
_CHECKPOINT_AFTER_BYTES = 4 << 20
_CHECKPOINT_EVERY_S = 1.0

_SCHEMA = """
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


@dataclass(frozen=True, slots=True)
class SampleEntry:
    """A selected sample to keep until acknowledged; ``seq`` comes from ``reserve_seqs``.

    ``fields`` are the frame's named side values as they may leave the node (the agent's
    ``admit`` hook applies the residency plan before anything is written).
    """

    pipeline: str
    model_version: str
    data_class: str
    seq: int
    captured_at_ns: int
    tensor: np.ndarray
    prediction: int
    confidence: float
    label: int | None = None
    fields: Mapping[str, FieldValue] = field(default_factory=lambda: NO_FIELDS)

    @property
    def size_bytes(self) -> int:
        """Bytes this record counts against the outbox bound."""
        if not self.fields:
            return int(self.tensor.nbytes) + _SAMPLE_OVERHEAD
        extra = sum(
            len(k) + (len(v) if isinstance(v, str | bytes) else 24) for k, v in self.fields.items()
        )
        return int(self.tensor.nbytes) + _SAMPLE_OVERHEAD + extra


@dataclass(frozen=True, slots=True)
class FeedbackEntry:
    """A delayed label for uplinked sample ``seq``, to send once ``due_at`` (Unix s) passed."""

    pipeline: str
    seq: int
    label: int
    due_at: float


@dataclass(frozen=True, slots=True)
class StoredSample:
    """A sample read back from the outbox."""

    seq: int
    captured_at_ns: int
    tensor: np.ndarray
    prediction: int
    confidence: float
    label: int | None
    fields: Mapping[str, WireValue] = field(default_factory=lambda: NO_FIELDS)


@dataclass(frozen=True, slots=True)
class PendingSamples:
    """The next samples to send: all of one pipeline, model version and data class."""

    pipeline: str
    model_version: str
    data_class: str
    records: tuple[StoredSample, ...]

    @property
    def seqs(self) -> tuple[int, ...]:
        """The outbox keys of these records (their sample seqs)."""
        return tuple(r.seq for r in self.records)


@dataclass(frozen=True, slots=True)
class PendingFeedback:
    """The next due feedback items of one pipeline."""

    pipeline: str
    ids: tuple[int, ...]
    items: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What ``append_samples`` did: how many records it kept and which it had to drop."""

    appended: int
    refused: int
    evicted: int
    kept: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RefusedRange:
    """A run of consecutive samples of one pipeline that ingest refused for good, and why."""

    pipeline: str
    first_seq: int
    last_seq: int
    count: int
    reason: str
    refused_at: float


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """Depth, bytes, bound and age of one pipeline's records in the outbox."""

    samples: int
    feedback: int
    bytes: int
    max_bytes: int
    oldest_age_s: float
    dropped: dict[str, int]
    #: Of ``samples``: sent and acknowledged by the broker, waiting for ingest's receipt.
    samples_awaiting_receipt: int = 0
    #: Of ``feedback``: the same for delayed labels.
    feedback_awaiting_receipt: int = 0


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Depth and age of the outbox, in all and per pipeline, for the metrics gauges."""

    samples: int
    feedback: int
    bytes: int
    oldest_age_s: float
    dropped: dict[str, int]
    pipelines: dict[str, PartitionStats] = field(default_factory=dict)


class Outbox:
    """Durable FIFO of samples and feedback, bounded by bytes per pipeline and by age.

    Thread-safe: the runtime threads append, the uplink thread reads, acks, confirms and
    maintains.  Records handed out by ``next_*`` are leased (in memory)
    until ``ack_*`` deletes them (or marks them sent, with receipts) or ``release_*`` makes
    them eligible again; a reopened outbox has no leases, so everything not acknowledged is
    sent again.

    Args:
        path: the database file (its folder is created).
        max_bytes: bound on stored records; beyond it ``full_policy`` applies.
        partitions: pipeline -> the byte bound of its records (see
            ``AgentSettings.outbox_partition_bytes``), adding up to at most ``max_bytes``.
            None: all pipelines share ``max_bytes`` (tools and tests of one pipeline).
            Records of a pipeline not listed, left by an earlier configuration, are still
            sent or expire, but new ones are refused with ``ValueError``.
        ttl_s: records older than this are dropped by ``expire``.
        resend_unconfirmed_s: with a value, a record the broker acknowledged stays until
            ingest's receipt (``confirm_*``) and is sent again when none came this long
            after its PUBACK; None deletes it at the PUBACK.
        full_policy: what happens when a pipeline's records would outgrow its bound, which
            never touches another pipeline's records: ``drop_oldest`` evicts its oldest
            unleased samples, ``drop_newest`` refuses what does not fit, ``block`` waits up
            to ``block_timeout_s`` for acks to free space and then refuses.
        synchronous: SQLite synchronous mode, "normal" or "full" (see module docstring).
        on_drop: called with (pipeline, reason, count) whenever records are dropped;
            reasons are "full_newest", "full_oldest" and "expired".
        admit: called with every batch of entries before it is written; returns what may
            be written (the agent's residency gate: what may not leave never touches disk).
        clock: Unix time in seconds (tests pass a fake one).
    """

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
        if partitions is not None and (
            any(bound < 1 for bound in partitions.values()) or sum(partitions.values()) > max_bytes
        ):
            raise ConfigError(
                f"outbox partitions must be positive and add up to at most {max_bytes=}, "
                f"got {dict(partitions)}"
            )
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self._partitions = (
            None if partitions is None else {p: int(b) for p, b in partitions.items()}
        )
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
        self._bytes = 0
        self._bytes_by: dict[str, int] = {}  # pipeline -> bytes of its samples and feedback
        self._episodes = _DropEpisodes(self)
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._checkpoints: _Checkpointer | None = None  # started once the database is set up
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._setup(synchronous)
            self._checkpoints = _Checkpointer(self.path, synchronous)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"cannot open the outbox database {self.path}: {exc} (if the file is corrupt, "
                "move it aside; its unsent samples are lost)"
            ) from exc

    # -- setup -----------------------------------------------------------------------------

    def _setup(self, synchronous: str) -> None:
        db = self._db
        # auto_vacuum must be chosen before the first table exists; it lets `reclaim`
        # give freed pages back to the file system without a full VACUUM.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"the outbox at {self.path} cannot use WAL mode (got {mode})")
        db.execute(_synchronous_pragma(synchronous))
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_size_limit = 67108864")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # see _Checkpointer
        db.executescript(_SCHEMA)
        with self._transaction():
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif row[0] > _SCHEMA_VERSION:
                raise ConfigError(
                    f"the outbox at {self.path} has schema {row[0]}, newer than this agent "
                    f"({_SCHEMA_VERSION}); upgrade the agent"
                )
            elif row[0] < _SCHEMA_VERSION:
                columns = {r[1] for r in db.execute("PRAGMA table_info(samples)")}
                if "fields" not in columns:
                    db.execute("ALTER TABLE samples ADD COLUMN fields BLOB")
                if "sent_at" not in columns:
                    db.execute("ALTER TABLE samples ADD COLUMN sent_at REAL")
                columns = {r[1] for r in db.execute("PRAGMA table_info(feedback)")}
                if "sent_at" not in columns:
                    db.execute("ALTER TABLE feedback ADD COLUMN sent_at REAL")
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (_SCHEMA_VERSION,))
            # Covers what picking the next samples to send reads, sent_at included, so it
            # runs on the index alone (made here: a schema-2 file gets sent_at just above).
            db.execute("DROP INDEX IF EXISTS samples_by_pipeline")
            db.execute(
                "CREATE INDEX IF NOT EXISTS samples_to_send ON samples (pipeline, seq, sent_at)"
            )
            row = db.execute("SELECT value FROM meta WHERE key = 'seq_hi'").fetchone()
            max_seq = db.execute("SELECT MAX(seq) FROM samples").fetchone()[0] or 0
            if row is None:
                start = max(time.time_ns() // 1000, max_seq + 1)
                db.execute("INSERT INTO meta VALUES ('seq_hi', ?)", (start,))
                hi = start
            else:
                hi = max(int(row[0]), max_seq + 1)
        self._seq_next = hi
        self._seq_limit = hi
        # The only aggregate over the whole database: from here on the totals are kept in
        # memory, updated by every write.
        for pipeline, size in db.execute("SELECT pipeline, SUM(size) FROM samples GROUP BY 1"):
            self._count_bytes(pipeline, int(size))
        for pipeline, rows in db.execute("SELECT pipeline, COUNT(*) FROM feedback GROUP BY 1"):
            self._count_bytes(pipeline, int(rows) * _FEEDBACK_SIZE)

    def _transaction(self, record_bytes: int = 0) -> _Transaction:
        """A write transaction that adds ``record_bytes`` toward the next checkpoint."""
        checkpoints = self._checkpoints
        if checkpoints is None:
            return _Transaction(self._db)
        return _Transaction(self._db, lambda: checkpoints.committed(record_bytes))

    # -- seqs ------------------------------------------------------------------------------

    def reserve_seqs(self, count: int) -> range:
        """Return ``count`` new sample seqs, strictly above every seq handed out before."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        with self._lock:
            self._check_open()
            if self._seq_next + count > self._seq_limit:
                new_limit = self._seq_next + max(count, _SEQ_BLOCK)
                with self._transaction():
                    self._db.execute("UPDATE meta SET value = ? WHERE key = 'seq_hi'", (new_limit,))
                self._seq_limit = new_limit
            start = self._seq_next
            self._seq_next += count
            return range(start, start + count)

    # -- samples ---------------------------------------------------------------------------

    def append_samples(self, entries: Sequence[SampleEntry]) -> AppendResult:
        """Store ``entries`` durably, applying the full policy per pipeline; return what was kept.

        Returns once the records are committed (see the module docstring for what that
        guarantees).  Never raises for a full outbox: refused and evicted records are
        counted (``on_drop``) and reported in the result.

        Raises:
            ValueError: an entry's pipeline has no partition (nothing is written then).
        """
        if self._admit is not None and entries:
            entries = self._admit(entries)
        if not entries:
            return AppendResult(0, 0, 0)
        now = self._clock()
        groups: dict[str, list[SampleEntry]] = {}
        for entry in entries:
            groups.setdefault(entry.pipeline, []).append(entry)
        kept: list[SampleEntry] = []
        evicted: Counter[str] = Counter()
        refused: Counter[str] = Counter()
        with self._space:
            self._check_open()
            for pipeline in groups:
                self._bound(pipeline)
            deadline = time.monotonic() + self.block_timeout_s
            for pipeline, group in groups.items():
                taken = self._make_room(pipeline, group, deadline, evicted)
                refused[pipeline] += len(group) - len(taken)
                self._insert(pipeline, taken, now, offered=len(group))
                kept.extend(taken)
        for pipeline, count in evicted.items():
            self._notify_drop(pipeline, "full_oldest", count)
        for pipeline, count in refused.items():
            if count:
                self._count_drop(pipeline, "full_newest", count)
            elif not evicted[pipeline]:
                self._episodes.ended(pipeline, "full_oldest", "full_newest")
        return AppendResult(
            len(kept), sum(refused.values()), sum(evicted.values()), tuple(e.seq for e in kept)
        )

    def _make_room(
        self,
        pipeline: str,
        group: list[SampleEntry],
        deadline: float,
        evicted: Counter[str],
    ) -> list[SampleEntry]:
        """Apply the full policy to ``group`` within its partition; return what fits now.

        Lock held.  ``block`` waits on the condition, which lets other pipelines append and
        the uplink ack meanwhile; ``drop_oldest`` adds what it evicted to ``evicted``.
        """
        bound = self._bound(pipeline)
        incoming = sum(e.size_bytes for e in group)
        if self._used(pipeline) + incoming > bound:
            if self.full_policy == "block":
                while self._used(pipeline) + incoming > bound and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._space.wait(min(remaining, 0.5))
                self._check_open()
            elif self.full_policy == "drop_oldest":
                evicted.update(
                    self._evict_oldest(pipeline, self._used(pipeline) + incoming - bound)
                )
        taken: list[SampleEntry] = []
        budget = bound - self._used(pipeline)
        for entry in group:
            if entry.size_bytes <= budget:
                taken.append(entry)
                budget -= entry.size_bytes
        return taken

    def _insert(
        self, pipeline: str, entries: list[SampleEntry], now: float, *, offered: int
    ) -> None:
        """Write ``entries`` (all of ``pipeline``) in one transaction (lock held), and add
        the ``offered`` samples to the ledger, those that did not fit as dropped."""
        rows = [
            (
                e.seq,
                e.pipeline,
                e.model_version,
                str(e.data_class),
                int(e.captured_at_ns),
                now,
                int(e.prediction),
                float(e.confidence) if math.isfinite(e.confidence) else None,
                None if e.label is None else int(e.label),
                e.tensor.dtype.str,
                json.dumps(list(e.tensor.shape)),
                np.ascontiguousarray(e.tensor).tobytes(),
                e.size_bytes,
                encode_fields(e.fields) if e.fields else None,
            )
            for e in entries
        ]
        size = sum(row[12] for row in rows)
        with self._transaction(size):
            self._db.executemany(
                "INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,NULL)", rows
            )
            self._ledger(
                {
                    _ledger_key("selected", pipeline): offered,
                    _ledger_key("dropped", pipeline, "full_newest"): offered - len(entries),
                }
            )
        self._count_bytes(pipeline, size)

    def _evict_oldest(self, pipeline: str, need_bytes: int) -> Counter[str]:
        """Delete the oldest unleased samples of ``pipeline``'s partition until ``need_bytes``
        are freed (lock held); return how many were evicted per pipeline.
        """
        if self._partitions is None:  # one partition: the oldest of any pipeline goes
            cursor = self._db.execute("SELECT seq, size, pipeline FROM samples ORDER BY seq")
        else:
            cursor = self._db.execute(
                "SELECT seq, size, pipeline FROM samples WHERE pipeline = ? ORDER BY seq",
                (pipeline,),
            )
        freed = 0
        victims: list[int] = []
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for seq, size, owner in cursor:
            if freed >= need_bytes:
                break
            if seq in self._leased_samples:
                continue
            victims.append(seq)
            freed += size
            counts[owner] += 1
            sizes[owner] += size
        cursor.close()
        if victims:
            with self._transaction():
                self._db.execute(
                    "DELETE FROM samples WHERE seq IN (SELECT value FROM json_each(?))",
                    (json.dumps(victims),),
                )
                self._ledger(
                    {_ledger_key("dropped", o, "full_oldest"): n for o, n in counts.items()}
                )
            for owner, count in counts.items():
                self._count_bytes(owner, -sizes[owner])
                self._dropped[(owner, "full_oldest")] += count
        return counts

    def next_samples(self, max_records: int, max_bytes: int) -> PendingSamples | None:
        """Lease and return the oldest unleased samples of one (pipeline, version, class).

        Pipelines take turns (round robin by name), oldest first within each, so one
        pipeline's backlog after an outage cannot hold back another pipeline's samples.
        At most ``max_records`` records and ``max_bytes`` tensor bytes, but always at
        least one record when any is pending.  ``None`` when nothing is pending.
        """
        with self._lock:
            self._check_open()
            leased = json.dumps(sorted(self._leased_samples))
            # Sent and acknowledged by the broker before this: no receipt came in time.
            due = self._clock() - (self._resend_s or 0.0)
            pending = [
                row[0]
                for row in self._db.execute(
                    "SELECT DISTINCT pipeline FROM samples "
                    "WHERE seq NOT IN (SELECT value FROM json_each(?)) "
                    "AND (sent_at IS NULL OR sent_at <= ?) ORDER BY pipeline",
                    (leased, due),
                )
            ]
            if not pending:
                return None
            last = self._last_pipeline
            pipeline = next((p for p in pending if last is not None and p > last), pending[0])
            self._last_pipeline = pipeline
            head = self._db.execute(
                "SELECT pipeline, model_version, data_class FROM samples WHERE pipeline = ? "
                "AND seq NOT IN (SELECT value FROM json_each(?)) "
                "AND (sent_at IS NULL OR sent_at <= ?) ORDER BY seq LIMIT 1",
                (pipeline, leased, due),
            ).fetchone()
            cursor = self._db.execute(
                "SELECT seq, captured_at_ns, prediction, confidence, label, dtype, shape, tensor, "
                "fields FROM samples WHERE pipeline = ? AND model_version = ? AND data_class = ? "
                "AND seq NOT IN (SELECT value FROM json_each(?)) "
                "AND (sent_at IS NULL OR sent_at <= ?) ORDER BY seq LIMIT ?",
                (*head, leased, due, max_records),
            )
            records: list[StoredSample] = []
            total = 0
            for seq, captured, prediction, confidence, label, dtype, shape, blob, extra in cursor:
                if records and total + len(blob) > max_bytes:
                    break
                total += len(blob)
                tensor = np.frombuffer(blob, dtype=np.dtype(dtype)).reshape(json.loads(shape))
                records.append(
                    StoredSample(
                        seq=seq,
                        captured_at_ns=captured,
                        tensor=tensor,
                        prediction=prediction,
                        confidence=math.nan if confidence is None else confidence,
                        label=label,
                        fields=decode_fields(extra) if extra else NO_FIELDS,
                    )
                )
            cursor.close()
            self._leased_samples.update(r.seq for r in records)
            return PendingSamples(head[0], head[1], head[2], tuple(records))

    def ack_samples(self, seqs: Sequence[int]) -> None:
        """The broker acknowledged ``seqs``: end their lease, and delete them, or, with
        ``resend_unconfirmed_s``, keep them until ``confirm_samples`` (sending them again
        if no receipt came within that time)."""
        if not seqs:
            return
        if self._resend_s is None:
            self.discard_samples(seqs)
            return
        with self._lock:
            self._check_open()
            with self._transaction():
                self._db.execute(
                    "UPDATE samples SET sent_at = ? WHERE seq IN (SELECT value FROM json_each(?))",
                    (self._clock(), json.dumps(list(seqs))),
                )
            self._leased_samples.difference_update(seqs)

    def discard_samples(self, seqs: Sequence[int]) -> None:
        """Delete samples ``seqs`` and end their lease, receipts or not: acknowledged
        without receipts, or never sendable (the wire format refuses them; a resend could
        not change that, so waiting for a receipt would keep them until they expire)."""
        if not seqs:
            return
        with self._space:
            self._check_open()
            ids = json.dumps(list(seqs))
            with self._transaction():
                freed = self._db.execute(
                    "SELECT pipeline, SUM(size), COUNT(*) FROM samples "
                    "WHERE seq IN (SELECT value FROM json_each(?)) GROUP BY 1",
                    (ids,),
                ).fetchall()
                self._db.execute(
                    "DELETE FROM samples WHERE seq IN (SELECT value FROM json_each(?))", (ids,)
                )
                # Without receipts the broker's PUBACK ends a sample; with them only a
                # record the wire refuses comes here, and that is a drop.
                kind, reason = (
                    ("dropped", "unsendable") if self._resend_s is not None else ("acked", "")
                )
                self._ledger({_ledger_key(kind, p, reason): n for p, _, n in freed})
            for pipeline, size, _ in freed:
                self._count_bytes(pipeline, -int(size))
            self._leased_samples.difference_update(seqs)
            self._space.notify_all()

    def confirm_samples(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Delete the samples in the inclusive ``ranges`` that were sent (ingest's receipt:
        stored, or refused for good); return how many there were.

        Only samples the broker acknowledged, or that are on their way to it, go: a receipt
        can only be for those, and a forged one (any holder of the tenant's credential may
        publish on the topic) then costs no more than trusting the PUBACK did.  Works on
        ranges, never on the seqs they span, so a receipt may name a range far wider than
        the outbox holds.  A sample forgotten while on its way (an earlier send was stored)
        has its acknowledgement find nothing.
        """
        return len(self._confirm("samples", "seq", "size", self._leased_samples, ranges))

    def refuse_samples(self, ranges: Sequence[tuple[int, int]], reason: str) -> list[RefusedRange]:
        """Delete the samples in the inclusive ``ranges`` that were sent, as ingest's receipt
        says it refused them for good for ``reason``; record them (``refused``, and the
        ledger's ``refused`` count) and return them as runs of seqs per pipeline.

        As ``confirm_samples``, only samples the broker acknowledged, or that are on their
        way to it, go.  The record keeps the newest ``MAX_REFUSED_ROWS`` runs.
        """
        now = self._clock()
        ended: list[RefusedRange] = []

        def record(rows: list[tuple[int, str, int]]) -> None:
            by_pipeline: dict[str, list[int]] = {}
            for seq, pipeline, _ in rows:
                by_pipeline.setdefault(pipeline, []).append(int(seq))
            for pipeline, seqs in sorted(by_pipeline.items()):
                for first, last in _runs(sorted(seqs)):
                    ended.append(RefusedRange(pipeline, first, last, last - first + 1, reason, now))
            self._db.executemany(
                "INSERT INTO refused (pipeline, first_seq, last_seq, count, reason, refused_at) "
                "VALUES (?,?,?,?,?,?)",
                [(r.pipeline, r.first_seq, r.last_seq, r.count, reason, now) for r in ended],
            )
            self._db.execute(
                "DELETE FROM refused WHERE id <= (SELECT MAX(id) FROM refused) - ?",
                (MAX_REFUSED_ROWS,),
            )
            self._ledger(
                {_ledger_key("refused", p, reason): len(v) for p, v in by_pipeline.items()}
            )

        self._confirm("samples", "seq", "size", self._leased_samples, ranges, also=record)
        return ended

    def refused(self) -> list[RefusedRange]:
        """Return the samples ingest refused for good, oldest first (the newest
        ``MAX_REFUSED_ROWS`` runs): which of this node's selected samples ended so."""
        with self._lock:
            self._check_open()
            return _refused_ranges(self._db)

    def waiting(self) -> dict[str, list[tuple[int, int]]]:
        """Return pipeline -> the inclusive seq ranges of its samples still in the outbox:
        not sent yet, or sent and awaiting ingest's receipt."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT pipeline, seq FROM samples ORDER BY pipeline, seq"
            ).fetchall()
        seqs: dict[str, list[int]] = {}
        for pipeline, seq in rows:
            seqs.setdefault(pipeline, []).append(int(seq))
        return {pipeline: _runs(values) for pipeline, values in seqs.items()}

    def release_samples(self, seqs: Sequence[int]) -> None:
        """End the lease of samples that were not acknowledged, so they are sent again."""
        with self._lock:
            self._leased_samples.difference_update(seqs)

    # -- feedback --------------------------------------------------------------------------

    def append_feedback(self, entries: Sequence[FeedbackEntry]) -> int:
        """Store delayed labels durably; return how many were kept (the rest are counted).

        Feedback is small and only exists for uplinked samples, so it is never evicted to
        make room, only refused when its pipeline's partition is full.

        Raises:
            ValueError: an entry's pipeline has no partition (nothing is written then).
        """
        if not entries:
            return 0
        now = self._clock()
        groups: dict[str, list[FeedbackEntry]] = {}
        for entry in entries:
            groups.setdefault(entry.pipeline, []).append(entry)
        refused: Counter[str] = Counter()
        with self._lock:
            self._check_open()
            for pipeline in groups:
                self._bound(pipeline)
            for pipeline, group in groups.items():
                room = max(0, (self._bound(pipeline) - self._used(pipeline)) // _FEEDBACK_SIZE)
                kept = group[:room]
                refused[pipeline] = len(group) - len(kept)
                if kept:
                    with self._transaction():
                        self._db.executemany(
                            "INSERT INTO feedback (pipeline, seq, label, due_at, enqueued_at) "
                            "VALUES (?,?,?,?,?)",
                            [(pipeline, e.seq, int(e.label), float(e.due_at), now) for e in kept],
                        )
                    self._count_bytes(pipeline, len(kept) * _FEEDBACK_SIZE)
        for pipeline, count in refused.items():
            if count:
                self._count_drop(pipeline, "full_newest", count)
            else:
                self._episodes.ended(pipeline, "full_newest")
        return len(entries) - sum(refused.values())

    def next_feedback(self, max_items: int) -> PendingFeedback | None:
        """Lease and return due feedback items of one pipeline, oldest due first.

        Due: fallen due and never sent, or sent (with receipts) and no receipt came within
        ``resend_unconfirmed_s`` of the PUBACK.
        """
        now = self._clock()
        with self._lock:
            self._check_open()
            leased = json.dumps(sorted(self._leased_feedback))
            head = self._db.execute(
                "SELECT pipeline FROM feedback WHERE due_at <= ? "
                "AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY due_at, id LIMIT 1",
                (now, leased),
            ).fetchone()
            if head is None:
                return None
            rows = self._db.execute(
                "SELECT id, seq, label FROM feedback WHERE pipeline = ? AND due_at <= ? "
                "AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY due_at, id LIMIT ?",
                (head[0], now, leased, max_items),
            ).fetchall()
            ids = tuple(r[0] for r in rows)
            self._leased_feedback.update(ids)
            return PendingFeedback(head[0], ids, tuple((r[1], r[2]) for r in rows))

    def next_feedback_due(self) -> float | None:
        """Return the Unix time the earliest unleased feedback item falls due (to be sent,
        or sent again for want of a receipt), if any."""
        with self._lock:
            self._check_open()
            row = self._db.execute(
                "SELECT MIN(due_at) FROM feedback WHERE id NOT IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted(self._leased_feedback)),),
            ).fetchone()
            return None if row[0] is None else float(row[0])

    def ack_feedback(self, ids: Sequence[int]) -> None:
        """The broker acknowledged feedback items ``ids``: end their lease, and delete them,
        or, with ``resend_unconfirmed_s``, keep them until ``confirm_feedback`` (sending them
        again if no receipt came within that time)."""
        if not ids:
            return
        if self._resend_s is None:
            self.discard_feedback(ids)
            return
        now = self._clock()
        with self._lock:
            self._check_open()
            with self._transaction():
                # Due again when the receipt is overdue: next_feedback and the feedback_due
                # index then need no second condition for resends.
                self._db.execute(
                    "UPDATE feedback SET sent_at = ?, due_at = ? "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (now, now + self._resend_s, json.dumps(list(ids))),
                )
            self._leased_feedback.difference_update(ids)

    def confirm_feedback(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Delete the delayed labels of the samples in the inclusive ``ranges`` that were
        sent (ingest's receipt: recorded); return how many there were.

        As ``confirm_samples``: only labels the broker acknowledged, or that are on their
        way to it, go, so a forged receipt costs no more than trusting the PUBACK did.
        """
        return len(
            self._confirm("feedback", "id", str(_FEEDBACK_SIZE), self._leased_feedback, ranges)
        )

    def _confirm(
        self,
        table: Literal["samples", "feedback"],
        key: Literal["seq", "id"],
        size: str,
        leased: set[int],
        ranges: Sequence[tuple[int, int]],
        *,
        also: Callable[[list[tuple[int, str, int]]], None] | None = None,
    ) -> list[tuple[int, str, int]]:
        """Delete the rows of ``table`` whose sample seq lies in ``ranges`` and that were
        sent (``sent_at``) or are leased (``key`` in ``leased``); free their bytes (``size``,
        a column or a constant) and end their leases; return them as (key, pipeline, size).

        ``also`` runs with the rows in the same transaction, when there are any."""
        if not ranges:
            return []
        with self._space:
            self._check_open()
            sent = f"(sent_at IS NOT NULL OR {key} IN (SELECT value FROM json_each(?)))"
            in_flight = json.dumps(sorted(leased))
            taken: list[tuple[int, str, int]] = []
            with self._transaction():
                for first, last in ranges:
                    bounds = (int(first), int(last), in_flight)
                    rows = self._db.execute(
                        f"SELECT {key}, pipeline, {size} FROM {table} "
                        f"WHERE seq BETWEEN ? AND ? AND {sent}",
                        bounds,
                    ).fetchall()
                    if rows:
                        taken.extend(rows)
                        self._db.execute(
                            f"DELETE FROM {table} WHERE seq BETWEEN ? AND ? AND {sent}", bounds
                        )
                if taken and also is not None:
                    also(taken)
            for _, pipeline, freed in taken:
                self._count_bytes(pipeline, -int(freed))
            if taken:
                leased.difference_update(row[0] for row in taken)
                self._space.notify_all()
            return taken

    def discard_feedback(self, ids: Sequence[int]) -> None:
        """Delete feedback items ``ids`` and end their lease, receipts or not (see
        ``discard_samples``)."""
        if not ids:
            return
        with self._space:
            self._check_open()
            keys = json.dumps(list(ids))
            with self._transaction():
                freed = self._db.execute(
                    "SELECT pipeline, COUNT(*) FROM feedback "
                    "WHERE id IN (SELECT value FROM json_each(?)) GROUP BY 1",
                    (keys,),
                ).fetchall()
                self._db.execute(
                    "DELETE FROM feedback WHERE id IN (SELECT value FROM json_each(?))", (keys,)
                )
            for pipeline, rows in freed:
                self._count_bytes(pipeline, -int(rows) * _FEEDBACK_SIZE)
            self._leased_feedback.difference_update(ids)
            self._space.notify_all()

    def release_feedback(self, ids: Sequence[int]) -> None:
        """End the lease of feedback items that were not acknowledged."""
        with self._lock:
            self._leased_feedback.difference_update(ids)

    # -- maintenance -----------------------------------------------------------------------

    def expire(self) -> int:
        """Drop unleased records older than ``ttl_s``; return how many were dropped."""
        cutoff = self._clock() - self.ttl_s
        dropped: Counter[str] = Counter()
        with self._space:
            self._check_open()
            with self._transaction():
                samples = self._db.execute(
                    "SELECT seq, size, pipeline FROM samples WHERE enqueued_at < ? "
                    "AND seq NOT IN (SELECT value FROM json_each(?))",
                    (cutoff, json.dumps(sorted(self._leased_samples))),
                ).fetchall()
                if samples:
                    self._db.execute(
                        "DELETE FROM samples WHERE seq IN (SELECT value FROM json_each(?))",
                        (json.dumps([r[0] for r in samples]),),
                    )
                    self._ledger(Counter(_ledger_key("dropped", r[2], "expired") for r in samples))
                feedback = self._db.execute(
                    "SELECT id, pipeline FROM feedback WHERE enqueued_at < ? "
                    "AND id NOT IN (SELECT value FROM json_each(?))",
                    (cutoff, json.dumps(sorted(self._leased_feedback))),
                ).fetchall()
                if feedback:
                    self._db.execute(
                        "DELETE FROM feedback WHERE id IN (SELECT value FROM json_each(?))",
                        (json.dumps([r[0] for r in feedback]),),
                    )
            for _, size, pipeline in samples:
                self._count_bytes(pipeline, -int(size))
                dropped[pipeline] += 1
            for _, pipeline in feedback:
                self._count_bytes(pipeline, -_FEEDBACK_SIZE)
                dropped[pipeline] += 1
            if dropped:
                self._space.notify_all()
            known = list(self._bytes_by)
        for pipeline, count in dropped.items():
            self._count_drop(pipeline, "expired", count)
        for pipeline in known:
            if pipeline not in dropped:
                self._episodes.ended(pipeline, "expired")
        return sum(dropped.values())

    def reclaim(self) -> None:
        """Checkpoint the WAL and give free pages back to the file system."""
        with self._lock:
            self._check_open()
            # incremental_vacuum frees one page per step of its statement and execute()
            # steps once; executescript() runs it to the end.  The checkpoint then carries
            # the shrink into the database file.
            self._db.executescript("PRAGMA incremental_vacuum;")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def stats(self) -> OutboxStats:
        """Return depth, bytes, age of the oldest record and drop counts, in all and per
        pipeline (every partition, and any pipeline that still has records).
        """
        now = self._clock()
        with self._lock:
            self._check_open()
            samples = {
                row[0]: row[1:]
                for row in self._db.execute(
                    "SELECT pipeline, COUNT(*), MIN(enqueued_at), COUNT(sent_at) FROM samples "
                    "GROUP BY 1"
                )
            }
            feedback = {
                row[0]: row[1:]
                for row in self._db.execute(
                    "SELECT pipeline, COUNT(*), MIN(enqueued_at), COUNT(sent_at) FROM feedback "
                    "GROUP BY 1"
                )
            }
            names = {*(self._partitions or ()), *self._bytes_by, *samples, *feedback}
            names.update(pipeline for pipeline, _ in self._dropped)
            partitions: dict[str, PartitionStats] = {}
            for name in sorted(names):
                sample_rows, oldest_sample, samples_sent = samples.get(name, (0, None, 0))
                feedback_rows, oldest_feedback, feedback_sent = feedback.get(name, (0, None, 0))
                partitions[name] = PartitionStats(
                    samples=int(sample_rows),
                    feedback=int(feedback_rows),
                    bytes=self._bytes_by.get(name, 0),
                    max_bytes=self._bound_or_zero(name),
                    oldest_age_s=_age_s(now, oldest_sample, oldest_feedback),
                    dropped={r: n for (p, r), n in self._dropped.items() if p == name},
                    samples_awaiting_receipt=int(samples_sent),
                    feedback_awaiting_receipt=int(feedback_sent),
                )
            by_reason: Counter[str] = Counter()
            for (_, reason), count in self._dropped.items():
                by_reason[reason] += count
            return OutboxStats(
                samples=sum(p.samples for p in partitions.values()),
                feedback=sum(p.feedback for p in partitions.values()),
                bytes=self._bytes,
                oldest_age_s=max((p.oldest_age_s for p in partitions.values()), default=0.0),
                dropped=dict(by_reason),
                pipelines=partitions,
            )

    @property
    def bytes_used(self) -> int:
        """Bytes currently counted against ``max_bytes`` (all pipelines)."""
        with self._lock:
            return self._bytes

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

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise NotReadyError(f"the outbox {self.path} is closed")

    def _bound(self, pipeline: str) -> int:
        """Return the byte bound of ``pipeline``'s records; ValueError if it has none."""
        if self._partitions is None:
            return self.max_bytes
        bound = self._partitions.get(pipeline)
        if bound is None:
            raise ValueError(
                f"pipeline {pipeline!r} has no partition in the outbox {self.path} "
                f"(partitions: {', '.join(sorted(self._partitions))})"
            )
        return bound

    def _bound_or_zero(self, pipeline: str) -> int:
        if self._partitions is None:
            return self.max_bytes
        return self._partitions.get(pipeline, 0)

    def _used(self, pipeline: str) -> int:
        """Bytes counted against ``pipeline``'s bound (lock held)."""
        if self._partitions is None:
            return self._bytes
        return self._bytes_by.get(pipeline, 0)

    def _count_bytes(self, pipeline: str, delta: int) -> None:
        """Add ``delta`` to the in-memory byte totals (lock held, or during setup)."""
        self._bytes_by[pipeline] = self._bytes_by.get(pipeline, 0) + delta
        self._bytes += delta

    def _ledger(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` to the durable ledger, inside the caller's transaction."""
        self._db.executemany(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = value + "
            "excluded.value",
            [(key, count) for key, count in counts.items() if count],
        )

    def _count_drop(self, pipeline: str, reason: str, count: int) -> None:
        with self._lock:
            self._dropped[(pipeline, reason)] += count
        self._notify_drop(pipeline, reason, count)

    def _notify_drop(self, pipeline: str, reason: str, count: int) -> None:
        # Called without the lock held: the callback may take locks of its own.
        self._episodes.dropped(pipeline, reason, count)
        if self._on_drop is not None:
            self._on_drop(pipeline, reason, count)


def _ledger_key(kind: str, pipeline: str, reason: str = "") -> str:
    """The ``meta`` key of one ledger count: ``ledger/<kind>/<pipeline>[/<reason>]``."""
    return "/".join(("ledger", kind, pipeline, *((reason,) if reason else ())))


@dataclass(frozen=True, slots=True)
class OutboxLedger:
    """What one outbox took and where it went, from its file alone (see ``read_ledger``).

    ``selected``: samples offered to the outbox per pipeline, over its whole life (its
    residency gate's kept-at-edge samples are not offered); ``dropped``: those its own
    bounds ended, per pipeline and reason (full_newest, full_oldest, expired,
    unsendable); ``acked``: those a PUBACK ended (without receipts); ``waiting``: the seqs
    still in it per pipeline; ``refused``: per pipeline, the seqs ingest refused for good
    and why (its newest ``MAX_REFUSED_ROWS`` runs, see ``Outbox.refuse_samples``).
    """

    selected: dict[str, int]
    dropped: dict[str, dict[str, int]]
    acked: dict[str, int]
    waiting: dict[str, list[int]]
    refused: dict[str, dict[int, str]] = field(default_factory=dict)


def read_ledger(path: str | Path) -> OutboxLedger:
    """Read an outbox's ledger and waiting samples from its file, read-only.

    For accounting after the agent stopped (or beside it: WAL readers do not block it).
    Counts live in the same transactions as the records they count, so a kill at any
    moment leaves them exact.
    """
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        selected: dict[str, int] = {}
        dropped: dict[str, dict[str, int]] = {}
        acked: dict[str, int] = {}
        for key, value in db.execute("SELECT key, value FROM meta WHERE key LIKE 'ledger/%'"):
            _, kind, pipeline, *reason = str(key).split("/")
            if kind == "selected":
                selected[pipeline] = int(value)
            elif kind == "dropped":
                dropped.setdefault(pipeline, {})[reason[0]] = int(value)
            elif kind == "acked":
                acked[pipeline] = int(value)
        waiting: dict[str, list[int]] = {}
        for pipeline, seq in db.execute("SELECT pipeline, seq FROM samples ORDER BY seq"):
            waiting.setdefault(pipeline, []).append(int(seq))
        refused: dict[str, dict[int, str]] = {}
        has_refused = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'refused'"
        ).fetchone()
        for run in _refused_ranges(db) if has_refused else []:
            into = refused.setdefault(run.pipeline, {})
            into.update(dict.fromkeys(range(run.first_seq, run.last_seq + 1), run.reason))
        return OutboxLedger(selected, dropped, acked, waiting, refused)
    finally:
        db.close()


def _refused_ranges(db: sqlite3.Connection) -> list[RefusedRange]:
    """The refused table's runs, oldest first."""
    rows = db.execute(
        "SELECT pipeline, first_seq, last_seq, count, reason, refused_at FROM refused ORDER BY id"
    ).fetchall()
    return [RefusedRange(*row) for row in rows]


def _runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Return the runs of consecutive values of ascending ``seqs`` as inclusive ranges."""
    runs: list[tuple[int, int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def _synchronous_pragma(synchronous: str) -> str:
    """The statement that sets the outbox's ``synchronous`` mode on a connection."""
    return f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}"


def _age_s(now: float, *enqueued_at: float | None) -> float:
    """Return the age of the oldest of ``enqueued_at`` (0 when there is none)."""
    oldest = min((t for t in enqueued_at if t is not None), default=None)
    return 0.0 if oldest is None else max(0.0, now - float(oldest))


class _DropEpisodes:
    """Log drops once when an episode starts and once when it ends, not once per record.

    Episodes are per pipeline and reason.  An episode of "full_*" drops ends with the
    pipeline's first append that needs none; one of "expired" drops with the first expiry
    pass that finds none of the pipeline's records old.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], tuple[float, int]] = {}

    def dropped(self, pipeline: str, reason: str, count: int) -> None:
        key = (pipeline, reason)
        with self._lock:
            started, total = self._open.get(key, (0.0, 0))
            self._open[key] = (started or time.monotonic(), total + count)
        if not started:
            log.warning(
                "outbox %s, pipeline %s: %s; further drops are only counted "
                '(continuum_edge_records_dropped_total{pipeline="%s",reason="%s"}) '
                "until this ends",
                self._outbox.path,
                pipeline,
                self._describe(pipeline, reason),
                pipeline,
                reason,
            )

    def ended(self, pipeline: str, *reasons: str) -> None:
        if not self._open:  # the common case, without taking the lock
            return
        with self._lock:
            closed = [
                (r, self._open.pop((pipeline, r))) for r in reasons if (pipeline, r) in self._open
            ]
        for reason, (started, total) in closed:
            log.warning(
                "outbox %s, pipeline %s: %s drops ended after %.1f s, %d record(s) dropped in all",
                self._outbox.path,
                pipeline,
                reason,
                time.monotonic() - started,
                total,
            )

    def _describe(self, pipeline: str, reason: str) -> str:
        box = self._outbox
        if reason == "expired":
            return f"dropping records older than outbox_ttl_s={box.ttl_s:g}"
        if box._partitions is None:
            full = f"full at {box.max_bytes} bytes"
        else:
            full = (
                f"full at its partition's {box._bound_or_zero(pipeline)} bytes "
                f"(of outbox_max_bytes={box.max_bytes})"
            )
        if reason == "full_oldest":
            return f"{full}, dropping the oldest unsent samples (outbox_full_policy=drop_oldest)"
        return f"{full}, refusing new records (outbox_full_policy={box.full_policy})"


class _Transaction:
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


class _Checkpointer:
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
        self._db.execute(_synchronous_pragma(synchronous))
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
        if self._pending_bytes >= _CHECKPOINT_AFTER_BYTES:
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
            self._wake.wait(_CHECKPOINT_EVERY_S)
            self._wake.clear()
            if not self._dirty or self._stop.is_set():
                continue
            self._dirty = False
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # e.g. reclaim's checkpoint running: the next one
                log.debug("outbox background checkpoint skipped: %s", exc)
                self._dirty = True
