"""Federated rounds on a real Ray cluster whose site nodes hold their own data.

Four site nodes (1 CPU each, labelled ``continuum.io/site``), each started with its own
``CONTINUUM_SITE_DATA`` holding a share of scikit-learn's breast cancer measurements; node
``hospital-d`` is broken: its loop reports its update scaled 40 times.  The pipeline is
restricted (``same_site``), so ``training_plan`` plans federated training, and the tiny
logistic loop of ``tiny_trainer`` trains at each site in Ray Train's local mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_head.federated import FederatedTrainer, QuorumError
from cloud_head.gate import evaluate
from continuum.embedded import LocalRayCluster
from continuum.embedded._process import kill_sessions
from continuum.errors import PlacementError
from continuum.labels import SITE, TIER, LabelSelector
from continuum.residency import ResidencyPolicy, TrainingPlan, training_plan
from continuum.spec import PipelineSpec
from tests.conftest import RAY_TEST_NAMESPACE, _test_python_path, own_ray_connection

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SITES = ("hospital-a", "hospital-b", "hospital-c", "hospital-d")
POISONED = "hospital-d"
TRAINER = "tests.integration.federated.tiny_trainer:train_loop_per_worker"
POLICY = ResidencyPolicy.from_dict(
    {
        "classes": {
            "public": {},
            "internal": {},
            "confidential": {"jurisdiction": ["LU"]},
            "restricted": {"same_site": True},
        }
    }
)


def _site_data(root: Path) -> tuple[list[dict[str, str]], tuple[np.ndarray, np.ndarray]]:
    """Write each site's reference share (each site's own shift); return node envs and a
    test split that no site holds."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(7).permutation(len(y))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    test = (x[:100], y[:100])
    envs = []
    for index, site in enumerate(SITES):
        folder = root / site / "reference" / "medica"
        folder.mkdir(parents=True)
        rows = slice(100 + index * 115, 100 + (index + 1) * 115)
        np.savez(folder / "tumour-risk.npz", x=x[rows] * (1.0 + 0.05 * index), y=y[rows])
        env = {"CONTINUUM_SITE_DATA": str(root / site)}
        if site == POISONED:
            env["TINY_TRAINER_SCALE_UPDATE"] = "40"
        envs.append(env)
    return envs, test


@pytest.fixture(scope="module")
def sites(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """A cluster of a cloud head and the four site nodes, this process connected to it (the
    suite's session cluster stepped aside meanwhile)."""
    with own_ray_connection(request):
        yield from _site_cluster(tmp_path_factory)


def _site_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import ray

    root = tmp_path_factory.mktemp("sites")
    envs, test = _site_data(root)
    cluster = LocalRayCluster(
        tmp_path_factory.mktemp("ray"),
        head_labels={TIER: "cloud", SITE: "fra-dc"},
        head_cpus=1,
        edge_nodes=[{TIER: "site", SITE: s} for s in SITES],
        edge_env=envs,
        dashboard=True,  # the state API: which node ran each task
        env={"PYTHONPATH": _test_python_path()},
    )
    try:
        cluster.start()
        cluster.connect(RAY_TEST_NAMESPACE, log_to_driver=False)
        yield {"cluster": cluster, "test": test, "root": root}
    finally:
        ray.shutdown()
        cluster.stop()


def spec_of(sites: tuple[str, ...], **federated: Any) -> PipelineSpec:
    return PipelineSpec.from_dict(
        {
            "name": "tumour-risk",
            "tenant": "medica",
            "data_class": "restricted",
            "edge": {
                "model": "risk",
                "input": {"shape": [30]},
                "where": {TIER: "edge", SITE: f"in({','.join(sites)})"},
            },
            "uplink": {"policy": {"kind": "random", "rate": 0.1}},
            "retrain": {
                "trainer": TRAINER,
                "where": {TIER: "cloud"},
                "federated": {"round_timeout_s": 120, "quorum_wait_s": 0, **federated},
            },
            "gate": {"metric": "accuracy"},
        }
    )


def plan_of(spec: PipelineSpec) -> TrainingPlan:
    import ray

    nodes = {
        f"ray:{n['NodeID'][:12]}": dict(n.get("Labels") or {}) for n in ray.nodes() if n["Alive"]
    }
    return training_plan(POLICY, spec, nodes)


def trainer_of(
    spec: PipelineSpec, tmp_path: Path, records: list[dict[str, Any]], **kwargs: Any
) -> FederatedTrainer:
    return FederatedTrainer(
        spec, plan_of(spec), tmp_path / "federated.sqlite3", record=records.append, **kwargs
    )


def rounds_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == "federated_round"]


