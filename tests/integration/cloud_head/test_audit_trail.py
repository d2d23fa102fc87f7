"""The controller and the rollout write every decision to the tenant's audit log, first.

Real stores (SQLite registry, fleet, desired-state book and audit log, Parquet samples), a
real mosquitto for desired state; the fleet is fed the payloads an edge agent sends.  The
last class trains a real first model on the session's Ray cluster and exports its card.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from cloud_head.audit import AuditAction, AuditLog, AuditRecord, AuditTrail, model_subject
from cloud_head.controller import PipelineController
from cloud_head.fleet import FleetRegistry
from cloud_head.labelling import LabelStore
from cloud_head.model_card import export_model
from cloud_head.registry import ModelRegistry, ModelVersion
from cloud_head.store import SampleStore
from cloud_head.tenants import Quotas
from continuum import select
from continuum.embedded import EmbeddedBroker
from continuum.labels import JURISDICTION, SITE, TIER
from continuum.signing import generate_keypair, sign_artifact
from continuum.spec import (
    DataClass,
    EdgeStageSpec,
    PipelineSpec,
    RetrainSpec,
    RolloutSpec,
    TensorSchema,
    TriggerSpec,
    UplinkSpec,
    load_pipeline,
)
from continuum.wire import codec, topics
from continuum.wire.messages import NodeStatus, ReportedModel, ReportedState, Telemetry
from continuum.wire.mqtt import BrokerSettings, connect, make_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PIPELINE = "digits"
NODES = ("cam-1", "cam-2", "cam-3", "cam-4")
SERVICE = "service:controller-digits"


def make_spec(tenant: str, *, gpus: float = 0.0) -> PipelineSpec:
    return PipelineSpec(
        name=PIPELINE,
        tenant=tenant,
        data_class="internal",
        edge=EdgeStageSpec(
            model="inspector", input=TensorSchema(shape=(1, 8, 8)), where={TIER: "edge"}
        ),
        uplink=UplinkSpec(policy=select.random(0.1)),
        retrain=RetrainSpec(
            trainer="tests.integration.cloud_head.test_audit_trail:no_trainer",
            trigger=TriggerSpec(new_samples=8),
            gpus=gpus,
        ),
        rollout=RolloutSpec(canary=0.25, promote_after_s=60, rollback_on_drop=0.05),
    )


def no_trainer(config: object) -> None:  # pragma: no cover - only named by the spec
    raise RuntimeError("these tests never train")


def break_audit_storage(audit_root: Path, tenant: str) -> None:
    """Make every further append to the tenant's log fail in SQLite, as a full disk would."""
    with sqlite3.connect(audit_root / tenant / "audit.sqlite3") as db:
        db.execute(
            "CREATE TRIGGER test_disk_full BEFORE INSERT ON records "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full (test)'); END"
        )


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Head:
    """One tenant's cloud stores, its audit log, and the client desired state goes out on."""

    root: Path
    tenant: str
    client: mqtt.Client
    private_key: bytes
    clock: Clock = field(default_factory=Clock)
    published: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry = ModelRegistry(self.root / "registry")
        self.fleet = FleetRegistry(self.tenant, self.root / "fleet.sqlite3", clock=self.clock)
        self.store = SampleStore(self.root / "store")
        self.labels = LabelStore(self.root / "labels.sqlite3")
        self.log = AuditLog(self.root / "audit", signing_keys={self.tenant: self.private_key})

    def controller(self, spec: PipelineSpec, **options: Any) -> PipelineController:
        controller = PipelineController(
            spec,
            workdir=self.root / "controller",
            registry=self.registry,
            store=self.store,
            labels=self.labels,
            fleet=self.fleet,
            client=self.client,
            private_key_pem=self.private_key,
            code_version="test",
            clock=self.clock,
            audit=AuditTrail(self.log, self.tenant, SERVICE),
            **options,
        )
        real = controller.book._publish

        def publish(topic: str, payload: bytes) -> None:
            real(topic, payload)
            self.published.append(topic)

        controller.book._publish = publish
        return controller

    def records(self, action: AuditAction | None = None) -> list[AuditRecord]:
        return self.log.records(self.tenant, action=action)

    def node_joins(self, node: str) -> None:
        status = NodeStatus(
            node=node,
            tenant=self.tenant,
            online=True,
            labels={TIER: "edge", SITE: "lux-1"},
            agent_version="test",
            pipelines=[PIPELINE],
            ts=self.clock(),
        )
        self.fleet.handle(topics.node_status(self.tenant, node), status.to_payload())

    def serves(self, node: str, version: ModelVersion, *, labelled: int, correct: int) -> None:
        reported = ReportedState(
            node=node,
            pipelines={
                PIPELINE: ReportedModel(
                    model=version.model,
                    version=version.version,
                    sha256=version.sha256,
                    state="serving",
                )
            },
            ts=self.clock(),
        )
        self.fleet.handle(topics.node_reported(self.tenant, node), reported.to_payload())
        window = Telemetry(
            node=node,
            pipeline=PIPELINE,
            model_version=version.version,
            window_s=10.0,
            frames=labelled,
            uplinked=0,
            dropped=0,
            latency_p50_ms=1.0,
            latency_p95_ms=2.0,
            labelled=labelled,
            correct=correct,
            ts=self.clock(),
        )
        self.fleet.handle(topics.telemetry(self.tenant, PIPELINE, node), window.to_payload())

    def register(self, tag: str) -> ModelVersion:
        artifact = self.root / f"model-{tag}.onnx"
        artifact.write_bytes(f"not really onnx: {tag}".encode() * 50)
        return self.registry.register(
            self.tenant,
            PIPELINE,
            "inspector",
            artifact,
            sign=lambda model, ver, digest: sign_artifact(self.private_key, model, ver, digest),
            parent=None,
            code_version="test",
            metrics={},
            gate={},
            lineage={},
        )

    def labelled_samples(self, count: int, labels: Sequence[int] = ()) -> None:
        """Store ``count`` samples labelled 0..9 in turn, then one per ``labels`` entry."""
        values = [s % 10 for s in range(count)] + list(labels)
        records = tuple(
            codec.SampleRecord(
                seq=s, captured_at_ns=s, tensor=np.zeros((1, 8, 8), np.float32), label=label
            )
            for s, label in enumerate(values)
        )
        self.store.append(
            self.tenant, codec.SampleBatch(PIPELINE, "cam-1", "v1", DataClass.INTERNAL, records)
        )
        self.store.flush()

    def close(self) -> None:
        self.registry.close()
        self.fleet.close()
        self.labels.close()
        self.log.close()


