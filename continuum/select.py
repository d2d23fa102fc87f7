"""Selection policies (which edge samples go up the link) and the uplink ``TokenBucket``.

A policy is a frozen pydantic spec with a ``kind`` discriminator, composed with ``|`` (any)
and ``&`` (all), that round-trips through JSON/YAML.  Deciding is a pure function of the
model's outputs (read by the pipeline's task, ``continuum.task``) and a ``SelectionContext``:
random picks come from a hash of each sample's seed, never from a global RNG, so a replay
selects the same samples.  Each leaf judges the outputs of some tasks: ``low_confidence``,
``small_margin`` and ``high_entropy`` class probabilities; ``near_threshold`` and
``above_quantile`` a binary or anomaly score; ``wide_interval`` a regression's predicted
spread; ``mistakes`` (when a delayed label arrives) a prediction that can be wrong;
``random`` and ``drift`` any task.  A pipeline refuses a leaf its task cannot feed.
What policies decide on (``Probabilities``, ``SelectionContext``, the seed hash) lives in
``_selection_inputs`` and the ``TokenBucket`` in ``_token_bucket``; both are re-exported here.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from continuum._selection_inputs import (
    PROBS_ATOL,
    Mask,
    Probabilities,
    Probs,
    Reasons,
    ScoreHistory,
    SelectionContext,
    below_rate,
    check_probs,
    seed_from_id,
    splitmix64,
)
from continuum._token_bucket import TokenBucket
from continuum._validation import validate
from continuum.drift import DETECTOR_FIX, DETECTOR_TYPES, Detector, DriftSpec
from continuum.errors import InputMismatchError, SpecError
from continuum.task import TaskOutputs

__all__ = [
    "PROBS_ATOL",
    "AboveQuantile",
    "AllOf",
    "AnyOf",
    "DriftBoost",
    "HighEntropy",
    "LowConfidence",
    "Mistakes",
    "NearThreshold",
    "Policy",
    "PolicySpec",
    "Probabilities",
    "RandomRate",
    "ScoreHistory",
    "SelectionContext",
    "SmallMargin",
    "TokenBucket",
    "WideInterval",
    "above_quantile",
    "all_of",
    "any_of",
    "drift",
    "high_entropy",
    "low_confidence",
    "mistakes",
    "near_threshold",
    "random",
    "seed_from_id",
    "small_margin",
    "splitmix64",
    "wide_interval",
]

# Each random-drawing leaf kind hashes the seed with its own salt, so `random(r)` and
# `drift(..., rate=r)` pick independent subsets of the same frames.
_RANDOM_SALT = np.uint64(0)
_DRIFT_SALT = np.uint64(0xD1B54A32D192ED03)
_MISTAKES_SALT = np.uint64(0x8CB92BA72F3D8DD7)


def _unit_interval(value: float, field: str, example: str) -> float:
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise SpecError(
            f"must be between 0 and 1, got {value}", field=field, fix=f"use e.g. {example}"
        )
    return value


class Policy(BaseModel):
    """Base of every selection policy; ``a | b`` selects either, ``a & b`` selects both."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def decide(
        self, outputs: npt.ArrayLike | Probabilities | TaskOutputs, ctx: SelectionContext
    ) -> Mask:
        """Return a bool per sample: True where the sample should be uplinked.

        ``outputs`` are a task's read outputs (``Task.read``), or a classifier's
        probabilities.  Raises ``InputMismatchError`` unless probabilities are
        (batch, classes >= 2), finite, rows summing to 1, with one seed per row in ``ctx``,
        or a leaf gets outputs it cannot judge.  ``Probabilities`` and ``TaskOutputs``
        were checked when they were built: only their length is checked again.
        """
        return self._mask(_outputs(outputs, ctx), ctx)

    def explain(
        self, outputs: npt.ArrayLike | Probabilities | TaskOutputs, ctx: SelectionContext
    ) -> list[str | None]:
        """Return per sample why it was selected (a leaf's ``kind``), or None if it was not.

        ``any_of`` names its first selecting child in declaration order; ``all_of`` joins
        its children's reasons with ``&`` (e.g. ``"low_confidence&random"``).
        """
        return list(self._reasons(_outputs(outputs, ctx), ctx))

    def kinds(self) -> frozenset[str]:
        """Return the ``kind`` of every node of the policy (leaves and combinators)."""
        return frozenset({getattr(self, "kind")})  # noqa: B009 (set by subclasses)

    def history_window(self) -> int:
        """Return how many recent scores the runtime must keep for ``above_quantile`` leaves."""
        return 0

    def late_leaf(self) -> Mistakes | None:
        """Return the ``mistakes()`` leaf that selects when labels arrive, if there is one."""
        return self if isinstance(self, Mistakes) else None

    def detectors(self) -> tuple[Detector, ...]:
        """Return the drift detectors that ``drift(...)`` leaves need the runtime to run."""
        return ()

    def describe(self) -> str:
        """Return the policy as an expression, e.g. ``low_confidence(0.6) | random(0.01)``."""
        raise NotImplementedError

    def __or__(self, other: Policy) -> AnyOf:
        if not isinstance(other, Policy):
            return NotImplemented
        left = self.policies if isinstance(self, AnyOf) else (self,)
        right = other.policies if isinstance(other, AnyOf) else (other,)
        return any_of(*left, *right)

    def __and__(self, other: Policy) -> AllOf:
        if not isinstance(other, Policy):
            return NotImplemented
        left = self.policies if isinstance(self, AllOf) else (self,)
        right = other.policies if isinstance(other, AllOf) else (other,)
        return all_of(*left, *right)

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        raise NotImplementedError

    def _idle(self, ctx: SelectionContext) -> bool:
        """Whether this policy selects nothing in ``ctx`` whatever the outputs, and checks
        nothing about them: ``any_of`` then skips it (at batch 1 each skipped leaf saves an
        array and an ``|``, a few microseconds each right after a model run)."""
        return False

    def _reasons(self, out: TaskOutputs, ctx: SelectionContext) -> Reasons:
        raise NotImplementedError


