"""The drift detector specs: what each detector watches (its ``signal``), its test and knobs.

Four kinds on three signals: ``psi`` and ``ks`` watch the model's outputs (its confidence),
``inputs`` watches the tensors the model is fed, ``labels`` watches the error rate that
delayed ground truth reveals.  Each is a frozen pydantic spec with a ``kind`` discriminator,
so it round-trips through JSON/YAML; bad arguments raise ``SpecError`` with the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from continuum._validation import validate
from continuum.errors import SpecError

#: What a detector watches: the model's outputs, its inputs, or its errors on labelled frames.
Signal = Literal["outputs", "inputs", "labels"]


class _DetectorBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The argument ``describe`` writes first, without its name (e.g. psi's threshold).
    _positional: ClassVar[str | None] = None

    @property
    def signal(self) -> Signal:
        """What this detector watches."""
        raise NotImplementedError

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

    def describe(self) -> str:
        """Return the detector as the call that declares it, e.g. ``psi(0.25, window=100)``.

        Arguments at their defaults are left out, so ``drift.psi()`` reads ``psi(0.2)``.
        """
        kind = getattr(self, "kind")  # noqa: B009 (set by subclasses)
        parts: list[str] = []
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if name == "kind":
                continue
            if name == self._positional:
                parts.insert(0, f"{value:g}")
            elif value != info.default:
                parts.append(
                    f"{name}={value:g}" if isinstance(value, float) else f"{name}={value!r}"
                )
        return f"{kind}({', '.join(parts)})"


_WINDOW_DOC = "Number of most recent values compared to the reference."
_REFERENCE_DOC = "Number of values after a reset that form the reference."


def _check_alpha(value: float, example: str) -> float:
    if not 0.0 < value < 1.0:  # also refuses NaN
        raise SpecError(
            f"must be strictly between 0 and 1, got {value}", field="alpha", fix=example
        )
    return value


class PSISpec(_DetectorBase):
    """Population stability index on the model's confidences: drifted when PSI > ``threshold``.

    ``binning="quantile"`` (default) puts the bin edges at the reference's quantiles, so each
    bin holds about the same share of the reference (ties merge bins); values outside the
    reference's range fall into the outermost bins.  ``binning="uniform"`` uses ``bins``
    equal-width bins on [0, 1], meant for confidences.  Empty bins are floored at
    ``PSI_EPSILON`` (1e-4) of the total before the log, in both histograms.
    """

    _positional: ClassVar[str | None] = "threshold"

    kind: Literal["psi"] = "psi"
    window: int = Field(default=200, description=_WINDOW_DOC)
    reference: int = Field(default=300, description=_REFERENCE_DOC)
    threshold: float = Field(default=0.2, description="PSI above which the window has drifted.")
    bins: int = Field(default=10, description="Number of histogram bins.")
    binning: Literal["quantile", "uniform"] = Field(
        default="quantile",
        description="Bin edges from reference quantiles, or equal-width on [0, 1].",
    )

    @property
    def signal(self) -> Signal:
        """``outputs``: the model's max probability per frame."""
        return "outputs"

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
    """Two-sample Kolmogorov-Smirnov test on the model's confidences: drifted when p < ``alpha``.

    The score is the KS statistic D (largest gap between the two empirical CDFs, in [0, 1]);
    the p-value is the asymptotic one (Kolmogorov distribution with Stephens' correction).
    """

    _positional: ClassVar[str | None] = "alpha"

    kind: Literal["ks"] = "ks"
    window: int = Field(default=200, description=_WINDOW_DOC)
    reference: int = Field(default=300, description=_REFERENCE_DOC)
    alpha: float = Field(
        default=0.01, description="Significance level: p-value below it means drift."
    )

    @property
    def signal(self) -> Signal:
        """``outputs``: the model's max probability per frame."""
        return "outputs"

    @field_validator("alpha")
    @classmethod
    def _alpha_in_unit_interval(cls, value: float) -> float:
        return _check_alpha(value, "use alpha=0.01 (or 0.001 to alert less often)")


