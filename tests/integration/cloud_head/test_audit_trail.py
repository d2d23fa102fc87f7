"""The controller and the rollout write every decision to the tenant's audit log, first.

Real stores (SQLite registry, fleet, desired-state book and audit log, Parquet samples), a
real mosquitto for desired state; the fleet is fed the payloads an edge agent sends.  The
last class trains a real first model on the session's Ray cluster and exports its card.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_head.audit import AuditAction, model_subject
from cloud_head.model_card import export_model
from cloud_head.registry import ModelVersion
from cloud_head.tenants import Quotas
from continuum.embedded import EmbeddedBroker
from continuum.labels import JURISDICTION, TIER
from continuum.spec import load_pipeline
from tests.rollout_kit import (
    NODES,
    PIPELINE,
    SERVICE,
    CloudRig,
    connected_client,
    pipeline_spec,
    serve_v1,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def break_audit_storage(audit_root: Path, tenant: str) -> None:
    """Make every further append to the tenant's log fail in SQLite, as a full disk would."""
    with sqlite3.connect(audit_root / tenant / "audit.sqlite3") as db:
        db.execute(
            "CREATE TRIGGER test_disk_full BEFORE INSERT ON records "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full (test)'); END"
        )


@pytest.fixture
def head(tmp_path: Path, private_mqtt_broker: EmbeddedBroker) -> Iterator[CloudRig]:
    tenant = f"au-{uuid.uuid4().hex[:8]}"
    client = connected_client(private_mqtt_broker, f"controller-{tenant}")
    built = CloudRig(tmp_path, tenant, client=client)
    try:
        yield built
    finally:
        built.close()
        client.disconnect()
        client.loop_stop()


def canary_at(head: CloudRig, canary: str, version: ModelVersion, accuracy: float) -> None:
    for _ in range(3):
        head.node_serves(canary, version)
        head.telemetry(canary, version.version, labelled=40, correct=round(40 * accuracy))
        head.clock.advance(30)


class TestRolloutRecords:
    def test_canary_and_automatic_rollback_are_recorded_with_nodes_and_reason(
        self, head: CloudRig
    ) -> None:
        controller = head.controller(pipeline_spec(head.tenant))
        serve_v1(head, controller)
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

    def test_every_ramp_step_is_recorded_with_its_share_nodes_and_reason(
        self, head: CloudRig
    ) -> None:
        controller = head.controller(pipeline_spec(head.tenant))  # 1 node, then 2, then all 4
        serve_v1(head, controller)
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

    def test_an_operators_promote_and_rollback_name_who_asked(self, head: CloudRig) -> None:
        controller = head.controller(pipeline_spec(head.tenant))
        serve_v1(head, controller)
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

    def test_a_step_that_cannot_be_recorded_is_not_published(self, head: CloudRig) -> None:
        from cloud_head.audit import AuditWriteError

        controller = head.controller(pipeline_spec(head.tenant))
        serve_v1(head, controller)
        v2 = head.register("v2")
        published_before = list(head.published_topics)
        break_audit_storage(head.root / "audit", head.tenant)

        with pytest.raises(AuditWriteError, match="not carried out"):
            controller.rollout.begin(v2)
        with pytest.raises(AuditWriteError):
            controller.set_version("v2", "by hand", actor="alice@ops")

        assert head.published_topics == published_before
        assert all(controller.book.serving_target(n, PIPELINE) == "v1" for n in NODES)
        assert controller.rollout.state.stage == "promoted"
        assert controller.rollout.state.candidate == "v1"
        assert head.registry.get(head.tenant, PIPELINE, "v2").status == "registered"


