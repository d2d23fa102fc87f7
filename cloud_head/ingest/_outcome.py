"""What ingest did with each message (``Outcome``), why a check stopped one, and the tally.

The checks raise ``RejectedError`` (refused, for good or for now: ``refused`` tells which by
the reason) or ``DeferredError`` (cannot be judged yet); ``IngestCounts`` counts every
outcome by kind and reason and logs refusals once per episode.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cloud_head._mqtt import RejectLog
from cloud_head.ingest._refusals import HeldLog, is_final

_log = logging.getLogger("cloud_head.ingest")

OutcomeKind = Literal["stored", "labelled", "rejected", "held", "failed", "deferred"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ingest did with one message.

    ``kind`` is "stored" (a sample batch; ``stored`` new samples, ``duplicates`` already
    there, ``over_quota`` held back by the quota, to come again), "labelled" (a feedback
    batch; ``labels`` recorded), "rejected" (refused for good, counted under ``reason``, one
    of ``FINAL_REASONS``; acknowledge it, a resend cannot fix it), "held" (refused for now,
    under a reason of ``TEMPORARY_REASONS``; acknowledge it but send no receipt, so the node
    keeps the samples and sends them again), "failed" (the durable write failed; do not
    acknowledge, retry) or "deferred" (it cannot be judged yet — its node's status has not
    reached the fleet registry; hold it unacknowledged and offer it again).
    """

    kind: OutcomeKind
    stored: int = 0
    duplicates: int = 0
    labels: int = 0
    reason: str = ""
    detail: str = ""
    over_quota: int = 0
    #: For a batch that is done with (stored, duplicate, labelled or refused for good): its
    #: node and the inclusive ranges of its seqs, for the receipt the node's outbox awaits,
    #: in ``seq_ranges`` for a sample batch (stored, or refused under ``reason`` when
    #: "rejected"; never the samples held back by the quota) and in ``label_ranges`` for a
    #: feedback batch (the labels of those samples); not part of what the outcome is: left
    #: out of equality.
    node: str = dataclasses.field(default="", compare=False)
    seq_ranges: tuple[tuple[int, int], ...] = dataclasses.field(default=(), compare=False)
    label_ranges: tuple[tuple[int, int], ...] = dataclasses.field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.kind == "rejected" and not is_final(self.reason):
            raise ValueError(
                f"a refusal for {self.reason!r} may pass later: its outcome is 'held', not "
                "'rejected' (see FINAL_REASONS)"
            )

    def naming(
        self,
        node: str,
        seq_ranges: tuple[tuple[int, int], ...],
        label_ranges: tuple[tuple[int, int], ...],
    ) -> Outcome:
        """Return this outcome with the node and seq ranges its receipt names.

        What ``dataclasses.replace`` does, without its look-up of the fields at every call:
        ingest names the receipt of every message.
        """
        return Outcome(
            self.kind,
            self.stored,
            self.duplicates,
            self.labels,
            self.reason,
            self.detail,
            self.over_quota,
            node,
            seq_ranges,
            label_ranges,
        )

    @property
    def ack(self) -> bool:
        """Whether the message may be acknowledged to the broker."""
        return self.kind not in ("failed", "deferred")


def refused(reason: str, detail: str, *, duplicates: int = 0, over_quota: int = 0) -> Outcome:
    """Return the outcome of a refusal: "rejected" for good, or "held" for now (see
    ``FINAL_REASONS``)."""
    kind: OutcomeKind = "rejected" if is_final(reason) else "held"
    return Outcome(kind, reason=reason, detail=detail, duplicates=duplicates, over_quota=over_quota)


class DeferredError(Exception):
    """The message cannot be judged yet; offer it again shortly."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class RejectedError(Exception):
    """The message is refused for ``reason``; ``rule`` is the policy rule that refused it."""

    def __init__(self, reason: str, detail: str, *, rule: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.rule = rule


class IngestCounts:
    """Count outcomes by kind and reason, and log refusals once per episode. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()  # messages refused, for good or for now
        self._held: Counter[str] = Counter()  # messages refused for now
        self._refused_samples: Counter[str] = Counter()  # samples ended by a final refusal
        self._reject_log = RejectLog(_log)
        self._held_log = HeldLog(_log)

    def add(self, name: str, count: int = 1) -> None:
        """Add ``count`` to the counter ``name`` (e.g. ``fields_ignored``)."""
        with self._lock:
            self._counts[name] += count

    def count(self, messages: Sequence[tuple[str, bytes]], outcomes: Sequence[Outcome]) -> None:
        """Count the outcomes of one group, and log its refusals and recoveries."""
        with self._lock:
            for outcome in outcomes:
                self._count_one(outcome)
        for (topic, _), outcome in zip(messages, outcomes, strict=True):
            if outcome.kind == "rejected":
                self._reject_log.reject(outcome.reason, topic, outcome.detail)
            elif outcome.kind == "held" or outcome.over_quota:
                self._held_log.held(outcome.reason or "quota", topic, outcome.detail)
            elif outcome.kind in ("stored", "labelled"):
                self._held_log.stored(topic)

    def _count_one(self, outcome: Outcome) -> None:
        counts = self._counts
        counts["over_quota"] += outcome.over_quota
        if outcome.kind == "stored":
            counts["batches"] += 1
            counts["stored"] += outcome.stored
            counts["duplicates"] += outcome.duplicates
        elif outcome.kind == "labelled":
            counts["feedback_batches"] += 1
            counts["labels"] += outcome.labels
        elif outcome.kind in ("rejected", "held"):
            self._rejected[outcome.reason] += 1
            counts["duplicates"] += outcome.duplicates
            if outcome.kind == "held":
                self._held[outcome.reason] += 1
            else:
                self._refused_samples[outcome.reason] += sum(
                    last - first + 1 for first, last in outcome.seq_ranges
                )
        elif outcome.kind == "deferred":
            counts["deferred"] += 1
        else:
            counts["failed"] += 1

    def snapshot(self) -> dict[str, Any]:
        """Return the counters, as ``IngestService.stats`` documents them."""
        with self._lock:
            counts = self._counts
            return {
                "stored": counts["stored"],
                "duplicates": counts["duplicates"],
                "labels": counts["labels"],
                "batches": counts["batches"],
                "feedback_batches": counts["feedback_batches"],
                "failed": counts["failed"],
                "rejected": dict(self._rejected),
                "rejected_total": sum(self._rejected.values()),
                "held": dict(self._held),
                "refused_samples": dict(self._refused_samples),
                "over_quota": counts["over_quota"],
                "fields_ignored": counts["fields_ignored"],
                "deferred": counts["deferred"],
                "audit_failed": counts["audit_failed"],
            }
