"""PipelineRuntime with a real ONNX model: batching, selection, budget, labels, telemetry, swap."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from continuum import Pipeline, drift, select, task
from continuum._retry import Backoff
from continuum.backends import open_backend
from continuum.errors import SpecError
from continuum.select import Policy
from continuum.sources import Frame
from continuum.spec import PipelineSpec
from continuum.wire.messages import Telemetry
from edge_agent.metrics import AgentMetrics
from edge_agent.model_manager import ServingModel
from edge_agent.outbox import Outbox
from edge_agent.runtime import PipelineRuntime, as_probabilities
from edge_agent.runtime._batching import BatchSizer
from edge_agent.runtime._frames import FrameQueue
from tests.edge_agent_kit import PatternSource, build_model, build_score_model

NODE = "edge-1"


def _spec(policy: Policy, *, budget_kbps: float | None = None, max_batch: int = 4) -> PipelineSpec:
    pipe = Pipeline("inspect", tenant="acme", data_class="internal")
    pipe.edge(model="inspector", backend="onnxruntime", shape=(1, 8, 8), max_batch=max_batch)
    pipe.uplink(policy, budget_kbps=budget_kbps)
    return pipe.spec


def _model(tmp_path: Path, version: str, favour: int = 0) -> ServingModel:
    path = build_model(tmp_path / f"{version}.onnx", favour=favour)
    backend = open_backend("onnxruntime", path)
    return ServingModel("inspect", "inspector", version, "0" * 64, "0" * 128, path, backend)


def _serve_v1_then_v2(h: Any, tmp_path: Path) -> None:
    """Run the harness on model v1 for a while, swap in v2, run on, then stop and drain."""
    h.runtime.start()
    h.runtime.swap_model(_model(tmp_path, "v1"))
    time.sleep(0.3)
    h.runtime.swap_model(_model(tmp_path, "v2", favour=3))
    time.sleep(0.3)
    h.runtime.stop()
    assert h.runtime.join(5.0)


class ShiftedClock:
    """Wall time plus an offset the test can move forward."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


class Harness:
    def __init__(self, tmp_path: Path, spec: PipelineSpec, source: object, **options: Any) -> None:
        self.clock = ShiftedClock()
        self.outbox = Outbox(
            tmp_path / "outbox.db", max_bytes=1 << 24, ttl_s=3600.0, clock=self.clock
        )
        self.metrics = AgentMetrics()
        self.telemetry: list[Telemetry] = []
        try:
            self.runtime = PipelineRuntime(
                spec=spec,
                node=NODE,
                source=source,  # type: ignore[arg-type]
                outbox=self.outbox,
                metrics=self.metrics,
                on_telemetry=self.telemetry.append,
                telemetry_interval_s=60.0,
                **options,
            )
        except BaseException:
            self.outbox.close()  # a refused option must not leak the database (3.13 warns)
            raise

    def run(self, model: ServingModel, timeout_s: float = 10.0) -> None:
        self.runtime.start()
        self.runtime.swap_model(model)
        assert self.runtime.join(timeout_s), "the pipeline did not finish"

    def samples(self) -> list[object]:
        records = []
        while (pending := self.outbox.next_samples(1000, 1 << 30)) is not None:
            records.extend(pending.records)
        return records

    def close(self) -> None:
        self.runtime.close()
        self.outbox.close()


@pytest.fixture
def harness_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[Harness] = []

    def make(spec: PipelineSpec, source: object, **options: Any) -> Harness:
        harness = Harness(tmp_path, spec, source, **options)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


