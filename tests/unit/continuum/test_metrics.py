"""continuum.metrics against scikit-learn's metric functions, the reference, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from sklearn import metrics as sk

from continuum import metrics
from continuum.errors import InputMismatchError


def sk_recall_at_fpr(y: NDArray[np.int64], s: NDArray[np.float64], max_fpr: float) -> float:
    """The reference: the best TPR among sklearn's full ROC points with FPR <= max_fpr."""
    fpr, tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
    return float(tpr[fpr <= max_fpr].max())


def binary_case(seed: int, n: int, positive_share: float, levels: int | None) -> tuple:
    """Labels with ``positive_share`` positives (at least one of each) and scores that lean
    towards them; ``levels`` rounds the scores to that many values to force ties."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positive_share).astype(np.int64)
    y[0], y[1] = 1, 0
    s = rng.normal(size=n) + 1.5 * y
    if levels is not None:
        s = np.round(s * levels / 6.0)
    return y, s


CASES = [
    # (seed, rows, positive share, tie levels): balanced, heavy ties, 0.5 % positives.
    (0, 500, 0.5, None),
    (1, 500, 0.5, 3),
    (2, 4000, 0.005, None),
    (3, 4000, 0.005, 4),
    (4, 50, 0.1, 1),
    (5, 2, 0.5, None),
]


class TestBinaryScoreMetricsMatchScikitLearn:
    @pytest.mark.parametrize("case", CASES)
    def test_roc_auc(self, case: tuple) -> None:
        y, s = binary_case(*case)
        assert metrics.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)

    @pytest.mark.parametrize("case", CASES)
    def test_pr_auc_is_average_precision(self, case: tuple) -> None:
        y, s = binary_case(*case)
        assert metrics.pr_auc(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)

    @pytest.mark.parametrize("case", CASES)
    @pytest.mark.parametrize("max_fpr", [0.0, 0.001, 0.01, 0.1, 0.5, 1.0])
    def test_recall_at_fpr(self, case: tuple, max_fpr: float) -> None:
        y, s = binary_case(*case)
        assert metrics.recall_at_fpr(y, s, max_fpr) == pytest.approx(
            sk_recall_at_fpr(y, s, max_fpr), abs=1e-12
        )

    @pytest.mark.parametrize("case", CASES)
    @pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.5, 1.0, 3.0, 100.0])
    def test_precision_recall_f1_at_threshold(self, case: tuple, threshold: float) -> None:
        y, s = binary_case(*case)
        pred = (s >= threshold).astype(np.int64)
        assert metrics.precision_at(y, s, threshold) == pytest.approx(
            sk.precision_score(y, pred, zero_division=0)
        )
        assert metrics.recall_at(y, s, threshold) == pytest.approx(
            sk.recall_score(y, pred, zero_division=0)
        )
        assert metrics.f1_at(y, s, threshold) == pytest.approx(
            sk.f1_score(y, pred, zero_division=0)
        )

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60).filter(
            lambda rows: len({label for label, _ in rows}) == 2
        ),
        st.sampled_from([0.0, 0.05, 0.2, 1 / 3, 0.5]),
    )
    def test_any_small_tied_set(self, rows: list[tuple[int, int]], max_fpr: float) -> None:
        y = np.array([label for label, _ in rows])
        s = np.array([score for _, score in rows], dtype=np.float64) / 6.0
        assert metrics.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
        assert metrics.pr_auc(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
        assert metrics.recall_at_fpr(y, s, max_fpr) == pytest.approx(
            sk_recall_at_fpr(y, s, max_fpr), abs=1e-12
        )


class TestRecallAtFprTreatsTiesWhole:
    def test_a_tie_that_holds_a_negative_is_not_split(self) -> None:
        # Two positives tied with one negative at the top: taking the tie costs FPR 1/4.
        y = np.array([1, 1, 0, 0, 0, 0, 1])
        s = np.array([0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.05])
        assert metrics.recall_at_fpr(y, s, 0.2) == 0.0
        assert metrics.recall_at_fpr(y, s, 0.25) == pytest.approx(2 / 3)
        assert metrics.recall_at_fpr(y, s, 0.25) == pytest.approx(sk_recall_at_fpr(y, s, 0.25))

    def test_a_perfect_ranking_reaches_full_recall_at_zero_fpr(self) -> None:
        y = np.array([0, 0, 1, 1])
        assert metrics.recall_at_fpr(y, np.array([0.1, 0.2, 0.8, 0.9]), 0.0) == 1.0

    def test_a_column_of_scores_is_taken_as_its_values(self) -> None:
        y, s = binary_case(2, 4000, 0.005, None)
        assert metrics.recall_at_fpr(y, s.reshape(-1, 1), 0.01) == metrics.recall_at_fpr(y, s, 0.01)


class TestClassAndValueMetricsMatchScikitLearn:
    @pytest.mark.parametrize("seed", range(5))
    def test_accuracy_and_f1_macro(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 10, 300)
        pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 12, 300))
        assert metrics.accuracy(y, pred) == pytest.approx(sk.accuracy_score(y, pred))
        assert metrics.f1_macro(y, pred) == pytest.approx(
            sk.f1_score(y, pred, average="macro", zero_division=0)
        )

    def test_f1_macro_counts_a_class_only_predicted_as_zero(self) -> None:
        y, pred = np.array([0, 0, 1, 1]), np.array([0, 0, 1, 7])
        assert metrics.f1_macro(y, pred) == pytest.approx(
            sk.f1_score(y, pred, average="macro", zero_division=0)
        )
        assert metrics.f1_macro(y, pred) == pytest.approx((1 + 2 / 3 + 0) / 3)

    @pytest.mark.parametrize("seed", range(5))
    def test_mae_and_rmse(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        y = rng.gamma(2.0, 50.0, 400)
        pred = y + rng.standard_t(3, 400) * 10
        assert metrics.mae(y, pred) == pytest.approx(sk.mean_absolute_error(y, pred))
        assert metrics.rmse(y, pred) == pytest.approx(sk.root_mean_squared_error(y, pred))
        assert metrics.rmse(y, pred.reshape(-1, 1)) == pytest.approx(metrics.rmse(y, pred))


class TestBadInputIsRefusedNamingTheProblem:
    def test_length_mismatch(self) -> None:
        with pytest.raises(InputMismatchError, match="differ in length") as caught:
            metrics.mae([1.0, 2.0], [1.0])
        assert caught.value.expected == "2 values of y_pred"
        assert caught.value.got == "1"

    def test_empty(self) -> None:
        with pytest.raises(InputMismatchError, match="no rows to score"):
            metrics.accuracy([], [])

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_scores(self, bad: float) -> None:
        with pytest.raises(InputMismatchError, match="NaN or infinite") as caught:
            metrics.roc_auc([0, 1, 1], [0.1, bad, 0.3])
        assert caught.value.got == "1 non-finite of 3"

    def test_nan_labels(self) -> None:
        with pytest.raises(InputMismatchError, match="y_true holds NaN"):
            metrics.rmse([1.0, np.nan], [1.0, 2.0])

    @pytest.mark.parametrize(
        "metric",
        [metrics.roc_auc, metrics.pr_auc, lambda y, s: metrics.recall_at_fpr(y, s, 0.01)],
    )
    @pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
    def test_a_single_class(self, metric, labels: list[int]) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(InputMismatchError, match="needs both classes") as caught:
            metric(labels, [0.1, 0.2, 0.3])
        assert "0 positives" in caught.value.got or "0 negatives" in caught.value.got

    def test_labels_other_than_zero_and_one(self) -> None:
        with pytest.raises(InputMismatchError, match=r"labels 0 \(negative\) and 1") as caught:
            metrics.precision_at([0, 2, 1], [0.1, 0.2, 0.3], 0.5)
        assert "[2]" in caught.value.got

    def test_a_matrix_of_scores(self) -> None:
        with pytest.raises(InputMismatchError, match="one value per row") as caught:
            metrics.roc_auc([0, 1], np.zeros((2, 2)))
        assert caught.value.got == "(2, 2)"

    def test_text_values(self) -> None:
        with pytest.raises(InputMismatchError, match="must be numeric"):
            metrics.accuracy(["a", "b"], ["a", "b"])

    @pytest.mark.parametrize("max_fpr", [-0.1, 1.5])
    def test_max_fpr_outside_zero_one(self, max_fpr: float) -> None:
        with pytest.raises(InputMismatchError, match="false-positive rate"):
            metrics.recall_at_fpr([0, 1], [0.1, 0.9], max_fpr)

    def test_nan_threshold(self) -> None:
        with pytest.raises(InputMismatchError, match="threshold must be a number"):
            metrics.f1_at([0, 1], [0.1, 0.9], float("nan"))


class TestZeroDivisionIsZero:
    def test_nothing_predicted_positive(self) -> None:
        assert metrics.precision_at([0, 1], [0.1, 0.2], 0.5) == 0.0
        assert metrics.f1_at([0, 1], [0.1, 0.2], 0.5) == 0.0

    def test_no_actual_positives(self) -> None:
        assert metrics.recall_at([0, 0], [0.1, 0.9], 0.5) == 0.0
        assert metrics.f1_at([0, 0], [0.1, 0.2], 0.5) == 0.0
