"""The sample store on S3-compatible storage: no atomic rename, files written in place.

Each test takes a store under a prefix of its own on the session's ``s3_uri`` (moto's S3
server, or ``CONTINUUM_TEST_S3_URI``), opened from its URI as an operator would.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from cloud_head.store import Compactor, SampleStore, to_numpy
from continuum.spec import DataClass
from continuum.wire.codec import SampleBatch, SampleRecord
from tests.s3_server import child_uri

pytestmark = pytest.mark.integration

# 2026-11-22T12:00:00Z
NOON_NS = 1_795_348_800_000_000_000
DAY = "2026-11-22"


def make_batch(seqs: range | list[int], *, pipeline: str = "digits") -> SampleBatch:
    records = tuple(
        SampleRecord(
            seq=s,
            captured_at_ns=NOON_NS - 1_000 + s,
            tensor=np.full((1, 8, 8), s, dtype=np.float32),
            fields={"operator": f"op-{s}"},
        )
        for s in seqs
    )
    return SampleBatch(pipeline, "cam-1", "v1", DataClass.INTERNAL, records)


@pytest.fixture
def store(s3_uri: str) -> Iterator[SampleStore]:
    """A store under a fresh prefix on the session's S3, deleted afterwards."""
    opened = SampleStore(child_uri(s3_uri, uuid.uuid4().hex))
    try:
        yield opened
    finally:
        with contextlib.suppress(FileNotFoundError):  # a test that wrote nothing
            opened.filesystem.delete_dir(opened.root)


class TestRoundTrip:
    def test_the_store_round_trips_on_s3_compatible_storage(self, store: SampleStore) -> None:
        assert store.filesystem.type_name == "s3"
        store.append("acme", make_batch(range(4)), ingested_at_ns=NOON_NS)
        first = store.flush()
        store.append("acme", make_batch(range(2, 6)), ingested_at_ns=NOON_NS)
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
        np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(6, dtype=np.float32))
        assert table.column("field_operator").to_pylist() == [f"op-{s}" for s in range(6)]

    def test_a_prefix_without_data_reads_as_an_empty_table(self, store: SampleStore) -> None:
        assert store.read("acme", "digits").num_rows == 0
        assert store.dates("acme", "digits") == []


class TestCompactor:
    def test_small_files_are_merged_once_a_partition_has_enough(self, store: SampleStore) -> None:
        for i in range(4):
            store.append("acme", make_batch([i]), ingested_at_ns=NOON_NS + i)
            store.flush()
        compactor = Compactor(store, [("acme", "digits")], min_files=3)
        assert compactor.run_once() == 4
        assert len(store.files("acme", "digits", DAY)) == 1
        assert store.count("acme", "digits") == 4
        assert compactor.run_once() == 0  # one file: nothing to merge

    def test_readers_racing_compactions_always_see_every_sample(self, store: SampleStore) -> None:
        # On S3 a compaction can delete a file between a reader's HEAD and GET of it, which
        # fails as a plain OSError (NoSuchKey; moto's server cuts the response short instead),
        # not FileNotFoundError: the read must list again all the same.
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
            for round_ in range(5):
                for i in range(3):
                    seq = 100 + 3 * round_ + i
                    store.append("acme", make_batch([seq]), ingested_at_ns=NOON_NS + seq)
                    store.flush()
                store.compact("acme", "digits", DAY)
        finally:
            stop.set()
            reader.join()
        assert not errors, errors
        assert seen and seen == sorted(seen) and seen[-1] <= 5 + 15
        assert store.count("acme", "digits") == 5 + 15
