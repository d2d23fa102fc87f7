"""Drift seen from the inputs and from the labels, beside the outputs (issue 20).

The camera faults are the digits pipeline's own (``apply_drift``) plus geometric ones that
keep the intensity histogram (a mirror, a one-pixel shift).  The classifier is a nearest-
centroid model fitted here in numpy: real predictions, real confidences, and a model that
stays confident on mirrored digits while it gets many of them wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from pydantic import TypeAdapter

from continuum import drift, select
from continuum.drift import (
    Detector,
    DriftMonitor,
    DriftSpec,
    InputDriftMonitor,
    InputFeatures,
    InputsSpec,
    LabelDriftMonitor,
    LabelsSpec,
    ks_two_sample,
    monitor_for,
)
from continuum.errors import InputMismatchError, SpecError
from continuum.select import SelectionContext
from pipelines.digits.data import apply_drift, load_splits

Images = np.ndarray


@pytest.fixture(scope="module")
def digits() -> tuple[Images, np.ndarray, Images, np.ndarray]:
    """(train images, train labels, stream images, stream labels) of the digits splits."""
    splits = load_splits(0)
    return splits.train_x, splits.train_y, splits.stream_x, splits.stream_y


class Centroids:
    """Nearest-centroid classifier: softmax of minus the squared distance to each class mean."""

    def __init__(self, x: Images, y: np.ndarray, sharpness: float = 2.0) -> None:
        flat = x.reshape(len(x), -1)
        self.centroids = np.stack([flat[y == c].mean(axis=0) for c in range(10)])
        self.sharpness = sharpness

    def probs(self, x: Images) -> np.ndarray:
        flat = x.reshape(len(x), -1)
        distance = ((flat[:, None, :] - self.centroids[None]) ** 2).sum(axis=2)
        logits = -self.sharpness * distance
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def mirror(x: Images) -> Images:
    return np.ascontiguousarray(x[..., ::-1])


def shift(x: Images) -> Images:
    return np.roll(x, 1, axis=-1)


def camera(kind: str) -> Callable[[Images], Images]:
    if kind == "mirror":
        return mirror
    if kind == "shift":
        return shift
    return lambda x: apply_drift(x, kind, 1.0, np.random.default_rng(7))


def shuffled(x: Images, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, len(x), size=n)


def first_alarm(
    monitor: InputDriftMonitor | LabelDriftMonitor, stream: np.ndarray, batch: int
) -> int | None:
    """Feed ``stream`` in batches; return how many values it took to report drift."""
    for start in range(0, len(stream), batch):
        if monitor.update(stream[start : start + batch]).drifted:
            return min(start + batch, len(stream))
    return None


class TestInputsDetectorSeesCameraFaults:
    @pytest.mark.parametrize(
        "kind",
        [
            "blur",
            "contrast",
            "rotation",
            "inversion",
            "noise",
            "occlusion",
            "brightness",
            "mirror",
            "shift",
        ],
    )
    def test_a_fault_is_detected_within_one_window(
        self, digits: tuple[Images, ...], kind: str
    ) -> None:
        _, _, stream_x, _ = digits
        rng = np.random.default_rng(3)
        spec = drift.inputs()
        monitor = InputDriftMonitor(spec)
        monitor.update(stream_x[shuffled(stream_x, spec.reference + spec.window, rng)])
        assert monitor.state.ready and not monitor.state.drifted
        faulty = camera(kind)(stream_x[shuffled(stream_x, spec.window, rng)])
        took = first_alarm(monitor, faulty, batch=10)
        assert took is not None and took <= spec.window, (kind, monitor.state)
        assert monitor.state.feature in monitor.feature_names

    def test_the_state_names_the_feature_that_moved(self, digits: tuple[Images, ...]) -> None:
        _, _, stream_x, _ = digits
        rng = np.random.default_rng(4)
        monitor = InputDriftMonitor(drift.inputs(window=100, reference=200))
        monitor.update(stream_x[shuffled(stream_x, 300, rng)])
        state = monitor.update(0.5 * stream_x[shuffled(stream_x, 100, rng)])
        assert state.drifted
        assert state.feature in ("mean[0]", "contrast[0]", "edge_energy[0]")
        assert state.score > 0.9

    def test_a_clean_shuffled_stream_never_alarms(self, digits: tuple[Images, ...]) -> None:
        _, _, stream_x, _ = digits
        rng = np.random.default_rng(5)
        monitor = InputDriftMonitor(drift.inputs())  # window 200, reference 300
        frames = stream_x[shuffled(stream_x, 20_000, rng)]
        scores = []
        for start in range(0, len(frames), 50):
            state = monitor.update(frames[start : start + 50])
            assert not state.drifted, (start, state)
            scores.append(state.score)
        assert 0.0 < max(scores) < 0.3

    def test_a_vector_input_is_watched_feature_by_feature(self) -> None:
        rng = np.random.default_rng(6)
        monitor = InputDriftMonitor(drift.inputs(window=100, reference=200))
        monitor.update(rng.normal(size=(300, 12)))
        assert not monitor.state.drifted
        moved = rng.normal(size=(100, 12))
        moved[:, 7] += 1.0
        state = monitor.update(moved)
        assert state.drifted and state.feature == "feature_7"

    def test_a_long_vector_is_watched_through_projections(self) -> None:
        rng = np.random.default_rng(8)
        monitor = InputDriftMonitor(drift.inputs(window=100, reference=200, max_features=32))
        monitor.update(rng.normal(size=(300, 500)))
        assert monitor.feature_names == [f"proj_{k}" for k in range(16)]
        state = monitor.update(rng.normal(loc=0.5, size=(100, 500)))
        assert state.drifted and state.feature is not None and state.feature.startswith("proj_")

    def test_a_list_of_tensors_gives_the_rows_of_their_stack(self) -> None:
        rng = np.random.default_rng(9)
        frames = rng.random((5, 3, 224, 224), dtype=np.float32)
        features = InputFeatures((3, 224, 224), drift.inputs())
        np.testing.assert_allclose(features.rows(list(frames)), features.rows(frames), rtol=1e-5)
        assert features.rows(frames).shape == (5, 3 * 3 + 16)

    def test_a_tensor_of_another_shape_is_refused(self) -> None:
        monitor = InputDriftMonitor(drift.inputs())
        monitor.update(np.zeros((4, 1, 8, 8)))
        with pytest.raises(InputMismatchError, match=r"shape \(1, 8, 8\)"):
            monitor.update(np.zeros((4, 1, 8, 9)))

    def test_reset_takes_a_new_shape_and_a_new_reference(self) -> None:
        monitor = InputDriftMonitor(drift.inputs(window=10, reference=10))
        monitor.update(np.zeros((30, 1, 8, 8)))
        monitor.reset()
        assert not monitor.state.ready and monitor.feature_names == []
        monitor.update(np.zeros((5, 4)))
        assert monitor.feature_names == [f"feature_{i}" for i in range(4)]

    def test_frames_with_nan_are_left_out(self) -> None:
        rng = np.random.default_rng(10)
        monitor = InputDriftMonitor(drift.inputs(window=10, reference=10))
        frames = rng.random((20, 6))
        frames[3, 2] = np.nan
        state = monitor.update(frames)
        assert not state.ready  # 19 finite rows: the window lacks one
        assert monitor.update(rng.random((1, 6))).ready


class TestLabelsDetector:
    def test_a_rise_in_the_error_rate_is_drift(self) -> None:
        rng = np.random.default_rng(11)
        monitor = LabelDriftMonitor(drift.labels())
        monitor.update(rng.random(200) < 0.03)
        assert not monitor.update(rng.random(100) < 0.03).drifted
        took = first_alarm(monitor, (rng.random(100) < 0.3).astype(float), batch=5)
        assert took is not None and took <= 100
        assert (
            monitor.state.score == pytest.approx(monitor.state.score) and monitor.state.score > 0.1
        )

    def test_a_fall_in_the_error_rate_is_not_drift(self) -> None:
        rng = np.random.default_rng(12)
        monitor = LabelDriftMonitor(drift.labels())
        monitor.update(rng.random(200) < 0.3)
        state = monitor.update(np.zeros(100))
        assert state.ready and not state.drifted and state.score == 0.0

    def test_a_significant_rise_below_min_increase_is_not_drift(self) -> None:
        monitor = LabelDriftMonitor(drift.labels(min_increase=0.2, window=1000, reference=1000))
        monitor.update(np.r_[np.ones(10), np.zeros(990)])  # 1 % errors
        state = monitor.update(np.r_[np.ones(100), np.zeros(900)])  # 10 %
        assert state.p_value is not None and state.p_value < 1e-6
        assert not state.drifted and state.score == pytest.approx(0.09)

    def test_a_clean_stream_never_alarms(self) -> None:
        rng = np.random.default_rng(13)
        monitor = LabelDriftMonitor(drift.labels())
        for _ in range(4000):  # 20,000 outcomes at 3 % errors
            assert not monitor.update(rng.random(5) < 0.03).drifted

    def test_outcomes_must_be_zero_or_one(self) -> None:
        with pytest.raises(InputMismatchError, match="1 \\(wrong\\) or 0"):
            LabelDriftMonitor(drift.labels()).update([0, 2])


class TestAConfidentlyWrongCamera:
    """A mirrored camera: the model stays sure of itself and is wrong far more often."""

    def test_inputs_and_labels_see_what_the_confidences_may_not(
        self, digits: tuple[Images, np.ndarray, Images, np.ndarray]
    ) -> None:
        train_x, train_y, stream_x, stream_y = digits
        model = Centroids(train_x, train_y)
        rng = np.random.default_rng(14)
        clean = shuffled(stream_x, 600, rng)
        later = shuffled(stream_x, 300, rng)
        monitors: dict[str, DriftMonitor | InputDriftMonitor | LabelDriftMonitor] = {
            "psi": DriftMonitor(drift.psi(0.25, window=100, reference=200)),
            "inputs": InputDriftMonitor(drift.inputs(window=100, reference=200)),
            "labels": LabelDriftMonitor(drift.labels()),
        }

        def feed(x: Images, y: np.ndarray) -> None:
            probs = model.probs(x)
            monitors["psi"].update(probs.max(axis=1))
            monitors["inputs"].update(x)
            monitors["labels"].update((probs.argmax(axis=1) != y).astype(float))

        feed(stream_x[clean], stream_y[clean])
        assert not any(m.state.drifted for m in monitors.values())
        clean_accuracy = float((model.probs(stream_x[clean]).argmax(1) == stream_y[clean]).mean())
        mirrored = mirror(stream_x[later])
        mirrored_accuracy = float((model.probs(mirrored).argmax(1) == stream_y[later]).mean())
        assert clean_accuracy - mirrored_accuracy > 0.25
        feed(mirrored, stream_y[later])
        assert monitors["inputs"].state.drifted
        assert monitors["labels"].state.drifted
        assert monitors["labels"].state.score >= clean_accuracy - mirrored_accuracy - 0.1


class TestSpecs:
    def test_each_detector_names_its_signal(self) -> None:
        signals = {
            d.kind: d.signal for d in (drift.psi(), drift.ks(), drift.inputs(), drift.labels())
        }
        assert signals == {
            "psi": "outputs",
            "ks": "outputs",
            "inputs": "inputs",
            "labels": "labels",
        }

    @pytest.mark.parametrize(
        "spec", [drift.inputs(1e-3, window=50, projections=4), drift.labels(0.1, window=40)]
    )
    def test_new_specs_round_trip_through_json(self, spec: Detector) -> None:
        adapter: TypeAdapter[Detector] = TypeAdapter(DriftSpec)
        assert adapter.validate_python(json.loads(json.dumps(spec.model_dump(mode="json")))) == spec

    def test_describe_writes_the_declaration(self) -> None:
        assert drift.psi().describe() == "psi(0.2)"
        assert drift.psi(0.25, window=100, reference=200).describe() == (
            "psi(0.25, window=100, reference=200)"
        )
        assert drift.inputs().describe() == "inputs()"
        assert (
            drift.inputs(alpha=0.001, projections=8).describe()
            == "inputs(alpha=0.001, projections=8)"
        )
        assert drift.labels(0.1).describe() == "labels(min_increase=0.1)"

    @pytest.mark.parametrize(
        ("build", "field"),
        [
            (lambda: drift.inputs(alpha=0.0), "alpha"),
            (lambda: drift.inputs(projections=0), "projections"),
            (lambda: drift.inputs(max_features=0), "max_features"),
            (lambda: drift.inputs(window=1), "window"),
            (lambda: drift.labels(min_increase=1.0), "min_increase"),
            (lambda: drift.labels(min_increase=float("nan")), "min_increase"),
            (lambda: drift.labels(alpha=1.5), "alpha"),
            (lambda: drift.labels(reference=1), "reference"),
        ],
    )
    def test_bad_arguments_raise_spec_error_naming_field_and_fix(
        self, build: Callable[[], object], field: str
    ) -> None:
        with pytest.raises(SpecError) as caught:
            build()
        assert caught.value.field == field
        assert caught.value.fix

    def test_monitor_for_picks_the_signals_monitor(self) -> None:
        assert isinstance(monitor_for(drift.psi()), DriftMonitor)
        assert isinstance(monitor_for(drift.inputs()), InputDriftMonitor)
        assert isinstance(monitor_for(drift.labels()), LabelDriftMonitor)
        with pytest.raises(SpecError, match=r"drift\.inputs"):
            monitor_for("psi")  # type: ignore[arg-type]

    def test_each_monitor_refuses_another_signals_spec(self) -> None:
        with pytest.raises(SpecError):
            InputDriftMonitor(drift.labels())  # type: ignore[arg-type]
        with pytest.raises(SpecError):
            LabelDriftMonitor(drift.inputs())  # type: ignore[arg-type]
        assert isinstance(drift.inputs(), InputsSpec) and isinstance(drift.labels(), LabelsSpec)


class TestEachDriftLeafFiresOnItsOwnDetector:
    def test_only_the_leaves_whose_detector_drifted_select(self) -> None:
        outputs, inputs, labels = drift.psi(0.25), drift.inputs(), drift.labels()
        policy = (
            select.drift(outputs) | select.drift(inputs, rate=0.5) | select.drift(labels, rate=0.25)
        )
        probs = np.full((400, 2), 0.5)
        seeds = np.arange(400, dtype=np.uint64)

        def share(*drifted: Detector) -> float:
            ctx = SelectionContext(seeds=seeds, drifted=frozenset(drifted))
            return float(policy.decide(probs, ctx).mean())

        assert share() == 0.0
        assert share(outputs) == 1.0
        assert 0.4 < share(inputs) < 0.6
        assert 0.15 < share(labels) < 0.35
        reasons = policy.explain(probs, SelectionContext(seeds=seeds, drifted=frozenset({labels})))
        assert {r for r in reasons if r is not None} == {"drift"}

    def test_drift_active_still_fires_every_leaf(self) -> None:
        policy = select.drift(drift.inputs()) | select.drift(drift.labels())
        ctx = SelectionContext.for_node("edge-1", range(10), drift_active=True)
        assert policy.decide(np.full((10, 2), 0.5), ctx).all()

    def test_an_equal_detector_declared_twice_shares_the_verdict(self) -> None:
        policy = select.drift(drift.inputs(window=100))
        ctx = SelectionContext.for_ids(["a", "b"], drifted=frozenset({drift.inputs(window=100)}))
        assert policy.decide(np.full((2, 2), 0.5), ctx).all()

    def test_detectors_lists_every_signal(self) -> None:
        policy = select.drift(drift.ks()) | select.random(0.1) | select.drift(drift.labels())
        assert policy.detectors() == (drift.ks(), drift.labels())

    def test_drift_refuses_something_else(self) -> None:
        with pytest.raises(SpecError, match=r"drift\.labels\(\)"):
            select.drift("inputs")  # type: ignore[arg-type]


def test_the_vectorised_features_agree_with_the_ks_of_each_column() -> None:
    rng = np.random.default_rng(15)
    monitor = InputDriftMonitor(drift.inputs(window=50, reference=60))
    reference, window = rng.normal(size=(60, 5)), rng.normal(0.3, size=(50, 5))
    monitor.update(reference)
    state = monitor.update(window)
    expected = [ks_two_sample(reference[:, j], window[:, j]) for j in range(5)]
    assert state.score == pytest.approx(max(e.statistic for e in expected))
    assert state.p_value == pytest.approx(min(e.pvalue for e in expected))
