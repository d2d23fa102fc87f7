"""The outbox's ledger: every sample it took, and every one its own bounds ended, durably."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_agent.outbox import Outbox, SampleEntry, read_ledger


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def entries(outbox: Outbox, count: int, *, size: int = 64) -> list[SampleEntry]:
    return [
        SampleEntry(
            pipeline="inspect",
            model_version="v1",
            data_class="internal",
            seq=seq,
            captured_at_ns=time.time_ns(),
            tensor=np.zeros((size,), dtype=np.float32),
            prediction=1,
            confidence=0.5,
        )
        for seq in outbox.reserve_seqs(count)
    ]


class TestLedger:
    def test_selected_samples_are_counted_and_those_waiting_listed(self, tmp_path: Path) -> None:
        path = tmp_path / "outbox.db"
        with Outbox(path, max_bytes=1 << 20, ttl_s=3600.0, resend_unconfirmed_s=30.0) as outbox:
            batch = entries(outbox, 5)
            outbox.append_samples(batch)
            pending = outbox.next_samples(10, 1 << 20)
            assert pending is not None
            outbox.ack_samples(pending.seqs)
            outbox.confirm_samples([(batch[0].seq, batch[1].seq)])
        ledger = read_ledger(path)
        assert ledger.selected == {"inspect": 5}
        assert ledger.waiting == {"inspect": [e.seq for e in batch[2:]]}
        assert ledger.dropped == {}

    def test_the_ledger_survives_a_reopen_and_adds_up(self, tmp_path: Path) -> None:
        path = tmp_path / "outbox.db"
        for _ in range(3):
            with Outbox(path, max_bytes=1 << 20, ttl_s=3600.0) as outbox:
                outbox.append_samples(entries(outbox, 4))
        assert read_ledger(path).selected == {"inspect": 12}

    def test_drops_by_the_outbox_bounds_are_counted_by_reason(self, tmp_path: Path) -> None:
        path = tmp_path / "outbox.db"
        clock = Clock()
        with Outbox(path, max_bytes=1000, ttl_s=60.0, clock=clock) as outbox:
            first = entries(outbox, 2, size=64)  # 2 x (256 + overhead) fit
            outbox.append_samples(first)
            outbox.append_samples(entries(outbox, 2, size=64))  # evicts the oldest
            clock.now += 120.0
            expired = outbox.expire()
        ledger = read_ledger(path)
        assert ledger.selected == {"inspect": 4}
        dropped = ledger.dropped["inspect"]
        assert dropped.get("full_oldest", 0) >= 1
        assert dropped.get("expired", 0) == expired >= 1
        assert sum(dropped.values()) + len(ledger.waiting.get("inspect", [])) == 4

    def test_samples_that_never_fit_are_counted_as_dropped_newest(self, tmp_path: Path) -> None:
        path = tmp_path / "outbox.db"
        with Outbox(path, max_bytes=700, ttl_s=60.0, full_policy="drop_newest") as outbox:
            result = outbox.append_samples(entries(outbox, 3, size=64))
        ledger = read_ledger(path)
        assert ledger.selected == {"inspect": 3}
        assert 0 < result.refused == ledger.dropped["inspect"]["full_newest"] < 3
        assert len(ledger.waiting["inspect"]) == 3 - result.refused
