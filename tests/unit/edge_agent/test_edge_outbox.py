"""The durable outbox: survives reopening, bounded by bytes and age, leases until acked."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from continuum.errors import ConfigError
from edge_agent.outbox import (
    MAX_REFUSED_ROWS,
    AppendResult,
    FeedbackEntry,
    Outbox,
    RefusedRange,
    SampleEntry,
    read_ledger,
)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _entry(
    outbox: Outbox,
    *,
    version: str = "v1",
    value: float = 1.0,
    size: int = 64,
    pipeline: str = "inspect",
) -> SampleEntry:
    (seq,) = outbox.reserve_seqs(1)
    return SampleEntry(
        pipeline=pipeline,
        model_version=version,
        data_class="internal",
        seq=seq,
        captured_at_ns=time.time_ns(),
        tensor=np.full((size,), value, dtype=np.float32),
        prediction=3,
        confidence=0.25,
        label=None,
    )


def _open(path: Path, **kwargs: object) -> Outbox:
    options: dict[str, object] = {"max_bytes": 1 << 20, "ttl_s": 3600.0}
    options.update(kwargs)
    return Outbox(path, **options)  # type: ignore[arg-type]


class TestSequenceNumbers:
    def test_seqs_keep_increasing_across_reopen(self, tmp_path: Path) -> None:
        path = tmp_path / "outbox.db"
        with _open(path) as outbox:
            first = list(outbox.reserve_seqs(5))
        with _open(path) as outbox:
            second = list(outbox.reserve_seqs(5))
        assert first == sorted(first) and len(set(first)) == 5
        assert min(second) > max(first)

    def test_a_new_database_starts_at_the_current_time_in_microseconds(
        self, tmp_path: Path
    ) -> None:
        before = time.time_ns() // 1000
        with _open(tmp_path / "outbox.db") as outbox:
            (seq,) = outbox.reserve_seqs(1)
        assert before <= seq <= time.time_ns() // 1000

    def test_concurrent_reservations_never_overlap(self, tmp_path: Path) -> None:
        seen: list[int] = []
        lock = threading.Lock()
        with _open(tmp_path / "outbox.db") as outbox:

            def reserve() -> None:
                for _ in range(200):
                    got = list(outbox.reserve_seqs(7))
                    with lock:
                        seen.extend(got)

            threads = [threading.Thread(target=reserve) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert len(seen) == len(set(seen)) == 4 * 200 * 7


class TestDurability:
    def test_unacked_samples_are_sent_again_after_reopen(self, tmp_path: Path) -> None:
        path = tmp_path / "outbox.db"
        with _open(path) as outbox:
            entries = [_entry(outbox, value=float(i)) for i in range(3)]
            outbox.append_samples(entries)
            leased = outbox.next_samples(10, 1 << 20)
            assert leased is not None and len(leased.records) == 3
            outbox.ack_samples([entries[0].seq])
        with _open(path) as outbox:
            pending = outbox.next_samples(10, 1 << 20)
        assert pending is not None
        assert pending.seqs == (entries[1].seq, entries[2].seq)
        assert pending.records[1].tensor.tolist() == [2.0] * 64
        assert pending.records[0].prediction == 3
        assert pending.records[0].confidence == pytest.approx(0.25)
        assert (pending.pipeline, pending.model_version, pending.data_class) == (
            "inspect",
            "v1",
            "internal",
        )

    def test_a_file_that_is_no_outbox_is_refused_naming_the_fix_and_left_closed(
        self, tmp_path: Path
    ) -> None:
        import gc
        import os
        import sqlite3

        # A database that opens but is not an outbox: its reading fails after the connect.
        path = tmp_path / "outbox.db"
        with contextlib.closing(sqlite3.connect(path)) as other:
            other.execute("CREATE TABLE samples (x)")
            other.commit()

        def open_files() -> int:
            return sum(
                1
                for fd in os.listdir("/proc/self/fd")
                if os.path.realpath(f"/proc/self/fd/{fd}") == str(path.resolve())
            )

        with pytest.raises(ConfigError, match="move it aside") as caught:
            _open(path)
        # The refusal's traceback (kept by whoever logs it) must not keep the file open.
        gc.collect()
        assert caught.value is not None and open_files() == 0

    def test_feedback_survives_reopen_and_waits_until_due(self, tmp_path: Path) -> None:
        clock = FakeClock()
        path = tmp_path / "outbox.db"
        with _open(path, clock=clock) as outbox:
            outbox.append_feedback(
                [FeedbackEntry(pipeline="inspect", seq=42, label=7, due_at=clock.now + 5.0)]
            )
            assert outbox.next_feedback(10) is None
        with _open(path, clock=clock) as outbox:
            assert outbox.next_feedback_due() == pytest.approx(clock.now + 5.0)
            clock.now += 5.0
            pending = outbox.next_feedback(10)
            assert pending is not None and pending.items == ((42, 7),)
            outbox.ack_feedback(pending.ids)
            assert outbox.next_feedback(10) is None
            assert outbox.stats().feedback == 0


class TestLeases:
    def test_leased_samples_are_not_handed_out_twice(self, tmp_path: Path) -> None:
        with _open(tmp_path / "outbox.db") as outbox:
            outbox.append_samples([_entry(outbox) for _ in range(4)])
            first = outbox.next_samples(2, 1 << 20)
            second = outbox.next_samples(2, 1 << 20)
            assert first is not None and second is not None
            assert not set(first.seqs) & set(second.seqs)
            assert outbox.next_samples(2, 1 << 20) is None

    def test_released_samples_come_back_oldest_first(self, tmp_path: Path) -> None:
        with _open(tmp_path / "outbox.db") as outbox:
            outbox.append_samples([_entry(outbox) for _ in range(3)])
            first = outbox.next_samples(3, 1 << 20)
            assert first is not None
            outbox.release_samples(first.seqs)
            again = outbox.next_samples(3, 1 << 20)
            assert again is not None and again.seqs == first.seqs

    def test_a_batch_holds_one_model_version_and_respects_its_bounds(self, tmp_path: Path) -> None:
        with _open(tmp_path / "outbox.db") as outbox:
            outbox.append_samples([_entry(outbox, version="v1") for _ in range(5)])
            outbox.append_samples([_entry(outbox, version="v2") for _ in range(2)])
            by_count = outbox.next_samples(2, 1 << 20)
            by_bytes = outbox.next_samples(10, 300)  # one 256-byte tensor fits, two do not
            rest = outbox.next_samples(10, 1 << 20)
            other = outbox.next_samples(10, 1 << 20)
            tiny = outbox.next_samples(10, 1)
        assert by_count is not None and len(by_count.records) == 2
        assert by_bytes is not None and len(by_bytes.records) == 1
        assert rest is not None and rest.model_version == "v1" and len(rest.records) == 2
        assert other is not None and other.model_version == "v2" and len(other.records) == 2
        assert tiny is None


class TestPipelinesTakeTurns:
    def test_a_backlog_of_one_pipeline_does_not_hold_back_another(self, tmp_path: Path) -> None:
        with _open(tmp_path / "outbox.db") as outbox:
            outbox.append_samples([_entry(outbox, pipeline="backlog") for _ in range(50)])
            outbox.append_samples([_entry(outbox, pipeline="fresh")])
            first = outbox.next_samples(max_records=10, max_bytes=1 << 20)
            second = outbox.next_samples(max_records=10, max_bytes=1 << 20)
            third = outbox.next_samples(max_records=10, max_bytes=1 << 20)
            assert first is not None and second is not None and third is not None
            assert [first.pipeline, second.pipeline, third.pipeline] == [
                "backlog",
                "fresh",
                "backlog",
            ]
            assert [r.seq for r in third.records] == sorted(r.seq for r in third.records)
            assert third.records[0].seq > first.records[-1].seq  # oldest first within one


class TestBounds:
    def test_drop_oldest_evicts_the_oldest_unleased_samples(self, tmp_path: Path) -> None:
        drops: list[tuple[str, int]] = []
        size = 64 * 4 + 96  # one record's accounted bytes
        with _open(
            tmp_path / "outbox.db", max_bytes=3 * size, on_drop=lambda p, r, n: drops.append((r, n))
        ) as outbox:
            entries = [_entry(outbox) for _ in range(3)]
            outbox.append_samples(entries)
            leased = outbox.next_samples(1, 1 << 20)  # the oldest is in flight: keep it
            newest = _entry(outbox)
            result = outbox.append_samples([newest])
            assert leased is not None and leased.seqs == (entries[0].seq,)
            assert (result.appended, result.evicted, result.refused) == (1, 1, 0)
            outbox.release_samples(leased.seqs)
            left = outbox.next_samples(10, 1 << 20)
            assert left is not None
            assert left.seqs == (entries[0].seq, entries[2].seq, newest.seq)
            assert outbox.stats().dropped == {"full_oldest": 1}
        assert drops == [("full_oldest", 1)]

    def test_a_drop_episode_is_logged_once_when_it_starts_and_once_when_it_ends(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        size = 64 * 4 + 96
        with _open(tmp_path / "outbox.db", max_bytes=2 * size) as outbox:
            outbox.append_samples([_entry(outbox), _entry(outbox)])
            with caplog.at_level(logging.WARNING, logger="edge_agent.outbox"):
                for _ in range(3):
                    outbox.append_samples([_entry(outbox)])  # each evicts the oldest
                pending = outbox.next_samples(10, 1 << 20)
                assert pending is not None
                outbox.ack_samples(pending.seqs)
                outbox.append_samples([_entry(outbox)])  # fits: the episode is over
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2, messages
        assert "dropping the oldest unsent samples" in messages[0]
        assert "full_oldest drops ended" in messages[1]
        assert "3 record(s) dropped in all" in messages[1]

    def test_drop_newest_refuses_what_does_not_fit(self, tmp_path: Path) -> None:
        size = 64 * 4 + 96
        with _open(tmp_path / "outbox.db", max_bytes=2 * size, full_policy="drop_newest") as box:
            entries = [_entry(box) for _ in range(3)]
            result = box.append_samples(entries)
            assert (result.appended, result.refused) == (2, 1)
            assert result.kept == (entries[0].seq, entries[1].seq)
            assert box.stats().dropped == {"full_newest": 1}
            assert box.bytes_used == 2 * size

    def test_block_waits_for_an_ack_to_free_space(self, tmp_path: Path) -> None:
        size = 64 * 4 + 96
        with _open(
            tmp_path / "outbox.db", max_bytes=size, full_policy="block", block_timeout_s=5.0
        ) as outbox:
            first = _entry(outbox)
            outbox.append_samples([first])
            timer = threading.Timer(0.2, outbox.ack_samples, args=([first.seq],))
            timer.start()
            started = time.monotonic()
            result = outbox.append_samples([_entry(outbox)])
            waited = time.monotonic() - started
            timer.join()
        assert result.appended == 1
        assert 0.1 < waited < 4.0

    def test_block_gives_up_after_its_timeout_and_counts_the_drop(self, tmp_path: Path) -> None:
        size = 64 * 4 + 96
        with _open(
            tmp_path / "outbox.db", max_bytes=size, full_policy="block", block_timeout_s=0.2
        ) as outbox:
            outbox.append_samples([_entry(outbox)])
            result = outbox.append_samples([_entry(outbox)])
            assert (result.appended, result.refused) == (0, 1)
            assert outbox.stats().dropped == {"full_newest": 1}

    def test_records_older_than_the_ttl_expire_and_are_counted(self, tmp_path: Path) -> None:
        clock = FakeClock()
        with _open(tmp_path / "outbox.db", ttl_s=60.0, clock=clock) as outbox:
            outbox.append_samples([_entry(outbox)])
            outbox.append_feedback(
                [FeedbackEntry(pipeline="inspect", seq=1, label=2, due_at=clock.now)]
            )
            clock.now += 30.0
            fresh = _entry(outbox)
            outbox.append_samples([fresh])
            clock.now += 40.0
            assert outbox.expire() == 2
            pending = outbox.next_samples(10, 1 << 20)
            stats = outbox.stats()
        assert pending is not None and pending.seqs == (fresh.seq,)
        assert stats.dropped == {"expired": 2}
        assert stats.oldest_age_s == pytest.approx(40.0)

    def test_reclaim_gives_space_back_after_acks(self, tmp_path: Path) -> None:
        path = tmp_path / "outbox.db"
        with _open(path) as outbox:
            entries = [_entry(outbox, size=4096) for _ in range(64)]
            outbox.append_samples(entries)
            outbox.reclaim()
            full = path.stat().st_size
            outbox.ack_samples([e.seq for e in entries])
            outbox.reclaim()
            assert path.stat().st_size < full / 2
            assert outbox.bytes_used == 0


#: One test record's accounted bytes (64 float32 values plus the row overhead).
RECORD = 64 * 4 + 96


class TestPartitions:
    def test_a_full_pipeline_under_drop_oldest_loses_only_its_own_oldest_records(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        drops: list[tuple[str, str, int]] = []
        with _open(
            tmp_path / "outbox.db",
            max_bytes=6 * RECORD,
            partitions={"a": 3 * RECORD, "b": 3 * RECORD},
            on_drop=lambda p, r, n: drops.append((p, r, n)),
        ) as outbox:
            b = [_entry(outbox, pipeline="b") for _ in range(3)]
            a = [_entry(outbox, pipeline="a") for _ in range(3)]
            outbox.append_samples(b)  # older than all of a's
            outbox.append_samples(a)
            with caplog.at_level(logging.WARNING, logger="edge_agent.outbox"):
                newer = [_entry(outbox, pipeline="a") for _ in range(2)]
                result = outbox.append_samples(newer)
            first = outbox.next_samples(10, 1 << 20)
            second = outbox.next_samples(10, 1 << 20)
            stats = outbox.stats()
        assert (result.appended, result.evicted, result.refused) == (2, 2, 0)
        assert first is not None and second is not None
        left = {first.pipeline: first.seqs, second.pipeline: second.seqs}
        assert left == {"a": (a[2].seq, newer[0].seq, newer[1].seq), "b": tuple(e.seq for e in b)}
        assert drops == [("a", "full_oldest", 2)]
        assert stats.pipelines["a"].dropped == {"full_oldest": 2}
        assert stats.pipelines["b"].dropped == {}
        assert (stats.pipelines["a"].bytes, stats.pipelines["b"].bytes) == (3 * RECORD, 3 * RECORD)
        [message] = [r.getMessage() for r in caplog.records]
        assert "pipeline a: full at its partition's 1056 bytes" in message

    def test_under_block_a_full_pipeline_waits_while_another_still_enqueues(
        self, tmp_path: Path
    ) -> None:
        with _open(
            tmp_path / "outbox.db",
            max_bytes=2 * RECORD,
            partitions={"a": RECORD, "b": RECORD},
            full_policy="block",
            block_timeout_s=10.0,
        ) as outbox:
            first = _entry(outbox, pipeline="a")
            outbox.append_samples([first])
            blocked: list[AppendResult] = []
            waiter = threading.Thread(
                target=lambda: blocked.append(outbox.append_samples([_entry(outbox, pipeline="a")]))
            )
            waiter.start()
            time.sleep(0.3)  # a's second append is waiting for room in a's partition
            started = time.monotonic()
            other = outbox.append_samples([_entry(outbox, pipeline="b")])
            took = time.monotonic() - started
            still_waiting = waiter.is_alive()
            outbox.ack_samples([first.seq])  # room in a's partition: the waiter goes on
            waiter.join(5.0)
        assert other.appended == 1 and took < 1.0
        assert still_waiting
        assert len(blocked) == 1 and blocked[0].appended == 1

    def test_feedback_is_refused_only_in_the_full_pipelines_partition(self, tmp_path: Path) -> None:
        with _open(
            tmp_path / "outbox.db",
            max_bytes=2 * RECORD,
            partitions={"a": RECORD, "b": RECORD},
            full_policy="drop_newest",
        ) as outbox:
            outbox.append_samples([_entry(outbox, pipeline="a")])  # a's partition is full
            kept = outbox.append_feedback(
                [
                    FeedbackEntry(pipeline="a", seq=1, label=0, due_at=0.0),
                    FeedbackEntry(pipeline="b", seq=2, label=0, due_at=0.0),
                ]
            )
            stats = outbox.stats()
        assert kept == 1
        assert (stats.pipelines["a"].feedback, stats.pipelines["b"].feedback) == (0, 1)
        assert stats.pipelines["a"].dropped == {"full_newest": 1}

    def test_byte_totals_per_pipeline_are_restored_at_reopen(self, tmp_path: Path) -> None:
        path = tmp_path / "outbox.db"
        with _open(path) as outbox:  # written without partitions, as before they existed
            outbox.append_samples([_entry(outbox, pipeline="a") for _ in range(3)])
            outbox.append_samples([_entry(outbox, pipeline="b") for _ in range(2)])
            outbox.append_feedback([FeedbackEntry(pipeline="b", seq=1, label=0, due_at=0.0)])
        partitions = {"a": 3 * RECORD, "b": 3 * RECORD}
        with _open(path, max_bytes=6 * RECORD, partitions=partitions) as outbox:
            stats = outbox.stats()
            result = outbox.append_samples([_entry(outbox, pipeline="a")])
            after = outbox.stats()
        assert stats.pipelines["a"].bytes == 3 * RECORD
        assert stats.pipelines["b"].bytes == 2 * RECORD + 48
        assert stats.bytes == 5 * RECORD + 48
        assert result.evicted == 1  # a was full already: its oldest goes, b is untouched
        assert (after.pipelines["a"].samples, after.pipelines["b"].samples) == (3, 2)

    def test_a_pipeline_without_a_partition_is_refused_before_anything_is_written(
        self, tmp_path: Path
    ) -> None:
        with _open(tmp_path / "outbox.db", max_bytes=4096, partitions={"a": 4096}) as outbox:
            with pytest.raises(ValueError, match="pipeline 'z' has no partition"):
                outbox.append_samples([_entry(outbox, pipeline="a"), _entry(outbox, pipeline="z")])
            assert outbox.stats().samples == 0

    def test_partitions_must_fit_the_bound(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="add up to at most max_bytes=1000"):
            _open(tmp_path / "outbox.db", max_bytes=1000, partitions={"a": 600, "b": 600})


class TestCheckpoints:
    """WAL checkpoints (copies into the database file, with fsyncs) run on the outbox's own
    thread, never inside the commit of the thread that appends (the inference thread)."""

    MB = 1 << 20

    def _append_mb(self, outbox: Outbox, megabytes: int) -> None:
        for _ in range(megabytes):
            outbox.append_samples([_entry(outbox, size=self.MB // 4)])

    def test_a_commit_never_copies_the_wal_into_the_database(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from edge_agent.outbox import _checkpoint

        # The background thread is held back, so only a commit could checkpoint (SQLite's
        # automatic checkpoint would, every 1,000 pages).
        monkeypatch.setattr(_checkpoint, "CHECKPOINT_AFTER_BYTES", 1 << 40)
        monkeypatch.setattr(_checkpoint, "CHECKPOINT_EVERY_S", 3600.0)
        path = tmp_path / "outbox.db"
        with _open(path, max_bytes=1 << 30) as outbox:
            self._append_mb(outbox, 8)
            wal = path.with_name(path.name + "-wal")
            assert wal.stat().st_size > 8 * self.MB
            assert path.stat().st_size < self.MB
            assert outbox.stats().samples == 8
        # Closing checkpoints, and every record is in the database file.
        assert path.stat().st_size > 8 * self.MB
        with _open(path, max_bytes=1 << 30) as outbox:
            assert outbox.stats().samples == 8

    def test_the_background_thread_copies_the_wal_once_enough_was_written(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "outbox.db"
        with _open(path, max_bytes=1 << 30) as outbox:
            self._append_mb(outbox, 6)
            deadline = time.monotonic() + 10.0
            while path.stat().st_size < 5 * self.MB and time.monotonic() < deadline:
                time.sleep(0.05)
            assert path.stat().st_size >= 5 * self.MB

    def test_closing_stops_the_thread(self, tmp_path: Path) -> None:
        def checkpoint_threads() -> list[str]:
            return [t.name for t in threading.enumerate() if "outbox-checkpoint" in t.name]

        before = checkpoint_threads()
        outbox = _open(tmp_path / "outbox.db")
        assert len(checkpoint_threads()) == len(before) + 1
        outbox.append_samples([_entry(outbox)])
        outbox.close()
        assert checkpoint_threads() == before


class TestReceipts:
    """With ``resend_unconfirmed_s``, a sample outlives the broker's PUBACK until ingest's
    receipt: a broker that crashes before it saved or passed the sample on loses nothing."""

    RESEND_S = 60.0

    def _open(self, path: Path, clock: FakeClock) -> Outbox:
        return _open(path, resend_unconfirmed_s=self.RESEND_S, clock=clock)

    @staticmethod
    def _send(outbox: Outbox, count: int, *, most: int = 10) -> tuple[SampleEntry, ...]:
        """Append ``count`` samples, take up to ``most`` to send and have the broker ack them."""
        entries = tuple(_entry(outbox) for _ in range(count))
        outbox.append_samples(list(entries))
        pending = outbox.next_samples(most, 1 << 20)
        assert pending is not None and len(pending.records) == min(count, most)
        outbox.ack_samples(pending.seqs)
        return entries

    def test_a_sample_acknowledged_by_the_broker_stays_until_its_receipt(
        self, tmp_path: Path
    ) -> None:
        clock = FakeClock()
        with self._open(tmp_path / "outbox.db", clock) as outbox:
            entries = self._send(outbox, 3)
            stats = outbox.stats()
            assert stats.samples == 3  # kept, and not offered again meanwhile
            assert stats.pipelines["inspect"].samples_awaiting_receipt == 3
            assert outbox.next_samples(10, 1 << 20) is None
            seqs = [e.seq for e in entries]
            assert outbox.confirm_samples([(min(seqs), max(seqs))]) == 3
            assert outbox.stats().samples == 0 and outbox.bytes_used == 0

    def test_a_sample_without_a_receipt_in_time_is_sent_again(self, tmp_path: Path) -> None:
        clock = FakeClock()
        path = tmp_path / "outbox.db"
        with self._open(path, clock) as outbox:
            (entry,) = self._send(outbox, 1)
            clock.now += self.RESEND_S - 1.0
            assert outbox.next_samples(10, 1 << 20) is None
        with self._open(path, clock) as outbox:  # also across a restart
            clock.now += 2.0
            again = outbox.next_samples(10, 1 << 20)
            assert again is not None and again.seqs == (entry.seq,)

    def test_a_receipt_forgets_only_samples_that_were_sent(self, tmp_path: Path) -> None:
        # A forged receipt over every seq there could be (any holder of the tenant's
        # credential may publish one) takes what the broker acknowledged, nothing unsent.
        clock = FakeClock()
        with self._open(tmp_path / "outbox.db", clock) as outbox:
            entries = self._send(outbox, 4, most=2)
            assert outbox.confirm_samples([(0, 2**63 - 1), (5, 3_000_000)]) == 2
            left = outbox.next_samples(10, 1 << 20)
            assert left is not None and left.seqs == tuple(e.seq for e in entries[2:])
            assert outbox.stats().samples == 2

    def test_a_sample_confirmed_while_on_its_way_is_not_brought_back_by_its_puback(
        self, tmp_path: Path
    ) -> None:
        clock = FakeClock()
        with self._open(tmp_path / "outbox.db", clock) as outbox:
            entry = _entry(outbox)
            outbox.append_samples([entry])
            pending = outbox.next_samples(10, 1 << 20)  # leased: a resend on its way
            assert pending is not None
            assert outbox.confirm_samples([(entry.seq, entry.seq)]) == 1  # an earlier send
            outbox.ack_samples(pending.seqs)
            clock.now += 2 * self.RESEND_S
            assert outbox.next_samples(10, 1 << 20) is None
            assert outbox.stats().samples == 0

    def test_without_receipts_the_puback_deletes(self, tmp_path: Path) -> None:
        with _open(tmp_path / "outbox.db") as outbox:
            outbox.append_samples([_entry(outbox)])
            pending = outbox.next_samples(10, 1 << 20)
            assert pending is not None
            outbox.ack_samples(pending.seqs)
            assert outbox.stats().samples == 0

    def test_an_outbox_of_the_previous_schema_is_migrated(self, tmp_path: Path) -> None:
        import sqlite3

        from edge_agent.outbox import _db

        path = tmp_path / "outbox.db"
        # as schema 2 made it: no sent_at columns
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            schema = _db.SCHEMA.replace(",\n    sent_at        REAL", "")
            schema = schema.replace(",\n    sent_at     REAL", "")
            assert schema.count("sent_at") == _db.SCHEMA.count("sent_at") - 2
            db.executescript(schema)
            db.execute("INSERT INTO meta VALUES ('schema', 2)")
            db.execute("INSERT INTO meta VALUES ('seq_hi', 1000)")
        clock = FakeClock()
        with self._open(path, clock) as outbox:
            (entry,) = self._send(outbox, 1)
            assert outbox.confirm_samples([(entry.seq, entry.seq)]) == 1

    def test_a_resend_period_that_is_not_positive_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="resend_unconfirmed_s"):
            _open(tmp_path / "outbox.db", resend_unconfirmed_s=0.0)


class TestLabelReceipts:
    """With ``resend_unconfirmed_s``, a delayed label outlives the broker's PUBACK until
    ingest's receipt, as a sample does: a broker crash loses no label either."""

    RESEND_S = 60.0

    def _open(self, path: Path, clock: FakeClock, **kwargs: object) -> Outbox:
        return _open(path, resend_unconfirmed_s=self.RESEND_S, clock=clock, **kwargs)

    @staticmethod
    def _send(
        outbox: Outbox, clock: FakeClock, seqs: list[int], *, most: int = 10
    ) -> tuple[int, ...]:
        """Append labels for ``seqs``, due now; take up to ``most`` to send and have the
        broker ack them; return the seqs sent."""
        outbox.append_feedback(
            [FeedbackEntry(pipeline="inspect", seq=s, label=s % 10, due_at=clock.now) for s in seqs]
        )
        pending = outbox.next_feedback(most)
        assert pending is not None and len(pending.ids) == min(len(seqs), most)
        outbox.ack_feedback(pending.ids)
        return tuple(seq for seq, _ in pending.items)

    def test_a_label_acknowledged_by_the_broker_stays_until_its_receipt(
        self, tmp_path: Path
    ) -> None:
        clock = FakeClock()
        with self._open(tmp_path / "outbox.db", clock) as outbox:
            self._send(outbox, clock, [10, 11, 12])
            stats = outbox.stats()
            assert stats.feedback == 3  # kept, and not offered again meanwhile
            assert stats.pipelines["inspect"].feedback_awaiting_receipt == 3
            assert stats.pipelines["inspect"].samples_awaiting_receipt == 0
            assert outbox.next_feedback(10) is None
            assert outbox.confirm_feedback([(10, 12)]) == 3
            assert outbox.stats().feedback == 0 and outbox.bytes_used == 0

    def test_a_label_without_a_receipt_in_time_is_sent_again(self, tmp_path: Path) -> None:
        clock = FakeClock()
        path = tmp_path / "outbox.db"
        with self._open(path, clock) as outbox:
            self._send(outbox, clock, [42])
            assert outbox.next_feedback_due() == pytest.approx(clock.now + self.RESEND_S)
            clock.now += self.RESEND_S - 1.0
            assert outbox.next_feedback(10) is None
        with self._open(path, clock) as outbox:  # also across a restart
            clock.now += 2.0
            again = outbox.next_feedback(10)
            assert again is not None and again.items == ((42, 2),)

    def test_a_receipt_forgets_only_labels_that_were_sent(self, tmp_path: Path) -> None:
        # A forged receipt over every seq there could be takes what the broker
        # acknowledged, nothing unsent; a receipt for the samples takes no label.
        clock = FakeClock()
        with self._open(tmp_path / "outbox.db", clock) as outbox:
            self._send(outbox, clock, [1, 2, 3, 4], most=2)
            assert outbox.confirm_samples([(0, 2**63 - 1)]) == 0
            assert outbox.stats().feedback == 4
            assert outbox.confirm_feedback([(0, 2**63 - 1), (1, 3_000_000)]) == 2
            left = outbox.next_feedback(10)
            assert left is not None and left.items == ((3, 3), (4, 4))
            assert outbox.stats().feedback == 2

    def test_a_label_confirmed_while_on_its_way_is_not_brought_back_by_its_puback(
        self, tmp_path: Path
    ) -> None:
        clock = FakeClock()
        with self._open(tmp_path / "outbox.db", clock) as outbox:
            outbox.append_feedback(
                [FeedbackEntry(pipeline="inspect", seq=7, label=1, due_at=clock.now)]
            )
            pending = outbox.next_feedback(10)  # leased: a resend on its way
            assert pending is not None
            assert outbox.confirm_feedback([(7, 7)]) == 1  # an earlier send
            outbox.ack_feedback(pending.ids)
            clock.now += 2 * self.RESEND_S
            assert outbox.next_feedback(10) is None
            assert outbox.stats().feedback == 0

    def test_without_receipts_the_puback_deletes_labels(self, tmp_path: Path) -> None:
        clock = FakeClock()
        with _open(tmp_path / "outbox.db", clock=clock) as outbox:
            outbox.append_feedback(
                [FeedbackEntry(pipeline="inspect", seq=7, label=1, due_at=clock.now)]
            )
            pending = outbox.next_feedback(10)
            assert pending is not None
            outbox.ack_feedback(pending.ids)
            assert outbox.stats().feedback == 0 and outbox.bytes_used == 0

    def test_what_the_wire_refuses_is_discarded_with_receipts_too(self, tmp_path: Path) -> None:
        # It could never be sent, so no receipt could ever come for it.
        clock = FakeClock()
        with self._open(tmp_path / "outbox.db", clock) as outbox:
            outbox.append_samples([_entry(outbox)])
            outbox.append_feedback(
                [FeedbackEntry(pipeline="inspect", seq=7, label=2**40, due_at=clock.now)]
            )
            samples, feedback = outbox.next_samples(10, 1 << 20), outbox.next_feedback(10)
            assert samples is not None and feedback is not None
            outbox.discard_samples(samples.seqs)
            outbox.discard_feedback(feedback.ids)
            clock.now += 2 * self.RESEND_S
            assert outbox.next_samples(10, 1 << 20) is None and outbox.next_feedback(10) is None
            stats = outbox.stats()
            assert (stats.samples, stats.feedback, stats.bytes) == (0, 0, 0)

    def test_an_outbox_of_the_previous_schema_is_migrated(self, tmp_path: Path) -> None:
        import sqlite3

        from edge_agent.outbox import _db

        path = tmp_path / "outbox.db"
        # as schema 3 made it: no feedback.sent_at column
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            schema = _db.SCHEMA.replace(",\n    sent_at     REAL", "")
            assert schema.count("sent_at") == _db.SCHEMA.count("sent_at") - 1
            db.executescript(schema)
            db.execute("INSERT INTO meta VALUES ('schema', 3)")
            db.execute("INSERT INTO meta VALUES ('seq_hi', 1000)")
            db.execute(
                "INSERT INTO feedback (pipeline, seq, label, due_at, enqueued_at) "
                "VALUES ('inspect', 5, 1, 0, 0)"
            )
        clock = FakeClock()
        with self._open(path, clock) as outbox:
            assert outbox.stats().feedback == 1 and outbox.bytes_used > 0
            pending = outbox.next_feedback(10)  # what schema 3 held is sent as before
            assert pending is not None and pending.items == ((5, 1),)
            outbox.ack_feedback(pending.ids)
            assert outbox.stats().pipelines["inspect"].feedback_awaiting_receipt == 1
            assert outbox.confirm_feedback([(5, 5)]) == 1
            assert outbox.stats().feedback == 0 and outbox.bytes_used == 0
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            assert schema == (_db.SCHEMA_VERSION,)


