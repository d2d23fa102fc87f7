"""PipelineController: when it retrains, what the gate decides, what it registers, when it holds.

The controller runs on real stores (SQLite registry, fleet, desired-state book, state store
and signed audit log, Parquet samples and labels) with one hand-moved clock; no broker:
what it publishes is collected. Training is the one step that is not Ray Train here: a
function of this process writes the real ONNX candidate a run would hand back (a classifier
that answers one class), so the gate scores real models on the real holdout. Ray Train and
the broker run in tests/integration/cloud_head (test_audit_trail, test_rollout_mqtt).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from cloud_head.audit import AuditAction, model_subject
from cloud_head.controller import PipelineController
from cloud_head.settings import ControllerSettings
from cloud_head.tenants import Quotas
from cloud_head.training import TrainingResult
from continuum.labels import LabelSelector
from continuum.signing import artifact_message, verify
from continuum.spec import PipelineSpec, TriggerSpec
from continuum.wire import topics
from tests.edge_agent_kit import build_model
from tests.rollout_kit import (
    NODES,
    PIPELINE,
    TRIGGER_SAMPLES,
    Clock,
    CloudRig,
    canary_reports,
    pipeline_spec,
    wait_for,
)

TENANT = "acme"
#: The class every stored sample is labelled with: a model that answers it is always right.
TRUE_CLASS = 3
WRONG_CLASS = 5


class LocalTraining:
    """Stands in for Ray Train: writes a candidate that answers ``favour``; counts its runs.

    ``hold`` (when set) keeps a run going until the test releases it.
    """

    def __init__(self, favour: int = TRUE_CLASS) -> None:
        self.favour = favour
        self.runs: list[dict[str, Any]] = []
        self.hold: threading.Event | None = None

    def __call__(
        self,
        trainer: PipelineSpec | str,
        train_x: NDArray[np.generic],
        train_y: NDArray[np.integer],
        *,
        base_model: Path | None,
        workdir: Path,
        label_selector: LabelSelector | Mapping[str, str] | None = None,
        gpus: float | None = None,
        cpus: float | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> TrainingResult:
        self.runs.append(
            {"samples": len(train_y), "base_model": base_model, "gpus": gpus, "config": config}
        )
        if self.hold is not None:
            assert self.hold.wait(30), "the test never released the run"
        out = workdir / "candidate"
        out.mkdir(parents=True)
        onnx_path = build_model(out / "model.onnx", favour=self.favour)
        pt_path = out / "model.pt"
        pt_path.write_bytes(f"weights answering {self.favour}".encode())
        return TrainingResult(
            onnx_path=onnx_path, pt_path=pt_path, metrics={"loss": 0.1}, ray_info={"local": True}
        )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CloudRig]:
    built = CloudRig(tmp_path, TENANT, Clock(1_800_000_000.0))
    try:
        yield built
    finally:
        built.close()


def samples(rig: CloudRig, count: int, *, first_seq: int = 0) -> None:
    """Store ``count`` all-ones frames labelled ``TRUE_CLASS``.

    Later ones (``first_seq`` > 0) arrive a minute later: each run is named by its start.
    """
    if first_seq:
        rig.clock.advance(60)
    rig.labelled_samples(0, [TRUE_CLASS] * count, value=1.0, first_seq=first_seq)


def controller(
    rig: CloudRig, training: LocalTraining, spec: PipelineSpec | None = None, **options: Any
) -> PipelineController:
    return rig.controller(spec or pipeline_spec(TENANT), train=training, **options)


def run_tick(controller: PipelineController) -> None:
    controller.tick()
    assert controller.wait_idle(30)


def first_model(rig: CloudRig, training: LocalTraining) -> PipelineController:
    """Four nodes serve v1, the controller's first model (trained on 40 samples)."""
    for node in NODES:
        rig.node_joins(node)
    samples(rig, 40)
    built = controller(rig, training)
    assert built.bootstrap().version == "v1"
    return built