class InputsSpec(_DetectorBase):
    """Drift of the model's inputs: per-feature two-sample KS tests, Bonferroni-corrected.

    Each input tensor (after preprocess) is summarised by a few features.  Images, (C, H, W)
    or (H, W): per channel the mean intensity, the contrast (standard deviation) and the
    edge energy (mean absolute gradient), plus ``projections`` fixed random projections of
    the image block-averaged to at most 16x16 per channel, which see a mirror, a shift or a
    zoom that leaves the intensity histogram as it was.  Vectors (tabular rows): each
    feature, or ``projections`` random projections when there are more than
    ``max_features``.  Signals (``layout="signal"``: sensor windows (channels, samples)):
    per channel the mean (offset), the RMS about it (level), the crest factor (peak / RMS,
    impulsiveness) and the share of spectral energy in each of ``bands`` equal frequency
    bands (where a bearing's defect lines or a new machine's shaft speed show first).
    ``layout="auto"`` reads a 2-D or 3-D shape as an image, any other as a vector.
    Large images are subsampled first, so a frame costs tens of
    microseconds whatever its size.  The projections come from a fixed seed, so every node
    and every restart computes the same features.

    Drifted when some feature's p-value is below ``alpha`` divided by the number of
    features; the score is the largest KS statistic D (in [0, 1]) and the state names that
    feature (``mean[0]``, ``contrast[0]``, ``edge_energy[0]``, ``proj_3``, ``feature_7``).
    """

    kind: Literal["inputs"] = "inputs"
    window: int = Field(default=200, description=_WINDOW_DOC)
    reference: int = Field(default=300, description=_REFERENCE_DOC)
    alpha: float = Field(
        default=1e-4,
        description="Family-wise significance level over all features (Bonferroni).",
    )
    projections: int = Field(default=16, description="Fixed random projections of each input.")
    max_features: int = Field(
        default=32, description="A vector with more features is watched through projections."
    )
    layout: Literal["auto", "image", "signal", "vector"] = Field(
        default="auto",
        description="How to read one input: auto (2-D/3-D image, else vector), image, "
        "signal (channels, samples) or vector.",
    )
    bands: int = Field(default=4, description="Spectral bands per channel of a signal.")

    @property
    def signal(self) -> Signal:
        """``inputs``: summary features of the tensors the model is fed."""
        return "inputs"

    @field_validator("bands")
    @classmethod
    def _bands_in_range(cls, value: int) -> int:
        if not 1 <= value <= 64:
            raise SpecError(
                f"must be between 1 and 64, got {value}", field="bands", fix="use bands=4"
            )
        return value

    @field_validator("alpha")
    @classmethod
    def _alpha_in_unit_interval(cls, value: float) -> float:
        return _check_alpha(value, "use alpha=1e-4 (a frame stream tests many windows)")

    @field_validator("projections")
    @classmethod
    def _projections_in_range(cls, value: int) -> int:
        if not 1 <= value <= 256:
            raise SpecError(
                f"must be between 1 and 256, got {value}",
                field="projections",
                fix="use projections=16",
            )
        return value

    @field_validator("max_features")
    @classmethod
    def _max_features_in_range(cls, value: int) -> int:
        if not 1 <= value <= 4096:
            raise SpecError(
                f"must be between 1 and 4096, got {value}",
                field="max_features",
                fix="use max_features=32",
            )
        return value


