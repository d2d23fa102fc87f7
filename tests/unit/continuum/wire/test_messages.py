"""The JSON control messages: strict round trips and clear rejections naming the bad field."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest

from continuum.errors import ProtocolError
from continuum.wire.messages import (
    DESIRED_SCHEMA_VERSION,
    MAX_CHUNK_BYTES,
    MAX_CHUNKS,
    MAX_MESSAGE_BYTES,
    ArtifactManifest,
    DesiredModel,
    DesiredState,
    NodeStatus,
    RefusedSeqs,
    ReportedModel,
    ReportedState,
    StoredReceipt,
    Telemetry,
    _WireModel,
    chunk_layout,
    merge_seq_ranges,
    version_order,
)

SHA = "ab" * 32
SIG = "cd" * 64


def artifact(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model": "inspector",
        "version": "v12",
        "sha256": SHA,
        "signature": SIG,
        "size_bytes": 1_000_000,
        "chunk_size": 262_144,
        "chunks": 4,
    }
    return fields | changes


def telemetry(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "node": "cam-lux1-a",
        "pipeline": "line-7-inspection",
        "model_version": "v12",
        "window_s": 10.0,
        "frames": 300,
        "uplinked": 12,
        "dropped": 0,
        "latency_p50_ms": 0.8,
        "latency_p95_ms": 2.5,
        "mean_confidence": 0.91,
        "drift_score": 0.05,
        "drifted": False,
        "labelled": 40,
        "correct": 37,
        "ts": 1_763_800_000.25,
    }
    return fields | changes


EXAMPLES: list[_WireModel] = [
    NodeStatus(
        node="cam-lux1-a",
        tenant="acme",
        online=True,
        labels={"continuum.io/tier": "edge", "continuum.io/site": "lux-1"},
        backends=["onnxruntime"],
        gpu=None,
        tensorrt_version=None,
        agent_version="0.1.0",
        pipelines=["line-7-inspection"],
        ts=1_763_800_000.5,
    ),
    DesiredModel(**artifact()),
    ArtifactManifest(**artifact()),
    DesiredState(
        tenant="acme",
        node="cam-lux1-a",
        pipelines={"line-7-inspection": DesiredModel(**artifact(), rollback=True)},
        issued_at=1_763_800_000.0,
        expires_at=1_763_886_400.0,
        generation=3,
        signature="cd" * 64,
    ),
    ReportedModel(model="inspector", version="v12", sha256=SHA, state="serving"),
    ReportedState(
        node="cam-lux1-a",
        pipelines={
            "line-7-inspection": ReportedModel(
                model="inspector", version="v13", sha256=SHA, state="rejected", error="bad sig"
            )
        },
        ts=1_763_800_001.0,
    ),
    Telemetry(**telemetry()),
    Telemetry(
        **telemetry(
            frames=0,
            latency_p50_ms=None,
            latency_p95_ms=None,
            mean_confidence=None,
            labelled=0,
            correct=0,
        )
    ),
]


def schema_error(cls: type[_WireModel], document: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        cls.from_payload(json.dumps(document).encode())
    assert info.value.reason == "schema"
    return info.value


class TestRoundTrip:
    @pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
    def test_from_payload_returns_an_equal_message(self, message: _WireModel) -> None:
        assert type(message).from_payload(message.to_payload()) == message

    def test_payload_is_utf8_json_carrying_the_schema_version(self) -> None:
        document = json.loads(Telemetry(**telemetry()).to_payload().decode("utf-8"))
        assert document["schema_version"] == 1
        assert document["frames"] == 300

    def test_messages_are_frozen(self) -> None:
        status = EXAMPLES[0]
        with pytest.raises(pydantic.ValidationError):
            status.online = False  # type: ignore[attr-defined]

    def test_accuracy_is_correct_over_labelled_or_none(self) -> None:
        assert Telemetry(**telemetry()).accuracy == pytest.approx(37 / 40)
        assert Telemetry(**telemetry(labelled=0, correct=0)).accuracy is None


class TestMalformedPayloads:
    @pytest.mark.parametrize(
        "payload", [b"not json", b"", b'{"node": "cam"', b"\xff\xfe{}", b"{'node': 1}"]
    )
    def test_bytes_that_are_not_json_are_invalid_json(self, payload: bytes) -> None:
        with pytest.raises(ProtocolError, match="not valid JSON") as info:
            NodeStatus.from_payload(payload)
        assert info.value.reason == "invalid_json"

    def test_a_json_array_is_a_schema_error(self) -> None:
        assert "Telemetry" in str(schema_error(Telemetry, [1, 2, 3]))

    def test_a_number_sent_as_a_string_names_the_field(self) -> None:
        error = schema_error(Telemetry, telemetry(frames="300"))
        assert "frames" in str(error)

    def test_a_boolean_sent_as_a_string_names_the_field(self) -> None:
        document = json.loads(EXAMPLES[0].to_payload())
        error = schema_error(NodeStatus, document | {"online": "yes"})
        assert "online" in str(error)

    def test_missing_fields_are_all_named(self) -> None:
        document = telemetry()
        del document["pipeline"], document["ts"]
        error = schema_error(Telemetry, document)
        assert "pipeline: Field required" in str(error)
        assert "ts: Field required" in str(error)

    def test_an_unknown_field_is_named(self) -> None:
        error = schema_error(Telemetry, telemetry(accuracy=0.9))
        assert "accuracy" in str(error)

    @pytest.mark.parametrize("node", ["cam/+", "#", "Cam-1", ""])
    def test_a_name_that_cannot_be_a_topic_level_is_rejected(self, node: str) -> None:
        error = schema_error(Telemetry, telemetry(node=node))
        assert "node: Value error, invalid node name" in str(error)

    def test_a_bad_name_as_a_dict_key_is_rejected(self) -> None:
        document = json.loads(EXAMPLES[3].to_payload())
        document["pipelines"] = {"line/7": document["pipelines"]["line-7-inspection"]}
        error = schema_error(DesiredState, document)
        assert "pipelines.line/7" in str(error)

    def test_a_nested_bad_digest_is_named_by_its_path(self) -> None:
        document = json.loads(EXAMPLES[3].to_payload())
        document["pipelines"]["line-7-inspection"]["sha256"] = "XYZ"
        error = schema_error(DesiredState, document)
        assert "pipelines.line-7-inspection.sha256" in str(error)

    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            ({"frames": -1}, "frames"),
            ({"window_s": 0}, "window_s"),
            ({"mean_confidence": 1.5}, "mean_confidence"),
            ({"latency_p50_ms": 9.0, "latency_p95_ms": 2.0}, "latency_p50_ms"),
            ({"correct": 41}, "correct"),
            ({"frames": 2**63}, "frames"),
            ({"schema_version": 2}, "schema_version"),
        ],
    )
    def test_out_of_bounds_numbers_are_rejected_naming_the_field(
        self, changes: dict[str, Any], field: str
    ) -> None:
        assert field in str(schema_error(Telemetry, telemetry(**changes)))

    def test_chunks_must_cover_the_artifact_size(self) -> None:
        error = schema_error(ArtifactManifest, artifact(chunks=5))
        assert "chunks is 5" in str(error)

    def test_a_million_one_byte_chunks_are_refused(self) -> None:
        # Schema-valid but for the bound: an agent would subscribe to a topic per chunk.
        error = schema_error(
            DesiredModel, artifact(size_bytes=1_000_000, chunk_size=1, chunks=1_000_000)
        )
        assert "chunks" in str(error)

    @pytest.mark.parametrize("size", [1, 65_536, 1_000_000, 4 * 1024**3, 16 * 1024**3])
    def test_the_chunk_layout_keeps_the_asked_size_up_to_the_chunk_bound(self, size: int) -> None:
        chunk_size, chunks = chunk_layout(size, 64 * 1024)
        assert chunks <= MAX_CHUNKS and chunk_size <= MAX_CHUNK_BYTES
        assert chunk_size == 64 * 1024 if size <= 4 * 1024**3 else chunk_size > 64 * 1024
        DesiredModel(**artifact(size_bytes=size, chunk_size=chunk_size, chunks=chunks))

    def test_an_unknown_reported_state_is_rejected(self) -> None:
        document = {"model": "m", "version": "v1", "sha256": SHA, "state": "exploded"}
        assert "state" in str(schema_error(ReportedModel, document))

    @pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"1e999"])
    def test_non_finite_numbers_are_rejected(self, number: bytes) -> None:
        payload = Telemetry(**telemetry()).to_payload()
        payload = payload.replace(b'"drift_score":0.05', b'"drift_score":' + number)
        with pytest.raises(ProtocolError, match="drift_score: Input should be a finite number"):
            Telemetry.from_payload(payload)

    def test_a_huge_payload_is_rejected_before_parsing(self) -> None:
        payload = b'{"node": "' + b"a" * MAX_MESSAGE_BYTES + b'"}'
        with pytest.raises(ProtocolError, match="MAX_MESSAGE_BYTES") as info:
            NodeStatus.from_payload(payload)
        assert info.value.reason == "too_large"

    def test_long_lists_of_errors_are_summarised(self) -> None:
        error = schema_error(Telemetry, {})
        assert "more)" in str(error)


class TestStoredReceipt:
    def test_a_receipt_round_trips(self) -> None:
        receipt = StoredReceipt(node="cam-1", seqs=[(5, 9), (12, 12)], ts=1.0)
        assert StoredReceipt.from_payload(receipt.to_payload()) == receipt

    @pytest.mark.parametrize(
        ("seqs", "names"),
        [
            ([(9, 5)], "ends before it starts"),
            ([(-1, 5)], "seqs"),
            ([(0, 2**63)], "seqs"),
            ([], "seqs"),
            ([(1, 2)] * 4097, "seqs"),
            ([[1, 2, 3]], "seqs"),
            ([["1", 2]], "seqs"),
        ],
    )
    def test_a_bad_range_is_named(self, seqs: Any, names: str) -> None:
        payload = json.dumps({"node": "cam-1", "seqs": seqs, "ts": 1.0}).encode()
        with pytest.raises(ProtocolError, match=names) as refused:
            StoredReceipt.from_payload(payload)
        assert refused.value.reason == "schema"

    def test_a_receipt_of_labels_alone_round_trips(self) -> None:
        receipt = StoredReceipt(node="cam-1", labels=[(5, 9)], ts=1.0)
        assert receipt.seqs == []
        assert StoredReceipt.from_payload(receipt.to_payload()) == receipt
        both = StoredReceipt(node="cam-1", seqs=[(1, 2)], labels=[(5, 9)], ts=1.0)
        assert StoredReceipt.from_payload(both.to_payload()) == both

    def test_a_receipt_of_samples_alone_reads_as_before_label_receipts(self) -> None:
        # Agents of the release before label receipts refuse unknown fields: a receipt of
        # samples must not name labels, even empty ones.
        payload = StoredReceipt(node="cam-1", seqs=[(5, 9)], ts=1.0).to_payload()
        assert json.loads(payload) == {
            "schema_version": 1,
            "node": "cam-1",
            "seqs": [[5, 9]],
            "ts": 1.0,
        }

    @pytest.mark.parametrize(
        "ranges",
        [{}, {"seqs": []}, {"labels": []}, {"seqs": [], "labels": []}, {"refused": []}],
    )
    def test_a_receipt_that_confirms_nothing_is_refused(self, ranges: dict[str, Any]) -> None:
        payload = json.dumps({"node": "cam-1", "ts": 1.0, **ranges}).encode()
        with pytest.raises(ProtocolError, match="seqs, labels and refused are all empty") as no:
            StoredReceipt.from_payload(payload)
        assert no.value.reason == "schema"

    def test_a_receipt_of_refusals_round_trips_and_names_nothing_else(self) -> None:
        receipt = StoredReceipt(
            node="cam-1",
            refused=[
                RefusedSeqs(reason="policy_field", seqs=[(5, 9)]),
                RefusedSeqs(reason="schema_mismatch", seqs=[(12, 12), (14, 20)]),
            ],
            ts=1.0,
        )
        assert StoredReceipt.from_payload(receipt.to_payload()) == receipt
        assert receipt.seqs == [] and receipt.labels == []
        assert set(json.loads(receipt.to_payload())) == {"schema_version", "node", "refused", "ts"}

    def test_a_receipt_of_samples_alone_still_names_no_refusals(self) -> None:
        # Agents from before refusal receipts refuse unknown fields, even an empty one.
        payload = StoredReceipt(node="cam-1", seqs=[(5, 9)], ts=1.0).to_payload()
        assert "refused" not in json.loads(payload)

    @pytest.mark.parametrize(
        ("refused", "names"),
        [
            ([{"reason": "policy", "seqs": [(9, 5)]}], r"refused.0.seqs range \[9, 5\]"),
            ([{"reason": "policy", "seqs": []}], "refused.0.seqs"),
            ([{"reason": "Policy!", "seqs": [(1, 2)]}], "refused.0.reason"),
            ([{"reason": "x" * 65, "seqs": [(1, 2)]}], "refused.0.reason"),
            ([{"seqs": [(1, 2)]}], "refused.0.reason"),
            ([{"reason": "policy", "seqs": [(1, 2)], "more": 1}], "refused.0.more"),
            ([{"reason": "a", "seqs": [(1, 2)] * 3000}] * 2, "MAX_RECEIPT_RANGES"),
            ([{"reason": "a", "seqs": [(1, 2)]}] * 65, "refused"),
        ],
    )
    def test_a_bad_refusal_is_named(self, refused: Any, names: str) -> None:
        payload = json.dumps({"node": "cam-1", "refused": refused, "ts": 1.0}).encode()
        with pytest.raises(ProtocolError, match=names) as bad:
            StoredReceipt.from_payload(payload)
        assert bad.value.reason == "schema"

    @pytest.mark.parametrize(
        ("labels", "names"),
        [
            ([(9, 5)], r"labels range \[9, 5\] ends before it starts"),
            ([(-1, 5)], "labels"),
            ([(0, 2**63)], "labels"),
            ([(1, 2)] * 4097, "labels"),
            ([[1, 2, 3]], "labels"),
            ([["1", 2]], "labels"),
            ("1-2", "labels"),
        ],
    )
    def test_a_bad_label_range_is_named(self, labels: Any, names: str) -> None:
        payload = json.dumps({"node": "cam-1", "seqs": [(1, 2)], "labels": labels, "ts": 1.0})
        with pytest.raises(ProtocolError, match=names) as refused:
            StoredReceipt.from_payload(payload.encode())
        assert refused.value.reason == "schema"

    def test_ranges_are_merged_where_they_touch_or_overlap(self) -> None:
        assert merge_seq_ranges([(10, 12), (1, 3), (4, 4), (11, 20), (30, 30)]) == [
            (1, 4),
            (10, 20),
            (30, 30),
        ]


class TestDriftReadings:
    READINGS = [
        {"signal": "outputs", "kind": "psi", "score": 0.08, "drifted": False, "ready": True},
        {
            "signal": "inputs",
            "kind": "inputs",
            "score": 0.61,
            "drifted": True,
            "ready": True,
            "feature": "edge_energy[0]",
        },
        {"signal": "labels", "kind": "labels", "score": 0.0, "drifted": False, "ready": False},
    ]

    def test_readings_round_trip_with_the_telemetry(self) -> None:
        message = Telemetry(**telemetry(drift=self.READINGS, drift_score=0.61, drifted=True))
        restored = Telemetry.from_payload(message.to_payload())
        assert restored == message
        assert [(r.signal, r.drifted, r.feature) for r in restored.drift] == [
            ("outputs", False, None),
            ("inputs", True, "edge_energy[0]"),
            ("labels", False, None),
        ]

    def test_a_payload_written_before_readings_parses_with_none(self) -> None:
        payload = json.dumps({"schema_version": 1, **telemetry()}).encode()
        assert Telemetry.from_payload(payload).drift == []

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"signal": "weather"}, "signal"),
            ({"kind": "mmd"}, "kind"),
            ({"score": -0.1}, "score"),
        ],
    )
    def test_a_bad_reading_is_refused_naming_its_field(
        self, change: dict[str, Any], field: str
    ) -> None:
        reading = self.READINGS[0] | change
        payload = json.dumps({"schema_version": 1, **telemetry(drift=[reading])}).encode()
        with pytest.raises(ProtocolError, match=rf"drift\.0\.{field}"):
            Telemetry.from_payload(payload)


class TestDesiredState:
    """The desired state has its own schema (2: signed, expiring) and orders versions."""

    def document(self, **changes: Any) -> dict[str, Any]:
        desired = json.loads(EXAMPLES[3].to_payload())
        assert desired["schema_version"] == DESIRED_SCHEMA_VERSION == 2
        return {**desired, **changes}

    def test_an_unsigned_document_parses_so_the_agent_can_refuse_it_as_unsigned(self) -> None:
        document = self.document()
        del document["signature"]
        assert DesiredState.from_payload(json.dumps(document).encode()).signature is None

    @pytest.mark.parametrize("schema_version", [1, 3])
    def test_an_older_unsigned_or_a_newer_schema_is_refused(self, schema_version: int) -> None:
        error = schema_error(DesiredState, self.document(schema_version=schema_version))
        assert "schema_version" in str(error)

    def test_a_schema_1_document_is_refused_naming_what_it_lacks(self) -> None:
        old = {
            "schema_version": 1,
            "node": "cam-1",
            "pipelines": {},
            "issued_at": 1.0,
            "generation": 1,
        }
        error = str(schema_error(DesiredState, old))
        assert "tenant" in error and "expires_at" in error

    def test_it_must_expire_after_it_was_issued(self) -> None:
        error = schema_error(DesiredState, self.document(expires_at=1_763_800_000.0))
        assert "expires_at" in str(error) and "must come after issued_at" in str(error)

    def test_the_rollback_mark_defaults_to_false_and_is_strict(self) -> None:
        assert DesiredModel(**artifact()).rollback is False
        document = self.document()
        document["pipelines"]["line-7-inspection"]["rollback"] = "yes"
        assert "rollback" in str(schema_error(DesiredState, document))

    def test_versions_order_naturally(self) -> None:
        names = ["v10", "v2", "v1", "v9", "v2-hotfix", "v100"]
        assert sorted(names, key=version_order) == ["v1", "v2", "v2-hotfix", "v9", "v10", "v100"]
        assert version_order("v12") < version_order("v13")
        assert version_order("rc") > version_order("1")  # text after numbers: still an order
