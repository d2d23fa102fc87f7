"""What the edge model answers: the task a pipeline declares, and everything derived from it.

A pipeline declares its task once, on the edge stage::

    pipe.edge(model="fraud-mlp", shape=(24,), task=task.binary(threshold=0.5))

and the rest of the loop follows from it: the model's **output contract** (checked when a
model loads and on every batch, with an error naming the mismatch), the **selection
policies** that can judge its outputs, the **gate metrics** that can score it, the metrics
the edge can compute per telemetry window for **rollback rules**, and what a **label** is.
A policy, gate or rollback rule that does not fit the task is refused when it is declared,
naming the ones that do (``check_policy``, ``check_gate_metric``, ``check_rollback_metric``).

The four kinds:

=================  ==============================  =====================  ==================
kind               model output, one row a sample  prediction             label
=================  ==============================  =====================  ==================
classification     (batch, classes) probabilities  argmax class           class index
binary             (batch, 1) P(positive) in 0..1  score >= threshold     0 or 1
regression         (batch, 1) value, or            the value              the value
                   (batch, 2) value and std >= 0
anomaly            (batch, 1) score, finite        score >= threshold     0 (normal) or 1
=================  ==============================  =====================  ==================

A binary or anomaly model's operating point is the declared ``threshold``.  The trainer
may fold a calibration into the exported graph so that the threshold it chose (recall at
a fixed false-positive rate, a quantile of normal scores) is the declared one: the edge
then needs no per-version threshold, and the model card records how it was calibrated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from continuum._selection_inputs import SMALL_BATCH, SMALL_VALUES, Probabilities
from continuum._validation import validate
from continuum.errors import InputMismatchError, SpecError

__all__ = [
    "TASK_DATA",
    "Anomaly",
    "Binary",
    "Classification",
    "MetricInfo",
    "Regression",
    "Task",
    "TaskKind",
    "TaskOutputs",
    "TaskSpec",
    "anomaly",
    "binary",
    "check_gate_metric",
    "check_label_source",
    "check_policy_kinds",
    "check_rollback_metric",
    "classification",
    "gain",
    "metric_info",
    "regression",
    "score",
]

TaskKind = Literal["classification", "binary", "regression", "anomaly"]

#: How far a binary score may stray outside [0, 1] (float16/float32 sigmoid rounding).
_SCORE_ATOL = 1e-3
_RECALL_AT_FPR = re.compile(r"recall_at_fpr_(0\.\d*[1-9]\d*)")

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """What a metric is, so the gate, the rollout and the report treat it alike.

    ``higher_is_better`` turns a gain into a rise or a drop; ``uses`` is what it scores
    (``"prediction"``: the decisions at the threshold; ``"score"``: the ranking of the
    scores, threshold-free); ``windowed`` says the edge can compute it per telemetry
    window from counts, which a rollback rule needs; ``bounded`` says it lies in [0, 1],
    where a gain of 0.01 means one point.
    """

    name: str
    higher_is_better: bool
    uses: Literal["prediction", "score"]
    windowed: bool
    bounded: bool = True
    max_fpr: float | None = None


_METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("accuracy", True, "prediction", windowed=True),
        MetricInfo("f1_macro", True, "prediction", windowed=False),
        MetricInfo("precision", True, "prediction", windowed=True),
        MetricInfo("recall", True, "prediction", windowed=True),
        MetricInfo("f1", True, "prediction", windowed=True),
        MetricInfo("roc_auc", True, "score", windowed=False),
        MetricInfo("pr_auc", True, "score", windowed=False),
        MetricInfo("mae", False, "prediction", windowed=True, bounded=False),
        MetricInfo("rmse", False, "prediction", windowed=True, bounded=False),
    )
}


def metric_info(name: str) -> MetricInfo:
    """Return what metric ``name`` is; ``recall_at_fpr_0.01`` and the like are parameterised.

    Raises:
        SpecError: no such metric; the message lists them.
    """
    if name in _METRICS:
        return _METRICS[name]
    match = _RECALL_AT_FPR.fullmatch(name)
    if match is not None:
        return MetricInfo(name, True, "score", windowed=False, max_fpr=float(match.group(1)))
    raise SpecError(
        f"unknown metric {name!r}",
        field="metric",
        fix=f"use one of {', '.join(_METRICS)} or recall_at_fpr_<rate> (e.g. recall_at_fpr_0.01)",
    )


@dataclass(frozen=True, slots=True, eq=False)
class TaskOutputs:
    """One batch of model outputs read through its task's contract (``Task.read``).

    ``score`` is the task's per-sample signal, the one the outputs drift detectors watch
    and a sample record carries: the top probability (classification), P(positive)
    (binary), the predicted value (regression) or the anomaly score.  ``prediction`` is
    what the model decided: the class, 0/1 at the threshold, the value.  ``probs`` are
    the class probabilities (classification only), ``spread`` the predicted standard
    deviation (regression with uncertainty only).  Every array is read-only float64.
    """

    kind: TaskKind
    score: F64
    prediction: F64
    probs: Probabilities | None = None
    spread: F64 | None = None
    threshold: float | None = None

    @property
    def rows(self) -> int:
        """The number of samples."""
        return int(self.score.shape[0])

    def rows_between(self, start: int, end: int) -> TaskOutputs:
        """Return the outputs of rows ``start`` to ``end`` (a part of a holdout)."""
        cut = slice(start, end)
        probs = None if self.probs is None else Probabilities(values=self.probs.values[cut])
        return TaskOutputs(
            kind=self.kind,
            score=self.score[cut],
            prediction=self.prediction[cut],
            probs=probs,
            spread=None if self.spread is None else self.spread[cut],
            threshold=self.threshold,
        )

    @property
    def confidence(self) -> F64 | None:
        """How sure the model is of its decision, in [0, 1], where the task defines it:
        the top probability, or max(p, 1 - p) for a binary score; None otherwise."""
        if self.kind == "classification":
            return self.score
        if self.kind == "binary":
            return np.maximum(self.score, 1.0 - self.score)
        return None


def _frozen(array: npt.NDArray[Any]) -> F64:
    out = np.array(array, dtype=np.float64)
    out.flags.writeable = False
    return out


def _column(outputs: npt.ArrayLike, what: str, fix: str) -> F64:
    """Return a (batch,) or (batch, 1) output as (batch,) float64, finite."""
    out = np.asarray(outputs)
    if out.dtype.kind not in "biuf":
        raise InputMismatchError(
            f"{what} must be numbers", expected="a float array", got=str(out.dtype)
        )
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim != 1:
        raise InputMismatchError(
            f"{what} must be one value per sample; {fix}",
            expected="shape (batch, 1) or (batch,)",
            got=f"shape {out.shape}",
        )
    values = out.astype(np.float64)
    if not np.isfinite(values).all():
        raise InputMismatchError(
            f"{what} holds NaN or infinite values",
            expected="finite values",
            got=f"{int(np.count_nonzero(~np.isfinite(values)))} non-finite",
        )
    return values


class _Task(BaseModel):
    """Base of the task kinds: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The selection leaves (``kind``) that can judge this task's outputs.
    policies: ClassVar[frozenset[str]] = frozenset()
    #: The metric a gate uses when the pipeline names none.
    default_metric: ClassVar[str] = "accuracy"

    def read(self, outputs: npt.ArrayLike) -> TaskOutputs:
        """Check one batch of outputs against the contract and return them read.

        Raises:
            InputMismatchError: the shape, dtype or range breaks the contract; the message
                names what the model returned and what the task needs.
        """
        raise NotImplementedError

    def metrics(self) -> tuple[str, ...]:
        """Return the gate metrics that fit (``recall_at_fpr_<rate>`` stands for the family)."""
        raise NotImplementedError

    def fitting_policies(self) -> frozenset[str]:
        """Return the selection leaves (``kind``) that can judge this task's outputs."""
        return self.policies

    def fits_metric(self, name: str) -> bool:
        """Return True if metric ``name`` can score this task."""
        info = metric_info(name)
        if info.max_fpr is not None:
            return "recall_at_fpr_<rate>" in self.metrics()
        return name in self.metrics()

    def describe(self) -> str:
        """Return the declaration, e.g. ``binary(threshold=0.5)``."""
        raise NotImplementedError

    @property
    def integer_labels(self) -> bool:
        """True where a label is a class index or 0/1; False for a regression's value."""
        return True