class TestSelectionWiring:
    def test_only_low_confidence_frames_reach_the_outbox(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        h = harness_factory(_spec(select.low_confidence(0.5)), PatternSource([1.0, 0.0], 20))
        h.run(_model(tmp_path, "v1"))
        records = h.samples()
        assert len(records) == 10
        assert all(r.tensor.max() == 0.0 for r in records)  # the all-zeros frames
        assert all(r.confidence == pytest.approx(0.1, abs=1e-4) for r in records)
        seqs = [r.seq for r in records]
        assert seqs == sorted(seqs) and len(set(seqs)) == 10
        (window,) = h.telemetry
        assert (window.frames, window.uplinked, window.dropped) == (20, 10, 0)
        assert window.model_version == "v1"
        assert window.mean_confidence == pytest.approx((0.1 + 0.9996) / 2, abs=1e-3)

    def test_a_model_that_breaks_the_tasks_contract_does_not_stop_the_loop(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        # One output class: inference works, but a classifier must answer two classes or
        # more; every frame is rejected and counted, nothing goes up, the loop runs on.
        path = build_model(tmp_path / "one-class.onnx", classes=1)
        model = ServingModel(
            "inspect",
            "inspector",
            "v1",
            "0" * 64,
            "0" * 128,
            path,
            open_backend("onnxruntime", path),
        )
        h = harness_factory(_spec(select.low_confidence(0.5)), PatternSource([1.0, 0.0], 20))
        h.run(model)
        assert h.samples() == []
        rejected = h.metrics.frames_rejected.labels("inspect", "inference_error")._value.get()
        assert rejected == 20

    def test_random_selection_is_a_pure_function_of_the_sample_id(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        h = harness_factory(_spec(select.random(0.3)), PatternSource([1.0], 200))
        h.run(_model(tmp_path, "v1"))
        records = h.samples()
        expected = select.random(0.3).decide(
            np.tile([[1.0] + [0.0] * 9], (len(records), 1)),
            select.SelectionContext.for_node(NODE, [r.seq for r in records]),
        )
        assert 20 < len(records) < 100
        assert expected.all()  # every uplinked seq is one the policy picks for its id

    def test_the_bandwidth_budget_caps_the_uplink_and_counts_the_rest(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        # 1.2 kbit/s = 150 B/s with a 2 s burst of 300 bytes: one 296-byte sample fits; the
        # next would need about two more seconds of refill than this run takes.
        h = harness_factory(
            _spec(select.low_confidence(0.5), budget_kbps=1.2), PatternSource([0.0], 30)
        )
        h.run(_model(tmp_path, "v1"))
        (window,) = h.telemetry
        assert window.uplinked == 1
        assert window.dropped == 29
        assert len(h.samples()) == 1
        assert h.metrics.budget_dropped.labels("inspect")._value.get() == 29


class TestMicroBatching:
    def test_frames_batched_through_the_shared_buffer_keep_their_own_tensors(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        # Batches are stacked into one reused buffer: each uplinked sample must still hold
        # its own frame, not whatever a later batch wrote there.
        pattern = [float(v) / 10 for v in range(7)]
        h = harness_factory(_spec(select.random(1.0), max_batch=8), PatternSource(pattern, 300))
        h.run(_model(tmp_path, "v1"))
        records = h.samples()
        assert len(records) == 300
        for record in sorted(records, key=lambda r: r.seq):
            value = pattern[(record.seq - records[0].seq) % len(pattern)]
            assert np.all(record.tensor == np.float32(value))
        assert (
            h.metrics.registry.get_sample_value(
                "continuum_edge_batch_size_count", {"pipeline": "inspect"}
            )
            < 300
        )  # some batches held several frames

    def test_a_backlog_is_inferred_in_full_batches(self, tmp_path: Path, harness_factory) -> None:  # type: ignore[no-untyped-def]
        h = harness_factory(_spec(select.random(0.0), max_batch=8), PatternSource([1.0], 400))
        h.run(_model(tmp_path, "v1"))
        sizes = h.metrics.batch_size.labels("inspect")
        count = h.metrics.registry.get_sample_value(
            "continuum_edge_batch_size_count", {"pipeline": "inspect"}
        )
        total = h.metrics.registry.get_sample_value(
            "continuum_edge_batch_size_sum", {"pipeline": "inspect"}
        )
        assert sizes is not None and count is not None and total == 400
        assert total / count > 2.0

    def test_sparse_frames_do_not_wait_for_a_batch_that_will_not_come(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        # Frames 100 ms apart and a 50 ms batching window: waiting would cost every frame
        # 50 ms and never batch two; the runtime learns the gap and sends frames on at once.
        spec = _spec(select.random(0.0), max_batch=8)
        spec = spec.model_copy(update={"edge": spec.edge.model_copy(update={"max_wait_ms": 50.0})})
        h = harness_factory(spec, PatternSource([1.0], 20, fps=10.0))
        h.run(_model(tmp_path, "v1"))
        (window,) = h.telemetry
        assert window.frames == 20
        assert window.latency_p50_ms is not None and window.latency_p50_ms < 25.0


class TestGroupedCommits:
    def test_a_backlog_commits_its_samples_in_groups_and_counts_them_only_once_committed(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        h = harness_factory(_spec(select.random(1.0), max_batch=8), PatternSource([0.5], 400))
        commits: list[tuple[int, int]] = []  # (samples in the commit, uplinked counted before)
        append = h.outbox.append_samples

        def observed(entries):  # type: ignore[no-untyped-def]
            commits.append(
                (len(entries), h.runtime._window.uplinked + sum(t.uplinked for t in h.telemetry))
            )
            return append(entries)

        h.outbox.append_samples = observed
        h.run(_model(tmp_path, "v1"))
        records = h.samples()
        assert len(records) == 400 and len({r.seq for r in records}) == 400
        # Nothing was counted as uplinked before the commit that stored it.
        before = 0
        for size, counted in commits:
            assert counted <= before
            before += size
        assert sum(t.uplinked for t in h.telemetry) == 400
        batches = h.metrics.registry.get_sample_value(
            "continuum_edge_batch_size_count", {"pipeline": "inspect"}
        )
        assert batches is not None and len(commits) < batches  # batches shared commits


class TestBatchesInFlight:
    def test_every_frame_is_inferred_once_with_its_own_tensor(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        # Three batches on the model at once, each stacked into its own buffer.
        pattern = [float(v) / 10 for v in range(7)]
        source = PatternSource(pattern, 300)
        h = harness_factory(_spec(select.random(1.0), max_batch=8), source, batches_in_flight=3)
        h.run(_model(tmp_path, "v1"))
        records = h.samples()
        assert len(records) == 300
        assert len({r.seq for r in records}) == 300
        for record in sorted(records, key=lambda r: r.seq):
            value = pattern[(record.seq - records[0].seq) % len(pattern)]
            assert np.all(record.tensor == np.float32(value))
            # The model saw this frame's pixels, not another batch's (see build_model).
            expected = math.exp(10 * value) / (math.exp(10 * value) + 9)
            assert record.confidence == pytest.approx(expected, abs=1e-4)
        (window,) = h.telemetry
        assert window.frames == 300

    def test_a_swap_waits_for_the_old_models_batches(self, tmp_path: Path, harness_factory) -> None:  # type: ignore[no-untyped-def]
        source = PatternSource([1.0], -1, fps=400)
        h = harness_factory(_spec(select.random(0.0)), source, batches_in_flight=2)
        _serve_v1_then_v2(h, tmp_path)
        assert [w.model_version for w in h.telemetry] == ["v1", "v2"]
        assert all(w.frames > 0 for w in h.telemetry)
        errors = h.metrics.registry.get_sample_value(
            "continuum_edge_frames_rejected_total",
            {"pipeline": "inspect", "reason": "inference_error"},
        )
        assert not errors  # no batch ran on a closed model

    def test_zero_batches_in_flight_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="batches_in_flight"):
            Harness(tmp_path, _spec(select.random(0.0)), [], batches_in_flight=0)


class TestBatchSizer:
    @staticmethod
    def feed(sizer: BatchSizer, per_frame_s: dict[int, float], batches: int) -> list[int]:
        caps = []
        for _ in range(batches):
            caps.append(sizer.cap)
            sizer.record(sizer.cap, per_frame_s[sizer.cap] * sizer.cap)
        return caps

    def test_it_climbs_to_the_largest_batch_while_batching_pays(self) -> None:
        sizer = BatchSizer(32)
        assert sizer.sizes == [1, 2, 4, 8, 16, 32]
        self.feed(sizer, {1: 16e-6, 2: 9e-6, 4: 5e-6, 8: 3e-6, 16: 2e-6, 32: 1.5e-6}, 40)
        assert sizer.chosen == 32 and sizer.cap == 32

    def test_it_stays_at_one_where_batching_costs_per_frame(self) -> None:
        # SqueezeNet on one CPU core: 5.5 ms per frame at batch 1, 5.8 at 2, 6.2 at 4 and 8.
        sizer = BatchSizer(8)
        caps = self.feed(sizer, {1: 5.5e-3, 2: 5.8e-3, 4: 6.2e-3, 8: 6.2e-3}, 60)
        assert sizer.chosen == 1
        assert caps.count(2) == 3 and set(caps) == {1, 2}  # one probe of 2, none beyond

    def test_it_settles_on_the_cheapest_size_in_between(self) -> None:
        sizer = BatchSizer(16)
        self.feed(sizer, {1: 10e-6, 2: 6e-6, 4: 4e-6, 8: 5e-6, 16: 7e-6}, 40)
        assert sizer.chosen == 4

    def test_it_follows_a_change_of_cost_on_its_periodic_probes(self) -> None:
        sizer = BatchSizer(8)
        self.feed(sizer, {1: 5e-3, 2: 6e-3, 4: 7e-3, 8: 8e-3}, 20)
        assert sizer.chosen == 1
        self.feed(sizer, {1: 5e-3, 2: 2e-3, 4: 1e-3, 8: 0.5e-3}, 400)
        assert sizer.chosen == 8

    def test_batches_the_source_could_not_fill_are_not_measured(self) -> None:
        sizer = BatchSizer(8)
        for _ in range(3):
            sizer.record(1, 1e-3)
        assert sizer.cap == 2  # probing batch 2
        for _ in range(50):
            sizer.record(1, 1e-9)  # partial batches: frames come one at a time
        assert sizer.cap == 2 and sizer.chosen == 1

    def test_a_larger_size_must_pay_for_its_wait(self) -> None:
        # Batch 2 measures 0.5% cheaper per frame: within noise, and every frame would wait
        # for a second one, so the sizer keeps batch 1.
        sizer = BatchSizer(8)
        self.feed(sizer, {1: 5.0e-3, 2: 4.975e-3, 4: 4.95e-3, 8: 4.95e-3}, 400)
        assert sizer.chosen == 1

    @staticmethod
    def feed_overlapped(
        sizer: BatchSizer, per_frame_s: dict[int, float], batches: int
    ) -> list[int]:
        """Two batches on the model at once, as the pipelined loop reports them: the time
        between two finishes, which alternates between a whole run and almost nothing."""
        caps = []
        for n in range(batches):
            cap = sizer.cap
            caps.append(cap)
            run_s = 2 * cap * per_frame_s[cap]  # two batches side by side, finishing together
            sizer.record(cap, run_s - 1e-6 if n % 2 == 0 else 1e-6)
        return caps

    def test_overlapping_batches_are_measured_over_windows(self) -> None:
        # Batch 2 really costs more per frame than batch 1 (as SqueezeNet on a CPU). Judged
        # one batch at a time, the near-zero times between two finishes would make any size
        # look cheapest at random; over windows the sizer sees the real costs.
        sizer = BatchSizer(8, overlap=2)
        caps = self.feed_overlapped(sizer, {1: 5e-3, 2: 5.6e-3, 4: 6e-3, 8: 6e-3}, 400)
        assert sizer.chosen == 1
        assert set(caps) == {1, 2}

    def test_overlapping_batches_still_climb_where_batching_pays(self) -> None:
        sizer = BatchSizer(8, overlap=2)
        self.feed_overlapped(sizer, {1: 16e-6, 2: 9e-6, 4: 5e-6, 8: 3e-6}, 400)
        assert sizer.chosen == 8

    def test_overlap_below_one_is_refused(self) -> None:
        with pytest.raises(ValueError, match="overlap"):
            BatchSizer(8, overlap=0)

    def test_max_batch_one_never_probes(self) -> None:
        sizer = BatchSizer(1)
        self.feed(sizer, {1: 1e-3}, 200)
        assert sizer.sizes == [1] and sizer.cap == 1


class TestFrameQueue:
    @staticmethod
    def item(n: int) -> tuple[Frame, int]:
        return (Frame(np.zeros((1, 8, 8), dtype=np.float32)), n)

    def test_frames_come_out_oldest_first_up_to_the_count(self) -> None:
        frames = FrameQueue(maxsize=16)
        for n in range(5):
            assert frames.put(self.item(n), 0.1)
        taken: list[tuple[Frame, int]] = []
        frames.take(3, taken)
        frames.take(10, taken)
        assert [n for _, n in taken] == [0, 1, 2, 3, 4]
        assert len(frames) == 0 and not frames.wait(0.01)

    def test_a_full_queue_refuses_after_the_timeout(self) -> None:
        frames = FrameQueue(maxsize=2)
        assert frames.put(self.item(0), 0.1) and frames.put(self.item(1), 0.1)
        started = time.monotonic()
        assert not frames.put(self.item(2), 0.05)
        assert time.monotonic() - started >= 0.04
        assert len(frames) == 2

    def test_a_waiting_consumer_wakes_when_a_frame_is_put(self) -> None:
        frames = FrameQueue(maxsize=4)
        woke: list[float] = []

        def consume() -> None:
            started = time.monotonic()
            if frames.wait(5.0):
                woke.append(time.monotonic() - started)

        thread = threading.Thread(target=consume)
        thread.start()
        time.sleep(0.05)
        frames.put(self.item(0), 0.1)
        thread.join(5.0)
        assert woke and woke[0] < 1.0

    def test_a_blocked_source_resumes_once_half_the_queue_is_free(self) -> None:
        frames = FrameQueue(maxsize=4)
        for n in range(4):
            frames.put(self.item(n), 0.1)
        done: list[bool] = []
        thread = threading.Thread(target=lambda: done.append(frames.put(self.item(4), 5.0)))
        thread.start()
        time.sleep(0.05)
        taken: list[tuple[Frame, int]] = []
        frames.take(2, taken)
        thread.join(5.0)
        assert done == [True]
        rest: list[tuple[Frame, int]] = []
        frames.take(10, rest)
        assert [n for _, n in rest] == [2, 3, 4]


class TestLabels:
    def test_known_labels_travel_with_the_sample_and_count_for_accuracy(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        source = PatternSource([0.0], 8, labels=[0, 1])
        h = harness_factory(_spec(select.low_confidence(0.5)), source)
        h.run(_model(tmp_path, "v1"))
        records = h.samples()
        assert [r.label for r in records] == [0, 1] * 4
        assert h.outbox.stats().feedback == 0
        (window,) = h.telemetry
        assert (window.labelled, window.correct) == (8, 4)  # uniform output predicts class 0

    def test_delayed_labels_become_feedback_for_uplinked_samples_only(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        source = PatternSource([1.0, 0.0], 10, labels=[5], label_delay_s=60.0)
        h = harness_factory(_spec(select.low_confidence(0.5)), source)
        h.run(_model(tmp_path, "v1"))
        records = h.samples()
        assert len(records) == 5 and all(r.label is None for r in records)
        assert h.outbox.next_feedback(100) is None  # the label is not known yet
        h.clock.offset_s = 61.0
        pending = h.outbox.next_feedback(100)
        assert pending is not None
        assert sorted(pending.items) == sorted((r.seq, 5) for r in records)


class TestTelemetryAndSwap:
    def test_a_swap_closes_the_window_and_resets_drift(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        spec = _spec(select.drift(drift.psi(0.2, window=20, reference=20), rate=1.0))
        source = PatternSource([1.0], -1, fps=400)
        h = harness_factory(spec, source)
        _serve_v1_then_v2(h, tmp_path)
        versions = [w.model_version for w in h.telemetry]
        assert versions == ["v1", "v2"]
        assert all(w.frames > 0 for w in h.telemetry)
        assert all(w.latency_p50_ms is not None for w in h.telemetry)
        assert all(w.latency_p50_ms <= w.latency_p95_ms for w in h.telemetry)  # type: ignore[operator]
        assert h.runtime.model_version == "v2"
        assert h.metrics.model_swaps.labels("inspect")._value.get() == 2

    def test_frames_of_the_wrong_shape_are_counted_and_the_rest_served(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        class Mixed:
            def __iter__(self):  # type: ignore[no-untyped-def]
                for i in range(10):
                    shape = (1, 8, 8) if i % 2 else (3, 3)
                    yield Frame(np.zeros(shape, dtype=np.float32))

        h = harness_factory(_spec(select.low_confidence(0.5)), Mixed())
        h.run(_model(tmp_path, "v1"))
        (window,) = h.telemetry
        assert window.frames == 5
        rejected = h.metrics.frames_rejected.labels("inspect", "bad_input")._value.get()
        assert rejected == 5

    def test_a_failing_source_is_opened_again_and_counted(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        class Flaky:
            """A camera that drops out twice, then streams three frames and ends."""

            def __init__(self) -> None:
                self.opened = 0

            def __iter__(self):  # type: ignore[no-untyped-def]
                self.opened += 1
                yield Frame(np.zeros((1, 8, 8), dtype=np.float32))
                if self.opened <= 2:
                    raise OSError("camera unplugged")
                for _ in range(2):
                    yield Frame(np.zeros((1, 8, 8), dtype=np.float32))

        source = Flaky()
        h = harness_factory(_spec(select.low_confidence(0.5)), source)
        h.runtime._source_backoff = Backoff(0.01, 0.05)
        h.run(_model(tmp_path, "v1"))
        assert source.opened == 3
        assert sum(w.frames for w in h.telemetry) == 5
        assert h.metrics.source_failures.labels("inspect")._value.get() == 2

    def test_a_source_that_keeps_failing_stops_with_the_pipeline(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        class Dead:
            def __iter__(self):  # type: ignore[no-untyped-def]
                raise OSError("no such device")
                yield  # pragma: no cover - makes this a generator

        h = harness_factory(_spec(select.low_confidence(0.5)), Dead())
        h.runtime._source_backoff = Backoff(0.01, 0.02)
        h.runtime.start()
        h.runtime.swap_model(_model(tmp_path, "v1"))
        time.sleep(0.3)
        assert not h.runtime.finished  # still trying
        assert h.metrics.source_failures.labels("inspect")._value.get() >= 3
        h.runtime.stop()
        assert h.runtime.join(5.0)


class TestProbabilities:
    def test_logits_are_turned_into_probabilities(self) -> None:
        probs = as_probabilities(np.array([[2.0, -1.0, 0.5]]))
        assert probs.sum() == pytest.approx(1.0)
        assert probs.argmax() == 0

    def test_probabilities_pass_unchanged(self) -> None:
        given = np.array([[0.7, 0.2, 0.1]])
        assert np.array_equal(as_probabilities(given), given)

    def test_non_finite_outputs_are_refused(self) -> None:
        with pytest.raises(ValueError, match="NaN"):
            as_probabilities(np.array([[np.nan, 1.0]]))


def _task_spec(kind: task.Task, policy: Policy) -> PipelineSpec:
    pipe = Pipeline("inspect", tenant="acme", data_class="internal")
    pipe.edge(model="inspector", backend="onnxruntime", shape=(1, 8, 8), max_batch=4, task=kind)
    pipe.uplink(policy)
    if kind.kind == "regression":
        pipe.rollout(rollback_on="mae rise 1.0")
    elif kind.kind != "classification":
        pipe.rollout(rollback_on="recall drop 0.05")
    return pipe.spec


def _scorer(tmp_path: Path, *, gain: float = 1.0, sigmoid: bool = False) -> ServingModel:
    path = build_score_model(tmp_path / "scorer.onnx", gain=gain, sigmoid=sigmoid)
    backend = open_backend("onnxruntime", path)
    return ServingModel("inspect", "inspector", "v1", "0" * 64, "0" * 128, path, backend)


class TestTasks:
    """The runtime reads outputs through the pipeline's task: selection on its score,
    telemetry counts that give its metric per window."""

    def test_a_binary_task_selects_near_its_threshold_and_counts_decisions(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        # sigmoid(8 * (v - 0.5)): 0.45 -> 0.40, 0.5 -> 0.5, 0.9 -> 0.96, 0.1 -> 0.04.
        spec = _task_spec(task.binary(threshold=0.5), select.near_threshold(0.15))
        source = PatternSource([0.45, 0.5, 0.9, 0.1], 40, labels=[1, 0, 1, 0])
        h = harness_factory(spec, source)
        h.run(_scorer(tmp_path, gain=8.0, sigmoid=True))
        records = h.samples()
        assert len(records) == 20  # the 0.45 and 0.5 frames
        assert sorted({round(r.confidence, 2) for r in records}) == [0.4, 0.5]
        assert {r.prediction for r in records} == {0, 1}  # 0.40 -> 0, 0.50 -> 1
        (window,) = h.telemetry
        # Flagged: 0.5 (label 0) and 0.9 (label 1); positives: 0.45 and 0.9.
        assert (window.labelled, window.labelled_positive) == (40, 20)
        assert (window.predicted_positive, window.true_positive) == (20, 10)
        assert window.correct == 20
        assert window.mean_confidence == pytest.approx(
            np.mean([0.5987, 0.5, 0.9608, 0.9608]), abs=1e-3
        )

    def test_an_anomaly_task_selects_above_the_streams_recent_quantile(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        # Scores 0.1 .. 1.0 by tenths, repeated: the top decile of the recent scores is 1.0.
        pattern = [round(0.1 * k, 1) for k in range(1, 11)]
        spec = _task_spec(task.anomaly(threshold=0.95), select.above_quantile(0.85, window=50))
        h = harness_factory(spec, PatternSource(pattern, 100))
        h.run(_scorer(tmp_path))
        scores = sorted({round(r.confidence, 3) for r in h.samples()})
        assert scores and scores[0] >= 0.9, scores
        (window,) = h.telemetry
        assert window.mean_confidence is None  # an anomaly score is no confidence

    def test_a_regression_task_sums_its_errors_and_sends_its_values_as_feedback(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        spec = _task_spec(task.regression(), select.random(1.0))
        # Value = 10 * mean: 2.0 and 8.0; labels 2.5 and 8 -> errors 0.5 and 0.
        source = PatternSource([0.2, 0.8], 10, labels=[2.5, 8.0])
        h = harness_factory(spec, source)
        h.run(_scorer(tmp_path, gain=10.0))
        (window,) = h.telemetry
        assert window.labelled == 10
        assert window.abs_error_sum == pytest.approx(2.5, abs=1e-4)
        assert window.squared_error_sum == pytest.approx(1.25, abs=1e-4)
        records = h.samples()
        assert {round(r.confidence, 3) for r in records} == {2.0, 8.0}
        # The values follow as feedback (the record's label field holds integers).
        assert all(r.label is None for r in records)
        pending = h.outbox.next_feedback(100)
        assert pending is not None
        by_seq = dict(pending.items)
        assert sorted({by_seq[r.seq] for r in records}) == [2.5, 8.0]

    def test_mistakes_are_selected_when_their_labels_arrive(
        self, tmp_path: Path, harness_factory
    ) -> None:  # type: ignore[no-untyped-def]
        # P(fraud): 0.40 (label 1: missed), 0.96 (label 1: caught), 0.04 (label 0: right).
        spec = _task_spec(task.binary(threshold=0.5), select.mistakes())
        source = PatternSource([0.45, 0.9, 0.1], 60, fps=100.0, labels=[1, 1, 0], label_delay_s=0.2)
        h = harness_factory(spec, source)
        h.run(_scorer(tmp_path, gain=8.0, sigmoid=True))
        records = h.samples()
        # Every released frame is a miss, carries its label, and kept its inference seq;
        # the frames whose labels fell due after the source ended were never released.
        assert 10 <= len(records) <= 20
        assert all(r.label == 1 and r.prediction == 0 for r in records)
        assert all(round(r.confidence, 2) == 0.4 for r in records)
        assert len({r.seq for r in records}) == len(records)

    def test_mistakes_combine_with_or_only(self) -> None:
        with pytest.raises(SpecError, match=r"combine it with \|"):
            select.near_threshold(0.1) & select.mistakes()

    def test_mistakes_hold_no_more_than_their_bound(self, tmp_path: Path, harness_factory) -> None:  # type: ignore[no-untyped-def]
        # Every frame a miss, labels due long after the run: at most hold_frames wait.
        spec = _task_spec(task.binary(threshold=0.5), select.mistakes(hold_frames=5))
        source = PatternSource([0.45], 40, labels=[1], label_delay_s=60.0)
        h = harness_factory(spec, source)
        h.run(_scorer(tmp_path, gain=8.0, sigmoid=True))
        assert len(h.runtime._held) == 5
        assert h.runtime._held_bytes == 5 * 64 * 4
        assert h.samples() == []
