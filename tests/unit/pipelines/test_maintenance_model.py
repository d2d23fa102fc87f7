"""The maintenance autoencoder: export contract, calibration, trainer config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from continuum.errors import ConfigError
from pipelines.maintenance.data import INPUT_SHAPE, load_splits
from pipelines.maintenance.model import INPUT_NAME, OUTPUT_NAME, SpectralAutoencoder
from pipelines.maintenance.train import (
    FINE_TUNE,
    SCRATCH,
    Recipe,
    fit,
    load_state,
    precision_recall,
    recipe_for,
    rows_to_arrays,
    save,
    scores,
)

QUICK = Recipe(epochs=12)


@pytest.fixture(scope="module")
def model() -> SpectralAutoencoder:
    """A model fitted on the training split (fewer epochs than the demo: a unit test)."""
    train = load_splits().train
    return fit(train.x, train.y, recipe=QUICK, seed=0, threads=2)


class TestFit:
    def test_normal_windows_score_below_one_and_worn_ones_above(
        self, model: SpectralAutoencoder
    ) -> None:
        test = load_splits().test
        s = scores(model, test.x)
        assert np.median(s[test.wear < 0.3]) < 0.9
        assert np.median(s[test.wear > 0.8]) > 1.2
        assert (s[test.y == 0] > 1.0).mean() < 0.08

    def test_precision_and_recall_on_the_reserved_split_are_useful(
        self, model: SpectralAutoencoder
    ) -> None:
        test = load_splits().test
        precision, recall = precision_recall(model, test.x, test.y)
        assert precision > 0.8 and recall > 0.6

    def test_faulty_windows_never_enter_training(self) -> None:
        train = load_splits().train
        only_normal = fit(train.x, train.y, recipe=Recipe(epochs=1), seed=3)
        poisoned = fit(
            train.x,
            train.y,
            new_x=train.x[train.y == 1],
            new_y=train.y[train.y == 1],
            recipe=Recipe(epochs=1),
            seed=3,
        )
        for name, value in only_normal.state_dict().items():
            np.testing.assert_array_equal(value.numpy(), poisoned.state_dict()[name].numpy())

    def test_no_normal_window_is_refused(self) -> None:
        x = np.zeros((3, *INPUT_SHAPE), dtype=np.float32)
        with pytest.raises(ValueError, match="normal"):
            fit(x, np.ones(3, dtype=np.int64))


class TestExport:
    def test_onnx_returns_the_calibrated_score_batch_by_one(
        self, model: SpectralAutoencoder, tmp_path: Path
    ) -> None:
        pt, onnx_path = save(model, tmp_path)
        x = load_splits().test.x[:7]
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        assert out.shape == (7, 1) and out.dtype == np.float32
        assert (out >= 0).all()
        np.testing.assert_allclose(out[:, 0], scores(model, x), rtol=1e-3, atol=1e-4)
        reloaded = SpectralAutoencoder()
        reloaded.load_state_dict(load_state(pt))
        np.testing.assert_allclose(scores(reloaded, x), scores(model, x), rtol=1e-6)

    def test_fine_tuning_from_a_saved_model_keeps_normal_below_one(
        self, model: SpectralAutoencoder, tmp_path: Path
    ) -> None:
        pt, _ = save(model, tmp_path)
        splits = load_splits()
        tuned = fit(
            splits.train.x,
            splits.train.y,
            base_state=load_state(pt),
            recipe=Recipe(epochs=3, oversample=FINE_TUNE.oversample),
            seed=1,
        )
        assert np.median(scores(tuned, splits.test.x[splits.test.wear < 0.3])) < 1.0


class TestTrainerConfig:
    def test_unknown_keys_are_refused_naming_the_known_ones(self) -> None:
        with pytest.raises(ConfigError, match=r"unknown key.*epoch_count.*quantile"):
            recipe_for({"epoch_count": 3})

    def test_recipe_follows_base_model_and_overrides(self) -> None:
        assert recipe_for({}) == SCRATCH
        assert recipe_for({"base_model": "m.pt"}).oversample == FINE_TUNE.oversample
        assert recipe_for({"epochs": 5, "quantile": 0.95}).quantile == 0.95
        with pytest.raises(ConfigError, match="quantile"):
            recipe_for({"quantile": 1.5})
        with pytest.raises(ConfigError, match="whole number"):
            recipe_for({"epochs": 2.5})

    def test_rows_as_lists_or_bytes_become_windows(self) -> None:
        x = load_splits().test.x[:2]
        a, y = rows_to_arrays([x[0].ravel().tolist(), x[1].ravel().tobytes()], [0, 1])
        np.testing.assert_array_equal(a, x)
        assert y.tolist() == [0, 1]


class TestPipelineDeclaration:
    def test_the_pipeline_declares_the_models_shape_and_anomaly_contract(
        self, model: SpectralAutoencoder, tmp_path: Path
    ) -> None:
        from pipelines.predictive_maintenance import pipe

        edge = pipe.spec.edge
        assert tuple(edge.input.shape) == INPUT_SHAPE
        assert edge.task.kind == "anomaly" and edge.task.threshold == 1.0
        _, onnx_path = save(model, tmp_path)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        test = load_splits().test
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: test.x})
        flagged = edge.task.read(out).prediction.astype(bool)
        np.testing.assert_array_equal(flagged, scores(model, test.x) >= 1.0)
