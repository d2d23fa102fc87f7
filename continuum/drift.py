"""Drift detection on the edge: detector specs (PSI, Kolmogorov-Smirnov) and ``DriftMonitor``.

A detector compares the last ``window`` model confidences with a reference: the first
``reference`` confidences seen after a (re)start, e.g. right after a model swap.  Only
numpy is used at runtime, so the slim edge install (no scipy) can run it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from continuum._validation import validate
from continuum.errors import InputMismatchError, SpecError

__all__ = [
    "PSI_EPSILON",
    "DriftMonitor",
    "DriftSpec",
    "DriftState",
    "KSResult",
    "KSSpec",
    "PSISpec",
    "ks",
    "ks_two_sample",
    "population_stability_index",
    "psi",
]

#: Floor for a bin's share in the PSI sum, so an empty bin gives a large but finite term.
PSI_EPSILON = 1e-4

FloatArray = npt.NDArray[np.float64]


class _DetectorBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("window", "reference", check_fields=False)
    @classmethod
    def _at_least_two(cls, value: int, info: ValidationInfo) -> int:
        name = info.field_name or "window"
        if value < 2:
            default = cls.model_fields[name].default
            raise SpecError(
                f"must be at least 2 values, got {value}",
                field=name,
                fix=f"use {name}={default} or more for a stable estimate",
            )
        return value


_WINDOW_DOC = "Number of most recent values compared to the reference."
_REFERENCE_DOC = "Number of values after a reset that form the reference."


class PSISpec(_DetectorBase):
    """Population stability index detector: drifted when PSI > ``threshold``.

    ``binning="quantile"`` (default) puts the bin edges at the reference's quantiles, so each
    bin holds about the same share of the reference (ties merge bins); values outside the
    reference's range fall into the outermost bins.  ``binning="uniform"`` uses ``bins``
    equal-width bins on [0, 1], meant for confidences.  Empty bins are floored at
    ``PSI_EPSILON`` (1e-4) of the total before the log, in both histograms.
    """

    kind: Literal["psi"] = "psi"
    window: int = Field(default=200, description=_WINDOW_DOC)
    reference: int = Field(default=300, description=_REFERENCE_DOC)
    threshold: float = Field(default=0.2, description="PSI above which the window has drifted.")
    bins: int = Field(default=10, description="Number of histogram bins.")
    binning: Literal["quantile", "uniform"] = Field(
        default="quantile",
        description="Bin edges from reference quantiles, or equal-width on [0, 1].",
    )

    @field_validator("threshold")
    @classmethod
    def _positive_threshold(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0):
            raise SpecError(
                f"must be a positive number, got {value}",
                field="threshold",
                fix="use 0.1 (moderate shift) to 0.25 (major shift); 0.2 is the usual choice",
            )
        return value

    @field_validator("bins")
    @classmethod
    def _bins_in_range(cls, value: int) -> int:
        if not 2 <= value <= 1000:
            raise SpecError(
                f"must be between 2 and 1000, got {value}", field="bins", fix="use bins=10"
            )
        return value

    @model_validator(mode="after")
    def _reference_covers_bins(self) -> PSISpec:
        if self.reference < self.bins:
            raise SpecError(
                f"reference={self.reference} values cannot fill bins={self.bins} bins",
                field="reference",
                fix=f"use reference >= {10 * self.bins} or fewer bins",
            )
        return self


class KSSpec(_DetectorBase):
    """Two-sample Kolmogorov-Smirnov detector: drifted when the p-value < ``alpha``.

    The score is the KS statistic D (largest gap between the two empirical CDFs, in [0, 1]);
    the p-value is the asymptotic one (Kolmogorov distribution with Stephens' correction).
    """

    kind: Literal["ks"] = "ks"
    window: int = Field(default=200, description=_WINDOW_DOC)
    reference: int = Field(default=300, description=_REFERENCE_DOC)
    alpha: float = Field(
        default=0.01, description="Significance level: p-value below it means drift."
    )

    @field_validator("alpha")
    @classmethod
    def _alpha_in_unit_interval(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise SpecError(
                f"must be strictly between 0 and 1, got {value}",
                field="alpha",
                fix="use alpha=0.01 (or 0.001 to alert less often)",
            )
        return value


DriftSpec = Annotated[PSISpec | KSSpec, Field(discriminator="kind")]


def psi(
    threshold: float = 0.2,
    window: int = 200,
    reference: int = 300,
    bins: int = 10,
    binning: Literal["quantile", "uniform"] = "quantile",
) -> PSISpec:
    """Declare a population-stability-index detector; raise ``SpecError`` on bad arguments."""
    return validate(
        PSISpec,
        dict(threshold=threshold, window=window, reference=reference, bins=bins, binning=binning),
    )


def ks(alpha: float = 0.01, window: int = 200, reference: int = 300) -> KSSpec:
    """Declare a two-sample Kolmogorov-Smirnov detector; raise ``SpecError`` on bad arguments."""
    return validate(KSSpec, dict(alpha=alpha, window=window, reference=reference))


@dataclass(frozen=True)
class DriftState:
    """What a detector says after an update.

    ``score`` is the PSI or the KS statistic D (0.0 until ``ready``); ``p_value`` is set by
    the KS detector only.
    """

    score: float
    drifted: bool
    ready: bool
    p_value: float | None = None


class KSResult(NamedTuple):
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic two-sided p-value."""

    statistic: float
    pvalue: float


def population_stability_index(
    reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike, epsilon: float = PSI_EPSILON
) -> float:
    """Return sum((a - e) * ln(a / e)) over bins, shares floored at ``epsilon``."""
    expected = _counts(reference_counts, "reference_counts")
    actual = _counts(current_counts, "current_counts")
    if expected.shape != actual.shape:
        raise InputMismatchError(
            "PSI histograms must have the same bins",
            expected=f"{expected.shape[0]} bins",
            got=f"{actual.shape[0]} bins",
        )
    e = np.maximum(expected / expected.sum(), epsilon)
    a = np.maximum(actual / actual.sum(), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_two_sample(a: npt.ArrayLike, b: npt.ArrayLike) -> KSResult:
    """Return the two-sample KS statistic and its asymptotic two-sided p-value."""
    first = np.sort(_values(a, "a"))
    second = np.sort(_values(b, "b"))
    if first.size == 0 or second.size == 0:
        raise InputMismatchError(
            "KS test needs two non-empty samples",
            expected="at least one value in each",
            got=f"{first.size} and {second.size} values",
        )
    return _ks_sorted(first, second)


def _ks_sorted(first: FloatArray, second: FloatArray) -> KSResult:
    both = np.concatenate([first, second])
    cdf_first = np.searchsorted(first, both, side="right") / first.size
    cdf_second = np.searchsorted(second, both, side="right") / second.size
    statistic = float(np.max(np.abs(cdf_first - cdf_second)))
    effective_n = first.size * second.size / (first.size + second.size)
    root = math.sqrt(effective_n)
    # Stephens' correction makes the asymptotic law usable for samples of tens of values.
    return KSResult(statistic, _kolmogorov_sf((root + 0.12 + 0.11 / root) * statistic))


def _kolmogorov_sf(x: float) -> float:
    """Return P(K > x) for the Kolmogorov distribution K."""
    if x <= 0.0:
        return 1.0
    if x < 1.18:
        # The theta-function form converges fast for small x, where the alternating one does not.
        y = math.exp(-(math.pi**2) / (8.0 * x * x))
        cdf = math.sqrt(2.0 * math.pi) / x * (y + y**9 + y**25 + y**49)
        return min(1.0, max(0.0, 1.0 - cdf))
    z = math.exp(-2.0 * x * x)
    return min(1.0, max(0.0, 2.0 * (z - z**4 + z**9 - z**16)))


def _values(data: npt.ArrayLike, name: str) -> FloatArray:
    try:
        values = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputMismatchError(
            f"{name} must be numbers", expected="a 1-D array of floats", got=repr(type(data))
        ) from error
    if values.ndim > 1:
        raise InputMismatchError(
            f"{name} must be one value per sample (pass probs.max(axis=1), not probs)",
            expected="a 1-D array",
            got=f"shape {values.shape}",
        )
    values = values.reshape(-1)
    if not np.all(np.isfinite(values)):
        raise InputMismatchError(
            f"{name} must be finite", expected="finite floats", got="NaN or infinity"
        )
    return values


def _counts(data: npt.ArrayLike, name: str) -> FloatArray:
    counts = _values(data, name)
    if counts.size == 0 or np.any(counts < 0) or counts.sum() <= 0:
        raise InputMismatchError(
            f"{name} must be a histogram",
            expected="non-negative counts with a positive total",
            got=np.array2string(counts, threshold=12),
        )
    return counts


class DriftMonitor:
    """Run one drift detector over a stream of per-sample confidences.

    The first ``spec.reference`` values after construction or ``reset()`` form the
    reference; the values after them fill a ring buffer of the last ``spec.window`` values.
    The monitor is ``ready`` once both are full; ``drifted`` is only ever true when ready.
    Each update costs O(window log window).  Not thread-safe: one monitor per stream.
    """

    def __init__(self, spec: PSISpec | KSSpec) -> None:
        if not isinstance(spec, PSISpec | KSSpec):
            raise SpecError(
                f"expected a drift detector spec, got {type(spec).__name__}",
                field="spec",
                fix="pass drift.psi(...) or drift.ks(...)",
            )
        self._spec = spec
        self._reference = np.empty(spec.reference, dtype=np.float64)
        self._window = np.empty(spec.window, dtype=np.float64)
        self._reference_count = 0
        self._window_count = 0
        self._window_next = 0
        self._sorted_reference: FloatArray | None = None
        self._edges: FloatArray | None = None
        self._reference_hist: FloatArray | None = None
        self._state = DriftState(score=0.0, drifted=False, ready=False)

    @property
    def spec(self) -> PSISpec | KSSpec:
        """The detector spec this monitor runs."""
        return self._spec

    @property
    def state(self) -> DriftState:
        """The state after the latest update."""
        return self._state

    def reset(self) -> None:
        """Forget everything; the next ``spec.reference`` values become the new reference."""
        self._reference_count = 0
        self._window_count = 0
        self._window_next = 0
        self._sorted_reference = None
        self._edges = None
        self._reference_hist = None
        self._state = DriftState(score=0.0, drifted=False, ready=False)

    def update(self, confidences: npt.ArrayLike) -> DriftState:
        """Add a batch of confidences and return the detector's state."""
        values = _values(confidences, "confidences")
        missing = self._spec.reference - self._reference_count
        if missing > 0:
            taken = values[:missing]
            start = self._reference_count
            self._reference[start : start + taken.size] = taken
            self._reference_count += taken.size
            values = values[taken.size :]
            if self._reference_count == self._spec.reference:
                self._freeze_reference()
        if values.size:
            self._push_window(values)
        if (
            self._reference_count == self._spec.reference
            and self._window_count == self._spec.window
        ):
            self._state = self._score()
        return self._state

    def _push_window(self, values: FloatArray) -> None:
        size = self._spec.window
        if values.size >= size:
            self._window[:] = values[-size:]
            self._window_next = 0
            self._window_count = size
            return
        slots = (self._window_next + np.arange(values.size)) % size
        self._window[slots] = values
        self._window_next = (self._window_next + values.size) % size
        self._window_count = min(size, self._window_count + values.size)

    def _freeze_reference(self) -> None:
        spec = self._spec
        if isinstance(spec, KSSpec):
            self._sorted_reference = np.sort(self._reference)
            return
        if spec.binning == "uniform":
            edges = np.linspace(0.0, 1.0, spec.bins + 1)[1:-1]
        else:
            inner = np.linspace(0.0, 1.0, spec.bins + 1)[1:-1]
            edges = np.unique(np.quantile(self._reference, inner))
        self._edges = edges
        self._reference_hist = self._histogram(self._reference)

    def _histogram(self, values: FloatArray) -> FloatArray:
        assert self._edges is not None
        # side="right": a value equal to an edge counts in the bin above it, so a reference
        # piled up at 1.0 keeps its own top bin.
        index = np.searchsorted(self._edges, values, side="right")
        return np.bincount(index, minlength=self._edges.size + 1).astype(np.float64)

    def _score(self) -> DriftState:
        spec = self._spec
        if isinstance(spec, KSSpec):
            assert self._sorted_reference is not None
            result = _ks_sorted(self._sorted_reference, np.sort(self._window))
            return DriftState(
                score=result.statistic,
                drifted=result.pvalue < spec.alpha,
                ready=True,
                p_value=result.pvalue,
            )
        assert self._reference_hist is not None
        score = population_stability_index(self._reference_hist, self._histogram(self._window))
        return DriftState(score=score, drifted=score > spec.threshold, ready=True)
