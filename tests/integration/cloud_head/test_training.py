"""Retraining on a real local Ray cluster: placement by label, the candidate files, failures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import ray

from cloud_head.training import TrainingError, run_training
from continuum.embedded import LocalRayCluster
from continuum.errors import OperationTimeoutError, PlacementError
from continuum.labels import SITE, TIER
from pipelines.digits.data import load_splits
from pipelines.digits.model import DigitsCNN
from pipelines.digits.train import save

pytestmark = pytest.mark.integration

TRAINER = "pipelines.digits.train:train_loop_per_worker"


def failing_loop(config: dict[str, Any]) -> None:
    """A training loop that breaks half-way, as a bug in a trainer would."""
    raise RuntimeError("the trainer broke on purpose")


def some_samples(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    splits = load_splits()
    return splits.stream_x[:n], splits.stream_y[:n]


class TestTrainingPlacedByLabel:
    def test_worker_runs_on_the_cloud_node_and_the_candidate_loads(
        self, ray_cluster: LocalRayCluster, tmp_path: Path
    ) -> None:
        x, y = some_samples()
        result = run_training(
            TRAINER,
            x,
            y,
            base_model=None,
            workdir=tmp_path / "run",
            epochs=2,
            seed=0,
            label_selector={TIER: "cloud"},
            gpus=0,
            cpus=1,
        )
        assert result.ray_info["node_labels"][TIER] == "cloud"
        assert result.ray_info["label_selector"] == {TIER: "cloud"}
        session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
        probs = session.run(None, {"input": x[:5]})[0]
        assert probs.shape == (5, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        assert result.pt_path.is_file()
        assert result.metrics["new_samples"] == len(x)
        assert result.onnx_path.parent == tmp_path / "run" / "candidate"

    def test_the_first_model_trains_from_no_rows_on_the_pipelines_own_data(
        self, ray_cluster: LocalRayCluster, tmp_path: Path
    ) -> None:
        result = run_training(
            TRAINER,
            np.zeros((0, 1, 8, 8), dtype=np.float32),
            np.zeros(0, dtype=np.int64),
            base_model=None,
            workdir=tmp_path / "run",
            epochs=1,
            seed=0,
            cpus=1,
        )
        assert result.metrics["new_samples"] == 0
        assert result.metrics["replay_samples"] == 700
        assert result.metrics["fine_tuned"] is False
        assert result.onnx_path.is_file()

    def test_a_retrain_fine_tunes_the_parent_checkpoint(
        self, ray_cluster: LocalRayCluster, tmp_path: Path
    ) -> None:
        parent_pt, _ = save(DigitsCNN(), tmp_path / "parent")
        x, y = some_samples()
        result = run_training(
            TRAINER,
            x,
            y,
            base_model=parent_pt,
            workdir=tmp_path / "run",
            epochs=1,
            seed=0,
            label_selector={TIER: "!edge"},
            cpus=1,
        )
        assert result.metrics["fine_tuned"] is True
        assert result.ray_info["node_labels"][TIER] == "cloud"


class TestTrainingThatCannotRun:
    def test_a_selector_no_node_matches_is_refused_at_once(
        self, ray_cluster: LocalRayCluster, tmp_path: Path
    ) -> None:
        x, y = some_samples()
        started = time.monotonic()
        with pytest.raises(PlacementError, match="no alive Ray node matches"):
            run_training(
                TRAINER,
                x,
                y,
                base_model=None,
                workdir=tmp_path / "run",
                label_selector={TIER: "hpc"},
                cpus=1,
            )
        assert time.monotonic() - started < 10
        assert not (tmp_path / "run" / "candidate").exists()

    def test_a_node_too_small_for_the_worker_is_refused(
        self, ray_cluster: LocalRayCluster, tmp_path: Path
    ) -> None:
        x, y = some_samples()
        with pytest.raises(PlacementError, match="too small"):
            run_training(
                TRAINER,
                x,
                y,
                base_model=None,
                workdir=tmp_path / "run",
                label_selector={TIER: "edge"},
                cpus=8,
            )

    def test_a_busy_matching_node_times_out_within_the_bound(
        self, ray_cluster: LocalRayCluster, tmp_path: Path
    ) -> None:
        @ray.remote(num_cpus=1, label_selector={SITE: "lux-1"})
        class Hog:
            def ready(self) -> bool:
                return True

        hog = Hog.remote()  # type: ignore[attr-defined]
        ray.get(hog.ready.remote(), timeout=60)
        x, y = some_samples()
        started = time.monotonic()
        try:
            with pytest.raises(OperationTimeoutError, match="within 3 s"):
                run_training(
                    TRAINER,
                    x,
                    y,
                    base_model=None,
                    workdir=tmp_path / "run",
                    label_selector={SITE: "lux-1"},
                    cpus=1,
                    start_timeout_s=3,
                )
        finally:
            ray.kill(hog)
        assert time.monotonic() - started < 60
        assert not (tmp_path / "run" / "candidate").exists()

    def test_a_failing_loop_raises_and_leaves_no_candidate(
        self, ray_cluster: LocalRayCluster, tmp_path: Path
    ) -> None:
        x, y = some_samples()
        ref = f"{failing_loop.__module__}:failing_loop"
        with pytest.raises(TrainingError, match="broke on purpose"):
            run_training(
                ref, x, y, base_model=None, workdir=tmp_path / "run", label_selector={}, cpus=1
            )
        assert not (tmp_path / "run" / "candidate").exists()
        assert not list((tmp_path / "run").glob(".candidate-*"))
