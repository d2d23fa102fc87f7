"""The evaluation gate: score ONNX models on a holdout and decide whether a candidate may ship.

Models are scored with ONNX Runtime, the same runtime and artifact the edge runs, so the gate
judges exactly what would be rolled out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from continuum.errors import InputMismatchError
from continuum.spec import GateMetric, GateSpec

__all__ = ["GateResult", "evaluate", "f1_macro", "gate", "score"]

#: Rows per ONNX Runtime call; bounds memory on large holdouts.
EVAL_BATCH = 512


@dataclass(frozen=True, kw_only=True)
class GateResult:
    """The gate's verdict: scores of both models, the required gain and why it passed or not.

    ``margin`` is the gain the spec requires (``GateSpec.min_gain``); ``gain`` is what the
    candidate achieved over the current model (None when there is no current model).
    """

    passed: bool
    candidate_score: float
    current_score: float | None
    margin: float
    reason: str
    gain: float | None = None


def f1_macro(y_true: NDArray[np.int64], y_pred: NDArray[np.int64]) -> float:
    """Return the macro-averaged F1 over the classes present in ``y_true`` or ``y_pred``."""
    classes = np.union1d(y_true, y_pred)
    scores = []
    for c in classes:
        tp = float(np.sum((y_pred == c) & (y_true == c)))
        fp = float(np.sum((y_pred == c) & (y_true != c)))
        fn = float(np.sum((y_pred != c) & (y_true == c)))
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def score(y_true: NDArray[np.int64], y_pred: NDArray[np.int64], metric: GateMetric) -> float:
    """Return ``metric`` of predictions ``y_pred`` against ``y_true``."""
    if metric == "accuracy":
        return float(np.mean(y_true == y_pred))
    if metric == "f1_macro":
        return f1_macro(y_true, y_pred)
    raise ValueError(f"unknown gate metric {metric!r}; use 'accuracy' or 'f1_macro'")


def _predict(model: Path, x: NDArray[np.generic]) -> NDArray[np.int64]:
    from continuum.backends import open_backend

    backend = open_backend("onnxruntime", model, max_batch=EVAL_BATCH)
    try:
        parts = [
            np.asarray(backend.infer(x[start : start + EVAL_BATCH])).argmax(axis=1)
            for start in range(0, len(x), EVAL_BATCH)
        ]
    finally:
        backend.close()
    return np.concatenate(parts).astype(np.int64)


def evaluate(
    model: Path | str,
    x: NDArray[np.generic],
    y: NDArray[np.integer],
    metric: GateMetric = "accuracy",
) -> float:
    """Score the ONNX model at ``model`` on holdout images ``x`` with labels ``y``.

    Raises:
        InputMismatchError: the holdout is empty, ``x`` and ``y`` differ in length, or ``x``
            does not fit the model's input.
        BackendError: the model does not load or run.
    """
    x = np.asarray(x)
    y_true = np.asarray(y, dtype=np.int64).reshape(-1)
    if len(x) != len(y_true):
        raise InputMismatchError(
            "holdout images and labels differ in length",
            expected=f"{len(x)} labels",
            got=str(len(y_true)),
        )
    if len(x) == 0:
        raise InputMismatchError(
            "the holdout is empty", expected="at least one labelled sample", got="0"
        )
    return score(y_true, _predict(Path(model), x), metric)


def gate(
    candidate: Path | str,
    current: Path | str | None,
    holdout: tuple[NDArray[np.generic], NDArray[np.integer]],
    spec: GateSpec,
) -> GateResult:
    """Decide whether ``candidate`` may replace ``current``: it must gain ``spec.min_gain``.

    Both ONNX models are scored on the same ``holdout`` (x, y) with ``spec.metric``.  Without a
    current model the candidate passes on its score alone.

    Raises:
        InputMismatchError, BackendError: as ``evaluate``.
    """
    x, y = holdout
    metric: GateMetric = spec.metric
    candidate_score = evaluate(candidate, x, y, metric)
    if current is None:
        return GateResult(
            passed=True,
            candidate_score=candidate_score,
            current_score=None,
            margin=spec.min_gain,
            reason=f"no current model: the first model passes ({metric} {candidate_score:.4f})",
        )
    current_score = evaluate(current, x, y, metric)
    gain = candidate_score - current_score
    # Compare with a tolerance so a tie at min_gain=0 is not lost to float rounding.
    passed = gain >= spec.min_gain - 1e-12
    verdict = "passes" if passed else "fails"
    reason = (
        f"{verdict}: {metric} {candidate_score:.4f} vs current {current_score:.4f} "
        f"(gain {gain:+.4f}, required {spec.min_gain:+.4f}) on {len(y)} holdout samples"
    )
    return GateResult(
        passed=passed,
        candidate_score=candidate_score,
        current_score=current_score,
        margin=spec.min_gain,
        reason=reason,
        gain=gain,
    )