def _outputs(
    outputs: npt.ArrayLike | Probabilities | TaskOutputs, ctx: SelectionContext
) -> TaskOutputs:
    """Return ``outputs`` as checked task outputs with one row per seed of ``ctx``."""
    if isinstance(outputs, TaskOutputs):
        if outputs.rows != ctx.seeds.shape[0]:
            raise InputMismatchError(
                "ctx.seeds must hold one seed per row of the outputs",
                expected=f"{outputs.rows} seeds",
                got=f"{ctx.seeds.shape[0]} seeds",
            )
        return outputs
    probs = check_probs(outputs, ctx)
    if isinstance(outputs, Probabilities):
        checked = outputs
    else:
        probs = np.array(probs, dtype=np.float64)
        probs.flags.writeable = False
        checked = Probabilities(values=probs)
    rows = probs.shape[0]
    score = probs.max(axis=1) if probs.size else np.zeros(rows)
    prediction = probs.argmax(axis=1).astype(np.float64) if probs.size else np.zeros(rows)
    return TaskOutputs(kind="classification", score=score, prediction=prediction, probs=checked)


def _class_probs(out: TaskOutputs, kind: str) -> Probs:
    """The class probabilities a classification leaf judges; refuse other tasks' outputs."""
    if out.probs is None:
        raise InputMismatchError(
            f"{kind} judges class probabilities, and this model is a {out.kind} model",
            expected="a classification model's outputs",
            got=f"{out.kind} outputs; declare a policy that fits the task (continuum.task)",
        )
    return out.probs.values


def _selected(reasons: Reasons) -> Mask:
    return np.fromiter((r is not None for r in reasons), dtype=np.bool_, count=reasons.shape[0])


class _Leaf(Policy):
    def _reasons(self, out: TaskOutputs, ctx: SelectionContext) -> Reasons:
        reasons = np.full(out.rows, None, dtype=object)
        reasons[self._mask(out, ctx)] = getattr(self, "kind")  # noqa: B009 (set by subclasses)
        return reasons


