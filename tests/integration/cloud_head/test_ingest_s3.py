"""Ingest into a sample store on S3-compatible storage: stored once, crashes recovered.

On an object store files are written in place (no rename), and the seen-id index finds the
files a crash left unrecorded by listing the bucket: the paths a flush returns must be the
ones that listing gives back.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_head.ingest import IngestService, Outcome
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum import select
from continuum.spec import DataClass, EdgeStageSpec, PipelineSpec, TensorSchema, UplinkSpec
from continuum.wire import codec, topics
from tests.s3_server import child_uri

pytestmark = pytest.mark.integration

TENANT = "acme"


def make_spec() -> PipelineSpec:
    return PipelineSpec(
        name="digits",
        tenant=TENANT,
        data_class="confidential",
        edge=EdgeStageSpec(model="inspector", input=TensorSchema(shape=(1, 8, 8))),
        uplink=UplinkSpec(policy=select.random(0.1)),
    )


def make_batch(seqs: range) -> codec.SampleBatch:
    records = tuple(
        codec.SampleRecord(seq=s, captured_at_ns=1_000 + s, tensor=np.full((1, 8, 8), s, "f4"))
        for s in seqs
    )
    return codec.SampleBatch("digits", "cam-1", "v1", DataClass.CONFIDENTIAL, records)


def samples_msg(batch: codec.SampleBatch) -> tuple[str, bytes]:
    return topics.samples(TENANT, batch.pipeline, batch.node), codec.encode_samples(batch)


@pytest.fixture
def store(s3_uri: str) -> Iterator[SampleStore]:
    """A store under a fresh prefix on the session's S3, deleted afterwards."""
    opened = SampleStore(child_uri(s3_uri, uuid.uuid4().hex))
    try:
        yield opened
    finally:
        with contextlib.suppress(FileNotFoundError):  # a test that wrote nothing
            opened.filesystem.delete_dir(opened.root)


@pytest.fixture
def labels(tmp_path: Path) -> Iterator[LabelStore]:
    with LabelStore(tmp_path / "labels.db") as label_store:
        yield label_store


def open_service(tmp_path: Path, store: SampleStore, labels: LabelStore) -> IngestService:
    return IngestService(TENANT, [make_spec()], store, labels, tmp_path / "seen.db")


class TestIngestOnObjectStorage:
    def test_a_batch_is_stored_and_its_redelivery_is_a_duplicate(
        self, tmp_path: Path, store: SampleStore, labels: LabelStore
    ) -> None:
        message = samples_msg(make_batch(range(4)))
        with open_service(tmp_path, store, labels) as service:
            assert service.handle(*message) == Outcome("stored", stored=4)
            assert service.handle(*message) == Outcome("stored", stored=0, duplicates=4)
        assert len(store.files(TENANT, "digits")) == 1
        ids = store.read(TENANT, "digits").column("sample_id").to_pylist()
        assert sorted(ids) == [f"cam-1:{s}" for s in range(4)]

    def test_sample_ids_are_remembered_across_a_restart_without_adopting_a_file(
        self,
        tmp_path: Path,
        store: SampleStore,
        labels: LabelStore,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        message = samples_msg(make_batch(range(3)))
        with open_service(tmp_path, store, labels) as service:
            service.handle(*message)
        with (
            caplog.at_level(logging.WARNING, logger="cloud_head.ingest"),
            open_service(tmp_path, store, labels) as again,
        ):
            assert again.handle(*message) == Outcome("stored", stored=0, duplicates=3)
        # The file was recorded under the path the bucket lists it by: nothing to adopt.
        assert not [r for r in caplog.records if "adopted" in r.getMessage()]
        assert store.count(TENANT, "digits") == 3

    def test_a_file_written_before_a_crash_recorded_its_ids_is_not_stored_again(
        self, tmp_path: Path, store: SampleStore, labels: LabelStore
    ) -> None:
        # The crash window: the object is uploaded, the seen-id commit never happened, the
        # message was never acknowledged, so the broker redelivers it.
        batch = make_batch(range(4))
        store.append(TENANT, batch)
        [orphan] = store.flush()
        with open_service(tmp_path, store, labels) as again:
            assert again.handle(*samples_msg(batch)) == Outcome("stored", stored=0, duplicates=4)
            assert again.is_seen("digits", "cam-1:3")
        assert store.files(TENANT, "digits") == [orphan]
        assert store.read(TENANT, "digits").num_rows == 4