class TestTrigger:
    def test_fewer_new_samples_than_the_trigger_start_nothing(self, rig: CloudRig) -> None:
        training = LocalTraining()
        built = controller(rig, training)
        samples(rig, TRIGGER_SAMPLES - 1)

        run_tick(built)

        assert built.status()["trainings"] == [] and training.runs == []
        assert built.status()["labelled_samples"] == TRIGGER_SAMPLES - 1

    def test_enough_new_samples_start_one_run_and_only_one(self, rig: CloudRig) -> None:
        training = LocalTraining()
        built = controller(rig, training)
        samples(rig, TRIGGER_SAMPLES)

        run_tick(built)
        run_tick(built)  # nothing new since

        (record,) = built.status()["trainings"]
        assert record["reason"] == f"{TRIGGER_SAMPLES} new labelled samples (trigger: 8)"
        assert built.status()["trained_on"] == TRIGGER_SAMPLES
        assert len(training.runs) == 1

    def test_drift_on_an_eligible_node_starts_a_run(self, rig: CloudRig) -> None:
        training = LocalTraining()
        first_model(rig, training).close()
        built = controller(
            rig, training, pipeline_spec(TENANT, trigger=TriggerSpec(drift_score=0.5))
        )
        rig.clock.advance(5)
        rig.telemetry("cam-2", "v1", labelled=0, correct=0, drift=0.4)
        run_tick(built)
        assert len(training.runs) == 1  # below the trigger's score

        rig.telemetry("cam-2", "v1", labelled=0, correct=0, drift=0.8)
        run_tick(built)

        assert built.status()["trainings"][-1]["reason"] == "drift 0.80 on cam-2 > 0.5"
        assert len(training.runs) == 2

    def test_the_schedule_starts_a_run_when_its_period_is_over(self, rig: CloudRig) -> None:
        training = LocalTraining()
        built = controller(rig, training, pipeline_spec(TENANT, trigger=TriggerSpec(every_s=60)))
        rig.clock.advance(59)
        run_tick(built)
        assert training.runs == []

        rig.clock.advance(1)
        run_tick(built)

        assert built.status()["trainings"][0]["reason"] == "schedule: every 60 s"

    def test_an_operators_request_runs_once_naming_who_asked(self, rig: CloudRig) -> None:
        training = LocalTraining()
        built = controller(rig, training)
        samples(rig, 10)
        built.request_retrain("new camera installed", actor="carol@ops")

        run_tick(built)
        run_tick(built)

        (record,) = built.status()["trainings"]
        assert (record["reason"], record["requested_by"]) == ("new camera installed", "carol@ops")
        assert rig.records(AuditAction.TRAINING_RUN)[0].actor == "carol@ops"

    def test_after_a_quota_refusal_the_trigger_waits_quota_retry_s(self, rig: CloudRig) -> None:
        training = LocalTraining()
        limit = {"hours": 0.0}
        built = controller(
            rig,
            training,
            pipeline_spec(TENANT, gpus=1),
            quotas=lambda: Quotas(training_gpu_hours=limit["hours"]),
            settings=ControllerSettings(quota_retry_s=300),
        )
        samples(rig, TRIGGER_SAMPLES)
        run_tick(built)  # refused: no GPU-hours at all
        limit["hours"] = 10.0  # `continuum tenant quota --gpu-hours 10`
        samples(rig, TRIGGER_SAMPLES, first_seq=1000)  # a minute later
        rig.clock.advance(239)
        run_tick(built)
        assert [r["outcome"][:8] for r in built.status()["trainings"]] == ["refused:"]

        rig.clock.advance(1)
        run_tick(built)

        first, second = built.status()["trainings"]
        assert first["outcome"].startswith("refused: ") and second["outcome"] == "registered"
        assert len(training.runs) == 1  # the refused run never trained