class LowConfidence(_Leaf):
    """Select samples whose top probability is below ``threshold``."""

    kind: Literal["low_confidence"] = "low_confidence"
    threshold: float = Field(description="Select when max probability < threshold, in [0, 1].")

    @field_validator("threshold")
    @classmethod
    def _check(cls, value: float) -> float:
        return _unit_interval(value, "threshold", "low_confidence(0.6)")

    def describe(self) -> str:
        """Return ``low_confidence(threshold)``."""
        return f"low_confidence({self.threshold:g})"

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        _class_probs(out, self.kind)
        return np.asarray(out.score < self.threshold, dtype=np.bool_)


class SmallMargin(_Leaf):
    """Select samples whose top-1 minus top-2 probability is below ``threshold``."""

    kind: Literal["small_margin"] = "small_margin"
    threshold: float = Field(description="Select when top1 - top2 < threshold, in [0, 1].")

    @field_validator("threshold")
    @classmethod
    def _check(cls, value: float) -> float:
        return _unit_interval(value, "threshold", "small_margin(0.2)")

    def describe(self) -> str:
        """Return ``small_margin(threshold)``."""
        return f"small_margin({self.threshold:g})"

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        probs = _class_probs(out, self.kind)
        top2 = np.partition(probs, -2, axis=1)[:, -2:]
        return np.asarray(top2[:, 1] - top2[:, 0] < self.threshold, dtype=np.bool_)


class HighEntropy(_Leaf):
    """Select samples whose entropy, divided by ln(classes), is above ``threshold``."""

    kind: Literal["high_entropy"] = "high_entropy"
    threshold: float = Field(description="Select when normalised entropy > threshold, in [0, 1].")

    @field_validator("threshold")
    @classmethod
    def _check(cls, value: float) -> float:
        return _unit_interval(value, "threshold", "high_entropy(0.5)")

    def describe(self) -> str:
        """Return ``high_entropy(threshold)``."""
        return f"high_entropy({self.threshold:g})"

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        probs = _class_probs(out, self.kind)
        # 0 * ln 0 counts as 0: take the log of 1 where p == 0.
        logs = np.log(np.where(probs > 0.0, probs, 1.0))
        entropy = -np.sum(probs * logs, axis=1) / math.log(probs.shape[1])
        return np.asarray(entropy > self.threshold, dtype=np.bool_)


class RandomRate(_Leaf):
    """Select a ``rate`` share of samples, chosen by a hash of each sample's seed."""

    kind: Literal["random"] = "random"
    rate: float = Field(description="Share of samples selected, in [0, 1].")

    @field_validator("rate")
    @classmethod
    def _check(cls, value: float) -> float:
        return _unit_interval(value, "rate", "random(0.01) for 1% of frames")

    def describe(self) -> str:
        """Return ``random(rate)``."""
        return f"random({self.rate:g})"

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        return below_rate(ctx.seeds, self.rate, _RANDOM_SALT)


class DriftBoost(_Leaf):
    """While ``detector`` reports drift, select a ``rate`` share of samples (by seed hash).

    ``detector`` is one the runtime must run: any signal (outputs, inputs, labels).  The
    leaf fires on its own detector's verdict (``detector in ctx.drifted``), so a policy
    ``drift(psi) | drift(inputs, rate=0.2)`` sends more while the outputs drift than while
    only the inputs do; ``ctx.drift_active`` fires every drift leaf.
    """

    kind: Literal["drift"] = "drift"
    detector: DriftSpec
    rate: float = Field(default=1.0, description="Share of samples selected while drift is active.")

    @field_validator("rate")
    @classmethod
    def _check(cls, value: float) -> float:
        return _unit_interval(value, "rate", "drift(drift.psi(0.2), rate=0.5)")

    def detectors(self) -> tuple[Detector, ...]:
        """Return this leaf's detector."""
        return (self.detector,)

    def describe(self) -> str:
        """Return ``drift(detector, rate=...)``, e.g. ``drift(inputs(), rate=0.5)``."""
        rate = "" if self.rate == 1.0 else f", rate={self.rate:g}"
        return f"drift({self.detector.describe()}{rate})"

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        if self._idle(ctx):
            return np.zeros(out.rows, dtype=np.bool_)
        return below_rate(ctx.seeds, self.rate, _DRIFT_SALT)

    def _idle(self, ctx: SelectionContext) -> bool:
        # An empty set first: hashing the detector spec costs more than the rest of the leaf.
        return not (ctx.drift_active or (ctx.drifted and self.detector in ctx.drifted))


