"""The bearing simulator: defect lines where the kinematics put them, growing with wear;
sensor ageing; reproducibility; the fixed splits."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.maintenance.bearings import (
    FS_HZ,
    MACHINE_TYPES,
    WINDOW,
    Bearing,
    SensorState,
    make_machine,
)
from pipelines.maintenance.data import (
    GATEWAY_SEED_BASE,
    INPUT_SHAPE,
    drifted_split,
    load_splits,
    reference_holdout,
)


def _amplitude_at(x: np.ndarray, freq_hz: float) -> float:
    """Return the largest spectral amplitude within 2 Hz of ``freq_hz`` (Hann, amplitude scale)."""
    hann = np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * hann)) * 2 / hann.sum()
    freqs = np.fft.rfftfreq(len(x), 1 / FS_HZ)
    return float(spectrum[np.abs(freqs - freq_hz) <= 2.0].max())


class TestDefectFrequencies:
    def test_bpfo_and_bpfi_follow_the_textbook_formulas(self) -> None:
        bearing = Bearing(n_elements=9, ball_d_mm=12.0, pitch_d_mm=40.0)
        assert bearing.bpfo(30.0) == pytest.approx(4.5 * 30 * (1 - 0.3))
        assert bearing.bpfi(30.0) == pytest.approx(4.5 * 30 * (1 + 0.3))
        tilted = Bearing(n_elements=7, ball_d_mm=14.0, pitch_d_mm=40.0, contact_deg=60.0)
        assert tilted.bpfo(25.0) == pytest.approx(3.5 * 25 * (1 - 0.35 * 0.5))

    @pytest.mark.parametrize("kind", sorted(MACHINE_TYPES))
    def test_the_outer_race_peak_grows_with_wear_in_the_fft(self, kind: str) -> None:
        machine = make_machine(kind, np.random.default_rng(1))
        bpfo = machine.kind.bearing.bpfo(machine.shaft_hz)
        peaks = []
        for wear in (0.0, 0.5, 0.8, 1.0):
            rng = np.random.default_rng(7)
            x = np.concatenate([machine.vibration(wear, rng, n=WINDOW) for _ in range(4)])
            peaks.append(_amplitude_at(x, bpfo))
        assert peaks == sorted(peaks)
        assert peaks[-1] > 10 * peaks[0]

    def test_a_healthy_machine_shows_its_shaft_rate_not_its_defect_lines(self) -> None:
        machine = make_machine("A", np.random.default_rng(2))
        x = machine.vibration(0.0, np.random.default_rng(3), n=4 * WINDOW)
        bpfi = machine.kind.bearing.bpfi(machine.shaft_hz)
        assert _amplitude_at(x, machine.shaft_hz) > 5 * _amplitude_at(x, bpfi)

    def test_types_a_and_b_put_their_lines_at_different_frequencies(self) -> None:
        a, b = MACHINE_TYPES["A"], MACHINE_TYPES["B"]
        assert abs(a.bearing.bpfo(a.shaft_hz) - b.bearing.bpfo(b.shaft_hz)) > 20
        assert abs(a.shaft_hz - b.shaft_hz) >= 5


class TestSlowChannelsAndSensors:
    def test_temperature_and_current_rise_with_wear(self) -> None:
        machine = make_machine("A", np.random.default_rng(4))
        new = [machine.slow_readings(0.0, np.random.default_rng(i)) for i in range(20)]
        worn = [machine.slow_readings(1.0, np.random.default_rng(i)) for i in range(20)]
        assert np.mean([w[0] for w in worn]) > np.mean([n[0] for n in new]) + 10
        assert np.mean([w[1] for w in worn]) > np.mean([n[1] for n in new])

    def test_aged_sensors_lower_gain_add_offset_and_noise(self) -> None:
        machine = make_machine("A", np.random.default_rng(5))
        fresh = machine.vibration(0.0, np.random.default_rng(6))
        aged = machine.vibration(0.0, np.random.default_rng(6), SensorState.aged(1.0))
        assert aged.mean() > fresh.mean() + 0.3
        assert _amplitude_at(aged, machine.shaft_hz) < _amplitude_at(fresh, machine.shaft_hz)
        assert SensorState.aged(0.0) == SensorState()
        with pytest.raises(ValueError, match="severity"):
            SensorState.aged(-1)

    def test_unknown_machine_type_names_the_known_ones(self) -> None:
        with pytest.raises(ValueError, match="use one of A, B"):
            make_machine("C", np.random.default_rng())


class TestSplits:
    def test_same_seed_same_windows_and_shapes(self) -> None:
        machine = make_machine("B", np.random.default_rng(9))
        one = machine.window(0.3, np.random.default_rng(1))
        two = machine.window(0.3, np.random.default_rng(1))
        assert one.shape == INPUT_SHAPE and one.dtype == np.float32
        np.testing.assert_array_equal(one, two)
        splits = load_splits()
        assert splits.train.x.shape == (1200, *INPUT_SHAPE)
        assert len(splits.validation.y) == 400 and len(splits.test.y) == 600

    def test_labels_are_the_maintenance_rule_and_splits_hold_both(self) -> None:
        splits = load_splits()
        for split in (splits.train, splits.validation, splits.test):
            np.testing.assert_array_equal(split.y, (split.wear >= 0.5).astype(np.int64))
            assert 0.1 < split.y.mean() < 0.4

    def test_the_reserved_test_split_shares_no_window_with_the_others(self) -> None:
        splits = load_splits()
        test_rows = {row.tobytes() for row in splits.test.x[:, 0, :64]}
        for other in (splits.train, splits.validation, drifted_split("machine_b", "stream")):
            assert not test_rows & {row.tobytes() for row in other.x[:, 0, :64]}

    def test_reference_holdout_is_the_validation_split(self) -> None:
        x, y = reference_holdout(size=50)
        np.testing.assert_array_equal(x, load_splits().validation.x[:50])
        assert y.shape == (50,)

    def test_seeds_reserved_for_the_gateway_are_refused(self) -> None:
        with pytest.raises(ValueError, match="split seed"):
            load_splits(GATEWAY_SEED_BASE)
        with pytest.raises(ValueError, match="machine_b"):
            drifted_split("flood")
