"""The statistics the detectors rest on: PSI, the two-sample Kolmogorov-Smirnov test and a
one-sided two-proportion test, in numpy and ``math`` only (the slim edge install has no scipy)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from continuum.errors import InputMismatchError

#: Floor for a bin's share in the PSI sum, so an empty bin gives a large but finite term.
PSI_EPSILON = 1e-4

FloatArray = npt.NDArray[np.float64]


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
    first = np.sort(values_of(a, "a"))
    second = np.sort(values_of(b, "b"))
    if first.size == 0 or second.size == 0:
        raise InputMismatchError(
            "KS test needs two non-empty samples",
            expected="at least one value in each",
            got=f"{first.size} and {second.size} values",
        )
    return ks_sorted(first, second)


def ks_sorted(first: FloatArray, second: FloatArray) -> KSResult:
    """Return the KS statistic and p-value of two already sorted, non-empty samples."""
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


def rise_p_value(
    reference_rate: float, n_reference: int, recent_rate: float, n_recent: int
) -> float:
    """Return the one-sided p-value that the recent rate is above the reference rate.

    A two-proportion z-test with the pooled rate: under "no rise" both samples share one
    rate, and z = (recent - reference) / sqrt(pooled (1 - pooled) (1/n_ref + 1/n_recent)).
    """
    pooled = (reference_rate * n_reference + recent_rate * n_recent) / (n_reference + n_recent)
    variance = pooled * (1.0 - pooled) * (1.0 / n_reference + 1.0 / n_recent)
    if variance <= 0.0:
        # Both samples all correct (or all wrong): no evidence of a rise.
        return 1.0
    z = (recent_rate - reference_rate) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def values_of(data: npt.ArrayLike, name: str) -> FloatArray:
    """Return ``data`` as a finite 1-D float64 array; raise ``InputMismatchError`` otherwise."""
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
    counts = values_of(data, name)
    if counts.size == 0 or np.any(counts < 0) or counts.sum() <= 0:
        raise InputMismatchError(
            f"{name} must be a histogram",
            expected="non-negative counts with a positive total",
            got=np.array2string(counts, threshold=12),
        )
    return counts