class LabelsSpec(_DetectorBase):
    """Drift seen in the labelled stream: the error rate rising above the reference's.

    Fed one outcome per labelled frame (1 = wrong, 0 = right) when its delayed label
    arrives.  The reference is the first ``reference`` outcomes after a reset; drifted when
    the last ``window`` outcomes' error rate is above it by at least ``min_increase`` and a
    one-sided two-proportion z-test says the rise is significant (p < ``alpha``).  The
    score is the rise, recent minus reference error rate, floored at 0.

    After DDM (Gama, Medas, Castillo, Rodrigues: "Learning with Drift Detection", SBIA
    2004), which watches the running error rate p with s = sqrt(p (1 - p) / n) and signals
    drift at p + s >= p_min + 3 s_min.  This one differs: DDM's p is the rate since the
    start, which answers more slowly the longer the stream ran, where here a sliding window
    is compared with a fixed reference; a z-test at ``alpha`` replaces the three-sigma rule;
    and ``min_increase`` ignores rises too small to matter, however significant.
    """

    kind: Literal["labels"] = "labels"
    window: int = Field(default=100, description="Number of most recent outcomes judged.")
    reference: int = Field(
        default=200, description="Number of outcomes after a reset that form the reference."
    )
    min_increase: float = Field(
        default=0.05, description="Smallest rise of the error rate that counts as drift."
    )
    alpha: float = Field(
        default=1e-4,
        description="Significance level of the one-sided test (small: it is repeated per outcome).",
    )

    @property
    def signal(self) -> Signal:
        """``labels``: the model's errors on frames whose ground truth came back."""
        return "labels"

    @field_validator("min_increase")
    @classmethod
    def _increase_in_range(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:  # also refuses NaN
            raise SpecError(
                f"must be in [0, 1), got {value}",
                field="min_increase",
                fix="use min_increase=0.05 (five more errors in a hundred frames)",
            )
        return value

    @field_validator("alpha")
    @classmethod
    def _alpha_in_unit_interval(cls, value: float) -> float:
        return _check_alpha(value, "use alpha=1e-4 (the test runs on every new outcome)")


#: Any drift detector; ``kind`` tells them apart in JSON and YAML.
DriftSpec = Annotated[PSISpec | KSSpec | InputsSpec | LabelsSpec, Field(discriminator="kind")]
#: Any drift detector, as a type (``DriftSpec`` is the same union with its discriminator).
Detector = PSISpec | KSSpec | InputsSpec | LabelsSpec
#: The detector classes, for ``isinstance`` checks.
DETECTOR_TYPES = (PSISpec, KSSpec, InputsSpec, LabelsSpec)
#: What a ``SpecError`` suggests where a detector was expected.
DETECTOR_FIX = "pass drift.psi(0.2), drift.ks(0.01), drift.inputs() or drift.labels()"


def psi(
    threshold: float = 0.2,
    window: int = 200,
    reference: int = 300,
    bins: int = 10,
    binning: Literal["quantile", "uniform"] = "quantile",
) -> PSISpec:
    """Declare a population-stability-index detector on the model's confidences."""
    return validate(
        PSISpec,
        dict(threshold=threshold, window=window, reference=reference, bins=bins, binning=binning),
    )


def ks(alpha: float = 0.01, window: int = 200, reference: int = 300) -> KSSpec:
    """Declare a two-sample Kolmogorov-Smirnov detector on the model's confidences."""
    return validate(KSSpec, dict(alpha=alpha, window=window, reference=reference))


def inputs(
    alpha: float = 1e-4,
    window: int = 200,
    reference: int = 300,
    projections: int = 16,
    max_features: int = 32,
    *,
    layout: Literal["auto", "image", "signal", "vector"] = "auto",
    bands: int = 4,
) -> InputsSpec:
    """Declare a detector on the model's input tensors: an image's intensity, contrast,
    edges and layout; a vector's features; a signal's level, offset, crest and spectrum."""
    return validate(
        InputsSpec,
        dict(
            alpha=alpha,
            window=window,
            reference=reference,
            projections=projections,
            max_features=max_features,
            layout=layout,
            bands=bands,
        ),
    )


def labels(
    min_increase: float = 0.05, window: int = 100, reference: int = 200, alpha: float = 1e-4
) -> LabelsSpec:
    """Declare a detector on the error rate of labelled frames (delayed ground truth)."""
    return validate(
        LabelsSpec,
        dict(min_increase=min_increase, window=window, reference=reference, alpha=alpha),
    )


@dataclass(frozen=True)
class DriftState:
    """What a detector says after an update.

    ``score`` is the detector's statistic, 0.0 until ``ready``: the PSI, the KS statistic D
    (``ks``; the largest over features for ``inputs``), or the error-rate rise (``labels``).
    ``p_value`` is set by the tests that have one (``ks``, ``inputs``: the smallest,
    uncorrected; ``labels``); ``feature`` names the input feature that moved most.
    """

    score: float
    drifted: bool
    ready: bool
    p_value: float | None = None
    feature: str | None = None