class TestThreeSitesProduceAModel:
    def test_rounds_train_at_each_site_and_the_model_learns(
        self, sites: dict[str, Any], tmp_path: Path
    ) -> None:
        from ray.util.state import list_tasks

        spec = spec_of(SITES[:3], rounds=2)
        plan = plan_of(spec)
        assert plan.mode == "federated" and sorted(plan.sites) == list(SITES[:3])
        records: list[dict[str, Any]] = []
        trainer = trainer_of(spec, tmp_path, records)
        result = trainer.train(
            "run-1", parent=None, base_model=None, base_graph=None, workdir=tmp_path / "run-1"
        )
        rounds = rounds_of(records)
        assert [r["round"] for r in rounds] == [1, 2]
        for record in rounds:
            assert record["participants"] == list(SITES[:3])
            assert record["skipped"] == {}
            assert all(record["sample_counts"][s] == 92 for s in SITES[:3])  # 4/5 of 115
            assert record["clipped"] == [] and record["excluded"] == []
            # What crossed each way: weights, config and spec down, weights and counts up.
            assert all(record["bytes_down"][s] > 400 for s in SITES[:3])
            assert all(record["bytes_up"][s] > 400 for s in SITES[:3])
        assert result.lineage["sha256"] == rounds[-1]["sha256"]
        assert result.lineage["rounds"] == 2
        assert result.lineage["aggregated_on"][TIER] == "cloud"  # this process: on the head
        x, y = sites["test"]
        assert evaluate(result.onnx_path, x, y, "accuracy") > 0.85

        scores = trainer.evaluate(result.onnx_path, None)
        assert sorted(scores.per_site) == list(SITES[:3])
        assert scores.size == 3 * 23 and scores.candidate > 0.85

        # Every site's task ran on a node of its site, and no task ran elsewhere.
        cluster: LocalRayCluster = sites["cluster"]
        site_of = {
            n["NodeID"]: (n.get("Labels") or {}).get(SITE) for n in __import__("ray").nodes()
        }
        tasks = list_tasks(
            address=cluster.dashboard_url,
            filters=[("type", "=", "NORMAL_TASK")],
            detail=True,
            limit=10_000,
            raise_on_missing_output=False,
        )
        ours = [t for t in tasks if t.name.startswith("federated-")]
        assert len([t for t in ours if t.name.startswith("federated-train:")]) == 6
        for task in ours:
            assert site_of[task.node_id] == task.name.split(":", 1)[1], task.name
        for task in tasks:  # Ray Data's block tasks too
            assert site_of.get(task.node_id) in SITES, (task.name, site_of.get(task.node_id))
        trainer.close()