class TestRefusedSamples:
    """A receipt's ``refused`` ends samples for good: gone from the outbox, recorded why."""

    RESEND_S = 60.0

    def _open(self, path: Path, clock: FakeClock) -> Outbox:
        return _open(path, resend_unconfirmed_s=self.RESEND_S, clock=clock)

    def _sent(self, outbox: Outbox, count: int, pipeline: str = "inspect") -> list[int]:
        entries = [_entry(outbox, pipeline=pipeline) for _ in range(count)]
        outbox.append_samples(entries)
        pending = outbox.next_samples(count, 1 << 20)
        assert pending is not None and len(pending.records) == count
        outbox.ack_samples(pending.seqs)
        return [e.seq for e in entries]

    def test_refused_samples_leave_the_outbox_and_are_recorded_with_the_reason(
        self, tmp_path: Path
    ) -> None:
        clock = FakeClock()
        path = tmp_path / "outbox.db"
        with self._open(path, clock) as outbox:
            seqs = self._sent(outbox, 6)
            ended = outbox.refuse_samples([(seqs[0], seqs[2]), (seqs[4], seqs[4])], "policy")
            expected = [
                RefusedRange(
                    pipeline="inspect",
                    first_seq=seqs[0],
                    last_seq=seqs[2],
                    count=3,
                    reason="policy",
                    refused_at=clock.now,
                ),
                RefusedRange(
                    pipeline="inspect",
                    first_seq=seqs[4],
                    last_seq=seqs[4],
                    count=1,
                    reason="policy",
                    refused_at=clock.now,
                ),
            ]
            assert ended == expected
            assert outbox.waiting() == {"inspect": [(seqs[3], seqs[3]), (seqs[5], seqs[5])]}
            clock.now += 2 * self.RESEND_S  # the refused ones are never sent again
            again = outbox.next_samples(10, 1 << 20)
            assert again is not None and again.seqs == (seqs[3], seqs[5])
        with self._open(path, clock) as outbox:  # durable
            assert outbox.refused() == expected
        ledger = read_ledger(path)  # and readable from the file alone, after the agent
        assert ledger.refused == {"inspect": dict.fromkeys([*seqs[:3], seqs[4]], "policy")}
        assert ledger.waiting == {"inspect": [seqs[3], seqs[5]]}

    def test_a_refusal_takes_only_samples_that_were_sent(self, tmp_path: Path) -> None:
        # A forged receipt (any holder of the tenant's credential may publish one) cannot
        # end what was never sent, as with confirm_samples.
        with self._open(tmp_path / "outbox.db", FakeClock()) as outbox:
            sent = self._sent(outbox, 2)
            unsent = _entry(outbox)
            outbox.append_samples([unsent])
            ended = outbox.refuse_samples([(0, 2**63 - 1)], "schema_mismatch")
            assert [(r.first_seq, r.last_seq, r.count) for r in ended] == [(sent[0], sent[1], 2)]
            assert outbox.waiting() == {"inspect": [(unsent.seq, unsent.seq)]}
            assert outbox.stats().samples == 1

    def test_the_record_of_refusals_is_bounded(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from edge_agent.outbox import _receipts

        assert MAX_REFUSED_ROWS >= 1000
        monkeypatch.setattr(_receipts, "MAX_REFUSED_ROWS", 3)
        with self._open(tmp_path / "outbox.db", FakeClock()) as outbox:
            seqs = self._sent(outbox, 2 * 4)
            for seq in seqs[::2]:  # four separate runs, one past the bound
                outbox.refuse_samples([(seq, seq)], "policy")
            assert [r.first_seq for r in outbox.refused()] == seqs[2::2]

    def test_an_outbox_of_schema_4_gets_its_refused_table(self, tmp_path: Path) -> None:
        import sqlite3

        from edge_agent.outbox import _db

        path = tmp_path / "outbox.db"
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.executescript(_db.SCHEMA)
            db.execute("DROP TABLE refused")
            db.execute("INSERT INTO meta VALUES ('schema', 4)")
            db.execute("INSERT INTO meta VALUES ('seq_hi', 1000)")
        assert read_ledger(path).refused == {}  # a file from before refusals reads too
        with self._open(path, FakeClock()) as outbox:
            seqs = self._sent(outbox, 1)
            assert len(outbox.refuse_samples([(seqs[0], seqs[0])], "policy")) == 1
            assert len(outbox.refused()) == 1
