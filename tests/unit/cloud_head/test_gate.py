"""The evaluation gate: ONNX models scored on a holdout, and the verdict on a candidate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from torch import nn

from cloud_head.gate import GateHoldout, evaluate, f1_macro, gate
from continuum.errors import BackendError, InputMismatchError
from continuum.spec import GateSpec
from pipelines.digits.data import load_splits
from pipelines.digits.model import export_onnx
from pipelines.digits.train import SCRATCH, fit


class ConstantClass(nn.Module):
    """A model that always answers ``label``: its accuracy is that class's share."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 10) + 0.0 * x.reshape(x.shape[0], -1)[:, :1]
        logits[:, self.label] = 5.0
        return logits


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained digits model and a constant one, exported as ONNX."""
    root = tmp_path_factory.mktemp("gate-models")
    splits = load_splits()
    good = fit(splits.train_x, splits.train_y, recipe=SCRATCH, seed=0, threads=2)
    return {
        "good": export_onnx(good, root / "good.onnx"),
        "always-3": export_onnx(ConstantClass(3).eval(), root / "always-3.onnx"),
    }


@pytest.fixture(scope="module")
def holdout() -> tuple[np.ndarray, np.ndarray]:
    splits = load_splits()
    return splits.test_x, splits.test_y


class TestScores:
    def test_accuracy_of_a_constant_model_is_its_class_share(
        self, models: dict[str, Path], holdout: tuple[np.ndarray, np.ndarray]
    ) -> None:
        x, y = holdout
        assert evaluate(models["always-3"], x, y) == pytest.approx(float(np.mean(y == 3)))

    def test_a_trained_model_scores_high_on_both_metrics(
        self, models: dict[str, Path], holdout: tuple[np.ndarray, np.ndarray]
    ) -> None:
        x, y = holdout
        assert evaluate(models["good"], x, y, "accuracy") >= 0.95
        assert evaluate(models["good"], x, y, "f1_macro") >= 0.95

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_macro_f1_agrees_with_scikit_learn(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        y_true = rng.integers(0, 10, size=200)
        y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 8, size=200))
        assert f1_macro(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"))

    def test_an_empty_holdout_is_refused(self, models: dict[str, Path]) -> None:
        with pytest.raises(InputMismatchError, match="empty"):
            evaluate(models["good"], np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64))

    def test_images_and_labels_of_different_lengths_are_refused(
        self, models: dict[str, Path], holdout: tuple[np.ndarray, np.ndarray]
    ) -> None:
        x, y = holdout
        with pytest.raises(InputMismatchError, match="differ in length"):
            evaluate(models["good"], x, y[:-1])

    def test_images_that_do_not_fit_the_model_are_refused(self, models: dict[str, Path]) -> None:
        with pytest.raises(InputMismatchError):
            evaluate(models["good"], np.zeros((4, 1, 9, 9), np.float32), np.zeros(4, np.int64))

    def test_a_file_that_is_not_a_model_raises_a_backend_error(self, tmp_path: Path) -> None:
        broken = tmp_path / "broken.onnx"
        broken.write_bytes(b"not an onnx model")
        with pytest.raises(BackendError):
            evaluate(broken, np.zeros((1, 1, 8, 8), np.float32), np.zeros(1, np.int64))


class TestVerdict:
    def test_a_better_candidate_passes_with_its_gain(
        self, models: dict[str, Path], holdout: tuple[np.ndarray, np.ndarray]
    ) -> None:
        result = gate(models["good"], models["always-3"], holdout, GateSpec(min_gain=0.01))
        assert result.passed
        assert result.current_score is not None
        assert result.gain == pytest.approx(result.candidate_score - result.current_score)
        assert result.margin == 0.01
        assert "passes" in result.reason

    def test_a_worse_candidate_fails_and_says_why(
        self, models: dict[str, Path], holdout: tuple[np.ndarray, np.ndarray]
    ) -> None:
        result = gate(models["always-3"], models["good"], holdout, GateSpec())
        assert not result.passed
        assert result.gain is not None and result.gain < 0
        assert "fails" in result.reason and "accuracy" in result.reason

    def test_a_gain_below_the_required_margin_fails(
        self, models: dict[str, Path], holdout: tuple[np.ndarray, np.ndarray]
    ) -> None:
        result = gate(models["good"], models["good"], holdout, GateSpec(min_gain=0.01))
        assert result.gain == 0.0
        assert not result.passed

    def test_an_equal_candidate_passes_when_no_gain_is_required(
        self, models: dict[str, Path], holdout: tuple[np.ndarray, np.ndarray]
    ) -> None:
        assert gate(models["good"], models["good"], holdout, GateSpec(min_gain=0.0)).passed

    def test_the_first_model_passes_on_its_own_score(
        self, models: dict[str, Path], holdout: tuple[np.ndarray, np.ndarray]
    ) -> None:
        result = gate(models["always-3"], None, holdout, GateSpec(min_gain=0.5))
        assert result.passed and result.current_score is None
        assert "first model" in result.reason

    def test_the_spec_metric_is_the_one_scored(
        self, models: dict[str, Path], holdout: tuple[np.ndarray, np.ndarray]
    ) -> None:
        x, y = holdout
        result = gate(models["good"], models["always-3"], holdout, GateSpec(metric="f1_macro"))
        assert result.candidate_score == pytest.approx(evaluate(models["good"], x, y, "f1_macro"))
        assert result.current_score == pytest.approx(
            f1_score(y, np.full_like(y, 3), average="macro")
        )


class TestHoldoutParts:
    def test_each_part_is_scored_apart_and_the_verdict_is_on_both(
        self, models: dict[str, Path], holdout: tuple[np.ndarray, np.ndarray]
    ) -> None:
        x, y = holdout
        threes = y == 3  # an edge slice the constant model gets all right
        parts = GateHoldout(
            reference_x=x[:200],
            reference_y=y[:200],
            edge_x=x[threes],
            edge_y=y[threes],
            edge_per_node={"cam-1": int(threes.sum()) - 5, "cam-2": 5},
        )

        result = gate(models["good"], models["always-3"], parts, GateSpec())

        reference, edge = result.parts["reference"], result.parts["edge"]
        assert (reference.size, edge.size) == (200, int(threes.sum()))
        assert reference.candidate_score == pytest.approx(
            evaluate(models["good"], x[:200], y[:200])
        )
        assert reference.current_score == pytest.approx(float(np.mean(y[:200] == 3)))
        assert edge.current_score == 1.0
        both_x = np.concatenate([x[:200], x[threes]])
        both_y = np.concatenate([y[:200], y[threes]])
        assert result.candidate_score == pytest.approx(evaluate(models["good"], both_x, both_y))
        assert result.edge_per_node == {"cam-1": int(threes.sum()) - 5, "cam-2": 5}
        assert f"edge {edge.size} from 2 node(s)" in result.reason
        assert "reference 200" in result.reason

    def test_an_empty_edge_slice_leaves_the_reference_alone(
        self, models: dict[str, Path], holdout: tuple[np.ndarray, np.ndarray]
    ) -> None:
        x, y = holdout
        parts = GateHoldout(
            reference_x=x, reference_y=y, edge_x=x[:0], edge_y=np.zeros(0, np.int64)
        )

        result = gate(models["good"], None, parts, GateSpec())

        assert list(result.parts) == ["reference"]
        assert result.candidate_score == result.parts["reference"].candidate_score

    def test_no_part_at_all_names_the_fix(self, models: dict[str, Path]) -> None:
        empty = GateHoldout(edge_x=np.zeros((0, 1, 8, 8), np.float32), edge_y=np.zeros(0, np.int64))

        with pytest.raises(InputMismatchError, match="declare a reference holdout"):
            gate(models["good"], None, empty, GateSpec())
