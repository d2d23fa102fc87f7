"""The screening model: fit, federated averaging, ONNX export, the loop's config and replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from continuum.errors import ConfigError, InputMismatchError
from pipelines.hospitals.data import SITES, load_splits
from pipelines.hospitals.train import (
    FINE_TUNE,
    SCRATCH,
    average_states,
    fit,
    predict,
    recipe_for,
    save,
    scores,
)


class TestFit:
    def test_learns_the_pooled_reference_to_screen_the_reserved_tests(self) -> None:
        splits = load_splits()
        ref, test = splits.pooled("reference"), splits.pooled("test")
        model = fit(ref.x, ref.y)
        assert scores(model, test.x, test.y)["accuracy"] >= 0.93

    def test_refuses_labels_other_than_benign_and_malignant(self) -> None:
        with pytest.raises(InputMismatchError, match="labels 0"):
            fit(np.zeros((4, 30), np.float32), np.array([0, 1, 2, 1]))

    def test_refuses_rows_of_another_width(self) -> None:
        with pytest.raises(InputMismatchError, match="measurement"):
            fit(np.zeros((4, 12), np.float32), np.array([0, 1, 0, 1]))


class TestAverage:
    def test_weights_each_state_by_its_rows(self) -> None:
        a = {"w": torch.tensor([0.0, 4.0])}
        b = {"w": torch.tensor([4.0, 0.0])}
        out = average_states([a, b], [3, 1])
        assert torch.allclose(out["w"], torch.tensor([1.0, 3.0]))

    def test_federated_rounds_beat_the_weakest_site_alone(self) -> None:
        splits = load_splits()
        test = splits.pooled("test")
        alone = [
            scores(fit(splits.reference[s].x, splits.reference[s].y), test.x, test.y)["accuracy"]
            for s in SITES
        ]
        state = None
        for r in range(5):
            states, counts = [], []
            for site in SITES:
                ref = splits.reference[site]
                model = fit(
                    ref.x, ref.y, base_state=state, recipe=FINE_TUNE if state else SCRATCH, seed=r
                )
                states.append(model.state_dict())
                counts.append(len(ref.y))
            state = average_states(states, counts)
        from pipelines.hospitals.model import ScreeningMLP

        model = ScreeningMLP()
        model.load_state_dict(state)
        assert scores(model, test.x, test.y)["accuracy"] > min(alone)


class TestExport:
    def test_the_onnx_graph_answers_as_the_model(self, tmp_path: Path) -> None:
        ref = load_splits().reference["hosp-lux"]
        model = fit(ref.x, ref.y, recipe=FINE_TUNE)
        _, onnx_path = save(model, tmp_path)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"measurements": ref.x[:7]})
        assert out.shape == (7, 1)
        assert np.allclose(out[:, 0], predict(model, ref.x[:7]), atol=1e-5)


class TestLoopConfig:
    def test_a_misspelt_option_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="epoch"):
            recipe_for({"epoch": 3})

    def test_a_base_model_fine_tunes(self) -> None:
        assert recipe_for({"base_model": "m.pt"}).epochs == FINE_TUNE.epochs
        assert recipe_for({"base_model": "m.pt", "epochs": 2}).epochs == 2
