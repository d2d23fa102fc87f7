"""Retraining on a real local Slurm allocation whose Ray nodes join the session's cluster.

Placed by its labels (checked through the Ray state API), refused by the residency policy
naming the rule or for the time it has left, and, when ``scancel`` ends the allocation mid-run,
resumed on the cloud pool from the last checkpoint (the resumed attempt starts at an epoch > 0).
A run kept for the next allocation (no fallback) reuses the same Ray Train storage and name, so
the same restore applies; that bookkeeping is tested on the controller
(tests/unit/cloud_head/test_training_pool_controller.py), sparing this module a second
allocation's start (a minute and more on this machine).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_head._training_pool import SLURM_JOB_LABEL, PooledTraining, residency_rule
from cloud_head.training import TrainingResult, run_training
from continuum import Pipeline, select
from continuum.embedded import LocalRayCluster
from continuum.errors import PlacementError
from continuum.residency import ResidencyPolicy
from continuum.spec import PipelineSpec
from tests.slurm_cluster import SlurmCluster

pytestmark = pytest.mark.integration

TRAINER = "tests.integration.hpc._epochs_trainer:train_loop"
_UP = [
    "hpc", "up", "--nodes", "1", "--time", "00:10:00", "--cpus-per-node", "1",
    "--site", "lux-hpc", "--country", "LU", "--jurisdiction", "LU", "--timeout-s", "90",
]  # fmt: skip
_NO_DATA = (np.zeros((0, 4), dtype=np.float32), np.zeros((0,), dtype=np.int64))


def _spec(data_class: str = "internal", **retrain: Any) -> PipelineSpec:
    pipe = Pipeline("hpc-retrain", tenant="acme", data_class=data_class)
    pipe.edge(model="inspector", shape=(4,))
    pipe.uplink(select.random(0.1))
    pipe.retrain(TRAINER, **retrain)
    return pipe.spec


@pytest.fixture(scope="module")
def allocation(
    ray_cluster: LocalRayCluster,
    slurm_cluster: SlurmCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """Yield the job id of a one-node allocation whose Ray node joined the session's cluster.

    Shared by the module's tests, in order: the last one cancels it mid-run.
    """
    job_id = _bring_up(ray_cluster, slurm_cluster, tmp_path_factory.mktemp("hpc-joined"))
    try:
        yield job_id
    finally:
        slurm_cluster.run("scancel", job_id)
        _wait(lambda: not _alive_nodes_of(job_id), 30)


def _bring_up(ray_cluster: LocalRayCluster, slurm_cluster: SlurmCluster, state_dir: Path) -> str:
    """Submit a one-node allocation joining the session's cluster; return its job id once up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(slurm_cluster.env)
    env.update(ray_cluster.client_env)
    # The allocation's Ray workers import the test trainer as the session's do.
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])
    argv = [*_UP, "--state-dir", str(state_dir), "--join", ray_cluster.address]
    up = subprocess.run(
        [sys.executable, "-m", "continuum.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    return up.stdout.splitlines()[0]


def _in_background(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``call()`` in a thread; its result or error lands in the returned dict."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except Exception as error:  # the test asserts on it
            outcome["error"] = error

    thread = threading.Thread(target=run, name="hpc-training")
    thread.start()
    return thread, outcome


def _checkpoints(workdir: Path) -> list[Path]:
    return list(workdir.glob("ray/*/checkpoint_*"))


def _alive_nodes_of(job_id: str) -> list[dict[str, Any]]:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [n for n in nodes if n["Alive"] and n.get("Labels", {}).get(SLURM_JOB_LABEL) == job_id]


def _wait(done: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.3)


def _pooled(spec: PipelineSpec, **kw: Any) -> PooledTraining:
    return PooledTraining(spec, train=run_training, estimate_s=lambda: 30.0, **kw)


class TestPlacedOnTheAllocation:
    @pytest.mark.timeout(240)  # the session's Ray and Slurm and the allocation start first
    def test_the_run_lands_on_the_allocations_ray_node_by_its_labels(
        self, allocation: str, tmp_path: Path
    ) -> None:
        import ray

        result = _pooled(_spec(pool="hpc"))(
            TRAINER, *_NO_DATA, base_model=None, workdir=tmp_path / "run-1", config={"epochs": 1}
        )

        placement = result.ray_info["placement"]
        assert (placement["pool"], placement["allocation"]) == ("hpc", allocation)
        assert f"Slurm allocation {allocation}" in placement["why"]
        # Where it ran, asked of the cluster's state: that node carries the allocation's labels.
        (ran_on,) = [n for n in ray.nodes() if n["NodeID"] == result.ray_info["node_id"]]  # type: ignore[no-untyped-call]
        assert ran_on["Labels"]["continuum.io/tier"] == "hpc"
        assert ran_on["Labels"][SLURM_JOB_LABEL] == allocation
        assert ran_on["Labels"]["continuum.io/jurisdiction"] == "LU"
        assert int(ran_on["Labels"]["hpc.continuum/ends-at"]) > time.time()
        assert result.onnx_path.is_file()

    def test_a_wrong_jurisdiction_allocation_is_refused_naming_the_rule(
        self, allocation: str, tmp_path: Path
    ) -> None:
        # This pipeline's confidential data must stay in jurisdiction DE; the centre is in LU.
        policy = ResidencyPolicy.model_validate(
            {
                "api_version": "continuum.io/v1",
                "kind": "ResidencyPolicy",
                "classes": {
                    "public": {},
                    "internal": {},
                    "confidential": {"jurisdiction": ["DE"]},
                    "restricted": {"same_site": True},
                },
            }
        )
        spec = _spec("confidential", pool="hpc")
        pooled = _pooled(spec, rule_of=residency_rule(policy, spec))
        with pytest.raises(PlacementError) as caught:
            pooled(
                TRAINER,
                *_NO_DATA,
                base_model=None,
                workdir=tmp_path / "run-2",
                label_selector={"continuum.io/jurisdiction": "DE"},  # as derived at deploy
            )
        assert caught.value.rule == "confidential.jurisdiction"
        assert caught.value.label == "continuum.io/jurisdiction=LU"
        assert f"Slurm allocation {allocation}" in str(caught.value)
        assert not (tmp_path / "run-2").exists()  # nothing ran

    def test_a_run_that_would_outlive_the_allocation_is_refused_with_the_figures(
        self, allocation: str, tmp_path: Path
    ) -> None:
        pooled = PooledTraining(_spec(pool="hpc"), train=run_training, estimate_s=lambda: 3600.0)
        with pytest.raises(PlacementError) as caught:
            pooled(TRAINER, *_NO_DATA, base_model=None, workdir=tmp_path / "run-4")
        assert caught.value.rule == "hpc.time_limit"
        # 10 min less the script's 30 s lead, less what the module's tests took so far.
        assert re.search(
            rf"run needs ~60 min .*, Slurm allocation {allocation} ends in \d+ min",
            str(caught.value),
        )
        assert not (tmp_path / "run-4").exists()


class TestCancelledMidRun:
    @pytest.mark.timeout(240)
    def test_scancel_mid_run_resumes_on_the_cloud_pool_from_the_last_checkpoint(
        self, allocation: str, slurm_cluster: SlurmCluster, tmp_path: Path
    ) -> None:
        workdir = tmp_path / "run-3"
        pooled = _pooled(_spec(pool="hpc", fallback=True))
        config = {"epochs": 8, "epoch_s": 1.0}
        thread, outcome = _in_background(
            lambda: pooled(TRAINER, *_NO_DATA, base_model=None, workdir=workdir, config=config)
        )
        _wait(lambda: len(_checkpoints(workdir)) >= 2, 120)
        assert _checkpoints(workdir), "no checkpoint before the scancel"

        slurm_cluster.run("scancel", allocation)
        thread.join(180)

        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        result: TrainingResult = outcome["result"]
        attempts = result.ray_info["placement"]["attempts"]
        assert [(a["pool"], a["allocation"]) for a in attempts] == [
            ("hpc", allocation),
            ("cloud", None),
        ]
        assert attempts[0]["outcome"] == f"Slurm allocation {allocation} ended mid-run"
        assert "falls back to the cloud pool" in attempts[1]["why"]
        assert result.metrics["start_epoch"] > 0  # resumed, not started again
        assert result.metrics["epoch"] == 7
        assert result.metrics["node_labels"]["continuum.io/tier"] == "cloud"


def test_the_sbatch_script_stops_ray_ahead_of_the_time_limit() -> None:
    script = Path(__file__).resolve().parents[3] / "deploy" / "slurm" / "continuum-ray.sbatch"
    assert "#SBATCH --signal=TERM@30" in script.read_text()
    assert os.access(script, os.R_OK)