@pytest.fixture
def head(tmp_path: Path, private_mqtt_broker: EmbeddedBroker) -> Iterator[Head]:
    tenant = f"au-{uuid.uuid4().hex[:8]}"
    settings = BrokerSettings(host=private_mqtt_broker.host, port=private_mqtt_broker.port)
    client = make_client(f"controller-{tenant}", settings)
    connect(client, settings)
    private_key, _ = generate_keypair()
    built = Head(tmp_path, tenant, client, private_key)
    try:
        yield built
    finally:
        built.close()
        client.disconnect()
        client.loop_stop()


def on_v1(head: Head, controller: PipelineController) -> ModelVersion:
    for node in NODES:
        head.node_joins(node)
    v1 = head.register("v1")
    assert controller.rollout.begin(v1).stage == "promoted"
    for node in NODES:
        head.serves(node, v1, labelled=100, correct=95)
    head.clock.advance(10)
    return v1


def canary_at(head: Head, canary: str, version: ModelVersion, accuracy: float) -> None:
    for _ in range(3):
        head.serves(canary, version, labelled=40, correct=round(40 * accuracy))
        head.clock.advance(30)


class TestRolloutRecords:
    def test_canary_and_automatic_rollback_are_recorded_with_nodes_and_reason(
        self, head: Head
    ) -> None:
        controller = head.controller(make_spec(head.tenant))
        on_v1(head, controller)
        v2 = head.register("v2")
        (canary,) = controller.rollout.begin(v2).canary_nodes
        canary_at(head, canary, v2, accuracy=0.80)
        assert controller.tick().stage == "rolled_back"

        promote, start, rollback = [
            r for r in head.records() if r.action in (AuditAction.ROLLOUT, AuditAction.ROLLBACK)
        ]
        assert (promote.subject, promote.details["event"]) == (
            model_subject(PIPELINE, "v1"),
            "promote",
        )
        assert promote.details["nodes"] == list(NODES)
        assert start.subject == model_subject(PIPELINE, "v2")
        assert start.details["event"] == "canary"
        assert start.details["nodes"] == [canary]
        assert start.details["baseline"] == "v1"
        assert rollback.action == AuditAction.ROLLBACK
        assert rollback.subject == model_subject(PIPELINE, "v2")
        assert "fell more than 0.05" in rollback.details["reason"]
        assert rollback.details["restored"] == "v1"
        assert {r.actor for r in (promote, start, rollback)} == {SERVICE}
        assert head.log.verify(head.tenant).ok

    def test_every_ramp_step_is_recorded_with_its_share_nodes_and_reason(self, head: Head) -> None:
        controller = head.controller(make_spec(head.tenant))  # 1 node, then 2, then all 4
        on_v1(head, controller)
        v2 = head.register("v2")
        state = controller.rollout.begin(v2)
        for _ in range(2):
            for node in state.canary_nodes:
                canary_at(head, node, v2, accuracy=0.95)
            state = controller.tick()
        assert state.stage == "promoted", state

        start, step, promote = [
            r.details
            for r in head.records(AuditAction.ROLLOUT)
            if r.subject == model_subject(PIPELINE, "v2")
        ]
        assert start["event"] == "canary"
        assert start["ramp"] == [
            {"share": 0.25, "nodes": 1},
            {"share": 0.5, "nodes": 2},
            {"share": 1.0, "nodes": 4},
        ]
        (canary,) = start["nodes"]
        assert (step["event"], step["step"], step["share"]) == ("ramp", 1, 0.5)
        assert step["nodes"][0] == canary and step["added"] == step["nodes"][1:]
        assert step["reason"].startswith("canary held for ")
        assert (step["canary_accuracy"], step["baseline_accuracy"]) == (0.95, 0.95)
        assert promote["event"] == "promote"
        assert promote["reason"].startswith("step 1 (50%) held for ")
        assert promote["nodes"] == list(NODES)
        assert head.log.verify(head.tenant).ok

    def test_an_operators_promote_and_rollback_name_who_asked(self, head: Head) -> None:
        controller = head.controller(make_spec(head.tenant))
        on_v1(head, controller)
        head.register("v2")

        controller.set_version("v2", "looks better", actor="alice@ops", action="promote")
        controller.set_version("v1", "customer complaint", actor="bob@ops", action="rollback")

        *_, promoted, rolled_back = head.records()
        assert promoted.action == AuditAction.ROLLOUT
        assert (promoted.actor, promoted.details["event"]) == ("alice@ops", "manual promote")
        assert promoted.subject == model_subject(PIPELINE, "v2")
        assert rolled_back.action == AuditAction.ROLLBACK
        assert (rolled_back.actor, rolled_back.details["event"]) == ("bob@ops", "manual rollback")
        assert "customer complaint" in rolled_back.details["reason"]
        assert rolled_back.details["previous"] == "v2"

    def test_a_step_that_cannot_be_recorded_is_not_published(self, head: Head) -> None:
        from cloud_head.audit import AuditWriteError

        controller = head.controller(make_spec(head.tenant))
        on_v1(head, controller)
        v2 = head.register("v2")
        published_before = list(head.published)
        break_audit_storage(head.root / "audit", head.tenant)

        with pytest.raises(AuditWriteError, match="not carried out"):
            controller.rollout.begin(v2)
        with pytest.raises(AuditWriteError):
            controller.set_version("v2", "by hand", actor="alice@ops")

        assert head.published == published_before
        assert all(controller.book.serving_target(n, PIPELINE) == "v1" for n in NODES)
        assert controller.rollout.state.stage == "promoted"
        assert controller.rollout.state.candidate == "v1"
        assert head.registry.get(head.tenant, PIPELINE, "v2").status == "registered"


