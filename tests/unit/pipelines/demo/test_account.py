"""The demo's sample account, on a real outbox file and a real Parquet store."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cloud_head.store import SampleStore
from continuum.spec import DataClass
from continuum.wire.codec import SampleBatch, SampleRecord
from edge_agent.outbox import Outbox, SampleEntry
from pipelines.demo._account import sample_account

NODE, TENANT, PIPELINE = "cam-1", "acme", "inspect"


def select(outbox: Outbox, count: int) -> list[int]:
    """Put ``count`` selected samples in the outbox; return their seqs."""
    seqs = list(outbox.reserve_seqs(count))
    outbox.append_samples(
        [
            SampleEntry(
                pipeline=PIPELINE,
                model_version="v1",
                data_class="internal",
                seq=seq,
                captured_at_ns=time.time_ns(),
                tensor=np.zeros((4,), dtype=np.float32),
                prediction=1,
                confidence=0.5,
            )
            for seq in seqs
        ]
    )
    return seqs


def store(root: Path, seqs: list[int]) -> None:
    """Write ``seqs`` of the node to the store, each row as given (twice if listed twice)."""
    sample_store = SampleStore(root)
    records = tuple(
        SampleRecord(seq=s, captured_at_ns=1, tensor=np.zeros((4,), np.float32)) for s in seqs
    )
    sample_store.append(TENANT, SampleBatch(PIPELINE, NODE, "v1", DataClass.INTERNAL, records))
    sample_store.flush()


def account(tmp_path: Path) -> dict[str, object]:
    result = sample_account(tmp_path / "store", [(NODE, TENANT, PIPELINE, tmp_path / "ob")])
    return result["nodes"][NODE]  # type: ignore[no-any-return]


class TestSampleAccount:
    def test_stored_and_waiting_samples_balance(self, tmp_path: Path) -> None:
        with Outbox(tmp_path / "ob", max_bytes=1 << 20, ttl_s=3600.0) as outbox:
            seqs = select(outbox, 6)
            pending = outbox.next_samples(4, 1 << 20)
            assert pending is not None
            outbox.discard_samples(pending.seqs)  # sent and acknowledged
        store(tmp_path / "store", seqs[:4])
        entry = account(tmp_path)
        assert (entry["selected"], entry["stored"], entry["waiting"], entry["lost"]) == (6, 4, 2, 0)
        assert entry["waiting_ids"] == [f"{NODE}:{s}" for s in seqs[4:]]

    def test_a_sample_gone_from_the_outbox_and_missing_in_the_store_is_lost(
        self, tmp_path: Path
    ) -> None:
        with Outbox(tmp_path / "ob", max_bytes=1 << 20, ttl_s=3600.0) as outbox:
            seqs = select(outbox, 3)
            pending = outbox.next_samples(3, 1 << 20)
            assert pending is not None
            outbox.discard_samples(pending.seqs)
        store(tmp_path / "store", seqs[:2])
        entry = account(tmp_path)
        assert entry["lost"] == 1

    def test_a_sample_written_twice_is_a_duplicate(self, tmp_path: Path) -> None:
        with Outbox(tmp_path / "ob", max_bytes=1 << 20, ttl_s=3600.0) as outbox:
            seqs = select(outbox, 2)
            pending = outbox.next_samples(2, 1 << 20)
            assert pending is not None
            outbox.discard_samples(pending.seqs)
        store(tmp_path / "store", seqs)
        store(tmp_path / "store", seqs[:1])
        entry = account(tmp_path)
        assert (entry["stored"], entry["duplicates"], entry["lost"]) == (2, 1, 0)

    def test_a_sample_stored_before_its_receipt_came_is_not_counted_twice(
        self, tmp_path: Path
    ) -> None:
        with Outbox(tmp_path / "ob", max_bytes=1 << 20, ttl_s=3600.0) as outbox:
            seqs = select(outbox, 3)
        store(tmp_path / "store", seqs)
        entry = account(tmp_path)
        assert (entry["stored"], entry["waiting"], entry["receipt_pending"]) == (3, 0, 3)
        assert entry["lost"] == 0