_ANY_TASK = frozenset({"random", "drift", "any_of", "all_of"})


class Classification(_Task):
    """One class of several: the model answers class probabilities (or logits)."""

    kind: Literal["classification"] = "classification"
    policies: ClassVar[frozenset[str]] = _ANY_TASK | {
        "low_confidence",
        "small_margin",
        "high_entropy",
        "mistakes",
    }
    default_metric: ClassVar[str] = "accuracy"

    def read(self, outputs: npt.ArrayLike) -> TaskOutputs:
        """Read (batch, classes >= 2) probabilities; logits get a softmax (see Probabilities)."""
        probs = Probabilities.from_outputs(outputs)
        values = probs.values
        if values.shape[1] < 2:
            raise InputMismatchError(
                "a classification model must answer one probability per class",
                expected="shape (batch, classes) with classes >= 2",
                got=f"shape {values.shape}",
            )
        # See SMALL_BATCH and SMALL_VALUES: a few short rows are read as one list.
        if values.shape[0] <= SMALL_BATCH and values.size <= SMALL_VALUES:
            rows = values.tolist()
            tops = [max(row) for row in rows]
            best = [float(row.index(top)) for row, top in zip(rows, tops, strict=True)]
            both = np.array([tops, best], dtype=np.float64)
            both.flags.writeable = False  # its rows below are read-only views
            score, prediction = both[0], both[1]
        else:
            score = values.max(axis=1)
            score.flags.writeable = False
            prediction = _frozen(values.argmax(axis=1))
        return TaskOutputs(kind="classification", score=score, prediction=prediction, probs=probs)

    def metrics(self) -> tuple[str, ...]:
        """Accuracy and macro F1."""
        return ("accuracy", "f1_macro")

    def describe(self) -> str:
        """Return ``classification()``."""
        return "classification()"