class TestTrainingRecords:
    def test_a_run_records_its_data_snapshot_selector_and_failure(self, head: Head) -> None:
        head.labelled_samples(8)
        selector = {TIER: "cloud", JURISDICTION: "LU"}
        controller = head.controller(make_spec(head.tenant), training_selector=selector)
        controller.tick()
        assert controller.wait_idle(60)

        started, failed = head.records(AuditAction.TRAINING_RUN)
        run = controller.status()["trainings"][0]["run"]
        assert started.subject == failed.subject == model_subject(PIPELINE, run)
        assert started.details["event"] == "started"
        assert started.details["label_selector"] == selector
        assert started.details["data"]["store_rows"] == 8
        assert started.details["data"]["store_partitions"]
        assert (
            started.details["data"]["trained_on_edge_samples"]
            + started.details["data"]["holdout_edge_samples"]
            == 8
        )
        assert failed.details["event"] == "failed"
        assert failed.details["error"] == controller.status()["trainings"][0]["outcome"]
        assert failed.details["error"].startswith("failed: ")
        assert {started.actor, failed.actor} == {SERVICE}
        assert head.log.verify(head.tenant).ok

    def test_labels_that_are_no_class_are_left_out_and_counted(self, head: Head) -> None:
        # A faulty or hostile node's feedback must not fail every retraining from now on.
        head.labelled_samples(8, labels=[-3, -(2**31)])
        controller = head.controller(make_spec(head.tenant))
        controller.tick()
        assert controller.wait_idle(60)

        started = head.records(AuditAction.TRAINING_RUN)[0]
        data = started.details["data"]
        assert data["labels_out_of_range"] == 2
        assert data["trained_on_edge_samples"] + data["holdout_edge_samples"] == 8

    def test_a_requested_retrain_names_who_asked(self, head: Head) -> None:
        controller = head.controller(make_spec(head.tenant))
        controller.request_retrain("new camera installed", actor="carol@ops")
        controller.tick()
        assert controller.wait_idle(60)

        started = head.records(AuditAction.TRAINING_RUN)[0]
        assert started.actor == "carol@ops"
        assert started.details["reason"] == "new camera installed"
        assert controller.status()["trainings"][0]["requested_by"] == "carol@ops"

    def test_a_run_that_cannot_be_recorded_does_not_start(self, head: Head) -> None:
        head.log.append(head.tenant, AuditAction.DEPLOY, PIPELINE, {}, "test")
        break_audit_storage(head.root / "audit", head.tenant)
        head.labelled_samples(8)
        controller = head.controller(make_spec(head.tenant))
        controller.tick()
        assert controller.wait_idle(60)

        (record,) = controller.status()["trainings"]
        assert record["outcome"].startswith("failed: AuditWriteError")
        assert "not recorded in the audit log" in record["outcome"]
        assert not (head.root / "controller" / "training" / record["run"]).exists()