@pytest.fixture(scope="module")
def parent(sites: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A current model (one clean round of the three sites): retraining starts from it."""
    folder = tmp_path_factory.mktemp("parent")
    trainer = trainer_of(spec_of(SITES[:3], rounds=1), folder, [])
    result = trainer.train(
        "run-0", parent=None, base_model=None, base_graph=None, workdir=folder / "run"
    )
    trainer.close()
    return result.pt_path, result.onnx_path


class TestTheAggregatorsPlace:
    def test_updates_do_not_meet_outside_the_plan_s_aggregator(
        self, sites: dict[str, Any], tmp_path: Path
    ) -> None:
        spec = spec_of(SITES[:3], rounds=1)
        plan = dataclasses.replace(plan_of(spec), aggregator=LabelSelector.parse({TIER: "hpc"}))
        trainer = FederatedTrainer(spec, plan, tmp_path / "federated.sqlite3")
        with pytest.raises(PlacementError, match=r"outside the plan's aggregator"):
            trainer.train("run-x", parent=None, base_model=None, base_graph=None, workdir=tmp_path)
        assert trainer.counters.rounds == 0
        trainer.close()


class TestAScaledUpUpdate:
    @pytest.mark.parametrize("action", ["clip", "exclude"])
    def test_is_held_to_the_bound_counted_and_recorded(
        self, sites: dict[str, Any], parent: tuple[Path, Path], tmp_path: Path, action: str
    ) -> None:
        spec = spec_of(("hospital-a", "hospital-b", POISONED), rounds=1, outliers=action)
        records: list[dict[str, Any]] = []
        trainer = trainer_of(spec, tmp_path, records)
        result = trainer.train(
            "run-p",
            parent="v1",
            base_model=parent[0],
            base_graph=parent[1],
            workdir=tmp_path / "run",
        )
        (record,) = rounds_of(records)
        norms = record["update_norms"]
        assert (
            norms[POISONED] > record["norm_bound"] >= max(norms["hospital-a"], norms["hospital-b"])
        )
        if action == "clip":
            assert record["clipped"] == [POISONED] and record["aggregated"] == sorted(
                record["participants"]
            )
            assert trainer.counters.clipped == 1
        else:
            assert record["excluded"] == [POISONED] and POISONED not in record["aggregated"]
            assert trainer.counters.excluded == 1
        x, y = sites["test"]
        assert evaluate(result.onnx_path, x, y, "accuracy") > 0.85
        trainer.close()


class TestASiteOfflineForARound:
    def test_is_skipped_then_rejoins_the_next_round(
        self, sites: dict[str, Any], tmp_path: Path
    ) -> None:
        flag = sites["root"] / "hospital-c" / "offline"
        flag.touch()
        records: list[dict[str, Any]] = []

        def back_after_round_one(record: dict[str, Any]) -> None:
            records.append(record)
            flag.unlink(missing_ok=True)

        spec = spec_of(SITES[:3], rounds=2)
        trainer = FederatedTrainer(
            spec, plan_of(spec), tmp_path / "federated.sqlite3", record=back_after_round_one
        )
        try:
            trainer.train("run-o", parent=None, base_model=None, base_graph=None, workdir=tmp_path)
        finally:
            flag.unlink(missing_ok=True)
            trainer.close()
        first, second = rounds_of(records)
        assert first["participants"] == ["hospital-a", "hospital-b"]
        assert "the site is offline" in first["skipped"]["hospital-c"]
        assert second["participants"] == list(SITES[:3]) and second["skipped"] == {}


class TestAHeadRestartMidTraining:
    def test_a_killed_head_resumes_after_the_last_completed_round(
        self, sites: dict[str, Any], tmp_path: Path
    ) -> None:
        cluster: LocalRayCluster = sites["cluster"]
        spec = spec_of(SITES[:3], rounds=3)
        plan = plan_of(spec)
        db = tmp_path / "federated.sqlite3"
        head = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.federated._head_process",
                cluster.address,
                RAY_TEST_NAMESPACE,
                spec.model_dump_json(),
                json.dumps(plan.to_record()),
                str(db),
                str(tmp_path / "first"),
            ],
            env=os.environ | cluster.client_env | {"PYTHONPATH": _test_python_path()},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and _completed_rounds(db) < 1:
                assert head.poll() is None, "the head process ended before round 1"
                time.sleep(0.2)
            assert _completed_rounds(db) >= 1, "round 1 did not complete"
            os.killpg(head.pid, signal.SIGKILL)  # the head dies mid-training
            head.wait(30)
        finally:
            if head.poll() is None:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait(30)
        assert head.stdout is not None
        before = [json.loads(line) for line in head.stdout.read().decode().splitlines()]
        head.stdout.close()
        done = _completed_rounds(db)
        assert 1 <= done < 3

        records: list[dict[str, Any]] = []
        second = FederatedTrainer(spec, plan, db, record=records.append)
        result = second.train(
            "run-2", parent=None, base_model=None, base_graph=None, workdir=tmp_path / "second"
        )
        second.close()
        (resumed,) = [r for r in records if r["event"] == "federated_resumed"]
        assert resumed["completed_rounds"] == done
        stored = [r for r in before if r["event"] == "federated_round" and r["round"] <= done]
        assert resumed["sha256"] == stored[-1]["sha256"]
        assert [r["round"] for r in rounds_of(records)] == list(range(done + 1, 4))
        assert result.lineage["resumed_from_round"] == done and result.lineage["rounds"] == 3


def _completed_rounds(db: Path) -> int:
    """Return the last round the head stored (0: none yet, or no database yet)."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as connection:
        try:
            row = connection.execute("SELECT MAX(round) FROM federated_rounds").fetchone()
        except sqlite3.OperationalError:  # the schema is not written yet
            return 0
    return int(row[0] or 0)


class TestTheControllerRetrainsFederated:
    def test_bootstrap_trains_gates_and_registers_with_federated_lineage(
        self, sites: dict[str, Any], tmp_path: Path
    ) -> None:
        from cloud_head.audit import AuditAction
        from cloud_head.model_card import model_lineage, render_model_card
        from tests.rollout_kit import CloudRig

        spec = spec_of(SITES[:3], rounds=1)
        rig = CloudRig(tmp_path, "medica")
        try:
            controller = rig.controller(spec, training_plan=plan_of(spec).to_record())
            first = controller.bootstrap()
            lineage = first.lineage["federated"]
            assert lineage["sites"] == list(SITES[:3]) and lineage["rounds"] == 1
            assert first.lineage["ray"] == {}  # no second copy of the federated lineage
            assert lineage["sample_counts"] == {"1": {s: 92 for s in SITES[:3]}}
            assert sorted(first.gate["federated"]["sites"]) == list(SITES[:3])
            assert first.gate["holdout_size"] == 69 and first.gate["passed"]

            controller.retrainer.run("a second federated run")
            last = controller.trainings.last()
            assert last is not None
            assert last.outcome == "registered" or last.outcome.startswith("rejected by the gate")
            gates = rig.records(AuditAction.GATE)
            assert gates[-1].details["current_score"] is not None  # judged against v1
            assert gates[-1].details["federated"]["sites"]["hospital-a"]["current"] is not None
            assert gates[-1].details["federated"]["bytes_down"]["hospital-a"] > 0

            runs = rig.records(AuditAction.TRAINING_RUN)
            started = [r for r in runs if r.details.get("event") == "started"]
            assert all(r.details["training_plan"]["mode"] == "federated" for r in started)
            rounds = [r for r in runs if r.details.get("event") == "federated_round"]
            assert len(rounds) == 2 and all(r.details["sha256"] for r in rounds)
            status = controller.status()["federated"]
            assert status["rounds"] == 2 and status["quorum"] == 2 and status["status"] is None

            card = render_model_card(model_lineage(first, rig.records(), None))
            assert "### Federated training" in card and lineage["sha256"] in card
            assert "| hospital-a | 23 |" in card
        finally:
            rig.close()


class TestTheSampleCountTrigger:
    def test_counts_the_labelled_samples_held_at_the_sites(
        self, sites: dict[str, Any], tmp_path: Path
    ) -> None:
        from cloud_head.store import SampleStore
        from continuum.spec import DataClass
        from continuum.wire.codec import SampleBatch, SampleRecord
        from tests.rollout_kit import CloudRig

        data = spec_of(SITES[:3], rounds=1).model_dump(mode="json")
        data["name"] = "tumour-count"  # its own samples in the sites' shared stores
        data["retrain"]["trigger"] = {"new_samples": 40}
        spec = PipelineSpec.from_dict(data)
        store = SampleStore(sites["root"] / "hospital-a" / "samples")
        records = tuple(
            SampleRecord(
                seq=seq,
                captured_at_ns=seq,
                tensor=np.full(30, seq, dtype=np.float32),
                label=seq % 2,  # labelled at the edge
            )
            for seq in range(45)
        )
        store.append(
            "medica", SampleBatch(spec.name, "scanner-a", "v1", DataClass.RESTRICTED, records)
        )
        store.flush()
        rig = CloudRig(tmp_path, "medica")
        try:
            controller = rig.controller(spec, training_plan=plan_of(spec).to_record())
            assert controller.retrainer.federated is not None
            assert controller.retrainer.federated.labelled_counts() == {
                "hospital-a": 45,
                "hospital-b": 0,
                "hospital-c": 0,
            }
            # The central store holds none of them; the trigger counts them at their site.
            assert rig.store.count("medica", spec.name) == 0
            due = controller.trigger.take(trained_on=0, last_trained_at=0.0, quota_refused_at=None)
            assert due is not None and due.reason.startswith("45 new labelled samples")
            assert controller.status()["labelled_samples"] == 45
            again = controller.trigger.take(
                trained_on=45, last_trained_at=0.0, quota_refused_at=None
            )
            assert again is None  # a run that began with them has trained on them
        finally:
            rig.close()


class TestASiteKilledMidRound:
    """Last in the module: the killed site's node stays down."""

    def test_is_skipped_when_the_quorum_answered(
        self, sites: dict[str, Any], tmp_path: Path
    ) -> None:
        from ray.util.state import list_tasks

        cluster: LocalRayCluster = sites["cluster"]
        spec = spec_of(SITES[:3], rounds=1, quorum=2)
        plan = plan_of(spec)  # while hospital-c's node is up
        records: list[dict[str, Any]] = []
        trainer = FederatedTrainer(
            spec, plan, tmp_path / "federated.sqlite3", record=records.append
        )
        outcome: dict[str, Any] = {}

        def train() -> None:
            try:
                outcome["result"] = trainer.train(
                    "run-k", parent=None, base_model=None, base_graph=None, workdir=tmp_path / "k"
                )
            except BaseException as error:  # reported to the test thread
                outcome["error"] = error

        slow = sites["root"] / "hospital-c" / "slow"
        slow.touch()  # the site's task runs long enough to be seen running, then killed
        thread = threading.Thread(target=train)
        thread.start()
        deadline = time.monotonic() + 120
        victim = next(n for n in cluster.nodes if n.labels.get(SITE) == "hospital-c")
        while time.monotonic() < deadline:
            running = list_tasks(
                address=cluster.dashboard_url,
                filters=[("name", "=", "federated-train:hospital-c"), ("state", "=", "RUNNING")],
                raise_on_missing_output=False,
            )
            if running:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the site's task never ran")
        kill_sessions([victim.pid], timeout_s=10)
        slow.unlink()
        thread.join(300)
        assert "error" not in outcome, outcome.get("error")
        (record,) = rounds_of(records)
        assert record["participants"] == ["hospital-a", "hospital-b"]
        assert list(record["skipped"]) == ["hospital-c"]
        assert trainer.counters.skipped == 1
        assert outcome["result"].onnx_path.is_file()
        trainer.close()

        # A quorum of all three cannot be reached while hospital-c is down: the round says so.
        strict = spec_of(SITES[:3], rounds=1, quorum=3, round_timeout_s=30)
        waiting = FederatedTrainer(strict, plan, tmp_path / "w.sqlite3")
        with pytest.raises(QuorumError, match=r"waiting for quorum: 2 of 3 sites answered"):
            waiting.train(
                "run-w", parent=None, base_model=None, base_graph=None, workdir=tmp_path / "w"
            )
        assert waiting.counters.quorum_waits == 1
        waiting.close()
