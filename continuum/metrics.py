"""Task metrics the gate, the rollout's rollback rule and telemetry score models with.

numpy only (no scikit-learn at run time: the edge install stays slim), vectorised, and each
checked against scikit-learn's own function in ``tests/unit/continuum/test_metrics.py``.
Every function refuses bad input with an ``InputMismatchError`` that names the problem:
an empty input, arrays of different lengths, NaN or infinite values, labels that are not
0/1 where a binary task needs them, or a single class where a metric needs both.

Binary scores follow one convention throughout: a row is predicted positive when
``score >= threshold``.  Where a ratio has a zero denominator (no predicted positives for
precision, no positives for recall) the metric is 0.0, as scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from continuum.errors import InputMismatchError

__all__ = [
    "accuracy",
    "f1_at",
    "f1_macro",
    "mae",
    "pr_auc",
    "precision_at",
    "recall_at",
    "recall_at_fpr",
    "rmse",
    "roc_auc",
]


def _vector(values: ArrayLike, name: str) -> NDArray[np.generic]:
    """Return ``values`` as a 1-D array; an (n, 1) column is taken as its n values."""
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InputMismatchError(
            f"{name} must be one value per row",
            expected="shape (n,) or (n, 1)",
            got=str(array.shape),
        )
    if array.dtype.kind not in "biuf":
        raise InputMismatchError(
            f"{name} must be numeric",
            expected="bool, integer or float values",
            got=str(array.dtype),
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputMismatchError(
            f"{name} holds NaN or infinite values; drop or impute those rows first",
            expected="finite values",
            got=f"{bad} non-finite of {len(array)}",
        )
    return array


def _pair(
    y_true: ArrayLike, other: ArrayLike, other_name: str
) -> tuple[NDArray[np.generic], NDArray[np.generic]]:
    """Check ``y_true`` and ``other`` as two non-empty vectors of the same length."""
    truth = _vector(y_true, "y_true")
    values = _vector(other, other_name)
    if len(truth) != len(values):
        raise InputMismatchError(
            f"y_true and {other_name} differ in length; pass one {other_name} per label",
            expected=f"{len(truth)} values of {other_name}",
            got=str(len(values)),
        )
    if len(truth) == 0:
        raise InputMismatchError(
            "no rows to score: a metric of an empty set is undefined",
            expected="at least one row",
            got="0",
        )
    return truth, values


def _binary_labels(y_true: NDArray[np.generic]) -> NDArray[np.bool_]:
    """Return ``y_true`` as booleans; refuse anything but 0/1 (or False/True)."""
    outside = ~np.isin(y_true, (0, 1))
    if outside.any():
        seen = np.unique(y_true[outside])[:5].tolist()
        raise InputMismatchError(
            "binary metrics need labels 0 (negative) and 1 (positive); map the classes first",
            expected="labels in {0, 1}",
            got=f"other values, e.g. {seen}",
        )
    return np.asarray(y_true == 1, dtype=np.bool_)


def _both_classes(positive: NDArray[np.bool_], metric: str) -> tuple[int, int]:
    """Return (positives, negatives); refuse a set holding only one class."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise InputMismatchError(
            f"{metric} needs both classes in y_true; score it on a set with positives and "
            "negatives (a larger or stratified holdout)",
            expected="at least one 0 and one 1",
            got=f"{n_pos} positives and {n_neg} negatives",
        )
    return n_pos, n_neg


def _curve(
    y_true: ArrayLike, score: ArrayLike, metric: str
) -> tuple[NDArray[np.int64], NDArray[np.int64], int, int]:
    """Return cumulative true and false positives at each distinct threshold, descending.

    Entry i counts the rows with ``score >= t_i``, where ``t_i`` runs over the distinct scores
    from the largest down; rows with tied scores always fall on the same side of a threshold.
    """
    truth, values = _pair(y_true, score, "score")
    positive = _binary_labels(truth)
    n_pos, n_neg = _both_classes(positive, metric)
    scores = values.astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    hits = positive[order].astype(np.int64)
    # The last row of each run of tied scores closes one threshold.
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    tps = np.cumsum(hits)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps, fps, n_pos, n_neg


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Return the share of rows whose predicted class equals the true class."""
    truth, pred = _pair(y_true, y_pred, "y_pred")
    return float(np.mean(truth == pred))


def f1_macro(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Return the unweighted mean of the per-class F1 over the classes in either array.

    A class with no true, no predicted and hence no correct rows cannot occur (it would be in
    neither array); a class predicted but never true scores 0, as scikit-learn's
    ``f1_score(average="macro", zero_division=0)``.
    """
    truth, pred = _pair(y_true, y_pred, "y_pred")
    classes, inverse = np.unique(np.concatenate([truth, pred]), return_inverse=True)
    t, p = inverse[: len(truth)], inverse[len(truth) :]
    k = len(classes)
    tp = np.bincount(t[t == p], minlength=k).astype(np.float64)
    true_count = np.bincount(t, minlength=k)
    pred_count = np.bincount(p, minlength=k)
    # 2tp / (2tp + fp + fn) = 2tp / (true + predicted); never 0 for a class that occurs.
    return float(np.mean(2 * tp / (true_count + pred_count)))


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Return the mean absolute error of ``y_pred`` against ``y_true``."""
    truth, pred = _pair(y_true, y_pred, "y_pred")
    return float(np.mean(np.abs(truth.astype(np.float64) - pred.astype(np.float64))))


def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Return the root mean squared error of ``y_pred`` against ``y_true``."""
    truth, pred = _pair(y_true, y_pred, "y_pred")
    return float(np.sqrt(np.mean((truth.astype(np.float64) - pred.astype(np.float64)) ** 2)))


