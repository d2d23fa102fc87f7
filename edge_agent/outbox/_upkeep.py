"""The outbox's upkeep: records past their age bound expire, freed pages go back to the
file system, and depth, bytes and age are reported for the metrics gauges."""

from __future__ import annotations

import json
from collections import Counter

from edge_agent.outbox._core import OutboxCore
from edge_agent.outbox._ledger import ledger_key
from edge_agent.outbox._records import FEEDBACK_SIZE, OutboxStats, PartitionStats


class Upkeep(OutboxCore):
    """The upkeep part of ``Outbox`` (see there)."""

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
                    self._ledger(Counter(ledger_key("dropped", r[2], "expired") for r in samples))
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
                self._parts.count(pipeline, -int(size))
                dropped[pipeline] += 1
            for _, pipeline in feedback:
                self._parts.count(pipeline, -FEEDBACK_SIZE)
                dropped[pipeline] += 1
            if dropped:
                self._space.notify_all()
            known = self._parts.pipelines()
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
            samples = self._per_pipeline("samples")
            feedback = self._per_pipeline("feedback")
            parts = self._parts
            names = {*(parts.bounds or ()), *parts.pipelines(), *samples, *feedback}
            names.update(pipeline for pipeline, _ in self._dropped)
            partitions: dict[str, PartitionStats] = {}
            for name in sorted(names):
                sample_rows, oldest_sample, samples_sent = samples.get(name, (0, None, 0))
                feedback_rows, oldest_feedback, feedback_sent = feedback.get(name, (0, None, 0))
                partitions[name] = PartitionStats(
                    samples=int(sample_rows),
                    feedback=int(feedback_rows),
                    bytes=parts.bytes_of(name),
                    max_bytes=parts.bound_or_zero(name),
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
                bytes=parts.total,
                oldest_age_s=max((p.oldest_age_s for p in partitions.values()), default=0.0),
                dropped=dict(by_reason),
                pipelines=partitions,
            )

    def _per_pipeline(self, table: str) -> dict[str, tuple[int, float | None, int]]:
        """Pipeline -> (rows, oldest enqueued_at, rows sent) of ``table`` (lock held)."""
        return {
            row[0]: row[1:]
            for row in self._db.execute(
                f"SELECT pipeline, COUNT(*), MIN(enqueued_at), COUNT(sent_at) FROM {table} "
                "GROUP BY 1"
            )
        }


def _age_s(now: float, *enqueued_at: float | None) -> float:
    """Return the age of the oldest of ``enqueued_at`` (0 when there is none)."""
    oldest = min((t for t in enqueued_at if t is not None), default=None)
    return 0.0 if oldest is None else max(0.0, now - float(oldest))
