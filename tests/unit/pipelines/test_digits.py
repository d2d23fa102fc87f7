"""The digits example: its splits, camera faults, model export, training recipe and camera."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from continuum.errors import ConfigError
from continuum.select import SelectionContext
from continuum.sources import Frame, Source
from edge_agent.sources import load_source
from pipelines.digits.camera import DigitsCamera
from pipelines.digits.data import (
    DRIFT_KINDS,
    N_STREAM,
    N_TEST,
    N_TRAIN,
    apply_drift,
    load_splits,
    reference_holdout,
)
from pipelines.digits.faults import site_condition
from pipelines.digits.model import DigitsCNN, export_onnx
from pipelines.digits.train import (
    FINE_TUNE,
    SCRATCH,
    accuracy,
    fit,
    load_state,
    predict_proba,
    save,
)
from pipelines.digits_inspection import pipe

DEMO_DRIFT = "blur_contrast"


@pytest.fixture(scope="module")
def base_model() -> DigitsCNN:
    """The first model of the demo: trained from scratch on the training split."""
    splits = load_splits()
    return fit(splits.train_x, splits.train_y, recipe=SCRATCH, seed=0, threads=2)


class TestSplits:
    def test_splits_have_the_demo_sizes(self) -> None:
        splits = load_splits()
        assert (len(splits.train_y), len(splits.stream_y), len(splits.test_y)) == (700, 650, 447)
        assert (N_TRAIN, N_STREAM, N_TEST) == (700, 650, 447)

    def test_splits_are_disjoint_and_cover_the_data_set(self) -> None:
        splits = load_splits()
        idx = [set(splits.train_idx), set(splits.stream_idx), set(splits.test_idx)]
        assert not idx[0] & idx[1] and not idx[0] & idx[2] and not idx[1] & idx[2]
        assert idx[0] | idx[1] | idx[2] == set(range(1797))

    def test_same_seed_gives_the_same_splits_and_another_seed_does_not(self) -> None:
        a, b, c = load_splits(0), load_splits(0), load_splits(1)
        np.testing.assert_array_equal(a.test_idx, b.test_idx)
        np.testing.assert_array_equal(a.train_x, b.train_x)
        assert set(a.test_idx) != set(c.test_idx)

    def test_images_are_float32_in_unit_range_and_every_split_has_every_class(self) -> None:
        splits = load_splits()
        for x, y in (
            (splits.train_x, splits.train_y),
            (splits.stream_x, splits.stream_y),
            (splits.test_x, splits.test_y),
        ):
            assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8)
            assert x.min() >= 0.0 and x.max() <= 1.0
            assert set(np.unique(y)) == set(range(10))

    def test_reference_holdout_is_clean_stream_pool_never_the_test_split(self) -> None:
        splits = load_splits()
        x, y = reference_holdout(size=50)
        np.testing.assert_array_equal(x, splits.stream_x[:50])
        np.testing.assert_array_equal(y, splits.stream_y[:50])


class TestDrift:
    @pytest.mark.parametrize("kind", DRIFT_KINDS)
    def test_each_kind_changes_images_and_keeps_shape_dtype_and_range(self, kind: str) -> None:
        x = load_splits().test_x[:64]
        drifted = apply_drift(x, kind, rng=np.random.default_rng(0))
        assert drifted.shape == x.shape and drifted.dtype == np.float32
        assert drifted.min() >= 0.0 and drifted.max() <= 1.0
        assert np.abs(drifted - x).mean() > 0.02

    @pytest.mark.parametrize("kind", DRIFT_KINDS)
    def test_severity_zero_leaves_images_unchanged(self, kind: str) -> None:
        x = load_splits().test_x[:16]
        np.testing.assert_array_equal(apply_drift(x, kind, severity=0.0), x)

    def test_drift_does_not_modify_its_input(self) -> None:
        x = load_splits().test_x[:16]
        before = x.copy()
        apply_drift(x, "inversion")
        np.testing.assert_array_equal(x, before)

    def test_an_unknown_kind_is_refused_naming_the_known_ones(self) -> None:
        with pytest.raises(ValueError, match="blur_contrast"):
            apply_drift(load_splits().test_x[:2], "fog")

    def test_images_of_the_wrong_shape_are_refused(self) -> None:
        with pytest.raises(ValueError, match=r"\(n, 1, 8, 8\)"):
            apply_drift(np.zeros((2, 8, 8), dtype=np.float32), "blur")


class TestOnnxExport:
    def test_export_loads_in_onnxruntime_and_matches_torch(self, tmp_path: Path) -> None:
        torch.manual_seed(0)
        model = DigitsCNN().eval()
        path = export_onnx(model, tmp_path / "model.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["input"]
        assert [o.name for o in session.get_outputs()] == ["probs"]
        x = load_splits().test_x[:17]
        for batch in (x[:1], x):
            got = session.run(None, {"input": batch})[0]
            with torch.no_grad():
                want = torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()
            assert got.shape == (len(batch), 10)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

    def test_export_is_one_self_contained_file(self, tmp_path: Path) -> None:
        export_onnx(DigitsCNN(), tmp_path / "model.onnx")
        assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]

    def test_saved_state_reloads_to_the_same_predictions(self, tmp_path: Path) -> None:
        model = DigitsCNN().eval()
        pt_path, onnx_path = save(model, tmp_path)
        again = DigitsCNN().eval()
        again.load_state_dict(load_state(pt_path))
        x = torch.from_numpy(load_splits().test_x[:8])
        with torch.no_grad():
            torch.testing.assert_close(again(x), model(x))
        assert onnx_path.is_file()


class TestRecipe:
    """The demo's targets, on the reserved test split the stream never shows."""

    def test_the_first_model_is_accurate_on_clean_images(self, base_model: DigitsCNN) -> None:
        splits = load_splits()
        assert accuracy(base_model, splits.test_x, splits.test_y) >= 0.95

    def test_the_demo_drift_costs_at_least_fifteen_points(self, base_model: DigitsCNN) -> None:
        splits = load_splits()
        clean = accuracy(base_model, splits.test_x, splits.test_y)
        drifted = accuracy(base_model, apply_drift(splits.test_x, DEMO_DRIFT), splits.test_y)
        assert drifted <= clean - 0.15

    def test_fine_tuning_on_200_drifted_samples_recovers_and_keeps_clean_accuracy(
        self, base_model: DigitsCNN
    ) -> None:
        splits = load_splits()
        pick = np.random.default_rng(0).choice(N_STREAM, size=200, replace=False)
        stream_drifted = apply_drift(splits.stream_x, DEMO_DRIFT)
        model = fit(
            splits.train_x,
            splits.train_y,
            new_x=stream_drifted[pick],
            new_y=splits.stream_y[pick],
            base_state=base_model.state_dict(),
            recipe=FINE_TUNE,
            seed=0,
            threads=2,
        )
        clean_before = accuracy(base_model, splits.test_x, splits.test_y)
        test_drifted = apply_drift(splits.test_x, DEMO_DRIFT, rng=np.random.default_rng(12345))
        assert accuracy(model, test_drifted, splits.test_y) >= clean_before - 0.05
        assert accuracy(model, splits.test_x, splits.test_y) >= 0.95


