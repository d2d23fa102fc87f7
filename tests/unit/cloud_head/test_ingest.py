"""Ingest protocol logic: validation, de-duplication, durable writes and reject counting."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_head import ingest
from cloud_head.ingest import (
    FINAL_REASONS,
    TEMPORARY_REASONS,
    IngestService,
    Outcome,
    is_final,
)
from cloud_head.labelling import LabelStore
from cloud_head.store import Compactor, SampleStore
from continuum import select, wire
from continuum.errors import ConfigError
from continuum.spec import DataClass, EdgeStageSpec, PipelineSpec, TensorSchema, UplinkSpec
from continuum.wire import codec, topics
from continuum.wire import codec as codec_module

TENANT = "acme"


def make_spec(name: str = "digits", tenant: str = TENANT) -> PipelineSpec:
    return PipelineSpec(
        name=name,
        tenant=tenant,
        data_class="confidential",
        edge=EdgeStageSpec(model="inspector", input=TensorSchema(shape=(1, 8, 8))),
        uplink=UplinkSpec(policy=select.random(0.1)),
    )


def make_batch(
    seqs: range | list[int],
    *,
    node: str = "cam-1",
    pipeline: str = "digits",
    shape: tuple[int, ...] = (1, 8, 8),
    dtype: str = "float32",
    data_class: DataClass = DataClass.CONFIDENTIAL,
) -> codec.SampleBatch:
    records = tuple(
        codec.SampleRecord(
            seq=s,
            captured_at_ns=1_000 + s,
            tensor=np.full(shape, s, dtype=dtype),
            prediction=s % 10,
            confidence=0.25,
        )
        for s in seqs
    )
    return codec.SampleBatch(pipeline, node, "v1", data_class, records)


def samples_msg(batch: codec.SampleBatch, *, tenant: str = TENANT) -> tuple[str, bytes]:
    return topics.samples(tenant, batch.pipeline, batch.node), codec.encode_samples(batch)


def feedback_msg(items: tuple[tuple[int, int], ...], node: str = "cam-1") -> tuple[str, bytes]:
    batch = codec.FeedbackBatch("digits", node, items)
    return topics.feedback(TENANT, "digits", node), codec.encode_feedback(batch)


@pytest.fixture
def store(tmp_path: Path) -> SampleStore:
    return SampleStore(tmp_path / "samples")


@pytest.fixture
def labels(tmp_path: Path) -> Iterator[LabelStore]:
    with LabelStore(tmp_path / "labels.db") as store:
        yield store


@pytest.fixture
def service(tmp_path: Path, store: SampleStore, labels: LabelStore) -> Iterator[IngestService]:
    with IngestService(TENANT, [make_spec()], store, labels, tmp_path / "seen.db") as svc:
        yield svc


class TestGoodBatches:
    def test_a_valid_batch_is_stored_and_readable(
        self, service: IngestService, store: SampleStore
    ) -> None:
        outcome = service.handle(*samples_msg(make_batch(range(4))))
        assert outcome == Outcome("stored", stored=4)
        assert outcome.ack
        table = store.read(TENANT, "digits")
        assert sorted(table.column("sample_id").to_pylist()) == [f"cam-1:{s}" for s in range(4)]
        assert store.buffered_rows == 0
        assert service.stats()["stored"] == 4

    def test_many_messages_are_written_with_one_file(
        self, service: IngestService, store: SampleStore
    ) -> None:
        messages = [samples_msg(make_batch(range(i * 3, i * 3 + 3))) for i in range(5)]
        outcomes = service.handle_many(messages)
        assert [o.stored for o in outcomes] == [3] * 5
        assert len(store.files(TENANT, "digits")) == 1
        assert store.count(TENANT, "digits") == 15

    def test_a_pipeline_added_later_is_accepted(self, service: IngestService) -> None:
        # Not deployed yet (a cloud head starting up): held, with no receipt, so the node
        # keeps the sample and sends it again; stored once the pipeline is there.
        early = service.handle(*samples_msg(make_batch([1], pipeline="gauges")))
        assert (early.kind, early.reason, early.ack) == ("held", "unknown_pipeline", True)
        assert early.seq_ranges == ()
        service.add_pipeline(make_spec("gauges"))
        later = service.handle(*samples_msg(make_batch([1], pipeline="gauges")))
        assert (later.stored, later.seq_ranges) == (1, ((1, 1),))

    def test_a_pipeline_of_another_tenant_is_refused_at_configuration(
        self, service: IngestService
    ) -> None:
        with pytest.raises(ConfigError, match="tenant"):
            service.add_pipeline(make_spec(tenant="globex"))


class TestDuplicates:
    # The cases that take ``store_root`` run on a local folder and on S3-compatible storage,
    # where files are written in place and a crash's files are found by listing the bucket:
    # the paths a flush returns must be the ones that listing gives back.

    def test_a_batch_delivered_twice_is_stored_once(
        self, tmp_path: Path, labels: LabelStore, store_root: str
    ) -> None:
        store = SampleStore(store_root)
        message = samples_msg(make_batch(range(4)))
        with IngestService(TENANT, [make_spec()], store, labels, tmp_path / "seen.db") as service:
            first = service.handle(*message)
            again = service.handle(*message)
            assert first == Outcome("stored", stored=4)
            assert again == Outcome("stored", stored=0, duplicates=4)
            assert again.ack
            # Both get the receipt: the node forgets the samples whichever copy was stored.
            assert first.seq_ranges == again.seq_ranges == ((0, 3),)
            assert first.node == again.node == "cam-1"
            assert service.stats()["duplicates"] == 4
        assert len(store.files(TENANT, "digits")) == 1
        table = store.read(TENANT, "digits")
        assert table.num_rows == 4
        assert sorted(table.column("sample_id").to_pylist()) == [f"cam-1:{s}" for s in range(4)]

    def test_overlapping_batches_store_only_the_new_samples(
        self, service: IngestService, store: SampleStore
    ) -> None:
        service.handle(*samples_msg(make_batch(range(0, 4))))
        outcome = service.handle(*samples_msg(make_batch(range(2, 6))))
        assert (outcome.stored, outcome.duplicates) == (2, 2)
        assert store.count(TENANT, "digits") == 6

    def test_duplicates_within_one_group_are_stored_once(
        self, service: IngestService, store: SampleStore
    ) -> None:
        message = samples_msg(make_batch(range(3)))
        first, second = service.handle_many([message, message])
        assert (first.stored, second.duplicates) == (3, 3)
        assert store.read(TENANT, "digits").num_rows == 3

    def test_a_seen_sample_among_new_ones_in_a_group_is_the_only_one_skipped(
        self, service: IngestService, store: SampleStore
    ) -> None:
        service.handle(*samples_msg(make_batch([5])))
        outcomes = service.handle_many(
            [samples_msg(make_batch(range(0, 4))), samples_msg(make_batch(range(4, 8)))]
        )
        assert [(o.stored, o.duplicates) for o in outcomes] == [(4, 0), (3, 1)]
        assert store.count(TENANT, "digits") == 8

    def test_a_group_with_more_ids_than_sqlite_binds_is_deduplicated(
        self, tmp_path: Path, store: SampleStore, labels: LabelStore
    ) -> None:
        # SQLite binds at most 32,766 parameters per statement; the id look-up must not.
        spec = make_spec().model_copy(
            update={"edge": EdgeStageSpec(model="inspector", input=TensorSchema(shape=(1,)))}
        )
        messages = [
            samples_msg(make_batch(range(i * 12_000, (i + 1) * 12_000), shape=(1,)))
            for i in range(3)
        ]
        with IngestService(TENANT, [spec], store, labels, tmp_path / "seen.db") as service:
            assert sum(o.stored for o in service.handle_many(messages)) == 36_000
            again = service.handle_many(messages)
            assert [o.duplicates for o in again] == [12_000] * 3
            assert service.is_seen("digits", "cam-1:35999")
        assert store.count(TENANT, "digits") == 36_000

    def test_sample_ids_are_remembered_across_a_restart_without_adopting_a_file(
        self,
        tmp_path: Path,
        labels: LabelStore,
        store_root: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        store = SampleStore(store_root)
        message = samples_msg(make_batch(range(3)))
        with IngestService(TENANT, [make_spec()], store, labels, tmp_path / "seen.db") as first:
            first.handle(*message)
        with (
            caplog.at_level(logging.WARNING, logger="cloud_head.ingest"),
            IngestService(TENANT, [make_spec()], store, labels, tmp_path / "seen.db") as again,
        ):
            assert again.handle(*message) == Outcome("stored", stored=0, duplicates=3)
            assert again.is_seen("digits", "cam-1:2")
        # The file was recorded under the path the store lists it by: nothing to adopt.
        assert not [r for r in caplog.records if "adopted" in r.getMessage()]
        assert store.read(TENANT, "digits").num_rows == 3
        assert store.count(TENANT, "digits") == 3

    def test_a_file_written_before_a_crash_recorded_its_ids_is_not_stored_again(
        self, tmp_path: Path, labels: LabelStore, store_root: str
    ) -> None:
        # The crash window: the Parquet file is durable (the object uploaded), the seen-id
        # commit never happened, the message was never acknowledged, so the broker
        # redelivers it.
        store = SampleStore(store_root)
        batch = make_batch(range(4))
        store.append(TENANT, batch)
        [orphan] = store.flush()
        with IngestService(TENANT, [make_spec()], store, labels, tmp_path / "seen.db") as again:
            outcome = again.handle(*samples_msg(batch))
            assert outcome == Outcome("stored", stored=0, duplicates=4)
            assert again.is_seen("digits", "cam-1:3")
        assert store.files(TENANT, "digits") == [orphan]
        assert store.read(TENANT, "digits").num_rows == 4

    def test_a_compacted_file_of_recorded_ids_is_not_read_back_after_a_restart(
        self,
        tmp_path: Path,
        store: SampleStore,
        labels: LabelStore,
        service: IngestService,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        for start in range(0, 40, 4):
            service.handle(*samples_msg(make_batch(range(start, start + 4))))
        compactor = Compactor(store, [(TENANT, "digits")], on_compacted=service.note_compaction)
        assert compactor.run_once() == 10
        service.close()
        with IngestService(TENANT, [make_spec()], store, labels, tmp_path / "seen.db") as again:
            caplog.clear()
            assert again.handle(*samples_msg(make_batch(range(38, 42)))).duplicates == 2
        assert "adopted" not in caplog.text
        assert store.count(TENANT, "digits") == 42

    def test_a_compacted_file_holding_unrecorded_ids_is_still_adopted(
        self, tmp_path: Path, store: SampleStore, labels: LabelStore, service: IngestService
    ) -> None:
        service.handle(*samples_msg(make_batch(range(4))))
        store.append(TENANT, make_batch(range(4, 8)))  # written, never recorded (a crash)
        store.flush()
        compactor = Compactor(
            store, [(TENANT, "digits")], min_files=2, on_compacted=service.note_compaction
        )
        assert compactor.run_once() == 2
        service.close()
        with IngestService(TENANT, [make_spec()], store, labels, tmp_path / "seen.db") as again:
            outcome = again.handle(*samples_msg(make_batch(range(4, 8))))
            assert outcome == Outcome("stored", stored=0, duplicates=4)
        assert store.count(TENANT, "digits") == 8

    def test_the_same_seq_from_two_nodes_is_two_samples(
        self, service: IngestService, store: SampleStore
    ) -> None:
        service.handle(*samples_msg(make_batch([7], node="cam-1")))
        service.handle(*samples_msg(make_batch([7], node="cam-2")))
        assert store.count(TENANT, "digits") == 2


def _feedback_on_samples_topic() -> tuple[str, bytes]:
    payload = codec.encode_feedback(codec.FeedbackBatch("digits", "cam-1", ((1, 3),)))
    return topics.samples(TENANT, "digits", "cam-1"), payload


def _corrupt() -> tuple[str, bytes]:
    topic, payload = samples_msg(make_batch(range(2)))
    return topic, payload[:-1] + bytes([payload[-1] ^ 0xFF])


REJECTS: dict[str, tuple[str, bytes]] = {
    "wrong_tenant": samples_msg(make_batch([1]), tenant="globex"),
    "node_mismatch": (
        topics.samples(TENANT, "digits", "cam-2"),
        codec.encode_samples(make_batch([1], node="cam-1")),
    ),
    "pipeline_mismatch": (
        topics.samples(TENANT, "digits", "cam-1"),
        codec.encode_samples(make_batch([1], pipeline="other")),
    ),
    "schema_mismatch": samples_msg(make_batch([1], shape=(8, 8))),
    "data_class_mismatch": samples_msg(make_batch([1], data_class=DataClass.RESTRICTED)),
    "bad_magic": (topics.samples(TENANT, "digits", "cam-1"), b"not a continuum payload"),
    "truncated": (topics.samples(TENANT, "digits", "cam-1"), codec.MAGIC),
    "corrupt": _corrupt(),
    "bad_kind": _feedback_on_samples_topic(),
    "bad_topic": ("somewhere/else", codec.encode_samples(make_batch([1]))),
    "unexpected_topic": (topics.telemetry(TENANT, "digits", "cam-1"), b"{}"),
}


class TestMixedRecords:
    def test_labels_wide_predictions_and_nan_confidences_are_stored_as_sent(
        self, service: IngestService, store: SampleStore
    ) -> None:
        records = (
            codec.SampleRecord(1, 11, np.ones((1, 8, 8), np.float32), 3, 0.5, label=7),
            codec.SampleRecord(2, 12, np.ones((1, 8, 8), np.float32), 70_000, float("nan")),
            codec.SampleRecord(3, 13, np.ones((1, 8, 8), np.float32), 4, 0.75),
        )
        batch = codec.SampleBatch("digits", "cam-1", "v1", DataClass.CONFIDENTIAL, records)
        assert service.handle(*samples_msg(batch)) == Outcome("stored", stored=3)
        rows = store.read(TENANT, "digits").to_pylist()
        assert [(r["seq"], r["label"], r["prediction"]) for r in rows] == [
            (1, 7, 3),
            (2, None, 70_000),
            (3, None, 4),
        ]
        assert rows[0]["confidence"] == 0.5 and np.isnan(rows[1]["confidence"])


class TestRejects:
    @pytest.mark.parametrize("reason", sorted(REJECTS))
    def test_each_bad_message_is_rejected_counted_and_acked(
        self, service: IngestService, store: SampleStore, reason: str
    ) -> None:
        outcome = service.handle(*REJECTS[reason])
        assert outcome.kind == "rejected"
        assert outcome.reason == reason
        assert outcome.ack
        assert service.stats()["rejected"] == {reason: 1}
        assert store.count(TENANT, "digits") == 0

    def test_a_wrong_dtype_is_a_schema_mismatch(self, service: IngestService) -> None:
        outcome = service.handle(*samples_msg(make_batch([1], dtype="float64")))
        assert outcome.reason == "schema_mismatch"
        assert "float64" in outcome.detail

    def test_one_bad_message_does_not_spoil_its_group(
        self, service: IngestService, store: SampleStore
    ) -> None:
        outcomes = service.handle_many(
            [samples_msg(make_batch([1])), REJECTS["corrupt"], samples_msg(make_batch([2]))]
        )
        assert [o.kind for o in outcomes] == ["stored", "rejected", "stored"]
        assert store.count(TENANT, "digits") == 2

    def test_a_seq_beyond_the_stores_range_is_rejected_without_spoiling_its_group(
        self, service: IngestService, store: SampleStore
    ) -> None:
        record = codec.SampleRecord(
            seq=2**64 - 1, captured_at_ns=1, tensor=np.zeros((1, 8, 8), np.float32), prediction=1
        )
        huge = codec.SampleBatch("digits", "cam-1", "v1", DataClass.CONFIDENTIAL, (record,))
        outcomes = service.handle_many([samples_msg(make_batch([1])), samples_msg(huge)])
        assert [(o.kind, o.reason) for o in outcomes] == [("stored", ""), ("rejected", "bad_seq")]
        assert "2**63" in outcomes[1].detail
        assert store.count(TENANT, "digits") == 1

    def test_an_empty_batch_is_rejected(self, service: IngestService) -> None:
        empty = codec.SampleBatch("digits", "cam-1", "v1", DataClass.CONFIDENTIAL, ())
        outcome = service.handle(*samples_msg(empty))
        assert (outcome.kind, outcome.reason) == ("rejected", "empty_batch")

    def test_a_batch_refused_for_good_after_decoding_still_gets_its_receipt(
        self, service: IngestService
    ) -> None:
        # The node's outbox holds samples until a receipt: one a resend cannot fix must get
        # one too, or the node would send it again for ever.
        restricted = make_batch([7, 8, 9, 11], data_class=DataClass.RESTRICTED)
        outcome = service.handle(*samples_msg(restricted))
        assert (outcome.kind, outcome.reason) == ("rejected", "data_class_mismatch")
        assert (outcome.node, outcome.seq_ranges) == ("cam-1", ((7, 9), (11, 11)))
        assert service.stats()["refused_samples"] == {"data_class_mismatch": 4}
        assert service.stats()["held"] == {}

    def test_a_batch_that_did_not_decode_gets_no_receipt(self, service: IngestService) -> None:
        outcome = service.handle(*REJECTS["corrupt"])
        assert outcome.kind == "rejected" and outcome.seq_ranges == ()

    def test_a_less_sensitive_batch_is_accepted(self, service: IngestService) -> None:
        outcome = service.handle(*samples_msg(make_batch([1], data_class=DataClass.PUBLIC)))
        assert outcome.stored == 1


def _sources(module: ModuleType, *, private_only: bool = False) -> list[str]:
    """The source of ``module`` and, for a package, of its (private) modules."""
    texts = [] if private_only else [inspect.getsource(module)]
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if not private_only or info.name.startswith("_"):
            texts += _sources(importlib.import_module(f"{module.__name__}.{info.name}"))
    return texts


def _reasons_in_source(module: ModuleType, pattern: str) -> set[str]:
    return {reason for text in _sources(module) for reason in re.findall(pattern, text)}


class TestWhichRefusalsAreFinal:
    def test_every_reason_ingest_can_give_is_classified_once(self) -> None:
        # A reason in neither set is taken as temporary (the safe side), but each one is a
        # decision to make on purpose: a new reason must be added to one of the sets.
        assert not FINAL_REASONS & TEMPORARY_REASONS
        raised_by_wire = set()
        # The codec, the topic scheme and the wire's private modules the codec is made of.
        wire_sources = [
            *_sources(codec_module),
            *_sources(topics),
            *_sources(wire, private_only=True),
        ]
        for text in wire_sources:
            for line in re.findall(r"reason=([^\n]+)", text):
                raised_by_wire |= set(re.findall(r'"([a-z_]+)"', line))
        raised_by_ingest = _reasons_in_source(ingest, r'(?:RejectedError|refused)\(\s*"([a-z_]+)"')
        assert {"bad_magic", "truncated", "bad_topic"} <= raised_by_wire
        assert {"unknown_node", "quota", "policy_field", "schema_mismatch"} <= raised_by_ingest
        unclassified = (raised_by_wire | raised_by_ingest) - FINAL_REASONS - TEMPORARY_REASONS
        assert unclassified == set()

    @pytest.mark.parametrize(
        "reason", ["unknown_node", "unknown_pipeline", "quota", "unstorable", "internal_error"]
    )
    def test_a_refusal_that_may_pass_later_is_never_final(self, reason: str) -> None:
        assert not is_final(reason)
        with pytest.raises(ValueError, match="held"):
            Outcome("rejected", reason=reason)

    def test_a_reason_nobody_classified_is_taken_as_temporary(self) -> None:
        assert not is_final("a_reason_from_the_future")


class TestGarbage:
    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        topic=st.one_of(
            st.text(max_size=80),
            st.sampled_from(
                [topics.samples(TENANT, "digits", "cam-1"), topics.feedback(TENANT, "digits", "x")]
            ),
        ),
        payload=st.binary(max_size=512),
    )
    def test_garbage_never_raises_and_is_refused_under_a_classified_reason(
        self, service: IngestService, topic: str, payload: bytes
    ) -> None:
        outcome = service.handle(topic, payload)
        assert outcome.kind in ("rejected", "held")
        assert outcome.reason in FINAL_REASONS | TEMPORARY_REASONS
        assert outcome.seq_ranges == ()  # nothing trustworthy names whose samples these are


class TestFeedback:
    def test_feedback_is_recorded_as_labels(
        self, service: IngestService, labels: LabelStore
    ) -> None:
        batch = codec.FeedbackBatch("digits", "cam-1", ((1, 3), (2, 5)))
        outcome = service.handle(
            topics.feedback(TENANT, "digits", "cam-1"), codec.encode_feedback(batch)
        )
        assert outcome == Outcome("labelled", labels=2)
        assert labels.labels(TENANT, "digits")["cam-1:2"].label == 5
        assert service.stats()["labels"] == 2

    def test_feedback_from_another_node_is_rejected(
        self, service: IngestService, labels: LabelStore
    ) -> None:
        batch = codec.FeedbackBatch("digits", "cam-1", ((1, 3),))
        topic = topics.feedback(TENANT, "digits", "cam-9")
        outcome = service.handle(topic, codec.encode_feedback(batch))
        assert outcome.reason == "node_mismatch"
        assert labels.count(TENANT, "digits") == 0
        assert outcome.label_ranges == ()  # nor a receipt to the node it claims to be

    def test_recorded_labels_get_a_receipt_for_their_seqs(self, service: IngestService) -> None:
        # The node's outbox holds each delayed label until a receipt names its seq.
        outcome = service.handle(*feedback_msg(((7, 1), (8, 2), (11, 3), (9, 4))))
        assert outcome.kind == "labelled"
        assert (outcome.node, outcome.label_ranges) == ("cam-1", ((7, 9), (11, 11)))
        assert outcome.seq_ranges == ()  # a label receipt says nothing of the samples

    def test_labels_recorded_twice_are_confirmed_twice(
        self, service: IngestService, labels: LabelStore
    ) -> None:
        # A resend (its receipt was lost, or came after resend_unconfirmed_s) is recorded
        # again in place and confirmed again.
        message = feedback_msg(((1, 3), (2, 5)))
        first, again = service.handle(*message), service.handle(*message)
        assert first == again == Outcome("labelled", labels=2)
        assert first.label_ranges == again.label_ranges == ((1, 2),)
        assert labels.count(TENANT, "digits") == 2

    def test_labels_whose_write_failed_get_no_receipt(
        self, service: IngestService, labels: LabelStore
    ) -> None:
        labels.close()  # the label store is gone: the write fails and is retried
        outcome = service.handle(*feedback_msg(((1, 3),)))
        assert outcome.kind == "failed" and not outcome.ack
        assert outcome.label_ranges == ()

    def test_a_sample_batch_gets_no_label_receipt(self, service: IngestService) -> None:
        outcome = service.handle(*samples_msg(make_batch(range(3))))
        assert (outcome.seq_ranges, outcome.label_ranges) == (((0, 2),), ())


class _StoreThatCannotTakeOneNode(SampleStore):
    """A real store that fails on the data of node "poison", as on an unforeseen value."""

    def append_columns(self, tenant: str, columns: codec.SampleColumns, **kw: Any) -> int:
        if columns.node == "poison":
            raise ValueError("a value the store cannot write")
        return super().append_columns(tenant, columns, **kw)


class TestFailedWrites:
    def test_a_batch_the_store_cannot_take_is_held_alone_without_a_receipt(
        self, tmp_path: Path, labels: LabelStore
    ) -> None:
        store = _StoreThatCannotTakeOneNode(tmp_path / "samples")
        with IngestService(TENANT, [make_spec()], store, labels, tmp_path / "s.db") as service:
            outcomes = service.handle_many(
                [
                    samples_msg(make_batch([1, 2])),
                    samples_msg(make_batch([7], node="poison")),
                    samples_msg(make_batch([3])),
                ]
            )
            assert [(o.kind, o.reason) for o in outcomes] == [
                ("stored", ""),
                ("held", "unstorable"),
                ("stored", ""),
            ]
            assert all(o.ack for o in outcomes)
            # The poisoned node keeps its sample (a fixed store may take it): no receipt.
            assert [o.seq_ranges for o in outcomes] == [((1, 2),), (), ((3, 3),)]
            assert store.count(TENANT, "digits") == 3
            assert service.stats()["rejected"] == {"unstorable": 1}
            assert service.stats()["held"] == {"unstorable": 1}
            # Stored once: the good messages' redelivery is recognised.
            again = service.handle(*samples_msg(make_batch([1, 2])))
            assert again == Outcome("stored", stored=0, duplicates=2)

    def test_a_failed_store_write_is_not_acked_and_succeeds_on_retry(
        self, tmp_path: Path, labels: LabelStore
    ) -> None:
        blocked = tmp_path / "blocked"
        blocked.write_bytes(b"a file where the store wants a directory")
        store = SampleStore(blocked / "samples")
        with IngestService(TENANT, [make_spec()], store, labels, tmp_path / "s.db") as service:
            message = samples_msg(make_batch(range(3)))
            failed = service.handle(*message)
            assert failed.kind == "failed"
            assert not failed.ack
            assert not service.is_seen("digits", "cam-1:0")
            assert store.buffered_rows == 0
            blocked.unlink()
            retried = service.handle(*message)
            assert retried == Outcome("stored", stored=3)
            assert store.count(TENANT, "digits") == 3
            assert service.stats()["failed"] == 1
