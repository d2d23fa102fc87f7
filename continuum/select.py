"""Selection policies (which edge samples go up the link) and the uplink ``TokenBucket``.

A policy is a frozen pydantic spec with a ``kind`` discriminator, composed with ``|`` (any)
and ``&`` (all), that round-trips through JSON/YAML.  Deciding is a pure function of the
model's output probabilities and a ``SelectionContext``: random picks come from a hash of
each sample's seed, never from a global RNG, so a replay selects the same samples.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from continuum._validation import validate
from continuum.drift import DriftSpec, KSSpec, PSISpec
from continuum.errors import InputMismatchError, SpecError

__all__ = [
    "PROBS_ATOL",
    "AllOf",
    "AnyOf",
    "DriftBoost",
    "HighEntropy",
    "LowConfidence",
    "Policy",
    "PolicySpec",
    "Probabilities",
    "RandomRate",
    "SelectionContext",
    "SmallMargin",
    "TokenBucket",
    "all_of",
    "any_of",
    "drift",
    "high_entropy",
    "low_confidence",
    "random",
    "seed_from_id",
    "small_margin",
    "splitmix64",
]

#: How far a row of ``probs`` may sum from 1 (float16/float32 softmax rounding).
PROBS_ATOL = 1e-3

Mask = npt.NDArray[np.bool_]
Seeds = npt.NDArray[np.uint64]
Probs = npt.NDArray[np.float64]
Reasons = npt.NDArray[np.object_]

_F64 = np.dtype(np.float64)
_U64 = np.dtype(np.uint64)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# Each random-drawing leaf kind hashes the seed with its own salt, so `random(r)` and
# `drift(..., rate=r)` pick independent subsets of the same frames.
_RANDOM_SALT = np.uint64(0)
_DRIFT_SALT = np.uint64(0xD1B54A32D192ED03)


def splitmix64(values: npt.ArrayLike) -> Seeds:
    """Return the SplitMix64 hash of each uint64 (the generator's first output for that seed)."""
    z = np.atleast_1d(np.asarray(values, dtype=np.uint64)) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def seed_from_id(sample_id: str) -> int:
    """Return a stable 64-bit seed for a sample id (BLAKE2b, the same on every machine)."""
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


#: Up to this many seeds, Python integers hash faster than nine numpy calls (about 1 us
#: each on small arrays): the edge at batch 1 pays per call, not per element.
_SCALAR_HASH_MAX = 4
_MASK64 = 2**64 - 1


def _splitmix64_int(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _below_rate(seeds: npt.NDArray[np.integer[Any]], rate: float, salt: np.uint64) -> Mask:
    if rate <= 0.0:
        return np.zeros(seeds.shape, dtype=np.bool_)
    if rate >= 1.0:
        return np.ones(seeds.shape, dtype=np.bool_)
    cutoff = min(int(rate * 2.0**64), 2**64 - 1)
    if seeds.shape[0] <= _SCALAR_HASH_MAX:
        key = int(salt)
        picks = [_splitmix64_int(int(s) ^ key) < cutoff for s in seeds.tolist()]
        return np.array(picks, dtype=np.bool_).reshape(seeds.shape)
    return splitmix64(seeds.astype(np.uint64, copy=False) ^ salt) < np.uint64(cutoff)


@dataclass(frozen=True)
class SelectionContext:
    """Per-batch facts a policy may use besides the probabilities.

    ``seeds`` holds one integer per sample (e.g. ``seed_from_id(sample_id)``), stored as
    uint64; ``drift_active`` is the drift monitor's verdict for this stream.
    """

    seeds: npt.NDArray[np.integer[Any]]
    drift_active: bool = False
    drift_score: float = 0.0

    def __post_init__(self) -> None:
        seeds = self.seeds
        if isinstance(seeds, np.ndarray) and seeds.dtype == _U64 and seeds.ndim == 1:
            return  # already in canonical form: the per-batch case, keep it cheap
        seeds = np.asarray(seeds)
        if seeds.ndim != 1 or not (seeds.size == 0 or np.issubdtype(seeds.dtype, np.integer)):
            raise InputMismatchError(
                "SelectionContext.seeds must hold one integer per sample",
                expected="a 1-D integer array (uint64)",
                got=f"shape {seeds.shape} dtype {seeds.dtype}",
            )
        if seeds.dtype == np.int64:
            seeds = seeds.view(np.uint64)  # keep all 64 bits of negative seeds
        object.__setattr__(self, "seeds", seeds.astype(np.uint64, copy=False))

    @classmethod
    def for_ids(
        cls, sample_ids: Sequence[str], *, drift_active: bool = False, drift_score: float = 0.0
    ) -> SelectionContext:
        """Build a context whose seeds are ``seed_from_id`` of each sample id."""
        seeds = np.fromiter((seed_from_id(i) for i in sample_ids), dtype=np.uint64)
        return cls(seeds=seeds, drift_active=drift_active, drift_score=drift_score)

    @classmethod
    def for_node(
        cls,
        node: str,
        seqs: range | Sequence[int],
        *,
        drift_active: bool = False,
        drift_score: float = 0.0,
    ) -> SelectionContext:
        """Build a context for samples ``seqs`` of ``node``: seed = ``seed_from_id(node) + seq``.

        This is how the edge runtime seeds its samples: one hash per node instead of one per
        sample, and a vector add per batch.  The seed is still a pure function of the sample
        id (node and seq), so a replay selects the same samples; consecutive seqs give
        consecutive seeds, which SplitMix64 (a counter-based generator) is built to mix.
        """
        if isinstance(seqs, range) and seqs.step == 1 and seqs.start >= 0:
            offsets = np.arange(seqs.start, seqs.stop, dtype=np.uint64)
        else:
            values = np.asarray(seqs)
            if values.ndim != 1 or not (
                values.size == 0 or np.issubdtype(values.dtype, np.integer)
            ):
                raise InputMismatchError(
                    "seqs must hold one integer per sample",
                    expected="a 1-D sequence of sample seqs (integers >= 0)",
                    got=f"shape {values.shape} dtype {values.dtype}",
                )
            if values.size and int(values.min()) < 0:
                raise InputMismatchError(
                    "seqs must not be negative",
                    expected="sample seqs >= 0",
                    got=f"{int(values.min())}",
                )
            offsets = values.astype(np.uint64)
        seeds = offsets + _node_key(node)  # wraps modulo 2**64, as intended
        return cls(seeds=seeds, drift_active=drift_active, drift_score=drift_score)


@functools.lru_cache(maxsize=256)
def _node_key(node: str) -> np.uint64:
    return np.uint64(seed_from_id(node))


@dataclass(frozen=True, slots=True, eq=False)
class Probabilities:
    """A model's outputs as class probabilities, checked once so that policies need not.

    Build one with ``Probabilities.from_outputs``: ``values`` is then a read-only float64
    array (batch, classes) of finite rows in [0, 1] summing to 1 (within ``PROBS_ATOL``).
    ``Policy.decide`` and ``explain`` take it as is, checking only its shape against the
    seeds, which is what keeps selection cheap on the edge's per-batch path.
    """

    values: Probs

    def __post_init__(self) -> None:
        values = self.values
        if not (isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype == _F64):
            raise InputMismatchError(
                "Probabilities.values must be a float64 (batch, classes) array",
                expected="Probabilities.from_outputs(model_outputs)",
                got=f"{type(values).__name__} {getattr(values, 'shape', '')}",
            )

    @classmethod
    def from_outputs(cls, outputs: npt.ArrayLike) -> Probabilities:
        """Return ``outputs`` (batch, classes) as probabilities, applying a softmax to logits.

        Models are expected to end in a softmax; a model that returns logits (or rows that
        are not probabilities) gets one here, so that confidence, drift and selection still
        mean what they say.

        Raises:
            InputMismatchError: ``outputs`` is not 2-D, or holds NaN or infinite values.
        """
        out = np.asarray(outputs)
        if out.dtype.kind != "f":  # integers, booleans: as probabilities they are float64
            out = np.asarray(out, dtype=np.float64)
        if out.ndim != 2:
            raise InputMismatchError(
                "model output must be (batch, classes)",
                expected="a 2-D array (batch, classes)",
                got=f"shape {out.shape}",
            )
        softmax = clip = False
        if out.size:
            # Checked in the model's own precision (float32, mostly) and converted once: at
            # batch 1 this runs right after a model run has evicted the caches, where each
            # numpy call costs ~10 us, so it makes as few as it can.  A NaN or an infinity
            # makes its row's sum NaN or infinite, which fails the sum test and is told
            # apart below.
            low = float(out.min())
            sums = out.sum(axis=1, dtype=np.float64)
            if sums.shape[0] == 1:
                low_sum = high_sum = float(sums[0])
            else:
                low_sum, high_sum = float(sums.min()), float(sums.max())
            if not (low >= 0.0 and low_sum >= 1.0 - PROBS_ATOL and high_sum <= 1.0 + PROBS_ATOL):
                if not (math.isfinite(low) and math.isfinite(low_sum + high_sum)):
                    raise InputMismatchError(
                        "model output holds NaN or infinite values",
                        expected="finite values",
                        got=f"{int(np.count_nonzero(~np.isfinite(out)))} non-finite",
                    )
                softmax = True
            else:
                clip = high_sum > 1.0  # a rounding overshoot may leave a value above 1
        if out.dtype == _F64 and not (softmax or clip):
            values = out.view()  # read-only below without touching the caller's flags
        else:
            values = out.astype(np.float64)  # our own array: never the caller's
            if softmax:
                np.exp(values - values.max(axis=1, keepdims=True), out=values)
                values /= values.sum(axis=1, keepdims=True)
            elif clip:
                np.minimum(values, 1.0, out=values)
        values.flags.writeable = False
        return cls(values=values)


def _seeds_mismatch(rows: int, ctx: SelectionContext) -> InputMismatchError:
    return InputMismatchError(
        "ctx.seeds must hold one seed per row of probs",
        expected=f"{rows} seeds",
        got=f"{ctx.seeds.shape[0]} seeds",
    )


def _check_shape(array: Probs, ctx: SelectionContext) -> None:
    """Raise unless ``array`` is (batch, classes >= 2) with one row per seed of ``ctx``."""
    if array.ndim != 2 or array.shape[1] < 2:
        raise InputMismatchError(
            "probs must be the model's class probabilities, one row per sample",
            expected="shape (batch, classes) with classes >= 2",
            got=f"shape {array.shape}",
        )
    if array.shape[0] != ctx.seeds.shape[0]:
        raise _seeds_mismatch(array.shape[0], ctx)


def _check_probs(probs: npt.ArrayLike | Probabilities, ctx: SelectionContext) -> Probs:
    if isinstance(probs, Probabilities):
        _check_shape(probs.values, ctx)
        return probs.values
    try:
        array = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputMismatchError(
            "probs must be numbers", expected="a float array (batch, classes)", got=repr(probs)
        ) from error
    _check_shape(array, ctx)
    if array.size == 0:
        return array
    # The common case, valid probabilities, costs four reductions; the row-by-row search
    # below only runs to name the offending row (or to clip a rounding overshoot).
    low, high = float(array.min()), float(array.max())
    sums = array.sum(axis=1)
    if (
        low >= 0.0
        and high <= 1.0
        and float(sums.min()) >= 1.0 - PROBS_ATOL
        and float(sums.max()) <= 1.0 + PROBS_ATOL
    ):
        return array
    if not np.all(np.isfinite(array)):
        bad = int(np.argmin(np.all(np.isfinite(array), axis=1)))
        raise InputMismatchError(
            "probs must be finite", expected="finite probabilities", got=f"NaN/inf in row {bad}"
        )
    off = np.abs(sums - 1.0) > PROBS_ATOL
    out_of_range = np.any((array < -PROBS_ATOL) | (array > 1.0 + PROBS_ATOL), axis=1)
    bad_rows = off | out_of_range
    if np.any(bad_rows):
        row = int(np.argmax(bad_rows))
        raise InputMismatchError(
            "probs rows must be probabilities (apply softmax to logits first)",
            expected=f"values in [0, 1] summing to 1 (±{PROBS_ATOL})",
            got=f"row {row} sums to {sums[row]:.6g}",
        )
    return np.clip(array, 0.0, 1.0)


def _unit_interval(value: float, field: str, example: str) -> float:
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise SpecError(
            f"must be between 0 and 1, got {value}", field=field, fix=f"use e.g. {example}"
        )
    return value


class Policy(BaseModel):
    """Base of every selection policy; ``a | b`` selects either, ``a & b`` selects both."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def decide(self, probs: npt.ArrayLike | Probabilities, ctx: SelectionContext) -> Mask:
        """Return a bool per sample: True where the sample should be uplinked.

        Raises ``InputMismatchError`` unless ``probs`` is (batch, classes >= 2), finite, rows
        summing to 1, with one seed per row in ``ctx``.  ``Probabilities`` were checked when
        they were built: only their shape is checked again.
        """
        return self._mask(_check_probs(probs, ctx), ctx)

    def explain(
        self, probs: npt.ArrayLike | Probabilities, ctx: SelectionContext
    ) -> list[str | None]:
        """Return per sample why it was selected (a leaf's ``kind``), or None if it was not.

        ``any_of`` names its first selecting child in declaration order; ``all_of`` joins
        its children's reasons with ``&`` (e.g. ``"low_confidence&random"``).
        """
        return list(self._reasons(_check_probs(probs, ctx), ctx))

    def detectors(self) -> tuple[PSISpec | KSSpec, ...]:
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

    def _mask(self, probs: Probs, ctx: SelectionContext) -> Mask:
        raise NotImplementedError

    def _reasons(self, probs: Probs, ctx: SelectionContext) -> Reasons:
        raise NotImplementedError


def _selected(reasons: Reasons) -> Mask:
    return np.fromiter((r is not None for r in reasons), dtype=np.bool_, count=reasons.shape[0])


class _Leaf(Policy):
    def _reasons(self, probs: Probs, ctx: SelectionContext) -> Reasons:
        reasons = np.full(probs.shape[0], None, dtype=object)
        reasons[self._mask(probs, ctx)] = getattr(self, "kind")  # noqa: B009 (set by subclasses)
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

    def _mask(self, probs: Probs, ctx: SelectionContext) -> Mask:
        return np.asarray(probs.max(axis=1) < self.threshold, dtype=np.bool_)


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

    def _mask(self, probs: Probs, ctx: SelectionContext) -> Mask:
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

    def _mask(self, probs: Probs, ctx: SelectionContext) -> Mask:
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

    def _mask(self, probs: Probs, ctx: SelectionContext) -> Mask:
        return _below_rate(ctx.seeds, self.rate, _RANDOM_SALT)


class DriftBoost(_Leaf):
    """While ``ctx.drift_active``, select a ``rate`` share of samples (by seed hash).

    ``detector`` is the drift detector the runtime must run to set ``drift_active``.
    """

    kind: Literal["drift"] = "drift"
    detector: DriftSpec
    rate: float = Field(default=1.0, description="Share of samples selected while drift is active.")

    @field_validator("rate")
    @classmethod
    def _check(cls, value: float) -> float:
        return _unit_interval(value, "rate", "drift(drift.psi(0.2), rate=0.5)")

    def detectors(self) -> tuple[PSISpec | KSSpec, ...]:
        """Return this leaf's detector."""
        return (self.detector,)

    def describe(self) -> str:
        """Return ``drift(detector, rate=...)``."""
        rate = "" if self.rate == 1.0 else f", rate={self.rate:g}"
        detector = self.detector
        if isinstance(detector, PSISpec):
            return f"drift(psi({detector.threshold:g}){rate})"
        return f"drift(ks({detector.alpha:g}){rate})"

    def _mask(self, probs: Probs, ctx: SelectionContext) -> Mask:
        if not ctx.drift_active:
            return np.zeros(probs.shape[0], dtype=np.bool_)
        return _below_rate(ctx.seeds, self.rate, _DRIFT_SALT)


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

    def detectors(self) -> tuple[PSISpec | KSSpec, ...]:
        """Return the detectors of all children, in order."""
        return tuple(d for p in self.policies for d in p.detectors())

    def describe(self) -> str:
        """Return the children joined with `` | ``."""
        return " | ".join(p.describe() for p in self.policies)

    def _mask(self, probs: Probs, ctx: SelectionContext) -> Mask:
        first, *rest = self.policies
        mask = first._mask(probs, ctx)
        for policy in rest:
            mask = mask | policy._mask(probs, ctx)
        return mask

    def _reasons(self, probs: Probs, ctx: SelectionContext) -> Reasons:
        reasons = np.full(probs.shape[0], None, dtype=object)
        for policy in self.policies:
            child = policy._reasons(probs, ctx)
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
        return _nonempty(value, "all_of")

    def detectors(self) -> tuple[PSISpec | KSSpec, ...]:
        """Return the detectors of all children, in order."""
        return tuple(d for p in self.policies for d in p.detectors())

    def describe(self) -> str:
        """Return the children joined with `` & `` (any_of children in parentheses)."""
        parts = (
            f"({p.describe()})" if isinstance(p, AnyOf) and len(p.policies) > 1 else p.describe()
            for p in self.policies
        )
        return " & ".join(parts)

    def _mask(self, probs: Probs, ctx: SelectionContext) -> Mask:
        first, *rest = self.policies
        mask = first._mask(probs, ctx)
        for policy in rest:
            mask = mask & policy._mask(probs, ctx)
        return mask

    def _reasons(self, probs: Probs, ctx: SelectionContext) -> Reasons:
        children = [policy._reasons(probs, ctx) for policy in self.policies]
        reasons = np.full(probs.shape[0], None, dtype=object)
        for row in range(probs.shape[0]):
            parts = [str(child[row]) for child in children]
            if all(child[row] is not None for child in children):
                reasons[row] = "&".join(parts)
        return reasons


PolicySpec = Annotated[
    LowConfidence | SmallMargin | HighEntropy | RandomRate | DriftBoost | AnyOf | AllOf,
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


def random(rate: float) -> RandomRate:
    """Select a ``rate`` share of samples (in [0, 1]), deterministically by sample seed."""
    return validate(RandomRate, dict(rate=rate))


def drift(detector: PSISpec | KSSpec, rate: float = 1.0) -> DriftBoost:
    """Select a ``rate`` share of samples while ``detector`` reports drift."""
    if not isinstance(detector, PSISpec | KSSpec):
        raise SpecError(
            f"expected a drift detector, got {type(detector).__name__}",
            field="detector",
            fix="pass continuum.drift.psi(0.2) or continuum.drift.ks(0.01)",
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


class TokenBucket:
    """Byte budget for the uplink: refills at ``rate_bytes_per_s`` up to ``burst_bytes``.

    Time is passed in (``now_s``, any monotonic clock in seconds); the bucket starts full
    at the first time it sees.  A clock that steps back refills nothing.  A request larger
    than ``burst_bytes`` can never be granted: ``try_take`` returns False for it (check
    ``fits`` first and split or drop such a payload).  Not thread-safe.
    """

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int) -> None:
        if not (math.isfinite(rate_bytes_per_s) and rate_bytes_per_s > 0):
            raise SpecError(
                f"must be a positive number of bytes per second, got {rate_bytes_per_s}",
                field="rate_bytes_per_s",
                fix="use e.g. 32000 for 256 kbit/s",
            )
        if burst_bytes < 1:
            raise SpecError(
                f"must be at least 1 byte, got {burst_bytes}",
                field="burst_bytes",
                fix="use at least the size of the largest payload, e.g. one second of rate",
            )
        self._rate = float(rate_bytes_per_s)
        self._burst = int(burst_bytes)
        self._tokens = float(burst_bytes)
        self._last_s: float | None = None

    @classmethod
    def from_kbps(cls, budget_kbps: float, burst_s: float = 1.0) -> TokenBucket:
        """Build a bucket from a link budget in kilobits (1000 bits) per second.

        The burst is ``burst_s`` seconds of budget (at least one byte).
        """
        if not (math.isfinite(budget_kbps) and budget_kbps > 0):
            raise SpecError(
                f"must be a positive number, got {budget_kbps}",
                field="budget_kbps",
                fix="use e.g. budget_kbps=256",
            )
        if not (math.isfinite(burst_s) and burst_s > 0):
            raise SpecError(
                f"must be a positive number of seconds, got {burst_s}",
                field="burst_s",
                fix="use burst_s=1.0",
            )
        rate = budget_kbps * 1000.0 / 8.0
        return cls(rate, max(1, math.floor(rate * burst_s)))

    @property
    def rate_bytes_per_s(self) -> float:
        """Refill rate in bytes per second."""
        return self._rate

    @property
    def burst_bytes(self) -> int:
        """Capacity: the largest request that can ever be granted."""
        return self._burst

    def fits(self, n_bytes: int) -> bool:
        """Return whether a request of ``n_bytes`` can ever be granted."""
        return 0 <= n_bytes <= self._burst

    def level(self, now_s: float) -> float:
        """Return the bytes available at ``now_s`` (after refilling)."""
        self._refill(now_s)
        return self._tokens

    def try_take(self, n_bytes: int, now_s: float) -> bool:
        """Take ``n_bytes`` if available at ``now_s`` and return True; else take nothing."""
        if n_bytes < 0:
            raise InputMismatchError(
                "a token bucket request cannot be negative",
                expected="n_bytes >= 0",
                got=str(n_bytes),
            )
        self._refill(now_s)
        if n_bytes > self._tokens:
            return False
        self._tokens -= n_bytes
        return True

    def admit(self, sizes_bytes: npt.ArrayLike, now_s: float) -> Mask:
        """Try to take each size in order at ``now_s``; return which were granted."""
        sizes = np.atleast_1d(np.asarray(sizes_bytes, dtype=np.int64))
        return np.array([self.try_take(int(n), now_s) for n in sizes], dtype=np.bool_)

    def _refill(self, now_s: float) -> None:
        if not math.isfinite(now_s):
            raise InputMismatchError(
                "now_s must be a finite time",
                expected="seconds from a monotonic clock",
                got=str(now_s),
            )
        if self._last_s is None:
            self._last_s = now_s
            return
        elapsed = now_s - self._last_s
        if elapsed > 0:
            self._tokens = min(float(self._burst), self._tokens + elapsed * self._rate)
            self._last_s = now_s
