"""A pipeline that retrains on an HPC pool: what its controller records when an allocation ends.

The controller runs on the real stores of ``tests.rollout_kit`` (SQLite registry, signed audit
log, Parquet samples). What is not real here: the cluster's node list (a list of the dicts
``ray.nodes()`` returns) and the training function, which writes the real ONNX candidate a run
hands back and, on the allocation's first attempt, ends the allocation as ``scancel`` would:
its nodes leave the list and the run fails. The real Slurm, Ray and Ray Train checkpoint resume
run in tests/integration/hpc/test_hpc_retraining.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from cloud_head._training_pool import (
    ENDS_AT_LABEL,
    RESUME_FILE,
    SLURM_JOB_LABEL,
    PooledTraining,
)
from cloud_head.audit import AuditAction
from cloud_head.cli.rollout import training_lines
from cloud_head.tenants import Quotas
from cloud_head.training import TrainingError, TrainingResult
from continuum.spec import PipelineSpec
from tests.edge_agent_kit import build_model
from tests.rollout_kit import Clock, CloudRig, pipeline_spec

TENANT = "acme"
NOW = 1_800_000_000.0
TRUE_CLASS = 3
CLOUD = {"Alive": True, "Labels": {"continuum.io/tier": "cloud"}, "Resources": {"CPU": 2, "GPU": 1}}


def allocation(job: str) -> dict[str, Any]:
    labels = {
        "continuum.io/tier": "hpc",
        "continuum.io/site": "lux-hpc",
        "continuum.io/jurisdiction": "LU",
        SLURM_JOB_LABEL: job,
        ENDS_AT_LABEL: str(int(NOW + 3600)),
    }
    return {"Alive": True, "Labels": labels, "Resources": {"CPU": 2, "GPU": 4}}


class EndingAllocation:
    """Trains like a run would; the first attempt on an allocation ends it (scancel)."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self,
        trainer: PipelineSpec | str,
        train_x: NDArray[np.generic],
        train_y: NDArray[np.integer],
        *,
        base_model: Path | None,
        workdir: Path,
        label_selector: Mapping[str, str] | Any = None,
        gpus: float | None = None,
        cpus: float | None = None,
        config: Mapping[str, Any] | None = None,
        run_name: str,
    ) -> TrainingResult:
        job = dict(label_selector.root).get(SLURM_JOB_LABEL)
        self.calls.append({"workdir": workdir, "run_name": run_name, "job": job})
        workdir.mkdir(parents=True, exist_ok=True)  # as run_training: Ray Train's storage
        if job is not None:
            self.nodes[:] = [n for n in self.nodes if n["Labels"].get(SLURM_JOB_LABEL) != job]
            raise TrainingError("the training run failed: ActorDiedError: the node died")
        out = workdir / "candidate"
        onnx_path = build_model(out / "model.onnx", favour=TRUE_CLASS)
        (out / "model.pt").write_bytes(b"weights")
        return TrainingResult(onnx_path=onnx_path, pt_path=out / "model.pt", metrics={})


def hpc_spec(*, fallback: bool) -> PipelineSpec:
    spec = pipeline_spec(TENANT, gpus=1)
    assert spec.retrain is not None
    retrain = spec.retrain.model_copy(update={"pool": "hpc", "fallback": fallback})
    return spec.model_copy(update={"retrain": retrain})


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CloudRig]:
    built = CloudRig(tmp_path, TENANT, Clock(NOW))
    try:
        yield built
    finally:
        built.close()


def controller_on(rig: CloudRig, spec: PipelineSpec, nodes: list[dict[str, Any]]) -> Any:
    training = EndingAllocation(nodes)
    pooled = PooledTraining(
        spec,
        train=training,
        estimate_s=lambda: 60.0,
        nodes=lambda: list(nodes),
        clock=rig.clock,
        gone_wait_s=0.0,
    )
    rig.labelled_samples(0, [TRUE_CLASS] * 20, value=1.0)
    built = rig.controller(spec, train=pooled, quotas=lambda: Quotas(training_gpu_hours=5.0))
    return built, training


class TestMovedToTheCloud:
    def test_the_run_says_which_allocation_ended_and_where_it_finished(self, rig: CloudRig) -> None:
        nodes = [CLOUD, allocation("4711")]
        built, training = controller_on(rig, hpc_spec(fallback=True), nodes)

        assert built.bootstrap().version == "v1"

        assert [c["job"] for c in training.calls] == ["4711", None]
        assert len({c["run_name"] for c in training.calls}) == 1  # one run: it resumes
        (record,) = built.status()["trainings"]
        placement = record["placement"]
        assert (placement["pool"], placement["allocation"]) == ("cloud", None)
        assert [a["outcome"] for a in placement["attempts"]] == [
            "Slurm allocation 4711 ended mid-run",
            "finished",
        ]
        finished = [
            r.details
            for r in rig.records(AuditAction.TRAINING_RUN)
            if r.details["event"] == "finished"
        ]
        assert finished[0]["pool"] == "cloud"
        assert finished[0]["attempts"][0]["allocation"] == "4711"
        # Charged against the quota: the run's wall time times the 1 GPU it asked for.
        assert finished[0]["gpu_hours"] > 0
        assert finished[0]["gpu_hours_used"] == pytest.approx(built.status()["gpu_hours_used"])
        lines = training_lines(built.status())
        assert lines[0].startswith(f"last training: {record['run']} registered; pool cloud")
        assert (
            "  attempt 1: hpc, Slurm allocation 4711: Slurm allocation 4711 ended mid-run" in lines
        )


class TestKeptForTheNextAllocation:
    def test_without_fallback_the_run_fails_and_the_next_resumes_its_checkpoint(
        self, rig: CloudRig
    ) -> None:
        nodes = [CLOUD, allocation("4711")]
        built, training = controller_on(rig, hpc_spec(fallback=False), nodes)

        built.retrainer.run("first model of the pipeline")

        (record,) = built.status()["trainings"]
        assert record["outcome"].startswith("failed: RunInterruptedError: Slurm allocation 4711")
        assert record["placement"]["allocation"] == "4711"
        failed = rig.records(AuditAction.TRAINING_RUN)[-1].details
        assert (failed["event"], failed["pool"], failed["allocation"]) == ("failed", "hpc", "4711")
        kept = training.calls[0]["workdir"]
        resume = json.loads((kept.parent / RESUME_FILE).read_text())
        assert resume == {"workdir": str(kept), "run_name": training.calls[0]["run_name"]}

        rig.clock.advance(60)  # the next run has a name of its own
        nodes.append(allocation("4712"))
        nodes.remove(CLOUD)  # only the new allocation could take it: it fails there too
        built.retrainer.run("again")

        assert training.calls[1]["workdir"] == kept  # the same storage: Ray Train resumes it
        assert training.calls[1]["run_name"] == training.calls[0]["run_name"]
        assert built.status()["trainings"][-1]["placement"]["resumed_run"] == resume["run_name"]
