"""Ingest enforces the residency policy again: node labels, batch class, fields, quota, audit."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cloud_head.audit import AuditAction, AuditLog
from cloud_head.fleet import FleetRegistry
from cloud_head.ingest import MAX_AUDIT_RANGES, IngestService
from cloud_head.ingest._residency import ResidencyCheck
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from cloud_head.tenants import Quotas
from continuum import select
from continuum.errors import ConfigError
from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER
from continuum.residency import ResidencyPolicy, hash_field
from continuum.spec import DataClass, EdgeStageSpec, PipelineSpec, TensorSchema, UplinkSpec
from continuum.wire import codec, topics
from continuum.wire.messages import SCHEMA_VERSION, NodeStatus
from tests.fleet_kit import Clock

TENANT = "bank"
SALT = b"s" * 32
POLICY = ResidencyPolicy.from_yaml(
    """
classes:
  public: {}
  internal: {country: [LU, DE]}
  confidential: {jurisdiction: [LU], field_action: hash}
  restricted: {same_site: true, field_action: drop}
"""
)
LUX = {TIER: "edge", SITE: "lux-1", COUNTRY: "LU", JURISDICTION: "LU"}
US = {TIER: "edge", SITE: "iad-1", COUNTRY: "US", JURISDICTION: "US"}
STORE_DE = {TIER: "cloud", SITE: "fra-dc", COUNTRY: "DE", JURISDICTION: "DE"}


def make_spec(data_class: str = "internal") -> PipelineSpec:
    return PipelineSpec(
        name="payments",
        tenant=TENANT,
        data_class=data_class,
        edge=EdgeStageSpec(
            model="scorer",
            input=TensorSchema(
                shape=(4,), fields={"iban": "restricted", "operator": "confidential"}
            ),
        ),
        uplink=UplinkSpec(policy=select.random(0.1)),
    )


def message(node: str, seqs: range, **fields: str | bytes) -> tuple[str, bytes]:
    records = tuple(
        codec.SampleRecord(
            seq=s, captured_at_ns=s, tensor=np.full(4, s, np.float32), fields=dict(fields)
        )
        for s in seqs
    )
    batch = codec.SampleBatch("payments", node, "v1", DataClass.INTERNAL, records)
    return topics.samples(TENANT, "payments", node), codec.encode_samples(batch)


def announce(fleet: FleetRegistry, node: str, labels: dict[str, str]) -> None:
    status = NodeStatus(
        schema_version=SCHEMA_VERSION,
        node=node,
        tenant=TENANT,
        online=True,
        labels=labels,
        backends=["onnxruntime"],
        agent_version="test",
        pipelines=["payments"],
        ts=time.time(),
    )
    assert fleet.handle(topics.node_status(TENANT, node), status.to_payload()).kind == "status"


class Rig:
    def __init__(
        self,
        tmp_path: Path,
        *,
        quotas: Quotas | None = None,
        node_grace_s: float = 0.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.tmp = tmp_path
        self.store = SampleStore(tmp_path / "store")
        self.labels = LabelStore(tmp_path / "labels.db")
        self.fleet = FleetRegistry(TENANT, tmp_path / "fleet.db")
        self.audit_dir = tmp_path / "audit"
        self.service = IngestService(
            TENANT,
            [make_spec()],
            self.store,
            self.labels,
            tmp_path / "seen.db",
            policy=POLICY,
            store_labels=STORE_DE,
            fleet=self.fleet,
            audit_dir=self.audit_dir,
            audit_interval_s=0.0,
            quotas=quotas,
            node_grace_s=node_grace_s,
            clock_ns=clock_ns,
        )
        announce(self.fleet, "cam-lux", LUX)
        announce(self.fleet, "cam-us", US)

    def audit(self, action: AuditAction) -> list[dict[str, object]]:
        with AuditLog(self.audit_dir) as log:
            return [r.details for r in log.records(TENANT, action=action)]

    def close(self) -> None:
        self.service.close()
        self.fleet.close()
        self.labels.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.close()


HASHED = hash_field("operator", "Ada", salt=SALT)


class TestBatchesThePolicyAllows:
    def test_a_batch_as_the_edge_plan_leaves_it_is_stored_with_its_fields(self, rig: Rig) -> None:
        outcome = rig.service.handle(*message("cam-lux", range(3), operator=HASHED))
        assert (outcome.kind, outcome.stored) == ("stored", 3)
        table = rig.store.read(TENANT, "payments")
        assert table.column("field_operator").to_pylist() == [HASHED] * 3
        records = rig.audit(AuditAction.UPLINK_BATCH)
        assert records == [
            {
                "pipeline": "payments",
                "nodes": {"cam-lux": {"first_seq": 0, "last_seq": 2, "count": 3}},
                "samples": 3,
            }
        ]

    def test_a_field_the_schema_does_not_declare_is_counted_not_stored(self, rig: Rig) -> None:
        outcome = rig.service.handle(*message("cam-lux", range(2), shift="night"))
        assert outcome.kind == "stored"
        assert "field_shift" not in rig.store.read(TENANT, "payments").column_names
        assert rig.service.stats()["fields_ignored"] == 2


class TestBatchesThePolicyRefuses:
    def test_a_raw_restricted_field_is_rejected_and_never_stored(self, rig: Rig) -> None:
        outcome = rig.service.handle(*message("cam-lux", range(2), iban="LU28 0019"))
        assert (outcome.kind, outcome.reason) == ("rejected", "policy_field")
        assert "field 'iban' (restricted)" in outcome.detail
        assert "restricted.same_site" in outcome.detail
        assert rig.store.files(TENANT, "payments") == []

    def test_a_raw_value_where_the_plan_hashes_is_rejected(self, rig: Rig) -> None:
        outcome = rig.service.handle(*message("cam-lux", range(1), operator="Ada"))
        assert (outcome.reason, outcome.kind) == ("policy_field", "rejected")
        assert "must arrive hashed" in outcome.detail

    def test_a_field_refusal_names_the_rule_of_that_field(self, rig: Rig) -> None:
        dropped = rig.service.handle(*message("cam-lux", range(2), iban="LU28 0019"))
        raw = rig.service.handle(*message("cam-lux", range(2, 3), operator="Ada"))
        assert "(rule restricted.same_site, restricted.field_action)" in dropped.detail
        assert "(rule confidential.jurisdiction, confidential.field_action)" in raw.detail
        assert [r["rule"] for r in rig.audit(AuditAction.POLICY_REFUSAL)] == [
            "restricted.same_site, restricted.field_action",
            "confidential.jurisdiction, confidential.field_action",
        ]

    def test_a_node_outside_the_processing_rule_is_refused(self, rig: Rig) -> None:
        outcome = rig.service.handle(*message("cam-us", range(1), operator=HASHED))
        assert (outcome.kind, outcome.reason) == ("rejected", "policy")
        assert "country LU or DE" in outcome.detail and "US" in outcome.detail

    def test_an_unknown_node_is_held_not_refused_for_good(self, rig: Rig) -> None:
        outcome = rig.service.handle(*message("cam-ghost", range(1)))
        assert (outcome.kind, outcome.reason) == ("held", "unknown_node")
        assert "not in the fleet registry" in outcome.detail
        # Acknowledged to the broker, but no receipt: the node keeps the sample.
        assert outcome.ack and outcome.seq_ranges == ()
        stats = rig.service.stats()
        assert stats["held"] == {"unknown_node": 1} and stats["refused_samples"] == {}
        assert not (rig.audit_dir / TENANT).exists()  # nothing ended, nothing audited

    def test_a_node_whose_status_is_late_is_deferred_then_stored(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path, node_grace_s=30.0)
        try:
            outcome = rig.service.handle(*message("cam-late", range(3), operator=HASHED))
            assert (outcome.kind, outcome.ack) == ("deferred", False)
            announce(rig.fleet, "cam-late", LUX)
            time.sleep(0.6)  # the unknown-node cache expires
            outcome = rig.service.handle(*message("cam-late", range(3), operator=HASHED))
            assert (outcome.kind, outcome.stored) == ("stored", 3)
            assert rig.service.stats()["deferred"] == 1
        finally:
            rig.close()

    def test_a_node_that_never_announces_itself_is_held_after_the_grace(
        self, tmp_path: Path
    ) -> None:
        rig = Rig(tmp_path, node_grace_s=0.3)
        try:
            assert rig.service.handle(*message("cam-ghost", range(1))).kind == "deferred"
            time.sleep(0.6)
            outcome = rig.service.handle(*message("cam-ghost", range(1)))
            assert (outcome.kind, outcome.reason) == ("held", "unknown_node")
            assert outcome.seq_ranges == ()
        finally:
            rig.close()

    def test_a_node_unknown_past_the_grace_is_held_and_stored_once_known(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The live bug: the fleet forgot the nodes, their batches were refused for good
        past the grace and the nodes deleted them.  Held, they are stored when it knows
        the node again (forgotten or never known is the same to ingest)."""
        rig = Rig(tmp_path, node_grace_s=0.0)
        try:
            batch = message("cam-back", range(10, 14), operator=HASHED)
            for _ in range(3):  # the node's resends while it is unknown
                outcome = rig.service.handle(*batch)
                assert (outcome.kind, outcome.reason, outcome.seq_ranges) == (
                    "held",
                    "unknown_node",
                    (),
                )
            assert caplog.text.count("holding back a batch") == 1  # logged once
            announce(rig.fleet, "cam-back", LUX)  # its next heartbeat
            time.sleep(0.6)  # the unknown-node cache expires
            outcome = rig.service.handle(*batch)
            assert (outcome.kind, outcome.stored, outcome.seq_ranges) == ("stored", 4, ((10, 13),))
            assert "are stored again" in caplog.text
            assert rig.store.count(TENANT, "payments") == 4
            assert rig.service.stats()["held"] == {"unknown_node": 3}
        finally:
            rig.close()

    def test_a_fleet_registry_that_cannot_be_read_holds_the_batch(self, rig: Rig) -> None:
        rig.fleet.close()  # its database is gone: where the node is cannot be known now
        outcome = rig.service.handle(*message("cam-lux", range(2), operator=HASHED))
        assert (outcome.kind, outcome.reason) == ("held", "fleet_unavailable")
        assert outcome.ack and outcome.seq_ranges == ()  # no receipt: the node keeps them
        assert rig.store.files(TENANT, "payments") == []

    def test_a_class_the_store_may_not_hold_is_refused(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        try:
            rig.service.add_pipeline(make_spec("confidential"))
            topic, _ = message("cam-lux", range(1))
            batch = codec.SampleBatch(
                "payments",
                "cam-lux",
                "v1",
                DataClass.CONFIDENTIAL,
                (codec.SampleRecord(seq=1, captured_at_ns=1, tensor=np.zeros(4, np.float32)),),
            )
            outcome = rig.service.handle(topic, codec.encode_samples(batch))
            assert (outcome.kind, outcome.reason) == ("rejected", "policy")
            assert "jurisdiction LU" in outcome.detail and "store" in outcome.detail
        finally:
            rig.close()

    def test_refusals_are_counted_audited_once_per_node_and_reason_and_acknowledged(
        self, rig: Rig
    ) -> None:
        flood = [message("cam-lux", range(i, i + 1), iban="LU28") for i in range(20)]
        flood.append(message("cam-us", range(100, 101)))
        flood.append(message("cam-lux", range(200, 202), operator=HASHED))
        outcomes = rig.service.handle_many(flood)
        assert all(o.ack for o in outcomes)
        # Each refused batch's receipt names its seqs, so the node ends them.
        assert [o.seq_ranges for o in outcomes[:2]] == [((0, 0),), ((1, 1),)]
        assert rig.service.stats()["rejected"] == {"policy_field": 20, "policy": 1}
        assert rig.service.stats()["refused_samples"] == {"policy_field": 20, "policy": 1}
        refusals = rig.audit(AuditAction.POLICY_REFUSAL)
        assert sorted(
            (r["node"], r["reason"], r["batches"], r["samples"], r["sample_ids"], r["final"])
            for r in refusals
        ) == [
            ("cam-lux", "policy_field", 20, 20, ["cam-lux:0-19"], True),
            ("cam-us", "policy", 1, 1, ["cam-us:100"], True),
        ]
        assert rig.store.count(TENANT, "payments") == 2

    def test_a_final_refusal_off_the_schema_is_audited_with_its_sample_ids(self, rig: Rig) -> None:
        records = tuple(
            codec.SampleRecord(seq=s, captured_at_ns=s, tensor=np.zeros(5, np.float32))
            for s in (3, 4, 5, 9)
        )
        batch = codec.SampleBatch("payments", "cam-lux", "v1", DataClass.INTERNAL, records)
        outcome = rig.service.handle(
            topics.samples(TENANT, "payments", "cam-lux"), codec.encode_samples(batch)
        )
        assert (outcome.kind, outcome.reason) == ("rejected", "schema_mismatch")
        assert outcome.seq_ranges == ((3, 5), (9, 9))
        [record] = rig.audit(AuditAction.INGEST_REFUSAL)
        assert (record["reason"], record["samples"], record["sample_ids"]) == (
            "schema_mismatch",
            4,
            ["cam-lux:3-5", "cam-lux:9"],
        )

    def test_a_scattered_refusal_is_audited_in_records_of_bounded_size(self, rig: Rig) -> None:
        scattered = list(range(0, 2 * (MAX_AUDIT_RANGES + 100), 2))  # a range per sample
        records = tuple(
            codec.SampleRecord(
                seq=s, captured_at_ns=s, tensor=np.zeros(4, np.float32), fields={"iban": "x"}
            )
            for s in scattered
        )
        batch = codec.SampleBatch("payments", "cam-lux", "v1", DataClass.INTERNAL, records)
        topic = topics.samples(TENANT, "payments", "cam-lux")
        assert rig.service.handle(topic, codec.encode_samples(batch)).reason == "policy_field"
        refusals = rig.audit(AuditAction.POLICY_REFUSAL)
        assert [len(r["sample_ids"]) for r in refusals] == [MAX_AUDIT_RANGES, 100]
        assert sum(r["samples"] for r in refusals) == len(scattered)
        assert [r["batches"] for r in refusals] == [1, 0]
        ids = [i for r in refusals for i in r["sample_ids"]]
        assert ids == [f"cam-lux:{s}" for s in scattered]

    def test_many_flushes_fold_into_one_summary_per_interval(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path)
        try:
            rig.service._audit.interval_s = 3600.0  # one summary for the whole test
            for i in range(5):
                rig.service.handle(*message("cam-lux", range(10 * i, 10 * i + 2), operator=HASHED))
                rig.service.handle(*message("cam-us", range(100 + i, 101 + i)))
            assert not (rig.audit_dir / TENANT).exists()  # nothing appended yet
            rig.service.flush_audit()
            [summary] = rig.audit(AuditAction.UPLINK_BATCH)
            assert summary["nodes"] == {"cam-lux": {"first_seq": 0, "last_seq": 41, "count": 10}}
            [refusal] = rig.audit(AuditAction.POLICY_REFUSAL)
            assert (refusal["node"], refusal["batches"]) == ("cam-us", 5)
        finally:
            rig.close()

    def test_a_summary_the_log_could_not_take_is_written_at_the_next_flush(
        self, tmp_path: Path
    ) -> None:
        rig = Rig(tmp_path)
        try:
            rig.service._audit.interval_s = 3600.0
            rig.audit_dir.write_text("a file where the audit directory should be")
            rig.service.handle(*message("cam-lux", range(2), operator=HASHED))
            rig.service.handle(*message("cam-us", range(100, 101)))
            rig.service.flush_audit()
            assert rig.service.stats()["audit_failed"] == 1
            assert rig.store.count(TENANT, "payments") == 2  # the samples stand

            rig.audit_dir.unlink()
            rig.service.flush_audit()
            [summary] = rig.audit(AuditAction.UPLINK_BATCH)
            assert summary["nodes"] == {"cam-lux": {"first_seq": 0, "last_seq": 1, "count": 2}}
            [refusal] = rig.audit(AuditAction.POLICY_REFUSAL)
            assert (refusal["node"], refusal["batches"]) == ("cam-us", 1)
        finally:
            rig.close()

    def test_without_an_audit_dir_nothing_is_written(self, tmp_path: Path) -> None:
        fleet = FleetRegistry(TENANT, tmp_path / "fleet.db")
        with (
            LabelStore(tmp_path / "labels.db") as labels,
            IngestService(
                TENANT,
                [make_spec()],
                SampleStore(tmp_path / "store"),
                labels,
                tmp_path / "seen.db",
                policy=POLICY,
                store_labels=STORE_DE,
                fleet=fleet,
                node_grace_s=0.0,
            ) as service,
        ):
            assert service.handle(*message("cam-x", range(1))).reason == "unknown_node"
        fleet.close()
        assert not (tmp_path / "audit").exists()

    def test_a_policy_without_store_labels_or_fleet_is_a_config_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="store_labels"):
            IngestService(
                TENANT,
                [make_spec()],
                SampleStore(tmp_path / "store"),
                LabelStore(tmp_path / "labels.db"),
                tmp_path / "seen.db",
                policy=POLICY,
            )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetRegistry]:
    registry = FleetRegistry(TENANT, tmp_path / "fleet.db")
    yield registry
    registry.close()