class TestGpuHoursQuota:
    def test_a_retrain_over_the_quota_is_refused_in_status_and_audit(self, head: Head) -> None:
        head.labelled_samples(8)
        controller = head.controller(
            make_spec(head.tenant, gpus=1), quotas=lambda: Quotas(training_gpu_hours=0)
        )
        controller.tick()
        assert controller.wait_idle(60)
        controller.tick()  # the trigger still fires, but a refusal is not repeated every tick
        assert controller.wait_idle(60)

        (record,) = controller.status()["trainings"]
        assert record["outcome"].startswith("refused: ")
        assert "training_gpu_hours quota" in record["outcome"]
        assert "continuum tenant quota" in record["outcome"]
        (refused,) = head.records(AuditAction.TRAINING_RUN)
        assert refused.details["event"] == "refused"
        assert refused.details["quota"] == "training_gpu_hours"
        assert refused.details["limit"] == 0
        assert controller.status()["gpu_hours_used"] == 0
        assert not (head.root / "controller" / "training").exists()

    def test_an_operator_request_is_checked_again_at_once(self, head: Head) -> None:
        limit = {"hours": 0.0}
        controller = head.controller(
            make_spec(head.tenant, gpus=1),
            quotas=lambda: Quotas(training_gpu_hours=limit["hours"]),
        )
        controller.request_retrain("first try")
        controller.tick()
        assert controller.wait_idle(60)
        limit["hours"] = 10.0  # `continuum tenant quota --gpu-hours 10`
        controller.request_retrain("after the quota was raised")
        controller.tick()
        assert controller.wait_idle(60)

        first, second = controller.status()["trainings"]
        assert first["outcome"].startswith("refused: ")
        assert not second["outcome"].startswith("refused")

    @pytest.mark.parametrize(("gpus", "charged"), [(1.0, True), (0.0, False)])
    def test_each_runs_wall_time_times_its_gpus_is_charged(
        self, head: Head, gpus: float, charged: bool
    ) -> None:
        controller = head.controller(
            make_spec(head.tenant, gpus=gpus), quotas=lambda: Quotas(training_gpu_hours=10)
        )
        controller.request_retrain("charge me")
        controller.tick()
        assert controller.wait_idle(60)

        (record,) = controller.status()["trainings"]
        assert record["run_s"] is not None and record["run_s"] > 0
        assert record["gpu_hours"] == pytest.approx(gpus * record["run_s"] / 3600)
        assert (controller.status()["gpu_hours_used"] > 0) is charged
        restarted = head.controller(make_spec(head.tenant, gpus=gpus))
        assert restarted.status()["gpu_hours_used"] == controller.status()["gpu_hours_used"]


