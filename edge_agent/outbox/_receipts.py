"""Ingest's receipts applied to the outbox: samples stored or refused for good, and labels
recorded, leave it; refusals are recorded (``refused``) with their reason."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Literal

from edge_agent.outbox._core import OutboxCore
from edge_agent.outbox._ledger import ledger_key, refused_ranges, runs
from edge_agent.outbox._records import FEEDBACK_SIZE, RefusedRange

#: Rows kept in the refused table (each a run of seqs); past it the oldest go.
MAX_REFUSED_ROWS = 10_000

#: A row a receipt took: its key (seq or id), pipeline and the bytes it freed.
_Taken = tuple[int, str, int]


class Receipts(OutboxCore):
    """The receipt part of ``Outbox`` (see there)."""

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

        def record(rows: list[_Taken]) -> None:
            by_pipeline: dict[str, list[int]] = {}
            for seq, pipeline, _ in rows:
                by_pipeline.setdefault(pipeline, []).append(int(seq))
            for pipeline, seqs in sorted(by_pipeline.items()):
                ended.extend(
                    RefusedRange(
                        pipeline=pipeline,
                        first_seq=first,
                        last_seq=last,
                        count=last - first + 1,
                        reason=reason,
                        refused_at=now,
                    )
                    for first, last in runs(sorted(seqs))
                )
            _record_refused(self._db, ended)
            self._ledger({ledger_key("refused", p, reason): len(v) for p, v in by_pipeline.items()})

        self._confirm("samples", "seq", "size", self._leased_samples, ranges, also=record)
        return ended

    def refused(self) -> list[RefusedRange]:
        """Return the samples ingest refused for good, oldest first (the newest
        ``MAX_REFUSED_ROWS`` runs): which of this node's selected samples ended so."""
        with self._lock:
            self._check_open()
            return refused_ranges(self._db)

    def confirm_feedback(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Delete the delayed labels of the samples in the inclusive ``ranges`` that were
        sent (ingest's receipt: recorded); return how many there were.

        As ``confirm_samples``: only labels the broker acknowledged, or that are on their
        way to it, go, so a forged receipt costs no more than trusting the PUBACK did.
        """
        return len(
            self._confirm("feedback", "id", str(FEEDBACK_SIZE), self._leased_feedback, ranges)
        )

    def _confirm(
        self,
        table: Literal["samples", "feedback"],
        key: Literal["seq", "id"],
        size: str,
        leased: set[int],
        ranges: Sequence[tuple[int, int]],
        *,
        also: Callable[[list[_Taken]], None] | None = None,
    ) -> list[_Taken]:
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
            taken: list[_Taken] = []
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
                self._parts.count(pipeline, -int(freed))
            if taken:
                leased.difference_update(row[0] for row in taken)
                self._space.notify_all()
            return taken


def _record_refused(db: sqlite3.Connection, ended: Sequence[RefusedRange]) -> None:
    """Add ``ended`` to the refused table and drop its oldest rows past the bound."""
    db.executemany(
        "INSERT INTO refused (pipeline, first_seq, last_seq, count, reason, refused_at) "
        "VALUES (?,?,?,?,?,?)",
        [(r.pipeline, r.first_seq, r.last_seq, r.count, r.reason, r.refused_at) for r in ended],
    )
    db.execute(
        "DELETE FROM refused WHERE id <= (SELECT MAX(id) FROM refused) - ?",
        (MAX_REFUSED_ROWS,),
    )
