"""Drift detectors: PSI and two-sample KS statistics, and the sliding-window monitor."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from pydantic import TypeAdapter
from scipy import stats  # the reference the statistics are checked against

from continuum import drift
from continuum.drift import (
    DriftMonitor,
    DriftSpec,
    DriftState,
    KSSpec,
    PSISpec,
    ks_two_sample,
    population_stability_index,
)
from continuum.errors import InputMismatchError, SpecError


def confident(rng: np.random.Generator, n: int) -> np.ndarray:
    """Confidences of a model on the data it was trained for."""
    return rng.beta(8.0, 2.0, size=n)


def degraded(rng: np.random.Generator, n: int) -> np.ndarray:
    """Confidences of the same model on a drifted camera."""
    return rng.beta(4.0, 3.0, size=n)


def stream(monitor: DriftMonitor, values: np.ndarray, batch: int = 16) -> list[DriftState]:
    return [monitor.update(values[i : i + batch]) for i in range(0, values.size, batch)]


class TestPopulationStabilityIndex:
    def test_matches_a_hand_computation(self) -> None:
        # shares 0.5/0.3/0.2 vs 0.3/0.3/0.4
        expected = (0.3 - 0.5) * math.log(0.3 / 0.5) + (0.4 - 0.2) * math.log(0.4 / 0.2)
        assert population_stability_index([50, 30, 20], [30, 30, 40]) == pytest.approx(expected)
        assert expected == pytest.approx(0.2407946, abs=1e-7)

    def test_an_empty_bin_is_floored_at_epsilon(self) -> None:
        eps = drift.PSI_EPSILON
        expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - eps) * math.log(0.5 / eps)
        assert population_stability_index([100, 0], [50, 50]) == pytest.approx(expected)

    def test_identical_histograms_score_zero(self) -> None:
        assert population_stability_index([3, 5, 2], [30, 50, 20]) == pytest.approx(0.0)

    def test_histograms_with_different_bins_are_refused(self) -> None:
        with pytest.raises(InputMismatchError, match="same bins"):
            population_stability_index([1, 2, 3], [1, 2])

    def test_negative_or_empty_counts_are_refused(self) -> None:
        with pytest.raises(InputMismatchError, match="histogram"):
            population_stability_index([1, -2], [1, 2])
        with pytest.raises(InputMismatchError, match="histogram"):
            population_stability_index([0, 0], [1, 2])


class TestKolmogorovSmirnovAgreesWithScipy:
    @pytest.mark.parametrize(("n1", "n2"), [(300, 200), (50, 80), (1000, 1000), (20, 30)])
    @pytest.mark.parametrize("shift", [0.0, 0.02, 0.05, 0.1])
    def test_statistic_is_exact_and_p_value_is_close(self, n1: int, n2: int, shift: float) -> None:
        rng = np.random.default_rng(int(1000 * shift) + n1)
        a, b = confident(rng, n1), confident(rng, n2) + shift
        ours = ks_two_sample(a, b)
        theirs = stats.ks_2samp(a, b, method="asymp")
        assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-12)
        assert ours.pvalue == pytest.approx(theirs.pvalue, abs=0.03)
        if min(n1, n2) >= 50 and theirs.pvalue > 1e-4:
            # Stephens' approximation vs scipy's finite-n law: within 10% in the tail.
            assert ours.pvalue == pytest.approx(theirs.pvalue, rel=0.1)

    def test_ties_are_handled_like_scipy(self) -> None:
        rng = np.random.default_rng(5)
        a = np.round(confident(rng, 300), 1)
        b = np.round(degraded(rng, 200), 1)
        assert ks_two_sample(a, b).statistic == pytest.approx(stats.ks_2samp(a, b).statistic)

    def test_identical_samples_have_p_value_one(self) -> None:
        values = np.linspace(0.0, 1.0, 50)
        assert ks_two_sample(values, values) == (0.0, 1.0)

    def test_an_empty_sample_is_refused(self) -> None:
        with pytest.raises(InputMismatchError, match="non-empty"):
            ks_two_sample([], [0.5])


class TestMonitorDetectsShiftedConfidences:
    @pytest.mark.parametrize("spec", [drift.psi(), drift.ks()], ids=["psi", "ks"])
    def test_the_same_distribution_is_not_drifted(self, spec: PSISpec | KSSpec) -> None:
        rng = np.random.default_rng(11)
        monitor = DriftMonitor(spec)
        states = stream(monitor, confident(rng, 2000))
        ready = [s for s in states if s.ready]
        assert ready and not states[-1].drifted
        assert sum(s.drifted for s in ready) <= 0.05 * len(ready)

    @pytest.mark.parametrize("spec", [drift.psi(), drift.ks()], ids=["psi", "ks"])
    def test_a_shifted_beta_distribution_is_drifted(self, spec: PSISpec | KSSpec) -> None:
        rng = np.random.default_rng(12)
        monitor = DriftMonitor(spec)
        before = stream(monitor, confident(rng, 600))
        after = stream(monitor, degraded(rng, 400))
        assert before[-1].ready and not before[-1].drifted
        assert after[-1].drifted
        assert after[-1].score > before[-1].score

    def test_ks_state_carries_the_p_value_and_the_statistic_as_score(self) -> None:
        rng = np.random.default_rng(13)
        monitor = DriftMonitor(drift.ks(window=50, reference=60))
        reference, window = confident(rng, 60), degraded(rng, 50)
        monitor.update(reference)
        state = monitor.update(window)
        expected = ks_two_sample(reference, window)
        assert state.score == pytest.approx(expected.statistic)
        assert state.p_value == pytest.approx(expected.pvalue)

    def test_uniform_bins_score_matches_a_hand_computation(self) -> None:
        monitor = DriftMonitor(drift.psi(0.2, window=4, reference=4, bins=2, binning="uniform"))
        monitor.update([0.1, 0.2, 0.7, 0.8])  # reference: 2 below 0.5, 2 above
        state = monitor.update([0.1, 0.6, 0.7, 0.9])  # window: 1 below, 3 above
        expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
        assert state.score == pytest.approx(expected)
        assert state.drifted  # 0.2747 > 0.2

    def test_quantile_bins_score_matches_a_hand_computation(self) -> None:
        monitor = DriftMonitor(drift.psi(0.5, window=10, reference=10, bins=2))
        monitor.update(np.arange(10) / 10)  # median edge at 0.45
        state = monitor.update([0.0] * 8 + [0.9] * 2)  # shares 0.8 / 0.2 vs 0.5 / 0.5
        expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
        assert state.score == pytest.approx(expected)
        assert not state.drifted  # 0.416 < 0.5

    def test_quantile_bins_survive_a_reference_piled_up_at_one(self) -> None:
        monitor = DriftMonitor(drift.psi(window=100, reference=100))
        monitor.update(np.ones(100))
        assert not monitor.update(np.ones(100)).drifted
        assert monitor.update(np.full(100, 0.6)).drifted


class TestMonitorWindows:
    def test_not_ready_until_reference_and_window_are_full(self) -> None:
        monitor = DriftMonitor(drift.ks(window=20, reference=30))
        assert monitor.update(np.zeros(30)) == DriftState(score=0.0, drifted=False, ready=False)
        assert not monitor.update(np.ones(19)).ready  # wildly different, still not ready
        state = monitor.update(np.ones(1))
        assert state.ready and state.drifted and state.score == 1.0

    def test_one_large_batch_equals_many_small_ones(self) -> None:
        values = confident(np.random.default_rng(21), 777)
        whole = DriftMonitor(drift.psi()).update(values)
        pieces = stream(DriftMonitor(drift.psi()), values, batch=7)[-1]
        assert whole == pieces

    def test_the_window_forgets_values_older_than_its_length(self) -> None:
        rng = np.random.default_rng(22)
        monitor = DriftMonitor(drift.psi(window=100, reference=300))
        monitor.update(confident(rng, 300))
        assert monitor.update(degraded(rng, 100)).drifted
        # 100 fresh in-distribution values push every degraded one out of the ring buffer.
        stream(monitor, confident(rng, 100), batch=9)
        assert not monitor.state.drifted

    def test_reset_makes_the_next_values_the_new_reference(self) -> None:
        rng = np.random.default_rng(23)
        monitor = DriftMonitor(drift.ks())
        stream(monitor, confident(rng, 500))
        assert stream(monitor, degraded(rng, 300))[-1].drifted
        monitor.reset()
        assert monitor.state == DriftState(score=0.0, drifted=False, ready=False)
        states = stream(monitor, degraded(rng, 500))  # the new model's normal
        assert states[-1].ready and not states[-1].drifted

    def test_confidences_must_be_one_value_per_sample(self) -> None:
        monitor = DriftMonitor(drift.psi())
        with pytest.raises(InputMismatchError, match=r"probs\.max\(axis=1\)"):
            monitor.update(np.full((4, 10), 0.1))
        with pytest.raises(InputMismatchError, match="finite"):
            monitor.update([0.5, math.nan])

    def test_an_empty_batch_changes_nothing(self) -> None:
        monitor = DriftMonitor(drift.psi(window=10, reference=10))
        state = monitor.update(np.linspace(0, 1, 20))
        assert monitor.update(np.array([])) == state

    def test_the_monitor_needs_a_detector_spec(self) -> None:
        with pytest.raises(SpecError, match=r"drift\.psi"):
            DriftMonitor({"kind": "psi"})  # type: ignore[arg-type]


class TestDetectorSpecs:
    def test_defaults_match_the_contract(self) -> None:
        assert drift.psi() == PSISpec(threshold=0.2, window=200, reference=300, bins=10)
        assert drift.ks() == KSSpec(alpha=0.01, window=200, reference=300)

    @pytest.mark.parametrize("spec", [drift.psi(0.1, bins=5, binning="uniform"), drift.ks(0.05)])
    def test_specs_round_trip_through_json(self, spec: PSISpec | KSSpec) -> None:
        adapter: TypeAdapter[PSISpec | KSSpec] = TypeAdapter(DriftSpec)
        assert adapter.validate_python(json.loads(json.dumps(spec.model_dump(mode="json")))) == spec

    @pytest.mark.parametrize(
        ("build", "field"),
        [
            (lambda: drift.psi(threshold=0.0), "threshold"),
            (lambda: drift.psi(bins=1), "bins"),
            (lambda: drift.psi(bins=20, reference=10), "reference"),
            (lambda: drift.psi(window=1), "window"),
            (lambda: drift.ks(alpha=1.0), "alpha"),
            (lambda: drift.ks(reference=0), "reference"),
        ],
    )
    def test_bad_arguments_raise_spec_error_naming_field_and_fix(
        self, build: object, field: str
    ) -> None:
        with pytest.raises(SpecError) as caught:
            build()  # type: ignore[operator]
        assert caught.value.field == field
        assert caught.value.fix


def test_drift_and_select_import_without_scipy() -> None:
    code = "import sys, continuum.drift, continuum.select; print('scipy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