def _threshold_of(out: TaskOutputs, kind: str) -> float:
    """The decision threshold a score leaf measures from; refuse outputs without one."""
    if out.threshold is None:
        raise InputMismatchError(
            f"{kind} judges a binary or anomaly score, and this model is a {out.kind} model",
            expected="a binary or anomaly model's outputs",
            got=f"{out.kind} outputs; declare a policy that fits the task (continuum.task)",
        )
    return out.threshold


class NearThreshold(_Leaf):
    """Select samples whose score lies within ``width`` of the task's decision threshold.

    The operating point is where a binary or anomaly model's decisions are made and where
    a label teaches it the most: a transaction scored 0.48 against a threshold of 0.5 is
    the one a reviewer should see.  For an anomaly score ``width`` is in the score's units
    (1.0 is the calibrated threshold when the trainer folds its calibration in).
    """

    kind: Literal["near_threshold"] = "near_threshold"
    width: float = Field(description="Select when |score - threshold| <= width; > 0.")

    @field_validator("width")
    @classmethod
    def _check(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0.0):
            raise SpecError(
                f"must be a positive number, got {value}",
                field="width",
                fix="use e.g. near_threshold(0.1) for scores within 0.1 of the threshold",
            )
        return value

    def describe(self) -> str:
        """Return ``near_threshold(width)``."""
        return f"near_threshold({self.width:g})"

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        threshold = _threshold_of(out, self.kind)
        return np.asarray(np.abs(out.score - threshold) <= self.width, dtype=np.bool_)


class Mistakes(_Leaf):
    """When a sample's delayed label arrives and shows the model was wrong, select it.

    The examples a model gets wrong are the ones that teach it, and for a rare event they
    are found only by their label: a fraud scored as legitimate is far from any threshold
    until its chargeback comes back weeks later.  The edge holds the tensors of the frames
    it did not select until their labels are due (at most ``hold_frames`` of them and
    ``hold_mb`` of tensors, for at most ``hold_s``; when full, newer frames are not held),
    then selects a ``rate`` share (by seed hash) of those whose label disagrees with the
    prediction, with the label attached.  At inference time the leaf selects nothing, so
    it combines with ``|`` only.
    """

    kind: Literal["mistakes"] = "mistakes"
    rate: float = Field(default=1.0, description="Share of the mistakes selected, in [0, 1].")
    hold_s: float = Field(
        default=86_400.0, description="Longest label delay the edge waits for, seconds."
    )
    hold_frames: int = Field(
        default=10_000, description="Most frames held for their labels at once."
    )
    hold_mb: float = Field(
        default=64.0, description="Most tensor memory held for labels at once, in MiB."
    )

    @field_validator("rate")
    @classmethod
    def _check(cls, value: float) -> float:
        return _unit_interval(value, "rate", "mistakes(rate=0.5)")

    @field_validator("hold_s")
    @classmethod
    def _check_hold(cls, value: float) -> float:
        if not (math.isfinite(value) and 0.0 < value <= 30 * 86_400.0):
            raise SpecError(
                f"must be in (0, 30 days], got {value}",
                field="hold_s",
                fix="use e.g. mistakes(hold_s=3600) to wait an hour for labels",
            )
        return value

    @field_validator("hold_mb")
    @classmethod
    def _check_mb(cls, value: float) -> float:
        if not (math.isfinite(value) and 0.0 < value <= 65_536.0):
            raise SpecError(
                f"must be in (0, 65536] MiB, got {value}",
                field="hold_mb",
                fix="use e.g. mistakes(hold_mb=64)",
            )
        return value

    @field_validator("hold_frames")
    @classmethod
    def _check_frames(cls, value: int) -> int:
        if not 1 <= value <= 1_000_000:
            raise SpecError(
                f"must be in [1, 1000000], got {value}",
                field="hold_frames",
                fix="use e.g. mistakes(hold_frames=10000)",
            )
        return value

    def describe(self) -> str:
        """Return ``mistakes()`` with the settings that differ from the defaults."""
        parts = [] if self.rate == 1.0 else [f"rate={self.rate:g}"]
        if self.hold_s != 86_400.0:
            parts.append(f"hold_s={self.hold_s:g}")
        if self.hold_frames != 10_000:
            parts.append(f"hold_frames={self.hold_frames}")
        if self.hold_mb != 64.0:
            parts.append(f"hold_mb={self.hold_mb:g}")
        return f"mistakes({', '.join(parts)})"

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        return np.zeros(out.rows, dtype=np.bool_)

    def _idle(self, ctx: SelectionContext) -> bool:
        return True  # it selects when labels arrive (decide_late), never at inference

    def decide_late(self, seeds: npt.NDArray[np.integer[Any]], wrong: Mask) -> Mask:
        """Return which labelled frames to select now: the wrong ones, a ``rate`` share."""
        return np.asarray(wrong, dtype=np.bool_) & below_rate(
            np.asarray(seeds, dtype=np.uint64), self.rate, _MISTAKES_SALT
        )