class TestTrainingRecords:
    def test_a_run_records_its_data_snapshot_selector_and_failure(self, head: CloudRig) -> None:
        head.labelled_samples(8)
        selector = {TIER: "cloud", JURISDICTION: "LU"}
        controller = head.controller(pipeline_spec(head.tenant), training_selector=selector)
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

    def test_labels_that_are_no_class_are_left_out_and_counted(self, head: CloudRig) -> None:
        # A faulty or hostile node's feedback must not fail every retraining from now on.
        head.labelled_samples(8, labels=[-3, -(2**31)])
        controller = head.controller(pipeline_spec(head.tenant))
        controller.tick()
        assert controller.wait_idle(60)

        started = head.records(AuditAction.TRAINING_RUN)[0]
        data = started.details["data"]
        assert data["labels_out_of_range"] == 2
        assert data["trained_on_edge_samples"] + data["holdout_edge_samples"] == 8

    def test_a_requested_retrain_names_who_asked(self, head: CloudRig) -> None:
        controller = head.controller(pipeline_spec(head.tenant))
        controller.request_retrain("new camera installed", actor="carol@ops")
        controller.tick()
        assert controller.wait_idle(60)

        started = head.records(AuditAction.TRAINING_RUN)[0]
        assert started.actor == "carol@ops"
        assert started.details["reason"] == "new camera installed"
        assert controller.status()["trainings"][0]["requested_by"] == "carol@ops"

    def test_a_run_that_cannot_be_recorded_does_not_start(self, head: CloudRig) -> None:
        head.log.append(head.tenant, AuditAction.DEPLOY, PIPELINE, {}, "test")
        break_audit_storage(head.root / "audit", head.tenant)
        head.labelled_samples(8)
        controller = head.controller(pipeline_spec(head.tenant))
        controller.tick()
        assert controller.wait_idle(60)

        (record,) = controller.status()["trainings"]
        assert record["outcome"].startswith("failed: AuditWriteError")
        assert "not recorded in the audit log" in record["outcome"]
        assert not (head.root / "controller" / "training" / record["run"]).exists()


class TestGpuHoursQuota:
    def test_a_retrain_over_the_quota_is_refused_in_status_and_audit(self, head: CloudRig) -> None:
        head.labelled_samples(8)
        controller = head.controller(
            pipeline_spec(head.tenant, gpus=1), quotas=lambda: Quotas(training_gpu_hours=0)
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

    def test_an_operator_request_is_checked_again_at_once(self, head: CloudRig) -> None:
        limit = {"hours": 0.0}
        controller = head.controller(
            pipeline_spec(head.tenant, gpus=1),
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
        self, head: CloudRig, gpus: float, charged: bool
    ) -> None:
        controller = head.controller(
            pipeline_spec(head.tenant, gpus=gpus), quotas=lambda: Quotas(training_gpu_hours=10)
        )
        controller.request_retrain("charge me")
        controller.tick()
        assert controller.wait_idle(60)

        (record,) = controller.status()["trainings"]
        assert record["run_s"] is not None and record["run_s"] > 0
        assert record["gpu_hours"] == pytest.approx(gpus * record["run_s"] / 3600)
        assert (controller.status()["gpu_hours_used"] > 0) is charged
        restarted = head.controller(pipeline_spec(head.tenant, gpus=gpus))
        assert restarted.status()["gpu_hours_used"] == controller.status()["gpu_hours_used"]


class TestFirstModelOnRay:
    def test_training_gate_registration_signature_and_rollout_are_exported(
        self, head: CloudRig, ray_cluster: Any, tmp_path: Path
    ) -> None:
        spec = load_pipeline(Path("pipelines/digits_inspection.py")).model_copy(
            update={"tenant": head.tenant}
        )
        controller = head.controller(spec)
        version = controller.bootstrap()
        head.seal()

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
        # No edge sample yet: the gate judged on the reference part alone, and said so.
        gate = records["gate"]["details"]
        assert list(gate["parts"]) == ["reference"]
        assert gate["parts"]["reference"]["size"] == gate["holdout_size"] > 0
        assert (lineage["data"]["training_cut"], lineage["data"]["gate_edge_slice"]) == ({}, {})
        assert "| Reference holdout |" in card


def _public(private_key: bytes) -> bytes:
    from continuum.signing import public_pem_of

    return public_pem_of(private_key)
