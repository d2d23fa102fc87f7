"""The outbox's samples: appended under the full policy of their pipeline's partition,
leased out oldest first with pipelines taking turns, and acknowledged, discarded or released.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from continuum.wire.codec import NO_FIELDS, decode_fields, encode_fields
from edge_agent.outbox._core import OutboxCore
from edge_agent.outbox._ledger import ledger_key, runs
from edge_agent.outbox._records import AppendResult, PendingSamples, SampleEntry, StoredSample


class SampleQueue(OutboxCore):
    """The samples part of ``Outbox`` (see there)."""

    def append_samples(self, entries: Sequence[SampleEntry]) -> AppendResult:
        """Store ``entries`` durably, applying the full policy per pipeline; return what was kept.

        Returns once the records are committed (see ``edge_agent.outbox._db`` for what that
        guarantees).  Never raises for a full outbox: refused and evicted records are
        counted (``on_drop``) and reported in the result.

        Raises:
            ValueError: an entry's pipeline has no partition (nothing is written then).
        """
        if self._admit is not None and entries:
            entries = self._admit(entries)
        if not entries:
            return AppendResult(appended=0, refused=0, evicted=0)
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
                self._parts.bound(pipeline)
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
            appended=len(kept),
            refused=sum(refused.values()),
            evicted=sum(evicted.values()),
            kept=tuple(e.seq for e in kept),
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
        parts = self._parts
        bound = parts.bound(pipeline)
        incoming = sum(e.size_bytes for e in group)
        if parts.used(pipeline) + incoming > bound:
            if self.full_policy == "block":
                while parts.used(pipeline) + incoming > bound and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._space.wait(min(remaining, 0.5))
                self._check_open()
            elif self.full_policy == "drop_oldest":
                evicted.update(
                    self._evict_oldest(pipeline, parts.used(pipeline) + incoming - bound)
                )
        taken: list[SampleEntry] = []
        budget = bound - parts.used(pipeline)
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
                    ledger_key("selected", pipeline): offered,
                    ledger_key("dropped", pipeline, "full_newest"): offered - len(entries),
                }
            )
        self._parts.count(pipeline, size)

    def _evict_oldest(self, pipeline: str, need_bytes: int) -> Counter[str]:
        """Delete the oldest unleased samples of ``pipeline``'s partition until ``need_bytes``
        are freed (lock held); return how many were evicted per pipeline.
        """
        if self._parts.shared:  # one partition: the oldest of any pipeline goes
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
                    {ledger_key("dropped", o, "full_oldest"): n for o, n in counts.items()}
                )
            for owner, count in counts.items():
                self._parts.count(owner, -sizes[owner])
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
            pipeline = self._next_pipeline(leased, due)
            if pipeline is None:
                return None
            head = self._db.execute(
                "SELECT pipeline, model_version, data_class FROM samples WHERE pipeline = ? "
                "AND seq NOT IN (SELECT value FROM json_each(?)) "
                "AND (sent_at IS NULL OR sent_at <= ?) ORDER BY seq LIMIT 1",
                (pipeline, leased, due),
            ).fetchone()
            records = self._read_pending(head, leased, due, max_records, max_bytes)
            self._leased_samples.update(r.seq for r in records)
            return PendingSamples(
                pipeline=head[0],
                model_version=head[1],
                data_class=head[2],
                records=tuple(records),
            )

    def _next_pipeline(self, leased: str, due: float) -> str | None:
        """The pipeline whose turn it is among those with samples to send (lock held)."""
        pending: list[str] = [
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
        return pipeline

    def _read_pending(
        self,
        head: tuple[str, str, str],
        leased: str,
        due: float,
        max_records: int,
        max_bytes: int,
    ) -> list[StoredSample]:
        """The oldest sendable samples of ``head``'s (pipeline, version, class), within the
        bounds of one message (lock held)."""
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
        return records

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
                self._ledger({ledger_key(kind, p, reason): n for p, _, n in freed})
            for pipeline, size, _ in freed:
                self._parts.count(pipeline, -int(size))
            self._leased_samples.difference_update(seqs)
            self._space.notify_all()

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
        return {pipeline: runs(values) for pipeline, values in seqs.items()}

    def release_samples(self, seqs: Sequence[int]) -> None:
        """End the lease of samples that were not acknowledged, so they are sent again."""
        with self._lock:
            self._leased_samples.difference_update(seqs)