#: A rolling quantile needs this many scores (or ``window``, if fewer) before it selects.
_MIN_QUANTILE_SCORES = 20


class AboveQuantile(_Leaf):
    """Select samples scored above the ``q`` quantile of this stream's recent scores.

    A rolling quantile rather than a fixed cut: the top 1% of a sensor's anomaly scores
    stays the top 1% when a machine ages and every score rises, so the uplink keeps
    sending the stream's most unusual windows at a steady, budgetable rate.  The runtime
    keeps the last ``window`` scores (``SelectionContext.recent_scores``) and compares
    each batch with them and itself; without them (a replay) the batch alone stands in.
    Until 20 scores (or ``window``, if fewer) are known, nothing is selected.
    """

    kind: Literal["above_quantile"] = "above_quantile"
    q: float = Field(description="The quantile of recent scores to exceed, in (0, 1).")
    window: int = Field(default=1000, description="How many recent scores make the quantile.")

    @field_validator("q")
    @classmethod
    def _check_q(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise SpecError(
                f"must be in (0, 1), got {value}",
                field="q",
                fix="use e.g. above_quantile(0.99) for the top 1% of recent scores",
            )
        return value

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: int) -> int:
        if not 10 <= value <= 100_000:
            raise SpecError(
                f"must be in [10, 100000], got {value}",
                field="window",
                fix="use e.g. above_quantile(0.99, window=1000)",
            )
        return value

    def describe(self) -> str:
        """Return ``above_quantile(q)`` or ``above_quantile(q, window=n)``."""
        window = "" if self.window == 1000 else f", window={self.window}"
        return f"above_quantile({self.q:g}{window})"

    def history_window(self) -> int:
        """Return ``window``."""
        return self.window

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        _threshold_of(out, self.kind)
        recent = ctx.recent_scores
        pool = out.score if recent is None else np.concatenate([recent, out.score])
        if pool.size < min(self.window, _MIN_QUANTILE_SCORES):
            # Too few scores to say what is unusual yet: a stream's first batches would
            # otherwise send their own top rows, however ordinary.
            return np.zeros(out.rows, dtype=np.bool_)
        cut = float(np.quantile(pool, self.q))
        return np.asarray(out.score > cut, dtype=np.bool_)


class WideInterval(_Leaf):
    """Select samples whose predicted standard deviation is at least ``std``.

    A regression model that says how unsure it is (``regression(uncertainty=True)``)
    points at the samples whose label would teach it most, as low confidence does for a
    classifier.  ``std`` is in the target's units.
    """

    kind: Literal["wide_interval"] = "wide_interval"
    std: float = Field(description="Select when the predicted std >= this; > 0, target units.")

    @field_validator("std")
    @classmethod
    def _check(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0.0):
            raise SpecError(
                f"must be a positive number, got {value}",
                field="std",
                fix="use e.g. wide_interval(5.0) for a std of 5 target units or more",
            )
        return value

    def describe(self) -> str:
        """Return ``wide_interval(std)``."""
        return f"wide_interval({self.std:g})"

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        if out.spread is None:
            raise InputMismatchError(
                "wide_interval judges a regression model's predicted std",
                expected="regression(uncertainty=True) outputs",
                got=f"{out.kind} outputs without a std",
            )
        return np.asarray(out.spread >= self.std, dtype=np.bool_)