class FakeClock:
    """A clock that moves only when the camera sleeps."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def take(frames: Iterator[Frame], n: int) -> list[Frame]:
    return [next(frames) for _ in range(n)]


class TestCamera:
    def test_frames_come_at_the_configured_rate_with_true_labels(self) -> None:
        clock = FakeClock()
        camera = DigitsCamera(fps=20, seed=3, label_delay_s=2.5, clock=clock, sleep=clock.sleep)
        frames = take(iter(camera), 40)
        times = np.array([f.captured_at_ns for f in frames]) / 1e9
        np.testing.assert_allclose(np.diff(times), 0.05, atol=1e-6)
        splits = load_splits()
        order = np.random.default_rng(3).permutation(N_STREAM)[:40]
        assert [f.label for f in frames] == splits.stream_y[order].tolist()
        shown = np.stack([f.tensor for f in frames])
        # Each frame is its pool image through the sensor jitter: close to it, never equal;
        # its own image is among the few nearest of the 650, and the nearest shows its digit.
        distance = ((shown[:, None] - splits.stream_x[None]) ** 2).sum(axis=(2, 3, 4))
        rank = (distance < distance[np.arange(len(order)), order][:, None]).sum(axis=1)
        assert np.median(rank) == 0 and rank.max() <= 10
        assert splits.stream_y[distance.argmin(axis=1)].tolist() == splits.stream_y[order].tolist()
        for frame, index in zip(frames, order, strict=True):
            assert not np.array_equal(frame.tensor, splits.stream_x[index])
            assert frame.label_delay_s == 2.5 and frame.tensor.shape == (1, 8, 8)
            assert frame.tensor.dtype == np.float32

    def test_frames_keep_the_rate_on_the_real_clock(self) -> None:
        camera = DigitsCamera(fps=100, max_frames=31)
        started = time.monotonic()
        frames = list(camera)
        elapsed = time.monotonic() - started
        assert len(frames) == 31
        assert 0.29 <= elapsed < 2.0

    def test_drift_applies_from_its_onset_on(self) -> None:
        clock = FakeClock()
        camera = DigitsCamera(
            fps=10,
            seed=1,
            drift_kind="mirror",
            drift_start_unix=clock.now + 1.0,
            clock=clock,
            sleep=clock.sleep,
        )
        frames = take(iter(camera), 20)
        splits = load_splits()
        order = np.random.default_rng(1).permutation(N_STREAM)[:20]
        source = splits.stream_x[order]
        flipped = source[..., ::-1]
        for n, frame in enumerate(frames):
            to_source = np.abs(frame.tensor - source[n]).sum()
            to_flipped = np.abs(frame.tensor - flipped[n]).sum()
            mirrored = to_flipped < to_source
            assert mirrored == (n >= 10), f"frame {n}: {to_source:.2f} vs {to_flipped:.2f}"

    def test_drift_after_seconds_counts_from_the_first_frame(self) -> None:
        clock = FakeClock()
        camera = DigitsCamera(
            fps=10,
            drift_kind="inversion",
            drift_after_s=0.5,
            max_frames=10,
            clock=clock,
            sleep=clock.sleep,
        )
        frames = list(camera)
        mean_level = [float(f.tensor.mean()) for f in frames]
        # Negatives from the onset on (their black level wanders a little frame to frame).
        assert max(mean_level[:5]) < 0.4 and min(mean_level[5:]) > max(mean_level[:5])
        assert np.mean(mean_level[5:]) > 0.6

    def test_each_pass_shows_every_pool_image_once_in_a_new_order(self) -> None:
        clock = FakeClock()
        camera = DigitsCamera(fps=1000, clock=clock, sleep=clock.sleep)
        frames = take(iter(camera), 2 * N_STREAM)
        splits = load_splits()
        for part in (frames[:N_STREAM], frames[N_STREAM:]):
            assert (
                np.bincount([f.label for f in part], minlength=10).tolist()
                == np.bincount(splits.stream_y, minlength=10).tolist()
            )
        assert [f.label for f in frames[:50]] != [f.label for f in frames[N_STREAM:][:50]]

    @pytest.mark.parametrize("drift_kind", [None, "mirror"])
    def test_no_frame_repeats_in_twenty_thousand(self, drift_kind: str | None) -> None:
        clock = FakeClock()
        camera = DigitsCamera(
            fps=1000,
            drift_kind=drift_kind,
            drift_after_s=0.0,
            max_frames=20_000,
            clock=clock,
            sleep=clock.sleep,
        )
        digests = {hashlib.sha256(f.tensor.tobytes()).digest() for f in camera}
        assert len(digests) == 20_000
        assert "per-frame fault draws" in camera.novelty and "650-image pool" in camera.novelty

    def test_the_same_seed_shows_the_same_frames(self) -> None:
        def frames(seed: int) -> list[bytes]:
            clock = FakeClock()
            camera = DigitsCamera(fps=100, seed=seed, max_frames=30, clock=clock, sleep=clock.sleep)
            return [f.tensor.tobytes() for f in camera]

        assert frames(2) == frames(2) and frames(2) != frames(3)

    def test_the_first_model_stays_accurate_on_clean_jittered_frames(
        self, base_model: DigitsCNN
    ) -> None:
        """The demo's pre-drift target holds on the reserved split under the site's jitter."""
        splits = load_splits()
        view = site_condition(splits.test_x, None, rng=np.random.default_rng(12345))
        assert accuracy(base_model, view, splits.test_y) >= 0.95

    def test_frames_carry_the_form_fields(self) -> None:
        clock = FakeClock()
        camera = DigitsCamera(
            fps=10,
            seed=4,
            fields={"patient_id": "P-{seed:02d}{n:06d}", "technician": "tech-{seed}"},
            clock=clock,
            sleep=clock.sleep,
        )
        frames = take(iter(camera), 3)
        assert [dict(f.fields) for f in frames] == [
            {"patient_id": f"P-04{n:06d}", "technician": "tech-4"} for n in range(3)
        ]

    def test_the_agent_builds_it_from_json_arguments(self) -> None:
        source = load_source(
            "pipelines.digits.camera:DigitsCamera",
            {"fps": 50, "seed": 7, "label_delay_s": 1.0, "drift_kind": None, "max_frames": 2},
        )
        assert isinstance(source, Source)
        assert len(list(source)) == 2

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"fps": 0}, "fps"),
            ({"drift_kind": "fog", "drift_after_s": 1}, "not a camera fault"),
            ({"drift_kind": "blur"}, "onset"),
            ({"drift_kind": "blur", "drift_after_s": 1, "drift_severity": -1}, "drift_severity"),
            ({"label_delay_s": -1}, "label_delay_s"),
            ({"fields": {"patient_id": "P-{patient}"}}, "fields.patient_id"),
        ],
    )
    def test_bad_arguments_are_refused_with_the_reason(
        self, kwargs: dict[str, object], message: str
    ) -> None:
        with pytest.raises(ConfigError, match=message):
            DigitsCamera(**kwargs)  # type: ignore[arg-type]


class TestUplinkPolicy:
    """The demo pipeline's uplink spends its budget where and when a camera is faulty."""

    def test_a_healthy_camera_uplinks_under_three_percent_of_its_frames(
        self, base_model: DigitsCNN
    ) -> None:
        """Unsure frames of a healthy camera were ~40% of the loop's bytes at
        ``low_confidence(0.7)`` (7-13% of clean frames): the policy keeps only the very unsure."""
        splits = load_splits()
        view = site_condition(splits.test_x, None, rng=np.random.default_rng(12345))
        probs = predict_proba(base_model, view).astype(np.float64)
        probs /= probs.sum(axis=1, keepdims=True)
        ctx = SelectionContext.for_node("cam-lux1-a", range(len(probs)))
        assert pipe.spec.uplink.policy.decide(probs, ctx).mean() < 0.03

    def test_its_drift_boosts_together_send_about_a_third_of_a_faulty_cameras_frames(
        self,
    ) -> None:
        """The three boosts draw the same frames (one hash), so while all three fire the
        camera sends a third of its frames, not 1 - 0.65^3 = 73% of them."""
        policy = pipe.spec.uplink.policy
        rows = 20_000
        confident = np.full((rows, 10), 0.01 / 9)
        confident[:, 3] = 0.99
        ctx = SelectionContext.for_node(
            "cam-lux2-a", range(rows), drifted=frozenset(policy.detectors())
        )
        share = float(policy.decide(confident, ctx).mean())
        assert 0.33 <= share <= 0.37
