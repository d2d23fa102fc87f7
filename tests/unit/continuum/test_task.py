"""The task kinds: output contracts, the policies and metrics that fit each, and the
refusals a user reads when a declaration does not fit the task."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as reference

from continuum import Pipeline, select, task
from continuum.errors import InputMismatchError, SpecError
from continuum.spec import PipelineSpec
from continuum.task import TaskOutputs, gain, metric_info, score


def _pipe(kind: task.Task) -> Pipeline:
    pipe = Pipeline("scoring", tenant="acme", data_class="internal")
    pipe.edge(model="scorer", shape=(6,), task=kind)
    return pipe


class TestOutputContracts:
    def test_classification_reads_probabilities_and_softmaxes_logits(self) -> None:
        out = task.classification().read(np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32))
        assert out.kind == "classification"
        assert out.prediction.tolist() == [1.0, 0.0]
        assert out.score.tolist() == pytest.approx([0.8, 0.9])
        logits = task.classification().read(np.array([[2.0, 0.0]], dtype=np.float32))
        assert logits.probs is not None
        np.testing.assert_allclose(logits.probs.values.sum(axis=1), 1.0)
        assert logits.score[0] == pytest.approx(1 / (1 + np.exp(-2.0)))

    def test_classification_refuses_one_column(self) -> None:
        with pytest.raises(InputMismatchError, match="classes"):
            task.classification().read(np.ones((3, 1)))

    @pytest.mark.parametrize("shape", [(4, 1), (4,)])
    def test_binary_reads_one_probability_per_sample(self, shape: tuple[int, ...]) -> None:
        values = np.array([0.1, 0.3, 0.5, 0.9], dtype=np.float32).reshape(shape)
        out = task.binary(threshold=0.5).read(values)
        assert out.prediction.tolist() == [0.0, 0.0, 1.0, 1.0]
        assert out.threshold == 0.5
        np.testing.assert_allclose(out.confidence, [0.9, 0.7, 0.5, 0.9], rtol=1e-6)

    def test_binary_takes_column_one_of_two_class_probabilities(self) -> None:
        out = task.binary().read(np.array([[0.8, 0.2], [0.1, 0.9]]))
        assert out.score.tolist() == pytest.approx([0.2, 0.9])

    def test_binary_refuses_logits_naming_the_row(self) -> None:
        with pytest.raises(InputMismatchError, match="sigmoid") as caught:
            task.binary().read(np.array([[0.2], [3.5]]))
        assert "row 1" in str(caught.value)

    @pytest.mark.parametrize(
        "bad", [np.ones((2, 3)), np.array([[np.nan], [0.1]]), np.array([["a"], ["b"]])]
    )
    def test_binary_refuses_wrong_shape_nan_and_text(self, bad: np.ndarray) -> None:
        with pytest.raises(InputMismatchError):
            task.binary().read(bad)

    def test_regression_reads_values_and_optionally_a_std(self) -> None:
        plain = task.regression().read(np.array([[12.5], [40.0]]))
        assert plain.prediction.tolist() == [12.5, 40.0]
        assert plain.spread is None
        wide = task.regression(uncertainty=True).read(np.array([[12.5, 1.0], [40.0, 9.0]]))
        assert wide.spread is not None and wide.spread.tolist() == [1.0, 9.0]

    def test_regression_says_which_declaration_fits_two_columns(self) -> None:
        with pytest.raises(InputMismatchError, match="uncertainty=True"):
            task.regression().read(np.ones((3, 2)))

    def test_regression_refuses_a_negative_std(self) -> None:
        with pytest.raises(InputMismatchError, match="std"):
            task.regression(uncertainty=True).read(np.array([[1.0, -0.5]]))

    def test_anomaly_flags_at_the_threshold(self) -> None:
        out = task.anomaly(threshold=1.0).read(np.array([[0.2], [1.0], [7.5]]))
        assert out.prediction.tolist() == [0.0, 1.0, 1.0]
        assert out.confidence is None

    def test_outputs_are_read_only(self) -> None:
        out = task.anomaly().read(np.array([[0.2], [1.5]]))
        with pytest.raises(ValueError):
            out.score[0] = 9.0

    @pytest.mark.parametrize("threshold", [0.0, 1.0, float("nan")])
    def test_binary_threshold_must_lie_inside_zero_one(self, threshold: float) -> None:
        with pytest.raises(SpecError, match=r"binary\(threshold=0.5\)"):
            task.binary(threshold=threshold)


class TestSelectionFitsTheTask:
    def test_a_classification_leaf_on_a_binary_task_is_refused_with_the_fitting_ones(
        self,
    ) -> None:
        pipe = _pipe(task.binary())
        with pytest.raises(SpecError) as caught:
            pipe.uplink(select.low_confidence(0.6) | select.random(0.01))
        assert caught.value.field == "uplink.policy"
        assert "near_threshold" in str(caught.value) and "above_quantile" in str(caught.value)
        pipe.uplink(select.near_threshold(0.1) | select.random(0.01))  # fixed: accepted

    def test_wide_interval_needs_a_regression_with_uncertainty(self) -> None:
        with pytest.raises(SpecError, match="uncertainty=True"):
            _pipe(task.regression()).uplink(select.wide_interval(2.0))
        _pipe(task.regression(uncertainty=True)).uplink(select.wide_interval(2.0))

    def test_edge_declared_after_the_uplink_is_checked_too(self) -> None:
        pipe = Pipeline("scoring", tenant="acme", data_class="internal")
        pipe.uplink(select.high_entropy(0.5))
        with pytest.raises(SpecError, match="high_entropy"):
            pipe.edge(model="scorer", shape=(6,), task=task.anomaly())

    def test_a_yaml_spec_is_checked_like_the_dsl(self) -> None:
        pipe = _pipe(task.binary())
        pipe.uplink(select.near_threshold(0.1))
        data = pipe.spec.to_dict()
        data["uplink"]["policy"] = {"kind": "small_margin", "threshold": 0.2}
        with pytest.raises(SpecError, match="small_margin"):
            PipelineSpec.from_dict(data)

    @pytest.mark.parametrize("kind", [task.regression(), task.anomaly()])
    def test_a_teacher_is_refused_where_outputs_carry_no_confidence(self, kind: task.Task) -> None:
        pipe = _pipe(kind)
        with pytest.raises(SpecError) as caught:
            pipe.label(source="teacher", teacher_model="big")
        assert caught.value.field == "label.source"
        assert "delayed_feedback" in str(caught.value) and "human" in str(caught.value)
        pipe.label(source="delayed_feedback")  # the refused declaration was undone: fixable

    def test_a_teacher_fits_classification_and_binary_in_yaml_too(self) -> None:
        pipe = _pipe(task.binary())
        pipe.uplink(select.near_threshold(0.1))
        pipe.label(source="teacher", teacher_model="big")
        data = pipe.spec.to_dict()
        data["edge"]["task"] = {"kind": "regression"}
        data["uplink"]["policy"] = {"kind": "random", "rate": 0.1}
        with pytest.raises(SpecError, match="cloud teacher"):
            PipelineSpec.from_dict(data)

    def test_near_threshold_selects_scores_close_to_the_operating_point(self) -> None:
        out = task.binary(threshold=0.3).read(np.array([[0.05], [0.25], [0.38], [0.9]]))
        ctx = select.SelectionContext(seeds=np.arange(4))
        assert select.near_threshold(0.1).decide(out, ctx).tolist() == [False, True, True, False]

    def test_above_quantile_compares_with_the_streams_recent_scores(self) -> None:
        history = select.ScoreHistory(100)
        history.push(np.linspace(0.0, 1.0, 101))  # holds the last 100: 0.01 .. 1.0
        out = task.anomaly().read(np.array([[0.5], [0.95], [2.0]]))
        ctx = select.SelectionContext(seeds=np.arange(3), recent_scores=history.values())
        assert select.above_quantile(0.9).decide(out, ctx).tolist() == [False, True, True]

    def test_score_history_keeps_only_the_last_scores(self) -> None:
        history = select.ScoreHistory(4)
        for batch in ([1.0, 2.0, 3.0], [4.0, 5.0], [6.0]):
            history.push(batch)
        assert sorted(history.values().tolist()) == [3.0, 4.0, 5.0, 6.0]

    def test_a_leaf_given_outputs_it_cannot_judge_names_the_task(self) -> None:
        out = task.regression().read(np.array([[1.0], [2.0]]))
        ctx = select.SelectionContext(seeds=np.arange(2))
        with pytest.raises(InputMismatchError, match="regression"):
            select.near_threshold(0.1).decide(out, ctx)


class TestMetricsFitTheTask:
    @pytest.mark.parametrize(
        ("kind", "metric"),
        [
            (task.classification(), "mae"),
            (task.binary(), "f1_macro"),
            (task.regression(), "accuracy"),
            (task.anomaly(), "rmse"),
        ],
    )
    def test_a_gate_metric_that_does_not_fit_is_refused_naming_those_that_do(
        self, kind: task.Task, metric: str
    ) -> None:
        with pytest.raises(SpecError) as caught:
            _pipe(kind).gate(metric=metric)
        assert caught.value.field == "gate.metric"
        assert kind.default_metric in str(caught.value)

    def test_the_gate_defaults_to_the_tasks_metric(self) -> None:
        pipe = _pipe(task.regression())
        pipe.uplink(select.random(0.1))
        pipe.rollout(rollback_on="mae rise 2.5")
        assert pipe.spec.gate_metric == "mae"

    def test_rollback_rules_speak_the_tasks_metric(self) -> None:
        pipe = _pipe(task.binary())
        pipe.uplink(select.near_threshold(0.1))
        pipe.rollout(rollback_on="recall drop 0.05 or p95 latency +20%")
        rollout = pipe.spec.rollout
        assert (rollout.rollback_metric, rollout.rollback_on_drop) == ("recall", 0.05)
        assert rollout.rules.describe() == "recall drop 0.05 or p95 latency +20%"
        assert PipelineSpec.from_yaml(pipe.spec.to_yaml()) == pipe.spec

    @pytest.mark.parametrize(
        ("rule", "message"),
        [
            ("mae drop 2", "mae gets worse by a rise"),
            ("roc_auc drop 0.02", "not computed per telemetry window"),
            ("recall drop 5", "must be in (0, 1]"),
        ],
    )
    def test_a_rollback_rule_that_cannot_fire_is_refused(self, rule: str, message: str) -> None:
        kind = task.regression() if rule.startswith("mae") else task.binary()
        with pytest.raises(SpecError) as caught:
            _pipe(kind).rollout(rollback_on=rule)
        assert message in str(caught.value)

    def test_the_gate_gain_of_an_error_metric_is_its_fall(self) -> None:
        assert gain("mae", candidate=2.0, current=3.5) == pytest.approx(1.5)
        assert gain("recall", candidate=0.8, current=0.7) == pytest.approx(0.1)

    def test_recall_at_fpr_is_a_family(self) -> None:
        info = metric_info("recall_at_fpr_0.01")
        assert (info.max_fpr, info.uses, info.higher_is_better) == (0.01, "score", True)
        with pytest.raises(SpecError, match=r"recall_at_fpr_0\.01"):
            metric_info("recall_at_fpr_x")


class TestScoringAgainstScikitLearn:
    """``score`` dispatches each metric to the right outputs; scikit-learn is the reference."""

    rng = np.random.default_rng(7)
    y = (rng.random(400) < 0.1).astype(np.int64)
    p = np.clip(0.25 * y + rng.random(400) * 0.8, 0.0, 1.0)

    def _binary(self, threshold: float = 0.5) -> TaskOutputs:
        return task.binary(threshold=threshold).read(self.p.reshape(-1, 1))

    def test_ranking_metrics_read_the_scores(self) -> None:
        out = self._binary()
        assert score("roc_auc", self.y, out) == pytest.approx(
            reference.roc_auc_score(self.y, self.p)
        )
        assert score("pr_auc", self.y, out) == pytest.approx(
            reference.average_precision_score(self.y, self.p)
        )

    def test_threshold_metrics_decide_at_the_tasks_threshold(self) -> None:
        out = self._binary(threshold=0.6)
        decided = (self.p >= 0.6).astype(int)
        assert score("precision", self.y, out) == pytest.approx(
            reference.precision_score(self.y, decided, zero_division=0)
        )
        assert score("recall", self.y, out) == pytest.approx(
            reference.recall_score(self.y, decided)
        )
        assert score("f1", self.y, out) == pytest.approx(reference.f1_score(self.y, decided))

    def test_regression_metrics_read_the_values(self) -> None:
        truth = self.rng.normal(50, 10, 200)
        guess = truth + self.rng.normal(0, 3, 200)
        out = task.regression().read(guess.reshape(-1, 1))
        assert score("mae", truth, out) == pytest.approx(
            reference.mean_absolute_error(truth, guess)
        )
        assert score("rmse", truth, out) == pytest.approx(
            np.sqrt(reference.mean_squared_error(truth, guess))
        )


class TestSignalInputDrift:
    """Sensor windows are watched per channel: level, offset, crest and spectrum."""

    def _windows(self, rng: np.random.Generator, n: int, hz: float, gain: float) -> np.ndarray:
        t = np.arange(1024) / 1024.0
        vibration = gain * np.sin(2 * np.pi * hz * t) + 0.1 * rng.standard_normal((n, 1024))
        temperature = 40.0 + 0.2 * rng.standard_normal((n, 1024))
        return np.stack([vibration, temperature], axis=1).astype(np.float32)

    def test_features_are_named_per_channel(self) -> None:
        from continuum import drift
        from continuum.drift._inputs import InputFeatures

        features = InputFeatures((2, 1024), drift.inputs(layout="signal", bands=2))
        assert features.names == [
            "mean[0]", "rms[0]", "crest[0]", "band0[0]", "band1[0]",
            "mean[1]", "rms[1]", "crest[1]", "band0[1]", "band1[1]",
        ]  # fmt: skip

    def test_a_new_shaft_speed_is_seen_in_the_spectrum_not_the_level(self) -> None:
        from continuum import drift
        from continuum.drift._inputs import InputDriftMonitor

        rng = np.random.default_rng(0)
        monitor = InputDriftMonitor(drift.inputs(layout="signal", window=100, reference=150))
        monitor.update(self._windows(rng, 150, hz=30.0, gain=1.0))
        calm = monitor.update(self._windows(rng, 100, hz=30.0, gain=1.0))
        assert not calm.drifted
        moved = monitor.update(self._windows(rng, 100, hz=300.0, gain=1.0))
        assert moved.drifted
        assert moved.feature is not None and moved.feature.startswith("band")

    def test_a_signal_layout_refuses_an_image_shape(self) -> None:
        from continuum import drift
        from continuum.drift._inputs import InputFeatures

        with pytest.raises(InputMismatchError, match="signal"):
            InputFeatures((3, 8, 8), drift.inputs(layout="signal"))