def _nonempty(value: tuple[Policy, ...], kind: str) -> tuple[Policy, ...]:
    if not value:
        raise SpecError(
            "needs at least one policy",
            field="policies",
            fix=f"pass policies, e.g. {kind}(low_confidence(0.6), random(0.01))",
        )
    return value


class AnyOf(Policy):
    """Select a sample when any of ``policies`` selects it."""

    kind: Literal["any_of"] = "any_of"
    policies: tuple[PolicySpec, ...]

    @field_validator("policies")
    @classmethod
    def _check(cls, value: tuple[Policy, ...]) -> tuple[Policy, ...]:
        return _nonempty(value, "any_of")

    def detectors(self) -> tuple[Detector, ...]:
        """Return the detectors of all children, in order."""
        return tuple(d for p in self.policies for d in p.detectors())

    def kinds(self) -> frozenset[str]:
        """Return this node's kind and its children's."""
        return frozenset({self.kind}).union(*(p.kinds() for p in self.policies))

    def history_window(self) -> int:
        """Return the longest history any child needs."""
        return max(p.history_window() for p in self.policies)

    def late_leaf(self) -> Mistakes | None:
        """Return the first child's ``mistakes()`` leaf, if any."""
        return next((leaf for p in self.policies if (leaf := p.late_leaf()) is not None), None)

    def describe(self) -> str:
        """Return the children joined with `` | ``."""
        return " | ".join(p.describe() for p in self.policies)

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        mask: Mask | None = None
        for policy in self.policies:
            if policy._idle(ctx):
                continue
            child = policy._mask(out, ctx)
            mask = child if mask is None else mask | child
        return np.zeros(out.rows, dtype=np.bool_) if mask is None else mask

    def _idle(self, ctx: SelectionContext) -> bool:
        return all(policy._idle(ctx) for policy in self.policies)

    def _reasons(self, out: TaskOutputs, ctx: SelectionContext) -> Reasons:
        reasons = np.full(out.rows, None, dtype=object)
        for policy in self.policies:
            child = policy._reasons(out, ctx)
            fill = ~_selected(reasons) & _selected(child)
            reasons[fill] = child[fill]
        return reasons


class AllOf(Policy):
    """Select a sample only when every one of ``policies`` selects it."""

    kind: Literal["all_of"] = "all_of"
    policies: tuple[PolicySpec, ...]

    @field_validator("policies")
    @classmethod
    def _check(cls, value: tuple[Policy, ...]) -> tuple[Policy, ...]:
        if any("mistakes" in p.kinds() for p in value):
            raise SpecError(
                "mistakes() decides when a label arrives, after the other policies have",
                field="policies",
                fix="combine it with |, e.g. near_threshold(0.1) | mistakes()",
            )
        return _nonempty(value, "all_of")

    def detectors(self) -> tuple[Detector, ...]:
        """Return the detectors of all children, in order."""
        return tuple(d for p in self.policies for d in p.detectors())

    def kinds(self) -> frozenset[str]:
        """Return this node's kind and its children's."""
        return frozenset({self.kind}).union(*(p.kinds() for p in self.policies))

    def history_window(self) -> int:
        """Return the longest history any child needs."""
        return max(p.history_window() for p in self.policies)

    def late_leaf(self) -> Mistakes | None:
        """Return the first child's ``mistakes()`` leaf, if any."""
        return next((leaf for p in self.policies if (leaf := p.late_leaf()) is not None), None)

    def describe(self) -> str:
        """Return the children joined with `` & `` (any_of children in parentheses)."""
        parts = (
            f"({p.describe()})" if isinstance(p, AnyOf) and len(p.policies) > 1 else p.describe()
            for p in self.policies
        )
        return " & ".join(parts)

    def _mask(self, out: TaskOutputs, ctx: SelectionContext) -> Mask:
        first, *rest = self.policies
        mask = first._mask(out, ctx)
        for policy in rest:
            mask = mask & policy._mask(out, ctx)
        return mask

    def _reasons(self, out: TaskOutputs, ctx: SelectionContext) -> Reasons:
        children = [policy._reasons(out, ctx) for policy in self.policies]
        reasons = np.full(out.rows, None, dtype=object)
        for row in range(out.rows):
            parts = [str(child[row]) for child in children]
            if all(child[row] is not None for child in children):
                reasons[row] = "&".join(parts)
        return reasons


