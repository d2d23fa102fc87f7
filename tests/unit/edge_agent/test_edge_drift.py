"""The edge runs every drift detector of its pipeline, each fed its own signal: confidences,
input tensors, and label outcomes once the label is due; telemetry carries each reading."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from continuum import Pipeline, drift, select
from continuum.backends import open_backend
from continuum.select import Policy
from continuum.sources import Frame
from continuum.spec import PipelineSpec
from continuum.wire.messages import DriftReading, Telemetry
from edge_agent.metrics import AgentMetrics
from edge_agent.model_manager import ServingModel
from edge_agent.outbox import Outbox
from edge_agent.runtime import PipelineRuntime
from edge_agent.runtime._drift import DriftWatch
from tests.edge_agent_kit import build_model

NODE = "edge-1"


def _spec(policy: Policy, *, extra: tuple[drift.Detector, ...] = ()) -> PipelineSpec:
    pipe = Pipeline("inspect", tenant="acme", data_class="internal")
    pipe.edge(model="inspector", backend="onnxruntime", shape=(1, 8, 8), max_batch=4)
    pipe.uplink(policy, drift=extra)
    return pipe.spec


class Camera:
    """``before`` frames of dim noise labelled 0, then ``after`` frames: bright noise if
    ``brighten``, labelled ``later_label``; every label known ``label_delay_s`` after capture.

    The test model (``build_model``) answers class 0 for every frame, confidently for bright
    ones, so a later label of 5 makes every prediction wrong.
    """

    def __init__(
        self,
        before: int,
        after: int,
        *,
        brighten: bool = False,
        later_label: int = 0,
        label_delay_s: float = 0.0,
    ) -> None:
        self.before, self.after = before, after
        self.brighten, self.later_label = brighten, later_label
        self.label_delay_s = label_delay_s

    def __iter__(self) -> Iterator[Frame]:
        rng = np.random.default_rng(0)
        for index in range(self.before + self.after):
            late = index >= self.before
            low = 0.5 if late and self.brighten else 0.0
            yield Frame(
                tensor=rng.uniform(low, low + 0.5, size=(1, 8, 8)).astype(np.float32),
                label=self.later_label if late else 0,
                label_delay_s=self.label_delay_s,
            )


class Run:
    """One pipeline run on the tiny real ONNX model, to the end of its source."""

    def __init__(self, tmp_path: Path, spec: PipelineSpec, source: Camera) -> None:
        self.outbox = Outbox(tmp_path / "outbox.db", max_bytes=1 << 24, ttl_s=3600.0)
        self.metrics = AgentMetrics()
        self.telemetry: list[Telemetry] = []
        runtime = PipelineRuntime(
            spec=spec,
            node=NODE,
            source=source,
            outbox=self.outbox,
            metrics=self.metrics,
            on_telemetry=self.telemetry.append,
            telemetry_interval_s=60.0,
        )
        path = build_model(tmp_path / "v1.onnx")
        backend = open_backend("onnxruntime", path)
        runtime.start()
        runtime.swap_model(
            ServingModel("inspect", "inspector", "v1", "0" * 64, "0" * 128, path, backend)
        )
        try:
            assert runtime.join(20.0), "the pipeline did not finish"
        finally:
            runtime.close()
        #: The mean pixel of each uplinked frame (dim frames < 0.5 <= bright ones).
        self.uplinked: list[float] = []
        while (pending := self.outbox.next_samples(1000, 1 << 30)) is not None:
            self.uplinked.extend(float(r.tensor.mean()) for r in pending.records)
        self.outbox.close()

    def reading(self, signal: str) -> DriftReading:
        (window,) = self.telemetry
        (found,) = [r for r in window.drift if r.signal == signal]
        return found


class TestInputsOnTheEdge:
    def test_a_brighter_camera_is_seen_in_the_inputs_and_boosts_the_uplink(
        self, tmp_path: Path
    ) -> None:
        inputs = drift.inputs(window=20, reference=40)
        run = Run(tmp_path, _spec(select.drift(inputs)), Camera(80, 60, brighten=True))
        reading = run.reading("inputs")
        assert (reading.kind, reading.ready, reading.drifted) == ("inputs", True, True)
        assert reading.feature == "mean[0]"  # the first of the features that moved all the way
        assert reading.score > 0.9
        (window,) = run.telemetry
        assert window.drifted and window.drift_score == pytest.approx(reading.score)
        # Nothing before the camera changed went up; most of what came after did.
        assert len(run.uplinked) >= 40
        assert min(run.uplinked) > 0.5
        gauge = run.metrics.drift_signal_drifted.labels("inspect", "inputs", inputs.describe())
        assert gauge._value.get() == 1.0

    def test_a_steady_camera_sends_nothing(self, tmp_path: Path) -> None:
        run = Run(
            tmp_path, _spec(select.drift(drift.inputs(window=20, reference=40))), Camera(140, 0)
        )
        reading = run.reading("inputs")
        assert reading.ready and not reading.drifted
        assert run.uplinked == []


class TestLabelsOnTheEdge:
    def test_labels_count_once_they_are_due(self, tmp_path: Path) -> None:
        labels = drift.labels(window=20, reference=40)
        run = Run(
            tmp_path,
            _spec(select.random(0.0), extra=(labels,)),
            Camera(60, 60, later_label=5),
        )
        reading = run.reading("labels")
        assert (reading.ready, reading.drifted) == (True, True)
        assert reading.score == pytest.approx(1.0)  # every outcome wrong vs none before

    def test_labels_not_yet_due_are_not_read(self, tmp_path: Path) -> None:
        labels = drift.labels(window=20, reference=40)
        run = Run(
            tmp_path,
            _spec(select.random(0.0), extra=(labels,)),
            Camera(60, 60, later_label=5, label_delay_s=3600.0),
        )
        reading = run.reading("labels")
        assert (reading.ready, reading.drifted, reading.score) == (False, False, 0.0)
        (window,) = run.telemetry
        assert (window.labelled, window.correct) == (120, 60)  # accuracy still counted


class FakeClock:
    """A wall clock the test sets."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestDriftWatch:
    def test_outcomes_wait_in_order_until_due(self) -> None:
        clock = FakeClock()
        watch = DriftWatch(
            (drift.labels(window=20, reference=20),),
            pipeline="p",
            metrics=AgentMetrics(),
            wall_clock=clock,
        )
        none = np.empty(0)
        # Twenty right answers due at 1010, twenty wrong ones due at 1020.
        watch.update(none, [], [(1010.0, False)] * 20 + [(1020.0, True)] * 20)
        assert not watch.readings()[0].ready
        clock.now = 1015.0
        watch.update(none, [], [])
        assert not watch.readings()[0].ready  # the reference is in, the window is not
        clock.now = 1020.0
        watch.update(none, [], [])
        (reading,) = watch.readings()
        assert (reading.ready, reading.drifted, reading.score) == (True, True, 1.0)

    def test_a_swap_forgets_outcomes_of_the_old_model(self) -> None:
        clock = FakeClock()
        watch = DriftWatch(
            (drift.labels(window=2, reference=2),),
            pipeline="p",
            metrics=AgentMetrics(),
            wall_clock=clock,
        )
        watch.update(np.empty(0), [], [(1010.0, True)] * 4)
        watch.reset()
        clock.now = 2000.0
        watch.update(np.empty(0), [], [])
        assert not watch.readings()[0].ready

    def test_every_detector_keeps_its_own_verdict(self) -> None:
        outputs, inputs = drift.ks(window=30, reference=30), drift.inputs(window=30, reference=30)
        watch = DriftWatch((outputs, inputs), pipeline="p", metrics=AgentMetrics())
        rng = np.random.default_rng(1)
        steady = [rng.random((1, 8, 8)).astype(np.float32) for _ in range(60)]
        watch.update(rng.uniform(0.9, 1.0, 60), steady, [])
        brighter = [t + 1.0 for t in steady[:30]]
        watch.update(rng.uniform(0.9, 1.0, 30), brighter, [])
        assert watch.drifted == frozenset({inputs})
        signals = {r.signal: r.drifted for r in watch.readings()}
        assert signals == {"outputs": False, "inputs": True}
