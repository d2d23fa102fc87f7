"""The sample store: partitioned, atomic, de-duplicated Parquet on any pyarrow filesystem.

Most cases run once per kind of storage (``store_root``): a local folder, and S3-compatible
storage (moto's S3 server, or ``CONTINUUM_TEST_S3_URI``; those cases are marked
integration), where there is no atomic rename and files are written in place.  The cases
about local files themselves (temporary names, the folder layout on disk) take
``local_store``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from cloud_head._store_write import gathered_bytes
from cloud_head.store import SCHEMA, Compactor, SampleStore, to_numpy
from continuum.errors import InputMismatchError
from continuum.spec import DataClass
from continuum.wire.codec import (
    SampleBatch,
    SampleColumns,
    SampleRecord,
    decode_sample_columns,
    encode_samples,
)
from tests.s3_server import child_uri

# 2026-11-22T12:00:00Z
NOON_NS = 1_795_348_800_000_000_000
DAY = "2026-11-22"


def make_batch(
    seqs: range | list[int],
    *,
    node: str = "cam-1",
    pipeline: str = "digits",
    labels: dict[int, int] | None = None,
    fields: dict[int, dict[str, str]] | None = None,
) -> SampleBatch:
    labels = labels or {}
    fields = fields or {}
    records = tuple(
        SampleRecord(
            seq=s,
            captured_at_ns=NOON_NS - 1_000 + s,
            tensor=np.full((1, 8, 8), s / 100.0, dtype=np.float32),
            prediction=s % 10,
            confidence=0.5,
            label=labels.get(s),
            fields=fields.get(s, {}),
        )
        for s in seqs
    )
    return SampleBatch(pipeline, node, "v1", DataClass.CONFIDENTIAL, records)


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.01)


def on_s3(store_root: str) -> bool:
    return store_root.startswith("s3://")


@pytest.fixture
def store(store_root: str) -> SampleStore:
    """A store opened from its root, once per kind of storage."""
    return SampleStore(store_root)


@pytest.fixture
def local_store(tmp_path: Path) -> SampleStore:
    return SampleStore(tmp_path / "samples")


class TestRoundTrip:
    def test_the_store_round_trips_on_each_kind_of_storage(
        self, store: SampleStore, store_root: str
    ) -> None:
        assert store.filesystem.type_name == ("s3" if on_s3(store_root) else "local")
        fields = {s: {"operator": f"op-{s}"} for s in range(6)}
        store.append("acme", make_batch(range(4), fields=fields), ingested_at_ns=NOON_NS)
        first = store.flush()
        store.append("acme", make_batch(range(2, 6), fields=fields), ingested_at_ns=NOON_NS)
        second = store.flush()
        # The paths a flush returns are the ones a listing finds (ingest records the one
        # and compares it with the other after a crash).
        assert store.files("acme", "digits") == first + second
        assert store.count("acme", "digits") == 6
        assert store.dates("acme", "digits") == [DAY]

        result = store.compact("acme", "digits", DAY)

        assert result.files_merged == 2
        assert store.files("acme", "digits") == [result.path]
        table = store.read("acme", "digits")
        x, ids = to_numpy(table)
        assert ids == [f"cam-1:{s}" for s in range(6)]
        np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(6, dtype=np.float32) / 100)
        assert table.column("field_operator").to_pylist() == [f"op-{s}" for s in range(6)]


class TestLayout:
    def test_files_land_in_hive_partitions_by_tenant_pipeline_and_ingest_day(
        self, local_store: SampleStore, tmp_path: Path
    ) -> None:
        store = local_store
        store.append("acme", make_batch(range(3)), ingested_at_ns=NOON_NS)
        [path] = store.flush()
        expected_dir = tmp_path / "samples" / "tenant=acme" / "pipeline=digits" / f"date={DAY}"
        assert Path(path).parent == expected_dir
        assert Path(path).name.startswith("part-") and path.endswith(".parquet")
        assert store.dates("acme", "digits") == [DAY]

    def test_every_file_has_the_store_schema(self, store: SampleStore) -> None:
        store.append("acme", make_batch(range(2)), ingested_at_ns=NOON_NS)
        [path] = store.flush()
        assert pq.read_schema(path, filesystem=store.filesystem).remove_metadata() == SCHEMA

    def test_tenants_and_pipelines_do_not_see_each_other(self, store: SampleStore) -> None:
        store.append("acme", make_batch(range(3)))
        store.append("acme", make_batch(range(5), pipeline="other"))
        store.append("globex", make_batch(range(7)))
        store.flush()
        assert store.count("acme", "digits") == 3
        assert store.count("acme", "other") == 5
        assert store.count("globex", "digits") == 7

    def test_a_name_that_is_not_a_topic_level_is_refused(self, store: SampleStore) -> None:
        with pytest.raises(ValueError, match="tenant"):
            store.append("../etc", make_batch(range(1)))


class TestBuffering:
    def test_rows_are_invisible_until_flushed(self, store: SampleStore) -> None:
        assert store.append("acme", make_batch(range(4))) == 4
        assert store.buffered_rows == 4
        assert store.count("acme", "digits") == 0
        store.flush()
        assert store.buffered_rows == 0
        assert store.count("acme", "digits") == 4

    def test_each_flush_writes_one_file_per_partition(self, store: SampleStore) -> None:
        store.append("acme", make_batch(range(0, 3)))
        store.append("acme", make_batch(range(3, 6)))
        assert len(store.flush()) == 1
        store.append("acme", make_batch(range(6, 9)))
        assert len(store.flush()) == 1
        assert len(store.files("acme", "digits")) == 2
        assert store.flush() == []

    def test_a_partition_is_written_once_it_reaches_flush_rows(self, store_root: str) -> None:
        store = SampleStore(store_root, flush_rows=5)
        store.append("acme", make_batch(range(3)))
        assert store.files("acme", "digits") == []
        store.append("acme", make_batch(range(3, 6)))
        assert len(store.files("acme", "digits")) == 1
        assert store.count("acme", "digits") == 6

    def test_discard_drops_buffered_rows(self, store: SampleStore) -> None:
        store.append("acme", make_batch(range(4)))
        assert store.discard() == 4
        assert store.flush() == []
        assert store.count("acme", "digits") == 0


class TestRead:
    def test_tensors_and_fields_round_trip(self, store: SampleStore) -> None:
        batch = make_batch(range(5), labels={2: 7})
        store.append("acme", batch, ingested_at_ns=NOON_NS)
        store.flush()
        table = store.read("acme", "digits")
        x, ids = to_numpy(table)
        assert ids == [f"cam-1:{s}" for s in range(5)]
        np.testing.assert_array_equal(x, np.stack([r.tensor for r in batch.records]))
        assert x.dtype == np.float32
        row = table.slice(2, 1).to_pylist()[0]
        assert row["node"] == "cam-1" and row["seq"] == 2 and row["pipeline"] == "digits"
        assert row["model_version"] == "v1" and row["data_class"] == "confidential"
        assert row["label"] == 7 and row["prediction"] == 2 and row["shape"] == [1, 8, 8]
        assert row["ingested_at_ns"] == NOON_NS
        assert table.column("label").null_count == 4

    def test_a_sample_written_twice_is_read_once_with_its_first_write(
        self, store: SampleStore
    ) -> None:
        store.append("acme", make_batch(range(3)), ingested_at_ns=NOON_NS)
        store.flush()
        store.append("acme", make_batch(range(2, 5)), ingested_at_ns=NOON_NS + 1)
        store.flush()
        table = store.read("acme", "digits")
        assert sorted(table.column("sample_id").to_pylist()) == [f"cam-1:{s}" for s in range(5)]
        twice = table.filter(table.column("seq").to_numpy() == 2)
        assert twice.column("ingested_at_ns").to_pylist() == [NOON_NS]
        assert store.count("acme", "digits") == 5

    def test_a_column_subset_can_be_read(self, store: SampleStore) -> None:
        store.append("acme", make_batch(range(3)))
        store.flush()
        table = store.read("acme", "digits", columns=["seq", "label"])
        assert table.column_names == ["seq", "label"]
        assert table.num_rows == 3

    def test_an_unknown_column_is_refused(self, store: SampleStore) -> None:
        with pytest.raises(ValueError, match="unknown columns"):
            store.read("acme", "digits", columns=["nope"])

    def test_a_pipeline_without_data_reads_as_an_empty_table(self, store: SampleStore) -> None:
        table = store.read("acme", "digits")
        assert table.num_rows == 0
        assert table.schema == SCHEMA
        assert store.dates("acme", "digits") == []

    def test_reads_can_be_limited_to_days(self, store: SampleStore) -> None:
        day_ns = 86_400 * 10**9
        store.append("acme", make_batch(range(3)), ingested_at_ns=NOON_NS)
        store.append("acme", make_batch(range(3, 5)), ingested_at_ns=NOON_NS + day_ns)
        store.flush()
        assert store.dates("acme", "digits") == [DAY, "2026-11-23"]
        assert store.read("acme", "digits", dates=["2026-11-23"]).num_rows == 2


class TestAtomicity:
    def test_no_temporary_file_is_left_after_a_flush(self, local_store: SampleStore) -> None:
        store = local_store
        store.append("acme", make_batch(range(3)), ingested_at_ns=NOON_NS)
        [path] = store.flush()
        names = sorted(p.name for p in Path(path).parent.iterdir())
        assert names == [Path(path).name]

    def test_a_half_written_temporary_file_is_never_read(self, local_store: SampleStore) -> None:
        store = local_store
        store.append("acme", make_batch(range(3)), ingested_at_ns=NOON_NS)
        [path] = store.flush()
        crashed = Path(path).parent / ".part-00000000000000000001-deadbeef.parquet.tmp"
        crashed.write_bytes(b"PAR1 half a file")
        assert store.count("acme", "digits") == 3
        assert len(store.files("acme", "digits")) == 1


class TestCompaction:
    def test_small_files_are_merged_into_one_with_the_same_samples(
        self, store: SampleStore
    ) -> None:
        for start in (0, 3, 6):
            store.append("acme", make_batch(range(start, start + 4)), ingested_at_ns=NOON_NS)
            store.flush()
        before = store.read("acme", "digits")
        result = store.compact("acme", "digits", DAY)
        assert result.files_merged == 3
        assert result.rows == 10
        assert store.files("acme", "digits") == [result.path]
        assert store.read("acme", "digits").equals(before)

    def test_one_file_is_left_as_it_is(self, store: SampleStore) -> None:
        store.append("acme", make_batch(range(3)), ingested_at_ns=NOON_NS)
        [path] = store.flush()
        result = store.compact("acme", "digits", DAY)
        assert result.files_merged == 0
        assert store.files("acme", "digits") == [path]

    def test_a_stale_temporary_file_is_removed(self, local_store: SampleStore) -> None:
        store = local_store
        store.append("acme", make_batch(range(3)), ingested_at_ns=NOON_NS)
        [path] = store.flush()
        crashed = Path(path).parent / ".part-00000000000000000001-deadbeef.parquet.tmp"
        crashed.write_bytes(b"PAR1 half a file")
        store.compact("acme", "digits", DAY, stale_temp_s=0.0)
        assert not crashed.exists()
        assert Path(path).exists()

    def test_other_days_are_untouched(self, store: SampleStore) -> None:
        day_ns = 86_400 * 10**9
        for offset in (0, 1):
            store.append("acme", make_batch(range(offset, offset + 2)), ingested_at_ns=NOON_NS)
            store.flush()
        store.append("acme", make_batch(range(10, 12)), ingested_at_ns=NOON_NS + day_ns)
        [other] = store.flush()
        store.compact("acme", "digits", DAY)
        assert other in store.files("acme", "digits", "2026-11-23")
        assert store.count("acme", "digits") == 5


class TestOtherFilesystems:
    def test_the_store_works_on_a_non_local_pyarrow_filesystem(self) -> None:
        memory = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory")))
        root = f"/continuum-test-{uuid.uuid4().hex}"
        store = SampleStore(root, filesystem=memory)
        try:
            store.append("acme", make_batch(range(3)), ingested_at_ns=NOON_NS)
            store.flush()
            store.append("acme", make_batch(range(2, 6)), ingested_at_ns=NOON_NS)
            store.flush()
            assert store.count("acme", "digits") == 6
            assert store.compact("acme", "digits", DAY).files_merged == 2
            x, ids = to_numpy(store.read("acme", "digits"))
            assert x.shape == (6, 1, 8, 8)
            assert ids == [f"cam-1:{s}" for s in range(6)]
            assert store.dataset_path("acme", "digits") == f"{root}/tenant=acme/pipeline=digits"
        finally:
            memory.delete_dir(root)

    def test_a_file_uri_opens_a_local_store(self, tmp_path: Path) -> None:
        store = SampleStore(f"file://{tmp_path}")
        store.append("acme", make_batch(range(2)))
        [path] = store.flush()
        assert Path(path).is_file()
        assert store.root == str(tmp_path)


class _FailingOpen(pafs.FSSpecHandler):
    """fsspec's memory filesystem on which opening ``victim`` once fails as S3 fails the GET
    of an object deleted after its HEAD: a plain OSError, not FileNotFoundError."""

    def __init__(self, *, delete: bool) -> None:
        super().__init__(fsspec.filesystem("memory"))
        self.victim: str | None = None
        self.delete = delete

    def open_input_file(self, path: str) -> Any:
        if path == self.victim:
            self.victim = None
            if self.delete:  # as a compaction does between a reader's listing and its read
                self.fs.rm(path)
            raise OSError(f"AWS Error NO_SUCH_KEY during GetObject operation: {path}")
        return super().open_input_file(path)


class TestReadsRacingCompaction:
    @pytest.fixture
    def root(self) -> Iterator[str]:
        root = f"/continuum-test-{uuid.uuid4().hex}"
        yield root
        fsspec.filesystem("memory").rm(root, recursive=True)

    def test_a_file_deleted_while_it_is_read_is_read_again_from_a_new_listing(
        self, root: str
    ) -> None:
        handler = _FailingOpen(delete=True)
        store = SampleStore(root, filesystem=pafs.PyFileSystem(handler))
        for _ in range(2):  # the same rows twice: either file alone holds every sample
            store.append("acme", make_batch(range(3)), ingested_at_ns=NOON_NS)
            store.flush()
        kept, handler.victim = store.files("acme", "digits")
        assert store.count("acme", "digits") == 3
        assert handler.victim is None  # the read did fail once
        assert store.files("acme", "digits") == [kept]

    def test_an_error_reading_a_file_that_is_still_there_is_raised(self, root: str) -> None:
        handler = _FailingOpen(delete=False)
        store = SampleStore(root, filesystem=pafs.PyFileSystem(handler))
        store.append("acme", make_batch(range(3)), ingested_at_ns=NOON_NS)
        [handler.victim] = store.flush()
        with pytest.raises(OSError, match="NO_SUCH_KEY"):
            store.count("acme", "digits")


class TestToNumpy:
    def test_rows_of_different_shapes_are_refused(self, store: SampleStore) -> None:
        odd = SampleBatch(
            "digits",
            "cam-2",
            "v1",
            DataClass.CONFIDENTIAL,
            (SampleRecord(seq=1, captured_at_ns=1, tensor=np.zeros((2, 2), np.float32)),),
        )
        store.append("acme", make_batch(range(2)))
        store.append("acme", odd)
        store.flush()
        with pytest.raises(InputMismatchError, match=r"cam-2:1"):
            to_numpy(store.read("acme", "digits"))

    def test_an_empty_table_gives_an_empty_batch_of_the_given_shape(
        self, store: SampleStore
    ) -> None:
        x, ids = to_numpy(store.read("acme", "digits"), shape=(1, 8, 8), dtype="float32")
        assert x.shape == (0, 1, 8, 8) and x.dtype == np.float32
        assert ids == []


class TestCompactor:
    @pytest.mark.parametrize(("files", "min_files"), [(10, 8), (4, 3)])
    def test_small_files_are_merged_once_a_partition_has_enough(
        self, store: SampleStore, files: int, min_files: int
    ) -> None:
        for i in range(files):
            store.append("acme", make_batch([i]), ingested_at_ns=NOON_NS + i)
            store.flush()
        compactor = Compactor(store, [("acme", "digits")], min_files=min_files)
        assert compactor.run_once() == files
        assert len(store.files("acme", "digits", DAY)) == 1
        assert store.count("acme", "digits") == files
        assert compactor.run_once() == 0  # one file: nothing to merge

    def test_readers_racing_compactions_always_see_every_sample(
        self, store: SampleStore, store_root: str
    ) -> None:
        # On S3 a compaction can delete a file between a reader's HEAD and GET of it, which
        # fails as a plain OSError (NoSuchKey; moto's server cuts the response short instead),
        # not FileNotFoundError: the read must list again all the same.  Fewer rounds there,
        # each a dozen round trips to the server.
        rounds = 5 if on_s3(store_root) else 12
        seen: list[int] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def read() -> None:
            try:
                while not stop.is_set():
                    seen.append(store.count("acme", "digits"))
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        store.append("acme", make_batch(range(5)), ingested_at_ns=NOON_NS)
        store.flush()
        reader = threading.Thread(target=read)
        reader.start()
        try:
            for round_ in range(rounds):
                for i in range(3):
                    seq = 100 + 3 * round_ + i
                    store.append("acme", make_batch([seq]), ingested_at_ns=NOON_NS + seq)
                    store.flush()
                store.compact("acme", "digits", DAY)
        finally:
            stop.set()
            reader.join()
        assert not errors, errors
        assert seen and seen == sorted(seen) and seen[-1] <= 5 + 3 * rounds
        assert store.count("acme", "digits") == 5 + 3 * rounds

    def test_a_compaction_that_keeps_failing_is_logged_once_until_it_recovers(
        self, local_store: SampleStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="cloud_head.store")
        store = local_store
        for i in range(3):
            store.append("acme", make_batch([i]), ingested_at_ns=NOON_NS + i)
            store.flush()
        unreadable = Path(store.partition_path("acme", "digits", DAY)) / "part-9-bad.parquet"
        unreadable.write_bytes(b"not a Parquet file")
        compactor = Compactor(store, [("acme", "digits")], interval_s=0.01, min_files=2)
        compactor.start()
        try:
            wait_for(
                lambda: sum("compaction failed" in r.getMessage() for r in caplog.records) > 10
            )
            unreadable.unlink()
            wait_for(lambda: compactor.merged == 3)
        finally:
            compactor.stop()
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warned) == 2, warned
        assert warned[0].startswith("store compaction failed: ")
        assert warned[1].startswith("store compaction recovered after ")
        assert store.count("acme", "digits") == 3


class TestColumns:
    def test_columns_are_stored_as_the_same_rows_as_their_records(self, store_root: str) -> None:
        batch = make_batch(range(6), labels={1: 4, 5: 9})
        columns = decode_sample_columns(encode_samples(batch), dtype="float32", shape=(1, 8, 8))
        by_records = SampleStore(child_uri(store_root, "records"))
        by_records.append("acme", batch, ingested_at_ns=NOON_NS)
        by_records.flush()
        by_columns = SampleStore(child_uri(store_root, "columns"))
        assert by_columns.append_columns("acme", columns, ingested_at_ns=NOON_NS) == 6
        by_columns.flush()
        assert by_columns.read("acme", "digits").equals(by_records.read("acme", "digits"))

    def test_records_and_columns_appended_in_turn_keep_their_order(
        self, store: SampleStore
    ) -> None:
        def columns(seqs: range) -> SampleColumns:
            payload = encode_samples(make_batch(seqs))
            return decode_sample_columns(payload, dtype="float32", shape=(1, 8, 8))

        store.append_columns("acme", columns(range(0, 2)), ingested_at_ns=NOON_NS)
        store.append("acme", make_batch(range(2, 4)), ingested_at_ns=NOON_NS)
        store.append_columns("acme", columns(range(4, 6)), ingested_at_ns=NOON_NS)
        [path] = store.flush()
        written = pq.read_table(path, filesystem=store.filesystem)
        assert written.column("seq").to_pylist() == list(range(6))
        x, _ = to_numpy(store.read("acme", "digits"))
        np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(6, dtype=np.float32) / 100)


class TestTensorBytes:
    """The tensor column of a group is every tensor's bytes, little-endian, in order, however
    the column sets' tensors are laid out (one gather for the usual group of one schema)."""

    @staticmethod
    def one_by_one(sets: list[np.ndarray]) -> bytes:
        return b"".join(np.ascontiguousarray(t, t.dtype.newbyteorder("<")).tobytes() for t in sets)

    @pytest.mark.parametrize(
        "sets",
        [
            [np.arange(12, dtype="<f4").reshape(3, 1, 2, 2), np.ones((2, 1, 2, 2), "<f4")],
            [
                np.arange(12, dtype=">f4").reshape(3, 1, 2, 2),
                np.arange(8, dtype=">f4").reshape(2, 4),
            ],
            [np.arange(6, dtype="<f4").reshape(2, 3), np.arange(8, dtype="<f4").reshape(2, 4)],
            [np.arange(4, dtype="<f4").reshape(2, 2), np.arange(4, dtype="<i2").reshape(2, 2)],
            [np.zeros((0, 3), "<f4"), np.arange(3, dtype="<u1").reshape(1, 3)],
            [np.arange(4, dtype="<f8")],
        ],
    )
    def test_the_bytes_are_each_tensors_little_endian_bytes_in_order(
        self, sets: list[np.ndarray]
    ) -> None:
        assert gathered_bytes(sets).tobytes() == self.one_by_one(sets)

    def test_views_into_payloads_are_gathered_as_their_tensors(self) -> None:
        sets = [
            decode_sample_columns(
                encode_samples(make_batch(range(i, i + 3))), dtype="float32", shape=(1, 8, 8)
            ).tensors
            for i in (0, 3)
        ]
        assert not sets[0].flags.c_contiguous  # strided views into the payload
        assert gathered_bytes(sets).tobytes() == self.one_by_one(sets)