PolicySpec = Annotated[
    Mistakes
    | LowConfidence
    | SmallMargin
    | HighEntropy
    | NearThreshold
    | AboveQuantile
    | WideInterval
    | RandomRate
    | DriftBoost
    | AnyOf
    | AllOf,
    Field(discriminator="kind"),
]

AnyOf.model_rebuild()
AllOf.model_rebuild()


def low_confidence(threshold: float) -> LowConfidence:
    """Select samples whose max probability is below ``threshold`` (in [0, 1])."""
    return validate(LowConfidence, dict(threshold=threshold))


def small_margin(threshold: float) -> SmallMargin:
    """Select samples whose top-1 minus top-2 probability is below ``threshold`` (in [0, 1])."""
    return validate(SmallMargin, dict(threshold=threshold))


def high_entropy(threshold: float) -> HighEntropy:
    """Select samples whose normalised entropy is above ``threshold`` (in [0, 1])."""
    return validate(HighEntropy, dict(threshold=threshold))


def near_threshold(width: float) -> NearThreshold:
    """Select binary or anomaly scores within ``width`` of the task's threshold."""
    return validate(NearThreshold, dict(width=width))


def above_quantile(q: float, window: int = 1000) -> AboveQuantile:
    """Select binary or anomaly scores above the ``q`` quantile of the last ``window``."""
    return validate(AboveQuantile, dict(q=q, window=window))


def wide_interval(std: float) -> WideInterval:
    """Select regression predictions whose std is at least ``std`` (target units)."""
    return validate(WideInterval, dict(std=std))


def mistakes(rate: float = 1.0, *, hold_s: float = 86_400.0, hold_frames: int = 10_000) -> Mistakes:
    """Select frames whose delayed label shows the model wrong, when the label arrives."""
    return validate(Mistakes, dict(rate=rate, hold_s=hold_s, hold_frames=hold_frames))


def random(rate: float) -> RandomRate:
    """Select a ``rate`` share of samples (in [0, 1]), deterministically by sample seed."""
    return validate(RandomRate, dict(rate=rate))


def drift(detector: Detector, rate: float = 1.0) -> DriftBoost:
    """Select a ``rate`` share of samples while ``detector`` (any signal) reports drift."""
    if not isinstance(detector, DETECTOR_TYPES):
        raise SpecError(
            f"expected a drift detector, got {type(detector).__name__}",
            field="detector",
            fix=DETECTOR_FIX,
        )
    return validate(DriftBoost, dict(detector=detector, rate=rate))


def _children(policies: tuple[Any, ...], name: str) -> tuple[Policy, ...]:
    for position, policy in enumerate(policies):
        if not isinstance(policy, Policy):
            raise SpecError(
                f"argument {position} is a {type(policy).__name__}, not a policy",
                field="policies",
                fix=f"pass policies built with select.*, e.g. {name}(low_confidence(0.6), ...)",
            )
    return policies


def any_of(*policies: Policy) -> AnyOf:
    """Select a sample when any of ``policies`` does (same as ``a | b``)."""
    return validate(AnyOf, dict(policies=_children(policies, "any_of")))


def all_of(*policies: Policy) -> AllOf:
    """Select a sample only when all of ``policies`` do (same as ``a & b``)."""
    return validate(AllOf, dict(policies=_children(policies, "all_of")))