def roc_auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """Return the area under the ROC curve: P(a random positive outscores a random negative).

    Computed from ranks (Mann-Whitney U) with a tie counted as half a win, which is the
    trapezoidal area scikit-learn's ``roc_auc_score`` gives.

    Raises:
        InputMismatchError: empty, different lengths, non-finite scores, labels not 0/1, or a
            single class.
    """
    truth, values = _pair(y_true, score, "score")
    positive = _binary_labels(truth)
    n_pos, n_neg = _both_classes(positive, "roc_auc")
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: the ranks it spans, averaged.
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse.reshape(-1)][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def pr_auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """Return the average precision: sum over thresholds of (R_k - R_{k-1}) * P_k.

    The step-wise area under the precision-recall curve (no interpolation between points),
    as scikit-learn's ``average_precision_score``; a chance-level model scores about the
    share of positives, not 0.5.

    Raises:
        InputMismatchError: as ``roc_auc``.
    """
    tps, fps, n_pos, _ = _curve(y_true, score, "pr_auc")
    precision = tps / (tps + fps)
    recall_gain = np.diff(tps, prepend=0) / n_pos
    return float(np.sum(recall_gain * precision))


def recall_at_fpr(y_true: ArrayLike, score: ArrayLike, max_fpr: float) -> float:
    """Return the largest recall among thresholds whose false-positive rate is <= ``max_fpr``.

    The thresholds are every distinct score (positive when ``score >= t``) plus one above
    them all (recall 0, FPR 0).  Tied scores are never split: a threshold takes a run of ties
    whole, so when the ties hold negatives that push the FPR past ``max_fpr`` none of the run
    counts.  FPR is FP / negatives in float64, compared with ``<=``: the same as
    ``max(tpr[fpr <= max_fpr])`` over scikit-learn's ``roc_curve(..., drop_intermediate=False)``.

    Raises:
        InputMismatchError: as ``roc_auc``, or ``max_fpr`` outside [0, 1].
    """
    if not 0.0 <= float(max_fpr) <= 1.0:
        raise InputMismatchError(
            "max_fpr is a false-positive rate", expected="a value in [0, 1]", got=repr(max_fpr)
        )
    tps, fps, n_pos, n_neg = _curve(y_true, score, "recall_at_fpr")
    allowed = fps / n_neg <= float(max_fpr)
    return float(tps[allowed].max() / n_pos) if allowed.any() else 0.0


def _confusion_at(y_true: ArrayLike, score: ArrayLike, threshold: float) -> tuple[int, int, int]:
    """Return (true positives, predicted positives, actual positives) at ``threshold``."""
    truth, values = _pair(y_true, score, "score")
    positive = _binary_labels(truth)
    if not np.isfinite(threshold):
        raise InputMismatchError(
            "the decision threshold must be a number",
            expected="a finite value",
            got=repr(threshold),
        )
    predicted = values.astype(np.float64) >= threshold
    return int(np.sum(predicted & positive)), int(predicted.sum()), int(positive.sum())


def precision_at(y_true: ArrayLike, score: ArrayLike, threshold: float) -> float:
    """Return TP / predicted positives at ``score >= threshold`` (0.0 when none predicted)."""
    tp, predicted, _ = _confusion_at(y_true, score, threshold)
    return tp / predicted if predicted else 0.0


def recall_at(y_true: ArrayLike, score: ArrayLike, threshold: float) -> float:
    """Return TP / actual positives at ``score >= threshold`` (0.0 when there are none)."""
    tp, _, actual = _confusion_at(y_true, score, threshold)
    return tp / actual if actual else 0.0


def f1_at(y_true: ArrayLike, score: ArrayLike, threshold: float) -> float:
    """Return the F1 of the positive class at ``score >= threshold``: 2TP / (pred + actual).

    0.0 when there are neither predicted nor actual positives (``zero_division=0``).
    """
    tp, predicted, actual = _confusion_at(y_true, score, threshold)
    return 2 * tp / (predicted + actual) if predicted + actual else 0.0
