"""The outbox's delayed labels: appended within their pipeline's partition, leased out once
due, and acknowledged, discarded or released."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

from edge_agent.outbox._core import OutboxCore
from edge_agent.outbox._records import FEEDBACK_SIZE, FeedbackEntry, PendingFeedback


class FeedbackQueue(OutboxCore):
    """The delayed-label part of ``Outbox`` (see there)."""

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
        parts = self._parts
        with self._lock:
            self._check_open()
            for pipeline in groups:
                parts.bound(pipeline)
            for pipeline, group in groups.items():
                room = max(0, (parts.bound(pipeline) - parts.used(pipeline)) // FEEDBACK_SIZE)
                kept = group[:room]
                refused[pipeline] = len(group) - len(kept)
                if kept:
                    with self._transaction():
                        self._db.executemany(
                            "INSERT INTO feedback (pipeline, seq, label, due_at, enqueued_at) "
                            "VALUES (?,?,?,?,?)",
                            [
                                (
                                    pipeline,
                                    e.seq,
                                    e.label if isinstance(e.label, float) else int(e.label),
                                    float(e.due_at),
                                    now,
                                )
                                for e in kept
                            ],
                        )
                    parts.count(pipeline, len(kept) * FEEDBACK_SIZE)
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
            return PendingFeedback(
                pipeline=head[0], ids=ids, items=tuple((r[1], r[2]) for r in rows)
            )

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
                self._parts.count(pipeline, -int(rows) * FEEDBACK_SIZE)
            self._leased_feedback.difference_update(ids)
            self._space.notify_all()

    def release_feedback(self, ids: Sequence[int]) -> None:
        """End the lease of feedback items that were not acknowledged."""
        with self._lock:
            self._leased_feedback.difference_update(ids)


def _stored(label: int | float) -> int | float:
    """A label as the outbox keeps it: a class as an int, a regression's value as a float."""
    return label if isinstance(label, float) else int(label)