class TestGate:
    def test_the_first_model_passes_and_is_promoted_everywhere(self, rig: CloudRig) -> None:
        built = first_model(rig, LocalTraining())

        (record,) = built.status()["trainings"]
        assert record["outcome"] == "registered" and record["version"] == "v1"
        assert record["gate"]["reason"].startswith("no current model: the first model passes")
        assert record["gate"]["candidate_score"] == 1.0
        # The pipeline declares no reference holdout: the gate judged on the edge slice alone.
        edge = record["gate"]["parts"]["edge"]
        assert (edge["candidate_score"], edge["current_score"]) == (1.0, None)
        assert record["gate"]["edge_per_node"] == {"cam-1": edge["size"]}
        assert list(record["gate"]["parts"]) == ["edge"]
        assert built.status()["rollout"]["stage"] == "promoted"
        assert rig.sent("v1") == list(NODES)

    def test_a_candidate_worse_than_the_current_model_is_rejected(self, rig: CloudRig) -> None:
        training = LocalTraining()
        built = first_model(rig, training)
        published = list(rig.published_topics)
        training.favour = WRONG_CLASS
        samples(rig, TRIGGER_SAMPLES, first_seq=1000)

        run_tick(built)

        record = built.status()["trainings"][-1]
        assert record["outcome"].startswith("rejected by the gate: ")
        assert record["version"] is None
        assert (record["gate"]["candidate_score"], record["gate"]["current_score"]) == (0.0, 1.0)
        assert [v.version for v in rig.registry.list(TENANT, PIPELINE)] == ["v1"]
        assert rig.published_topics == published
        gate = rig.records(AuditAction.GATE)[-1]
        assert (gate.details["verdict"], gate.details["current_version"]) == ("rejected", "v1")
        assert built.retrainer.stage == "idle"

    def test_a_better_candidate_is_registered_and_begins_its_canary(self, rig: CloudRig) -> None:
        training = LocalTraining(favour=WRONG_CLASS)
        for node in NODES:
            rig.node_joins(node)
        samples(rig, 40)
        built = controller(rig, training)
        built.bootstrap()  # v1 answers the wrong class: any right candidate beats it
        training.favour = TRUE_CLASS
        samples(rig, TRIGGER_SAMPLES, first_seq=1000)

        run_tick(built)

        record = built.status()["trainings"][-1]
        assert (record["outcome"], record["version"]) == ("registered", "v2")
        assert record["gate"]["passed"] is True
        v2 = rig.registry.get(TENANT, PIPELINE, "v2")
        assert v2.status == "canary" and v2.parent == "v1"
        assert built.status()["rollout"]["stage"] == "canary"
        assert len(rig.sent("v2")) == 1
        base = rig.registry.get(TENANT, PIPELINE, "v1").lineage["checkpoint"]
        assert training.runs[-1]["base_model"] == Path(base)  # fine-tuned from v1


class TestRegistration:
    def test_the_version_is_signed_recorded_first_and_its_artifact_published(
        self, rig: CloudRig
    ) -> None:
        built = first_model(rig, LocalTraining())
        v1 = rig.registry.get(TENANT, PIPELINE, "v1")

        verify(rig.public_key, artifact_message(v1.model, "v1", v1.sha256), v1.signature)
        actions = [(r.action, r.details.get("event")) for r in rig.records()]
        assert actions == [
            (AuditAction.TRAINING_RUN, "started"),
            (AuditAction.GATE, None),
            (AuditAction.REGISTER, None),
            (AuditAction.SIGN, None),
            (AuditAction.ROLLOUT, "promote"),
            (AuditAction.TRAINING_RUN, "finished"),
        ]
        run = built.status()["trainings"][0]["run"]
        register = rig.records(AuditAction.REGISTER)[0]
        assert register.subject == model_subject(PIPELINE, "v1")
        assert (register.details["run"], register.details["sha256"]) == (run, v1.sha256)
        assert v1.lineage["run"] == run and v1.code_version == "test"
        assert v1.lineage["trained_on_edge_samples"] + v1.lineage["holdout_edge_samples"] == 40
        manifest_topic = topics.artifact_manifest(TENANT, "inspector", "v1")
        assert rig.published_topics.index(manifest_topic) > rig.published_topics.index(
            topics.artifact_chunk(TENANT, "inspector", "v1", 0)
        )
        assert rig.published_topics.index(manifest_topic) < rig.published_topics.index(
            topics.node_desired(TENANT, NODES[0])
        )

    def test_a_run_that_fails_on_ray_train_registers_nothing(self, rig: CloudRig) -> None:
        import ray

        built = rig.controller(pipeline_spec(TENANT))  # the real Ray Train path
        samples(rig, TRIGGER_SAMPLES)

        run_tick(built)

        (record,) = built.status()["trainings"]
        # Alone, this process has no Ray cluster; in the whole suite the integration tests'
        # session cluster is connected, and the rig's training loop raises on it.
        expected = (
            "failed: TrainingError: the training run failed: WorkerGroupError: RuntimeError: "
            "these tests never train"
            if ray.is_initialized()
            else "failed: NotReadyError: not connected to a Ray"
        )
        assert record["outcome"].startswith(expected)
        assert built.status()["training"] == "failed"
        assert rig.registry.list(TENANT, PIPELINE) == []
        assert [r.details["event"] for r in rig.records(AuditAction.TRAINING_RUN)] == [
            "started",
            "failed",
        ]