class TestNodeLabels:
    def test_a_node_that_announces_itself_is_known_once_the_unknown_ttl_passed(
        self, fleet: FleetRegistry
    ) -> None:
        clock = Clock()
        check = ResidencyCheck(
            POLICY, tenant=TENANT, store_labels=LUX, fleet=fleet, node_grace_s=60, clock=clock
        )
        assert check.node_labels("cam-1") is None
        announce(fleet, "cam-1", LUX)
        assert check.node_labels("cam-1") is None  # unknown is remembered briefly
        clock.now += 0.6
        assert check.node_labels("cam-1") == LUX

    def test_known_labels_are_read_again_after_their_ttl(self, fleet: FleetRegistry) -> None:
        clock = Clock()
        check = ResidencyCheck(POLICY, tenant=TENANT, store_labels=LUX, fleet=fleet, clock=clock)
        announce(fleet, "cam-1", LUX)
        assert check.node_labels("cam-1") == LUX
        moved = {**LUX, SITE: "lux-2"}
        announce(fleet, "cam-1", moved)
        assert check.node_labels("cam-1") == LUX
        clock.now += 5.1
        assert check.node_labels("cam-1") == moved


class TestSamplesPerDayQuota:
    def test_samples_over_the_quota_are_held_and_stored_when_it_allows(
        self, tmp_path: Path
    ) -> None:
        now = {"ns": time.time_ns()}
        rig = Rig(tmp_path, quotas=Quotas(samples_per_day=5), clock_ns=lambda: now["ns"])
        try:
            first = rig.service.handle(*message("cam-lux", range(3), operator=HASHED))
            second = rig.service.handle(*message("cam-lux", range(3, 7), operator=HASHED))
            third = rig.service.handle(*message("cam-lux", range(7, 9), operator=HASHED))
            assert (first.stored, second.stored, second.over_quota) == (3, 2, 2)
            assert (third.kind, third.reason, third.over_quota) == ("held", "quota", 2)
            # The receipts name only what was stored: the node keeps 5..8 and sends them again.
            assert (second.seq_ranges, third.seq_ranges) == (((3, 4),), ())
            assert third.ack
            stats = rig.service.stats()
            assert stats["over_quota"] == 4 and stats["rejected"] == {"quota": 1}
            assert stats["held"] == {"quota": 1} and stats["refused_samples"] == {}
            assert rig.store.count(TENANT, "payments") == 5
            assert not rig.service.is_seen("payments", "cam-lux:8")

            now["ns"] += 86_400 * 10**9  # tomorrow: the node's resend fits
            again = rig.service.handle(*message("cam-lux", range(3, 9), operator=HASHED))
            assert (again.stored, again.duplicates, again.seq_ranges) == (4, 2, ((3, 8),))
            assert rig.store.count(TENANT, "payments") == 9
        finally:
            rig.close()

    def test_a_restarted_service_counts_what_was_stored_today(self, tmp_path: Path) -> None:
        rig = Rig(tmp_path, quotas=Quotas(samples_per_day=3))
        rig.service.handle(*message("cam-lux", range(3), operator=HASHED))
        rig.close()
        again = Rig(tmp_path, quotas=Quotas(samples_per_day=3))
        try:
            outcome = again.service.handle(*message("cam-lux", range(3, 4), operator=HASHED))
            assert (outcome.kind, outcome.reason) == ("held", "quota")
        finally:
            again.close()


