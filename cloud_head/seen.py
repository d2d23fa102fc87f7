"""Which samples ingest has stored: runs of consecutive sequence numbers per node.

A sample's id is its node plus a sequence number that only grows (DESIGN §5; the edge
outbox allocates them hi/lo from the clock, so a wiped node does not reuse one). Ingest
checks every incoming sample against what it stored before, so at-least-once delivery
becomes exactly-once storage. Keeping one row per *run* of consecutive seqs instead of one
per sample makes that check a couple of index seeks per node and group whatever the
group's size: an edge node's uplink is a few long runs, broken only where its selection
skipped frames of another pipeline or its outbox dropped records.

The index lives in SQLite (WAL) next to the table of store files whose seqs it records:
a file written before a crash could record it is adopted (read back) before the next
check, see ``cloud_head.ingest``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from continuum._fs import private_dir, private_file
from continuum.errors import ProtocolError

__all__ = ["MAX_SEQ", "NodeKey", "SeenIndex", "parse_sample_id"]

#: The largest sequence number the store and this index keep (a signed 64-bit integer).
MAX_SEQ: Final = 2**63 - 1
#: Seqs of one node further apart than this are looked up separately, so one old resent
#: sample among new ones does not read every run stored in between.
_CLUSTER_GAP: Final = 4096

#: (pipeline, node): the unit a run of seqs belongs to.
NodeKey = tuple[str, str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_runs (
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    node TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    ingested_at_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, pipeline, node, first_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stored_files (
    path TEXT PRIMARY KEY
) WITHOUT ROWID;
"""

_OVERLAPPING = """
SELECT first_seq, last_seq FROM seen_runs
 WHERE tenant = ?1 AND pipeline = ?2 AND node = ?3 AND first_seq BETWEEN ?4 AND ?5
UNION ALL
SELECT first_seq, last_seq FROM (
    SELECT first_seq, last_seq FROM seen_runs
     WHERE tenant = ?1 AND pipeline = ?2 AND node = ?3 AND first_seq < ?4
     ORDER BY first_seq DESC LIMIT 1)
"""


def parse_sample_id(sample_id: str) -> tuple[str, int]:
    """Split ``"node:seq"`` (``continuum.wire.codec.sample_id``) into node and seq.

    Raises:
        ProtocolError: not of that form, or the seq is out of range.
    """
    node, sep, seq = sample_id.rpartition(":")
    if not sep or not node or not seq.isdigit() or int(seq) > MAX_SEQ:
        raise ProtocolError(
            f"sample id {sample_id!r} is not 'node:seq' with 0 <= seq < 2**63", reason="bad_id"
        )
    return node, int(seq)


