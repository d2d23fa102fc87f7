"""The fraud trainer's Ray Train loop on a real local Ray cluster: first model and fine-tune."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cloud_head.training import run_training
from continuum import metrics
from continuum.embedded import LocalRayCluster
from pipelines.fraud.data import load_splits
from pipelines.fraud.features import N_FEATURES

pytestmark = pytest.mark.integration

TRAINER = "pipelines.fraud.train:train_loop_per_worker"


class TestFraudTrainingOnRay:
    def test_first_model_then_a_fine_tune_on_uplinked_rows(
        self, ray_cluster: LocalRayCluster, tmp_path: Path
    ) -> None:
        first = run_training(
            TRAINER,
            np.zeros((0, N_FEATURES), dtype=np.float32),
            np.zeros(0, dtype=np.int64),
            base_model=None,
            workdir=tmp_path / "first",
            epochs=3,
            cpus=1,
            config={"shape": [N_FEATURES]},
        )
        assert first.metrics["replay_samples"] == len(load_splits().train.y)
        assert first.metrics["fine_tuned"] is False
        assert first.metrics["validation_recall_at_fpr_0.01"] > 0.3

        stream = load_splits().stream_after.at_branch("lux-gare")
        picked = np.flatnonzero(stream.y == 1)[:40]
        picked = np.r_[picked, np.arange(200)]
        second = run_training(
            TRAINER,
            np.array(stream.x[picked]),
            np.array(stream.y[picked]),
            base_model=first.pt_path,
            workdir=tmp_path / "second",
            epochs=2,
            cpus=1,
            config={"shape": [N_FEATURES]},
        )
        assert second.metrics["fine_tuned"] is True
        assert second.metrics["new_samples"] == len(picked)
        assert second.metrics["new_frauds"] == int(stream.y[picked].sum())
        session = ort.InferenceSession(str(second.onnx_path), providers=["CPUExecutionProvider"])
        after = load_splits().test_after_drift_branch
        (scores,) = session.run(None, {"input": np.array(after.x)})
        assert scores.shape == (len(after.y), 1) and scores.dtype == np.float32
        assert ((scores >= 0) & (scores <= 1)).all()
        assert metrics.roc_auc(after.y, scores) > 0.85
