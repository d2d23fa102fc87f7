"""A rollout judges the task's metric: counts from telemetry windows give precision, recall,
F1, MAE and RMSE over every labelled frame, and a rule rolls back on a drop of a share or a
rise of an error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as reference

from cloud_head._ramp import StepFigures, judge, quality_of
from continuum.spec import parse_rollback_rules
from continuum.wire.messages import Telemetry


def _window(version: str, y: np.ndarray, flagged: np.ndarray, errors: np.ndarray) -> Telemetry:
    return Telemetry(
        node="cam-1",
        pipeline="fraud",
        model_version=version,
        window_s=10.0,
        frames=len(y),
        uplinked=0,
        dropped=0,
        labelled=len(y),
        correct=int(np.count_nonzero(y == flagged)),
        labelled_positive=int(y.sum()),
        predicted_positive=int(flagged.sum()),
        true_positive=int(np.count_nonzero(y & flagged)),
        abs_error_sum=float(np.abs(errors).sum()),
        squared_error_sum=float(np.square(errors).sum()),
        ts=1.8e9,
    )


def test_window_counts_give_the_metrics_of_all_labelled_frames() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.2
    flagged = np.where(rng.random(300) < 0.8, y, ~y)
    errors = rng.normal(0, 2, 300)
    windows = [
        _window("v2", y[i : i + 100], flagged[i : i + 100], errors[i : i + 100])
        for i in range(0, 300, 100)
    ]
    expected = {
        "accuracy": reference.accuracy_score(y, flagged),
        "precision": reference.precision_score(y, flagged),
        "recall": reference.recall_score(y, flagged),
        "f1": reference.f1_score(y, flagged),
        "mae": float(np.abs(errors).mean()),
        "rmse": math.sqrt(float(np.square(errors).mean())),
    }
    for metric, value in expected.items():
        got, labelled = quality_of(windows, "v2", metric)
        assert labelled == 300
        assert got == pytest.approx(value), metric
    assert quality_of(windows, "v1", "recall") == (None, 0)


def test_precision_without_a_flagged_frame_is_unknown_not_zero() -> None:
    y = np.array([True, False, False])
    window = _window("v2", y, np.zeros(3, dtype=bool), np.zeros(3))
    assert quality_of([window], "v2", "precision") == (None, 3)


def _figures(candidate: float, baseline: float) -> StepFigures:
    return StepFigures(
        labelled=200,
        candidate_accuracy=candidate,
        baseline_accuracy=baseline,
        latency_windows=0,
        candidate_p95_ms=None,
        baseline_p95_ms=None,
    )


def test_a_recall_drop_rolls_back_and_says_so() -> None:
    rules = parse_rollback_rules("recall drop 0.05")
    verdict = judge(rules, _figures(candidate=0.70, baseline=0.80))
    assert verdict.action == "roll back"
    assert "recall 0.700 fell more than 0.05 below" in verdict.reason
    assert judge(rules, _figures(candidate=0.78, baseline=0.80)).action == "advance"


def test_an_error_metric_rolls_back_on_a_rise() -> None:
    rules = parse_rollback_rules("mae rise 2.5")
    verdict = judge(rules, _figures(candidate=14.0, baseline=10.0))
    assert verdict.action == "roll back"
    assert "mae 14.000 rose more than 2.5 above" in verdict.reason
    assert judge(rules, _figures(candidate=8.0, baseline=10.0)).action == "advance"
