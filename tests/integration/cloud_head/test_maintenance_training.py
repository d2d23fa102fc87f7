"""The maintenance trainer on a real local Ray cluster: a retrain on uplinked sensor windows
fine-tunes the parent and publishes a candidate whose output meets the anomaly contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cloud_head.training import run_training
from continuum import task
from continuum.embedded import LocalRayCluster
from continuum.labels import TIER
from pipelines.maintenance.data import INPUT_SHAPE, drifted_split, load_splits
from pipelines.maintenance.train import Recipe, fit, save

pytestmark = pytest.mark.integration

TRAINER = "pipelines.maintenance.train:train_loop_per_worker"


class TestMaintenanceRetrain:
    def test_a_retrain_on_uplinked_windows_yields_a_calibrated_candidate(
        self, ray_cluster: LocalRayCluster, tmp_path: Path
    ) -> None:
        train = load_splits().train
        parent = fit(train.x[:200], train.y[:200], recipe=Recipe(epochs=1))
        parent_pt, _ = save(parent, tmp_path / "parent")
        uplinked = drifted_split("machine_b", "stream", n_machines=2)
        result = run_training(
            TRAINER,
            uplinked.x,
            uplinked.y,
            base_model=parent_pt,
            workdir=tmp_path / "run",
            epochs=2,
            seed=0,
            label_selector={TIER: "cloud"},
            cpus=1,
            config={"shape": list(INPUT_SHAPE), "quantile": 0.95},
        )
        assert result.metrics["fine_tuned"] is True
        assert result.metrics["new_samples"] == len(uplinked.y)
        assert result.metrics["new_faulty"] == int(uplinked.y.sum()) > 0
        assert result.metrics["recipe_quantile"] == 0.95
        session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
        (scores,) = session.run(["score"], {"input": uplinked.x[:16]})
        outputs = task.anomaly(threshold=1.0).read(scores)
        assert scores.shape == (16, 1) and scores.dtype == np.float32
        assert outputs.prediction.shape == (16,)