class TestFirstModelOnRay:
    def test_training_gate_registration_signature_and_rollout_are_exported(
        self, head: Head, ray_cluster: Any, tmp_path: Path
    ) -> None:
        spec = load_pipeline(Path("pipelines/digits_inspection.py")).model_copy(
            update={"tenant": head.tenant}
        )
        controller = head.controller(spec)
        version = controller.bootstrap()

        files = export_model(
            head.registry,
            head.log,
            head.tenant,
            spec.name,
            version.version,
            tmp_path / "card",
            public_key_pem=_public(head.private_key),
        )
        lineage: dict[str, Any] = json.loads(files.lineage_json.read_text())
        events = [(r["action"], r["details"].get("event")) for r in lineage["audit"]["records"]]
        assert events == [
            ("training_run", "started"),
            ("gate", None),
            ("register", None),
            ("sign", None),
            ("rollout", "promote"),
            ("training_run", "finished"),
        ]
        assert lineage["audit"]["verified"] is True
        records = {r["action"]: r for r in lineage["audit"]["records"]}
        assert records["gate"]["details"]["verdict"] == "passed"
        assert records["register"]["details"]["sha256"] == version.sha256
        assert records["sign"]["details"]["signature"] == version.signature
        assert (
            lineage["artifact"]["key_fingerprint"] == records["sign"]["details"]["key_fingerprint"]
        )
        card = files.model_card_md.read_text()
        assert "audit log verified at export" in card
        assert "| training_run | started |" in card


def _public(private_key: bytes) -> bytes:
    from continuum.signing import public_pem_of

    return public_pem_of(private_key)