class TestStoreFieldColumns:
    def test_files_with_different_field_columns_read_and_compact_together(
        self, tmp_path: Path
    ) -> None:
        store = SampleStore(tmp_path / "store")

        def put(seqs: range, **fields: str | bytes) -> None:
            records = tuple(
                codec.SampleRecord(
                    seq=s, captured_at_ns=s, tensor=np.zeros(2, np.float32), fields=fields
                )
                for s in seqs
            )
            store.append(TENANT, codec.SampleBatch("p", "n", "v1", DataClass.PUBLIC, records))
            store.flush()

        put(range(2))
        put(range(2, 3), operator="Ada")
        put(range(3, 4), face=b"\x89PNG", operator=b"\x00raw")
        table = store.read(TENANT, "p")
        assert table.column_names[-2:] == ["field_face", "field_operator"]
        assert table.column("field_operator").to_pylist() == [None, None, b"Ada", b"\x00raw"]
        assert table.column("field_face").to_pylist() == [None, None, None, b"\x89PNG"]
        assert store.read(TENANT, "p", columns=["field_nothing"]).column(0).null_count == 4
        day = store.dates(TENANT, "p")[0]
        result = store.compact(TENANT, "p", day)
        assert result.files_merged == 3 and result.path is not None
        merged = pq.read_table(result.path)
        assert merged.column("field_operator").to_pylist() == [None, None, b"Ada", b"\x00raw"]
