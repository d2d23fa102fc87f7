"""The outbox's ledger: where each selected sample went, readable from the file alone.

A ledger in ``meta`` counts, in the same transaction as the records it counts, every sample
the outbox took per pipeline and every one its own bounds ended (full, expired,
unsendable), so ``read_ledger`` can say after any crash where each selected sample went:
still here, in the cloud's store, or ended with a count and a reason — never silently gone.
Samples ingest refused for good are listed, by seq and reason, in the ``refused`` table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.outbox._records import RefusedRange


@dataclass(frozen=True, slots=True, kw_only=True)
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


def ledger_key(kind: str, pipeline: str, reason: str = "") -> str:
    """The ``meta`` key of one ledger count: ``ledger/<kind>/<pipeline>[/<reason>]``."""
    return "/".join(("ledger", kind, pipeline, *((reason,) if reason else ())))


def add_counts(db: sqlite3.Connection, counts: Mapping[str, int]) -> None:
    """Add ``counts`` (by ``ledger_key``) to the ledger, inside the caller's transaction."""
    db.executemany(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = value + "
        "excluded.value",
        [(key, count) for key, count in counts.items() if count],
    )


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
        for run in refused_ranges(db) if has_refused else []:
            into = refused.setdefault(run.pipeline, {})
            into.update(dict.fromkeys(range(run.first_seq, run.last_seq + 1), run.reason))
        return OutboxLedger(
            selected=selected, dropped=dropped, acked=acked, waiting=waiting, refused=refused
        )
    finally:
        db.close()


def refused_ranges(db: sqlite3.Connection) -> list[RefusedRange]:
    """The refused table's runs, oldest first."""
    rows = db.execute(
        "SELECT pipeline, first_seq, last_seq, count, reason, refused_at FROM refused ORDER BY id"
    ).fetchall()
    return [
        RefusedRange(
            pipeline=pipeline,
            first_seq=first,
            last_seq=last,
            count=count,
            reason=reason,
            refused_at=refused_at,
        )
        for pipeline, first, last, count, reason, refused_at in rows
    ]


def runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Return the runs of consecutive values of ascending ``seqs`` as inclusive ranges."""
    found: list[tuple[int, int]] = []
    for seq in seqs:
        if found and seq == found[-1][1] + 1:
            found[-1] = (found[-1][0], seq)
        else:
            found.append((seq, seq))
    return found
