"""The sample store's layout is what Ray Data reads: one pipeline's directory, hive partitions,
on a local disk and on S3-compatible storage."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import ray

from cloud_head.store import SampleStore
from continuum.embedded import LocalRayCluster
from continuum.spec import DataClass
from continuum.wire.codec import SampleBatch, SampleRecord
from tests.s3_server import child_uri

pytestmark = pytest.mark.integration


def make_batch(seqs: range, pipeline: str = "digits") -> SampleBatch:
    records = tuple(
        SampleRecord(seq=s, captured_at_ns=s, tensor=np.full((1, 8, 8), s, dtype=np.float32))
        for s in seqs
    )
    return SampleBatch(pipeline, "cam-1", "v1", DataClass.INTERNAL, records)


class TestRayDataReadsTheStore:
    def test_ray_data_reads_one_pipeline_with_its_partition_columns(
        self, ray_cluster: LocalRayCluster, tmp_path: Path
    ) -> None:
        store = SampleStore(tmp_path / "samples")
        store.append("acme", make_batch(range(0, 6)))
        store.flush()
        store.append("acme", make_batch(range(6, 10)))
        store.append("acme", make_batch(range(3), pipeline="other"))
        store.flush()

        dataset = ray.data.read_parquet(
            store.dataset_path("acme", "digits"), filesystem=store.filesystem
        )
        rows = dataset.take_all()

        assert sorted(r["seq"] for r in rows) == list(range(10))
        assert {r["tenant"] for r in rows} == {"acme"}
        assert {r["pipeline"] for r in rows} == {"digits"}
        assert {r["date"] for r in rows} == set(store.dates("acme", "digits"))
        row = next(r for r in rows if r["seq"] == 7)
        tensor = np.frombuffer(row["tensor"], dtype=row["dtype"]).reshape(row["shape"])
        np.testing.assert_array_equal(tensor, np.full((1, 8, 8), 7, dtype=np.float32))


class TestRayDataReadsTheStoreOnObjectStorage:
    def test_ray_data_reads_one_pipeline_from_s3_compatible_storage(
        self, ray_cluster: LocalRayCluster, s3_uri: str
    ) -> None:
        # The filesystem pickles with its endpoint and credentials, so the workers that
        # read reach the same storage with nothing set in their environment.
        store = SampleStore(child_uri(s3_uri, uuid.uuid4().hex))
        try:
            store.append("acme", make_batch(range(0, 4)))
            store.flush()
            store.append("acme", make_batch(range(4, 7)))
            store.flush()

            dataset = ray.data.read_parquet(
                store.dataset_path("acme", "digits"), filesystem=store.filesystem
            )
            rows = dataset.take_all()

            assert sorted(r["seq"] for r in rows) == list(range(7))
            assert {r["date"] for r in rows} == set(store.dates("acme", "digits"))
        finally:
            store.filesystem.delete_dir(store.root)