class SeenIndex:
    """The stored samples of every tenant using one SQLite file, as runs of seqs per node.

    Runs of one node never overlap: only seqs not stored before are recorded, and a run is
    consecutive seqs, so a run covering an earlier one's seq would contain a seq that was
    stored. Thread-safe.
    """

    def __init__(self, path: str | Path) -> None:
        path = private_file(private_dir(Path(path).parent) / Path(path).name)  # 0600 in 0700
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a power cut can lose the last commits, never a store file they describe;
        # such a file is adopted (its seqs read back) before the next check of its pipeline.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._migrate_sample_ids()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def stored(self, tenant: str, key: NodeKey, seqs: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """Return a boolean mask: which of ``seqs`` (of one pipeline and node) were stored."""
        if len(seqs) == 0:
            return np.zeros(0, dtype=bool)
        ordered = seqs if ascending(seqs) else np.unique(seqs)
        gaps = np.flatnonzero(np.diff(ordered) > _CLUSTER_GAP)
        lows = ordered[np.concatenate(([0], gaps + 1))].tolist()
        highs = ordered[np.concatenate((gaps, [len(ordered) - 1]))].tolist()
        pipeline, node = key
        rows: list[tuple[int, int]] = []
        with self._lock:
            for low, high in zip(lows, highs, strict=True):
                rows += self._db.execute(
                    _OVERLAPPING, (tenant, pipeline, node, low, high)
                ).fetchall()
        if not rows:
            return np.zeros(len(seqs), dtype=bool)
        runs = np.array(sorted(set(rows)), dtype=np.int64)
        firsts, lasts = runs[:, 0], runs[:, 1]
        at = np.searchsorted(firsts, seqs, side="right") - 1
        return (at >= 0) & (seqs <= lasts[np.maximum(at, 0)])

    def contains(self, tenant: str, pipeline: str, sample_id: str) -> bool:
        """Return whether sample ``sample_id`` (``"node:seq"``) of ``pipeline`` was stored."""
        node, seq = parse_sample_id(sample_id)
        mask = self.stored(tenant, (pipeline, node), np.array([seq], dtype=np.int64))
        return bool(mask[0])

    def record(
        self,
        tenant: str,
        seqs: Mapping[NodeKey, npt.NDArray[np.int64]],
        now_ns: int,
        paths: Sequence[str] = (),
        *,
        known_new: bool = True,
    ) -> None:
        """Record newly stored ``seqs`` per (pipeline, node) and the files holding them.

        One transaction: either every run and file is recorded or none. ``known_new``
        False (a file read back) first leaves out the seqs already recorded, so runs stay
        disjoint; ingest's own writes checked them just before.
        """
        if not known_new:
            seqs = {key: values[~self.stored(tenant, key, values)] for key, values in seqs.items()}
        rows = [
            (tenant, pipeline, node, first, last, now_ns)
            for (pipeline, node), values in seqs.items()
            for first, last in seq_runs(values)
        ]
        if not rows and not paths:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO seen_runs VALUES (?, ?, ?, ?, ?, ?)", rows
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO stored_files VALUES (?)", [(p,) for p in paths]
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def recorded_files(self) -> set[str]:
        """Return the store files whose seqs are recorded."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT path FROM stored_files")}

    def replace_files(self, replaced: Sequence[str], merged: str) -> bool:
        """Record that ``merged`` holds the rows of ``replaced`` (a compaction), if they were
        all recorded; return whether it was. Otherwise ``merged`` stays unrecorded, and its
        seqs are read back (adopted) like any file written before a crash."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                known = {
                    r[0]
                    for r in self._db.execute(
                        "SELECT path FROM stored_files WHERE path IN (SELECT value FROM "
                        "json_each(?))",
                        (json.dumps(list(replaced)),),
                    )
                }
                covered = known == set(replaced)
                if covered:
                    self._db.executemany(
                        "DELETE FROM stored_files WHERE path = ?", [(p,) for p in replaced]
                    )
                    self._db.execute("INSERT OR IGNORE INTO stored_files VALUES (?)", (merged,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return covered

    def count_since(self, tenant: str, since_ns: int) -> int:
        """Return how many samples of ``tenant`` were recorded at or after ``since_ns``."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM seen_runs "
                "WHERE tenant = ? AND ingested_at_ns >= ?",
                (tenant, since_ns),
            ).fetchone()
        return int(count)

    def prune(self, tenant: str, older_than_ns: int) -> int:
        """Forget the runs of ``tenant`` recorded before ``older_than_ns``; return how many."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM seen_runs WHERE tenant = ? AND ingested_at_ns < ?",
                (tenant, older_than_ns),
            )
            return cursor.rowcount

    def _migrate_sample_ids(self) -> None:
        """Fold a ``seen`` table of one row per sample id (before runs) into runs, once."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                exists = self._db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seen'"
                ).fetchone()
                if exists:
                    by_key: dict[tuple[str, str, str, int], list[int]] = {}
                    for tenant, pipeline, sample_id, at_ns in self._db.execute(
                        "SELECT tenant, pipeline, sample_id, ingested_at_ns FROM seen"
                    ):
                        try:
                            node, seq = parse_sample_id(sample_id)
                        except ProtocolError:
                            continue  # never stored by a version that wrote this table
                        by_key.setdefault((tenant, pipeline, node, at_ns), []).append(seq)
                    self._db.executemany(
                        "INSERT OR IGNORE INTO seen_runs VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (tenant, pipeline, node, first, last, at_ns)
                            for (tenant, pipeline, node, at_ns), values in by_key.items()
                            for first, last in seq_runs(np.array(values, dtype=np.int64))
                        ],
                    )
                    self._db.execute("DROP TABLE seen")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise


def seq_runs(seqs: npt.NDArray[Any] | Iterable[int]) -> list[tuple[int, int]]:
    """Return the runs of consecutive values in ``seqs`` as (first, last), ascending."""
    values = np.asarray(seqs, dtype=np.int64)
    if len(values) == 0:
        return []
    steps = np.diff(values)
    if (steps == 1).all():
        # One run (an edge batch's seqs, almost always): one pass, called once per message.
        return [(int(values[0]), int(values[-1]))]
    ordered = values if (steps > 0).all() else np.unique(values)
    breaks = np.flatnonzero(np.diff(ordered) != 1)
    firsts = ordered[np.concatenate(([0], breaks + 1))].tolist()
    lasts = ordered[np.concatenate((breaks, [len(ordered) - 1]))].tolist()
    return list(zip(firsts, lasts, strict=True))


def ascending(seqs: npt.NDArray[np.int64]) -> bool:
    """Whether ``seqs`` strictly ascend (an edge batch's do): then they need no sorting."""
    return bool((seqs[1:] > seqs[:-1]).all())