class TestHold:
    def test_a_rollout_that_waits_for_a_canary_node_holds_retraining(self, rig: CloudRig) -> None:
        training = LocalTraining()
        built = first_model(rig, training)
        for node in NODES:
            rig.node_leaves(node)
        assert built.rollout.begin(rig.register("v2")).stage == "waiting"
        samples(rig, TRIGGER_SAMPLES, first_seq=1000)
        built.request_retrain("asked while v2 waits")

        run_tick(built)

        assert len(built.status()["trainings"]) == 1 and len(training.runs) == 1
        rig.node_joins("cam-1")
        assert built.tick().stage == "canary"

    def test_a_canary_holds_retraining_until_it_is_decided(self, rig: CloudRig) -> None:
        training = LocalTraining()
        built = first_model(rig, training)
        for node in NODES:
            rig.node_serves(node, rig.registry.get(TENANT, PIPELINE, "v1"))
            rig.telemetry(node, "v1", labelled=100, correct=95)
        rig.clock.advance(10)
        v2 = rig.register("v2")
        (canary,) = built.rollout.begin(v2).canary_nodes
        samples(rig, TRIGGER_SAMPLES, first_seq=1000)

        run_tick(built)
        assert len(training.runs) == 1  # held: v2 is on its canary

        canary_reports(rig, canary, v2, accuracy=0.80)  # v2 regresses: rolled back
        assert built.tick().stage == "rolled_back"  # and the held run starts
        assert built.wait_idle(30)

        assert len(training.runs) == 2
        assert built.status()["trainings"][-1]["reason"].startswith(
            f"{TRIGGER_SAMPLES} new labelled samples"
        )

    def test_a_run_in_progress_holds_the_next_one(self, rig: CloudRig) -> None:
        training = LocalTraining()
        training.hold = threading.Event()
        built = controller(rig, training)
        samples(rig, TRIGGER_SAMPLES)
        built.tick()
        samples(rig, TRIGGER_SAMPLES, first_seq=1000)
        built.request_retrain("while the first runs")

        built.tick()
        training.hold.set()
        assert built.wait_idle(30)

        assert len(built.status()["trainings"]) == 1
        run_tick(built)  # the request waited for the first run to end
        assert built.status()["trainings"][-1]["reason"] == "while the first runs"


class TestRestart:
    def test_a_run_a_restart_interrupted_is_recorded_and_run_again(self, rig: CloudRig) -> None:
        dying = LocalTraining()
        dying.hold = threading.Event()
        first = controller(rig, dying)
        samples(rig, TRIGGER_SAMPLES)
        first.tick()  # the run starts and is still running when the head dies
        wait_for(lambda: bool(dying.runs))
        try:
            second = controller(rig, LocalTraining())
            (interrupted,) = second.status()["trainings"]
            assert interrupted["outcome"] == "interrupted: the cloud head restarted during the run"
            rig.clock.advance(60)
            run_tick(second)
        finally:
            dying.hold.set()
            assert first.wait_idle(30)

        rerun = second.status()["trainings"][-1]
        assert rerun["reason"] == f"rerun after a restart interrupted: {interrupted['reason']}"
        assert rerun["outcome"] == "registered"

    def test_the_counters_and_gpu_hours_survive_a_restart(self, rig: CloudRig) -> None:
        training = LocalTraining()
        first = controller(rig, training, pipeline_spec(TENANT, gpus=1))
        samples(rig, TRIGGER_SAMPLES)
        run_tick(first)

        second = controller(rig, training, pipeline_spec(TENANT, gpus=1))

        for key in ("trainings", "trained_on", "gpu_hours_used"):
            assert second.status()[key] == first.status()[key]
        assert second.status()["gpu_hours_used"] > 0


class TestTrainerOptions:
    def test_the_pipelines_trainer_options_reach_every_run(self, rig: CloudRig) -> None:
        spec = pipeline_spec(TENANT)
        assert spec.retrain is not None
        retrain = spec.retrain.model_copy(update={"options": {"augment": ["noise"]}})
        training = LocalTraining()
        built = controller(rig, training, spec.model_copy(update={"retrain": retrain}))
        samples(rig, TRIGGER_SAMPLES)

        run_tick(built)

        assert [run["config"] for run in training.runs] == [{"augment": ["noise"]}]