class Binary(_Task):
    """A yes/no decision from a score (fraud, defect): the operating point is ``threshold``."""

    kind: Literal["binary"] = "binary"
    threshold: float = Field(
        default=0.5, description="Decide positive when score >= it; in (0, 1)."
    )
    policies: ClassVar[frozenset[str]] = _ANY_TASK | {
        "near_threshold",
        "above_quantile",
        "mistakes",
    }
    default_metric: ClassVar[str] = "pr_auc"

    @field_validator("threshold")
    @classmethod
    def _check_threshold(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise SpecError(
                f"must be in (0, 1), got {value!r}",
                field="threshold",
                fix="give the decision threshold on P(positive), e.g. binary(threshold=0.5)",
            )
        return value

    def read(self, outputs: npt.ArrayLike) -> TaskOutputs:
        """Read P(positive): (batch, 1), (batch,), or (batch, 2) class probabilities."""
        out = np.asarray(outputs)
        if out.ndim == 2 and out.shape[1] == 2:  # predict_proba-style exports: P(1) is column 1
            out = out[:, 1]
        score = _column(out, "a binary model's output", "end the model in a sigmoid")
        if score.size and (score.min() < -_SCORE_ATOL or score.max() > 1.0 + _SCORE_ATOL):
            row = int(np.argmax((score < -_SCORE_ATOL) | (score > 1.0 + _SCORE_ATOL)))
            raise InputMismatchError(
                "a binary model must answer P(positive) in [0, 1]; end it in a sigmoid "
                "(logits are not probabilities)",
                expected="values in [0, 1]",
                got=f"{score[row]:.6g} in row {row}",
            )
        score = np.clip(score, 0.0, 1.0)
        score.flags.writeable = False
        return TaskOutputs(
            kind="binary",
            score=score,
            prediction=_frozen(score >= self.threshold),
            threshold=self.threshold,
        )

    def metrics(self) -> tuple[str, ...]:
        """Ranking metrics, recall at a false-positive rate, and decisions at the threshold."""
        return (
            "roc_auc",
            "pr_auc",
            "recall_at_fpr_<rate>",
            "precision",
            "recall",
            "f1",
            "accuracy",
        )

    def describe(self) -> str:
        """Return ``binary(threshold=...)``."""
        return f"binary(threshold={self.threshold:g})"


class Regression(_Task):
    """A quantity (remaining useful life, a demand): optionally with its uncertainty."""

    kind: Literal["regression"] = "regression"
    uncertainty: bool = Field(
        default=False, description="The model answers (value, std) rather than the value alone."
    )
    policies: ClassVar[frozenset[str]] = _ANY_TASK | {"wide_interval"}
    default_metric: ClassVar[str] = "mae"

    def read(self, outputs: npt.ArrayLike) -> TaskOutputs:
        """Read (batch, 1) values, or (batch, 2) value and standard deviation (>= 0)."""
        out = np.asarray(outputs)
        if not self.uncertainty:
            value = _column(
                out,
                "a regression model's output",
                "declare regression(uncertainty=True) if it answers (value, std)",
            )
            return TaskOutputs(kind="regression", score=_frozen(value), prediction=_frozen(value))
        if out.ndim != 2 or out.shape[1] != 2:
            raise InputMismatchError(
                "a regression model with uncertainty must answer (value, std) per sample",
                expected="shape (batch, 2)",
                got=f"shape {out.shape}",
            )
        value = _column(out[:, 0], "a regression model's value", "")
        spread = _column(out[:, 1], "a regression model's std", "")
        if spread.size and spread.min() < 0.0:
            raise InputMismatchError(
                "a regression model's std must not be negative (e.g. end that head in softplus)",
                expected="std >= 0",
                got=f"{spread.min():.6g} in row {int(spread.argmin())}",
            )
        frozen = _frozen(value)
        return TaskOutputs(
            kind="regression", score=frozen, prediction=frozen, spread=_frozen(spread)
        )

    def metrics(self) -> tuple[str, ...]:
        """Mean absolute and root-mean-square error (lower is better)."""
        return ("mae", "rmse")

    def fitting_policies(self) -> frozenset[str]:
        """``wide_interval`` only where the model answers a std."""
        return self.policies if self.uncertainty else self.policies - {"wide_interval"}

    def describe(self) -> str:
        """Return ``regression()`` or ``regression(uncertainty=True)``."""
        return "regression(uncertainty=True)" if self.uncertainty else "regression()"

    @property
    def integer_labels(self) -> bool:
        """A regression's label is a value."""
        return False


class Anomaly(_Task):
    """An anomaly score (unsupervised): at or above ``threshold`` a sample is flagged."""

    kind: Literal["anomaly"] = "anomaly"
    threshold: float = Field(
        default=1.0,
        description="Flag when score >= it; 1.0 where the trainer folds its calibration in.",
    )
    policies: ClassVar[frozenset[str]] = _ANY_TASK | {
        "near_threshold",
        "above_quantile",
        "mistakes",
    }
    default_metric: ClassVar[str] = "f1"

    @field_validator("threshold")
    @classmethod
    def _check_threshold(cls, value: float) -> float:
        if not np.isfinite(value):
            raise SpecError(
                f"must be a finite number, got {value!r}",
                field="threshold",
                fix="give the score at which a sample is flagged, e.g. anomaly(threshold=1.0)",
            )
        return value

    def read(self, outputs: npt.ArrayLike) -> TaskOutputs:
        """Read (batch, 1) finite scores."""
        score = _frozen(
            _column(outputs, "an anomaly model's output", "answer one score per sample")
        )
        return TaskOutputs(
            kind="anomaly",
            score=score,
            prediction=_frozen(score >= self.threshold),
            threshold=self.threshold,
        )

    def metrics(self) -> tuple[str, ...]:
        """Precision, recall and F1 at the threshold; ranking metrics of the score."""
        return ("precision", "recall", "f1", "roc_auc", "pr_auc")

    def describe(self) -> str:
        """Return ``anomaly(threshold=...)``."""
        return f"anomaly(threshold={self.threshold:g})"


#: A declared task of any kind.
Task = Classification | Binary | Regression | Anomaly
#: The same as a pydantic field: the ``kind`` key picks the class.
TaskSpec = Annotated[Task, Field(discriminator="kind")]
#: Reads a declaration given as data (a spec's ``edge.task``, a gate record's ``task_spec``)
#: into its class: ``TASK_DATA.validate_python({"kind": "binary", "threshold": 0.5})``.
TASK_DATA: TypeAdapter[Task] = TypeAdapter(TaskSpec)


def classification() -> Classification:
    """Declare a classifier: the model answers class probabilities."""
    return Classification()


def binary(threshold: float = 0.5) -> Binary:
    """Declare binary scoring: the model answers P(positive), decided at ``threshold``."""
    return validate(Binary, {"threshold": threshold})


def regression(*, uncertainty: bool = False) -> Regression:
    """Declare a regression: the model answers a value (and its std with ``uncertainty``)."""
    return validate(Regression, {"uncertainty": uncertainty})


def anomaly(threshold: float = 1.0) -> Anomaly:
    """Declare anomaly scoring: the model answers a score, flagged at ``threshold``."""
    return validate(Anomaly, {"threshold": threshold})


def _listed(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def check_policy_kinds(task: _Task, kinds: Iterable[str], *, field: str = "uplink.policy") -> None:
    """Raise ``SpecError`` if a selection leaf cannot judge ``task``'s outputs.

    Raises:
        SpecError: naming the leaf and the leaves that fit the task.
    """
    fitting = task.fitting_policies()
    for kind in kinds:
        if kind in fitting:
            continue
        usable = _listed(fitting - {"any_of", "all_of"})
        needs = ""
        if kind == "wide_interval" and isinstance(task, Regression):
            needs = "; wide_interval needs regression(uncertainty=True)"
        raise SpecError(
            f"select.{kind}(...) cannot judge a {task.describe()} model's outputs{needs}",
            field=field,
            fix=f"use what fits the task: {usable}",
        )


def check_gate_metric(task: _Task, metric: str, *, field: str = "gate.metric") -> MetricInfo:
    """Return ``metric``'s info if it scores ``task``.

    Raises:
        SpecError: the metric does not fit the task; the message names those that do.
    """
    info = metric_info(metric)
    if not task.fits_metric(metric):
        raise SpecError(
            f"{metric!r} cannot score a {task.describe()} model",
            field=field,
            fix=f"use one of {', '.join(task.metrics())}",
        )
    return info


def check_label_source(task: _Task, source: str, *, field: str = "label.source") -> None:
    """Raise ``SpecError`` if labels from ``source`` cannot be had for ``task``.

    The cloud teacher records its answer as a label when it is sure enough, so it needs a
    task whose outputs say how sure they are (``TaskOutputs.confidence``): a class or a
    binary decision.  A regression's value or an anomaly score carries no such measure, and
    a teacher would label every sample with the same unjudged guess.

    Raises:
        SpecError: naming the task and the label sources that fit it.
    """
    if source == "teacher" and not isinstance(task, Classification | Binary):
        raise SpecError(
            f"a cloud teacher cannot label a {task.describe()} model's samples: its outputs "
            "carry no confidence to accept a label by",
            field=field,
            fix='declare label(source="delayed_feedback") or label(source="human")',
        )


def check_rollback_metric(
    task: _Task, metric: str, *, field: str = "rollout.rollback_on"
) -> MetricInfo:
    """Return ``metric``'s info if the edge can watch it per window for ``task``.

    Raises:
        SpecError: the metric does not fit the task, or needs more than a window's counts.
    """
    info = check_gate_metric(task, metric, field=field)
    if not info.windowed:
        windowed = [m for m in task.metrics() if m in _METRICS and _METRICS[m].windowed]
        raise SpecError(
            f"{metric!r} is not computed per telemetry window at the edge",
            field=field,
            fix=f"roll back on one of {', '.join(windowed)}",
        )
    return info


def score(metric: str, y_true: npt.ArrayLike, outputs: TaskOutputs) -> float:
    """Return ``metric`` of ``outputs`` against labels ``y_true`` (``continuum.metrics``).

    Decision metrics read the predictions; ranking metrics (roc_auc, pr_auc,
    recall_at_fpr_*) read the scores; precision, recall and f1 of a binary or anomaly
    task decide at its threshold.

    Raises:
        SpecError: an unknown metric, or one that needs a threshold the outputs lack.
        InputMismatchError: labels and outputs differ in length, or the labels cannot be
            scored (e.g. a single class where a ranking metric needs two).
    """
    from continuum import metrics

    info = metric_info(metric)
    if info.max_fpr is not None:
        return metrics.recall_at_fpr(y_true, outputs.score, info.max_fpr)
    if metric in ("precision", "recall", "f1"):
        if outputs.threshold is None:
            raise SpecError(
                f"{metric} decides at a threshold, and {outputs.kind} outputs have none",
                field="metric",
                fix="use accuracy or f1_macro for a classifier",
            )
        at = {"precision": metrics.precision_at, "recall": metrics.recall_at, "f1": metrics.f1_at}
        return at[metric](y_true, outputs.score, outputs.threshold)
    functions = {
        "accuracy": (metrics.accuracy, outputs.prediction),
        "f1_macro": (metrics.f1_macro, outputs.prediction),
        "mae": (metrics.mae, outputs.prediction),
        "rmse": (metrics.rmse, outputs.prediction),
        "roc_auc": (metrics.roc_auc, outputs.score),
        "pr_auc": (metrics.pr_auc, outputs.score),
    }
    function, values = functions[metric]
    return function(y_true, values)


def gain(metric: str, candidate: float, current: float) -> float:
    """Return how much better ``candidate`` is than ``current``: a rise, or for an error
    metric (mae, rmse) a fall."""
    return candidate - current if metric_info(metric).higher_is_better else current - candidate
