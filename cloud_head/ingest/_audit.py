"""Ingest's audit summary: what each flush stored, and every final refusal with its sample ids.

One record per (node, reason) and per pipeline per ``audit_interval_s``, whatever the
message rate, so a flood cannot bloat the log; a refusal record names the ids of the samples
it ended as ranges, at most ``MAX_AUDIT_RANGES`` of them (more take more records); every
stored id is also in the seen index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy.typing as npt

from cloud_head.audit import AuditAction, AuditLog
from cloud_head.ingest._outcome import IngestCounts
from cloud_head.ingest._refusals import POLICY_REASONS
from continuum._retry import FailureLog
from continuum.wire.messages import merge_seq_ranges

_log = logging.getLogger("cloud_head.ingest")

#: Seq ranges in one audit record; a refusal naming more is written as several records.
MAX_AUDIT_RANGES: Final = 1024
_AUDIT_ACTOR: Final = "service:ingest"


@dataclass(frozen=True, slots=True, kw_only=True)
class SeqSpan:
    """The seqs of one node's samples stored by one flush: lowest, highest, how many."""

    low: int
    high: int
    count: int

    @classmethod
    def of(cls, seqs: npt.NDArray[Any]) -> SeqSpan:
        """Return the span of ``seqs`` (not empty)."""
        return cls(low=int(seqs.min()), high=int(seqs.max()), count=len(seqs))


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """A final refusal of one batch, for the audit log: whose, why, and its seq ranges."""

    node: str
    pipeline: str
    reason: str
    rule: str
    detail: str
    ranges: tuple[tuple[int, int], ...]


@dataclass(slots=True, kw_only=True)
class PendingRefusal:
    """A final refusal of one node's batches for one reason, folded until it is audited.

    ``ranges`` are the refused seqs (the ids are ``node:seq``); a record holds at most
    ``MAX_AUDIT_RANGES`` of them, so a long or scattered refusal takes several records.
    """

    node: str
    reason: str
    rule: str
    detail: str
    batches: int = 0
    pipelines: set[str] = field(default_factory=set)
    ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def full(self) -> bool:
        """Whether this record holds as many ranges as one may."""
        return len(self.ranges) >= MAX_AUDIT_RANGES

    def add(
        self, pipeline: str, ranges: list[tuple[int, int]], *, new_batch: bool
    ) -> list[tuple[int, int]]:
        """Fold (part of) one refused batch in; return the ranges past this record's room,
        for the next record."""
        if new_batch:
            self.batches += 1
        self.pipelines.add(pipeline)
        self.ranges.extend(ranges)
        if len(self.ranges) <= MAX_AUDIT_RANGES:
            return []
        merged = merge_seq_ranges(self.ranges)
        self.ranges = merged[:MAX_AUDIT_RANGES]
        return merged[MAX_AUDIT_RANGES:]

    def details(self) -> dict[str, Any]:
        """The audit record's details: who, why, and the ids of the samples it ended."""
        ranges = merge_seq_ranges(self.ranges)
        return {
            "stage": "ingest",
            "node": self.node,
            "reason": self.reason,
            "final": True,
            "rule": self.rule,
            "detail": self.detail,
            "batches": self.batches,
            "pipelines": sorted(self.pipelines),
            "samples": sum(last - first + 1 for first, last in ranges),
            "sample_ids": [
                f"{self.node}:{first}" if first == last else f"{self.node}:{first}-{last}"
                for first, last in ranges
            ],
        }


class AuditSummary:
    """Fold each flush's final refusals and stored samples, and append them to the tenant's
    audit log at most once per ``interval_s`` (and on ``flush``).

    A failure to write is logged once until it recovers and counted (``audit_failed``); it
    never fails the flush, whose samples are already durable (or, refused for good, were
    never going to be), and the summary stays pending for the next try.
    """

    def __init__(
        self,
        tenant: str,
        audit_dir: str | Path | None,
        *,
        interval_s: float,
        counts: IngestCounts,
    ) -> None:
        """Append to the log under ``audit_dir`` (None: write nothing), unsigned: ingest parses
        untrusted payloads, so it holds no key; the tenant's signer seals what it appends."""
        self._tenant = tenant
        self._log = AuditLog(audit_dir) if audit_dir is not None else None
        self.interval_s = interval_s
        self._written_at = time.monotonic()
        # (node, reason) -> its refusal records not yet appended, the last one still open
        self._refusals: dict[tuple[str, str], list[PendingRefusal]] = {}
        self._stored: dict[str, dict[str, tuple[int, int, int]]] = {}  # low, high, count
        self._counts = counts
        self._failures = FailureLog("writing the audit log", _log)

    def add(self, refusals: list[Refusal], stored: Mapping[str, Mapping[str, SeqSpan]]) -> None:
        """Fold one flush's final refusals and its stored samples (pipeline -> node -> span)
        in, and append the summary once ``interval_s`` has passed since the last."""
        if self._log is None:
            return
        for refusal in refusals:
            self._fold_refusal(refusal)
        for pipeline, nodes in stored.items():
            into = self._stored.setdefault(pipeline, {})
            for node, span in nodes.items():
                low, high, count = into.get(node, (span.low, span.high, 0))
                into[node] = (min(low, span.low), max(high, span.high), count + span.count)
        if time.monotonic() - self._written_at >= self.interval_s:
            self.flush()

    def _fold_refusal(self, refusal: Refusal) -> None:
        records = self._refusals.setdefault((refusal.node, refusal.reason), [])
        rest, new_batch = list(refusal.ranges), True
        while rest:
            if not records or records[-1].full:
                records.append(
                    PendingRefusal(
                        node=refusal.node,
                        reason=refusal.reason,
                        rule=refusal.rule,
                        detail=refusal.detail,
                    )
                )
            rest = records[-1].add(refusal.pipeline, rest, new_batch=new_batch)
            new_batch = False

    def flush(self) -> None:
        """Append the pending summary now.

        Each record leaves the pending summary as it is appended, so after a failure the
        next flush appends only what was not written.
        """
        if self._log is None or (not self._refusals and not self._stored):
            return
        self._written_at = time.monotonic()
        try:
            self._append_refusals(self._log)
            self._append_stored(self._log)
        except Exception as exc:  # the log's storage failed; the flushes stand
            self._counts.add("audit_failed")
            self._failures.failed(repr(exc))
            return
        self._failures.recovered()

    def _append_refusals(self, audit: AuditLog) -> None:
        for key in sorted(self._refusals):
            records = self._refusals[key]
            while records:
                action = (
                    AuditAction.POLICY_REFUSAL
                    if records[0].reason in POLICY_REASONS
                    else AuditAction.INGEST_REFUSAL
                )
                audit.append(self._tenant, action, key[0], records[0].details(), actor=_AUDIT_ACTOR)
                records.pop(0)
            del self._refusals[key]

    def _append_stored(self, audit: AuditLog) -> None:
        for pipeline in sorted(self._stored):
            summary = {
                node: {"first_seq": low, "last_seq": high, "count": count}
                for node, (low, high, count) in sorted(self._stored[pipeline].items())
            }
            details = {
                "pipeline": pipeline,
                "nodes": summary,
                "samples": sum(v["count"] for v in summary.values()),
            }
            audit.append(
                self._tenant, AuditAction.UPLINK_BATCH, pipeline, details, actor=_AUDIT_ACTOR
            )
            del self._stored[pipeline]

    def close(self) -> None:
        """Append the pending summary and close the audit log."""
        self.flush()
        if self._log is not None:
            self._log.close()
