"""One pipeline's real-time loop: frames in, predictions out, the selected slice to the outbox.

Per pipeline, a source thread pulls frames at the source's own pace into a short queue and
an inference thread runs adaptive micro-batches (up to the batch size that measured
cheapest per frame, at most ``max_batch`` frames, or ``max_wait_ms`` after the first one),
then: latency per frame (arrival to result), drift monitor on the max probability, the
uplink policy, the bandwidth budget, the durable outbox, delayed labels, and one
``Telemetry`` message per window.  A new model is swapped in between two batches, never
during one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from continuum.drift import DriftMonitor, DriftState
from continuum.errors import ConfigError, ContinuumError, SpecError
from continuum.select import Probabilities, SelectionContext, TokenBucket
from continuum.sources import Frame, Source
from continuum.spec import PipelineSpec, resolve_ref
from continuum.wire.messages import SCHEMA_VERSION, Telemetry
from edge_agent.link import Backoff
from edge_agent.metrics import AgentMetrics
from edge_agent.model_manager import ServingModel
from edge_agent.outbox import FeedbackEntry, Outbox, SampleEntry

__all__ = ["PipelineRuntime", "as_probabilities"]

log = logging.getLogger(__name__)

#: Approximate wire bytes of one sample record besides its tensor (codec record header).
_RECORD_OVERHEAD_BYTES = 40
#: Seconds of budget the token bucket may save up for a burst.
_BUDGET_BURST_S = 2.0
_POLL_S = 0.1
_MAX_LATENCIES_PER_WINDOW = 100_000
#: Weight of the newest inter-arrival gap in its moving average.
_GAP_SMOOTHING = 0.1
#: The drift monitor rescores its whole window on every update, which costs as much as a
#: tiny model's inference; small batches are pooled until an eighth of the detector's
#: window (at most ``_DRIFT_MAX_POOL`` confidences) or ``_DRIFT_MAX_DELAY_S`` is in hand.
#: The detector sees the same values, at most that much later.
_DRIFT_POOL_SHARE = 8
_DRIFT_MAX_POOL = 32
_DRIFT_MAX_DELAY_S = 0.1
#: The batch sizer measures a candidate size on this many cost samples (full batches, or
#: windows of them: see ``_BatchSizer``) before judging it,
#: and keeps the cheapest of them (background load only ever adds time).
_PROBE_SAMPLES = 3
#: After this many cost samples at its chosen size, the sizer tries a neighbouring size
#: again, so that the choice follows a change of load or model.
_REPROBE_AFTER_SAMPLES = 64
#: How much cheaper per frame a larger batch size must measure to be chosen over a smaller.
_LARGER_BATCH_GAIN = 0.01
#: With batches overlapping on the model, one cost sample spans this many times as many
#: full batches as are in flight.
_OVERLAP_WINDOW = 4


def as_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Return ``outputs`` as class probabilities (rows of non-negatives summing to 1).

    Models are expected to end in a softmax; a model that returns logits gets one here so
    that confidence, drift and selection still mean what they say.  The array is read-only
    (see ``continuum.select.Probabilities``, where the rule lives).
    """
    return Probabilities.from_outputs(outputs).values


@dataclass
class _Window:
    """Counters of the current telemetry window.

    ``dropped`` counts selected samples that were not uplinked (bandwidth budget spent or
    outbox full).  ``labelled``/``correct`` count frames that carry a label in the window
    in which they were inferred, so accuracy is attributed to the model version that made
    the prediction even when the label only becomes known ``label_delay_s`` later.
    """

    started: float
    frames: int = 0
    uplinked: int = 0
    dropped: int = 0
    labelled: int = 0
    correct: int = 0
    confidence_sum: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)


#: A frame and the ``time.monotonic_ns()`` at which it reached the runtime (a tuple: one is
#: built per frame, and a frozen dataclass costs several times more to build).
_Arrival = tuple[Frame, int]


@dataclass(frozen=True, slots=True)
class _Running:
    """A batch on the model: what it was run on, and the output to come."""

    model: ServingModel
    kept: list[_Arrival]
    tensors: list[np.ndarray]
    future: Future[tuple[np.ndarray | ContinuumError | ValueError, int]]


class _FrameQueue:
    """The bounded hand-off from the source thread to the inference thread.

    ``queue.Queue`` takes its lock and notifies a condition on every put and every get.  Here
    the source appends to a deque (atomic under the GIL) and takes the lock only to wake an
    inference thread that is actually waiting, and the inference thread takes a whole batch
    per call.  Each side announces that it waits (under the lock) before it re-checks the
    deque, and the other side checks that announcement after it changed the deque, so a
    wake-up is never missed.  One producer and one consumer.
    """

    def __init__(self, maxsize: int) -> None:
        self._items: deque[_Arrival] = deque()
        self._maxsize = maxsize
        self._changed = threading.Condition(threading.Lock())
        self._getter_waits = False
        self._putter_waits = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: _Arrival, timeout_s: float) -> bool:
        """Append ``item``, waiting up to ``timeout_s`` for room; return whether it went in."""
        items = self._items
        if len(items) >= self._maxsize:
            with self._changed:
                self._putter_waits = True
                try:
                    if len(items) >= self._maxsize:
                        self._changed.wait(timeout_s)
                finally:
                    self._putter_waits = False
            if len(items) >= self._maxsize:
                return False
        items.append(item)
        if self._getter_waits:
            with self._changed:
                self._changed.notify_all()
        return True

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until a frame is queued; return whether one is."""
        if self._items:
            return True
        with self._changed:
            self._getter_waits = True
            try:
                if not self._items:
                    self._changed.wait(timeout_s)
            finally:
                self._getter_waits = False
        return bool(self._items)

    def take(self, count: int, into: list[_Arrival]) -> None:
        """Move up to ``count`` queued frames, oldest first, onto ``into``."""
        items = self._items
        for _ in range(min(count, len(items))):
            into.append(items.popleft())
        # A source blocked on a full queue is woken once half of it has room, not on every
        # frame taken: one wake-up (and GIL hand-over) per several frames, not one per frame.
        if self._putter_waits and len(items) <= self._maxsize // 2:
            with self._changed:
                self._changed.notify_all()


class _BatchSizer:
    """Settles the micro-batch size on the one that costs least per frame, measured.

    Batching pays where a model is small or the accelerator wide (the digits CNN runs 3x
    the frames per second at batch 32 on one CPU core); where one frame already fills the
    core (SqueezeNet at 224x224 on a CPU) the backend runs a batch frame by frame, and
    what a larger batch still saves is the runtime's own per-batch work.
    Candidates are 1, 2, 4, ... and ``max_batch``.  Starting at 1, the sizer climbs to the
    next size while that one measures cheaper per frame, then stays, and after every
    ``_REPROBE_AFTER_SAMPLES`` cost samples tries the sizes on either side again.  Only full
    batches count: a batch the source could not fill says nothing about the size.  The cost
    of a batch is the whole cycle (inputs, inference, selection, outbox, metrics), so fixed
    per-batch work is amortised in the comparison as it is in reality.

    A larger size must measure ``_LARGER_BATCH_GAIN`` cheaper to be taken, and a smaller
    one is taken back unless it measures that much dearer: where two sizes cost about the
    same, the smaller wins, since every frame of a larger batch waits longer for it.

    With ``overlap`` batches on the model at once, one batch's time (between two finishes)
    says nothing alone: batches that ran side by side finish almost together, so the times
    alternate between near zero and a whole run.  The sizer then measures
    ``_OVERLAP_WINDOW * overlap`` consecutive full batches as one sample, and leaves out
    the first ``overlap`` full batches at a new size (and at the start), which ran beside
    batches of the old size (or on a cold model).
    """

    def __init__(self, max_batch: int, *, overlap: int = 1) -> None:
        if overlap < 1:
            raise ValueError(f"overlap must be >= 1, got {overlap}")
        sizes = {1, max_batch}
        size = 2
        while size < max_batch:
            sizes.add(size)
            size *= 2
        #: The candidate sizes, ascending.
        self.sizes: list[int] = sorted(sizes)
        self._costs: list[deque[float]] = [deque(maxlen=_PROBE_SAMPLES) for _ in self.sizes]
        self._chosen = 0
        self._probe: int | None = None
        self._climbing = True
        self._since_probe = 0
        self._next_side = -1
        self._window = 1 if overlap == 1 else _OVERLAP_WINDOW * overlap
        self._settle = 0 if overlap == 1 else overlap
        self._settling = self._settle  # full batches still to leave out
        self._window_frames = 0
        self._window_s = 0.0
        self._window_batches = 0
        #: The most frames the next batch may take.
        self.cap = 1

    @property
    def chosen(self) -> int:
        """The size the sizer has settled on (``cap`` differs from it while probing)."""
        return self.sizes[self._chosen]

    def record(self, frames: int, seconds: float) -> None:
        """Note that a batch of ``frames`` took ``seconds`` to process, and set ``cap``."""
        if frames != self.cap:
            return
        if self._settling:
            self._settling -= 1
            return
        self._window_frames += frames
        self._window_s += seconds
        self._window_batches += 1
        if self._window_batches < self._window:
            return
        cost = self._window_s / self._window_frames
        self._window_frames, self._window_s, self._window_batches = 0, 0.0, 0
        index = self._chosen if self._probe is None else self._probe
        self._costs[index].append(cost)
        if self._probe is not None:
            if len(self._costs[index]) >= _PROBE_SAMPLES:
                self._judge(index)
        elif len(self._costs[index]) >= _PROBE_SAMPLES and len(self.sizes) > 1:
            self._since_probe += 1
            if self._climbing:
                self._start_probe(index + 1)
            elif self._since_probe >= _REPROBE_AFTER_SAMPLES:
                # Alternate below and above; at either end, the one neighbour there is.
                side = self._next_side
                self._next_side = -side
                inside = 0 <= index + side < len(self.sizes)
                self._start_probe(index + side if inside else index - side)
        cap = self.sizes[self._chosen if self._probe is None else self._probe]
        if cap != self.cap:
            self.cap = cap
            self._settling = self._settle
            self._window_frames, self._window_s, self._window_batches = 0, 0.0, 0

    def _start_probe(self, index: int) -> None:
        if 0 <= index < len(self.sizes):
            self._costs[index].clear()
            self._probe = index
        else:
            self._climbing = False

    def _judge(self, probe: int) -> None:
        direction = 1 if probe > self._chosen else -1
        self._probe = None
        self._since_probe = 0
        probe_cost, chosen_cost = min(self._costs[probe]), min(self._costs[self._chosen])
        if direction > 0:
            better = probe_cost < chosen_cost * (1.0 - _LARGER_BATCH_GAIN)
        else:
            better = probe_cost <= chosen_cost * (1.0 + _LARGER_BATCH_GAIN)
        if better:
            self._chosen = probe
            self._start_probe(probe + direction)  # keep going while it pays
        else:
            self._climbing = False


class PipelineRuntime:
    """Run one pipeline on this node until its source ends or ``stop`` is called.

    Args:
        spec: the pipeline.
        node: this node's id (sample ids are ``f"{node}:{seq}"``).
        source: the frames.
        outbox: where selected samples and delayed labels go.
        metrics: the agent's metrics.
        on_telemetry: receives each window's ``Telemetry`` (from the inference thread).
        on_enqueued: called after samples or labels went into the outbox (wakes the uplink).
        telemetry_interval_s: window length.
        source_retry_s: first and longest delay before a failed source is iterated again
            (doubling with jitter in between; an attempt that ran the longest delay or
            more starts the next failure over at the first).
        batches_in_flight: micro-batches the model runs at once (give the backend as many
            replicas). Above 1, the inference thread collects, prepares and finishes batches
            in order while the model runs the next ones on that many threads: on a CPU this
            turns cores into frames/s where intra-op threads split small kernels poorly.
    """

    def __init__(
        self,
        *,
        spec: PipelineSpec,
        node: str,
        source: Source,
        outbox: Outbox,
        metrics: AgentMetrics,
        on_telemetry: Callable[[Telemetry], None],
        on_enqueued: Callable[[], None] = lambda: None,
        telemetry_interval_s: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
        source_retry_s: tuple[float, float] = (1.0, 60.0),
        batches_in_flight: int = 1,
    ) -> None:
        if batches_in_flight < 1:
            raise ValueError(f"batches_in_flight must be >= 1, got {batches_in_flight}")
        self._in_flight = batches_in_flight
        self.spec = spec
        self.name = spec.name
        # Thread names say the tenant too: the agent's log lines name their thread, and
        # tenants sharing a box may run pipelines of the same name.
        self._label = f"{spec.tenant}/{spec.name}"
        self.node = node
        self._source = source
        self._source_backoff = Backoff(*source_retry_s)
        self._outbox = outbox
        self._metrics = metrics
        self._on_telemetry = on_telemetry
        self._on_enqueued = on_enqueued
        self._interval_s = telemetry_interval_s
        self._wall = wall_clock
        edge = spec.edge
        self._input_shape = tuple(edge.input.shape)
        self._input_dtype = edge.input.numpy_dtype()
        self._max_batch = edge.max_batch
        self._max_wait_s = edge.max_wait_ms / 1000.0
        self._preprocess: Callable[[Any], Any] | None = None
        if edge.preprocess is not None:
            try:
                self._preprocess = resolve_ref(edge.preprocess, field="edge.preprocess")
            except SpecError as exc:
                raise ConfigError(f"pipeline {spec.name}: {exc}") from exc
        self._policy = spec.uplink.policy
        detector = spec.uplink.detector
        self._monitor = DriftMonitor(detector) if detector is not None else None
        self._drift = DriftState(score=0.0, drifted=False, ready=False)
        self._drift_pending: list[np.ndarray] = []
        self._drift_pending_n = 0
        self._drift_pool = (
            max(1, min(_DRIFT_MAX_POOL, detector.window // _DRIFT_POOL_SHARE))
            if detector is not None
            else 1
        )
        self._drift_due = 0.0
        self._bucket = (
            TokenBucket.from_kbps(spec.uplink.budget_kbps, burst_s=_BUDGET_BURST_S)
            if spec.uplink.budget_kbps is not None
            else None
        )
        self._frames = _FrameQueue(maxsize=max(16, 4 * edge.max_batch))
        self._sizer = _BatchSizer(edge.max_batch, overlap=batches_in_flight)
        self._model: ServingModel | None = None
        self._pending: ServingModel | None = None
        self._swap_lock = threading.Lock()
        self._model_ready = threading.Event()
        self._stopping = threading.Event()
        self._source_done = threading.Event()
        self._finished = threading.Event()
        self._window = _Window(started=time.monotonic())
        self._warned: set[str] = set()
        # This pipeline's metric children, looked up once: labels() costs a lock and a
        # dict lookup, several times per batch.
        self._m_frames = metrics.frames.labels(self.name)
        self._m_batch = metrics.batch_size.labels(self.name)
        self._m_latency = metrics.inference_latency.labels(self.name)
        self._m_selected = metrics.selected.labels(self.name)
        self._m_over_budget = metrics.budget_dropped.labels(self.name)
        self._m_drift_score = metrics.drift_score.labels(self.name)
        self._m_drifted = metrics.drifted.labels(self.name)
        #: Smoothed time between frame arrivals (written by the source thread only).
        self._arrival_gap_s = 0.0
        self._threads: list[threading.Thread] = []

    # -- control ---------------------------------------------------------------------------

    def swap_model(self, model: ServingModel) -> None:
        """Serve ``model`` from the next batch on (thread-safe; the old one is closed then)."""
        with self._swap_lock:
            replaced = self._pending
            self._pending = model
        if replaced is not None:
            replaced.backend.close()
        self._model_ready.set()

    @property
    def model_version(self) -> str | None:
        """The version serving now (None before the first model)."""
        model = self._model
        return model.version if model is not None else None

    @property
    def finished(self) -> bool:
        """Whether the loop has ended (source exhausted or stopped) and drained."""
        return self._finished.is_set()

    def start(self) -> None:
        """Start the source and inference threads (frames flow once a model is served)."""
        if self._threads:
            return
        self._threads = [
            threading.Thread(target=self._pull, name=f"ctm-source-{self._label}", daemon=True),
            threading.Thread(
                target=self._infer_loop if self._in_flight == 1 else self._infer_pipelined,
                name=f"ctm-infer-{self._label}",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop pulling frames; frames already queued are still inferred (see ``join``)."""
        self._stopping.set()

    def join(self, timeout_s: float) -> bool:
        """Wait for the inference thread to drain and end; return whether it did in time."""
        done = self._finished.wait(timeout_s) if self._threads else True
        close = getattr(self._source, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                log.exception("pipeline %s: closing the source failed", self.name)
        return done

    def close(self) -> None:
        """Release the model (call after ``join``)."""
        with self._swap_lock:
            models = [m for m in (self._model, self._pending) if m is not None]
            self._model = self._pending = None
        for model in models:
            model.backend.close()

    # -- source thread ---------------------------------------------------------------------

    def _pull(self) -> None:
        # Frames only flow once there is a model to run them through.
        while not self._model_ready.wait(_POLL_S):
            if self._stopping.is_set():
                self._source_done.set()
                return
        last_ns: int | None = None
        try:
            while not self._stopping.is_set():
                started = time.monotonic()
                try:
                    for frame in self._source:
                        if self._stopping.is_set():
                            break
                        arrived_ns = time.monotonic_ns()
                        if last_ns is not None:
                            gap_s = (arrived_ns - last_ns) / 1e9
                            if self._arrival_gap_s == 0.0:
                                self._arrival_gap_s = gap_s  # the first gap: first estimate
                            else:
                                self._arrival_gap_s += _GAP_SMOOTHING * (
                                    gap_s - self._arrival_gap_s
                                )
                        last_ns = arrived_ns
                        item = (frame, arrived_ns)
                        while not self._frames.put(item, _POLL_S):
                            if self._stopping.is_set():
                                break
                    else:
                        log.info("pipeline %s: source ended", self.name)
                    return
                except Exception:
                    # A camera unplugged or a stream dropped: an unattended node iterates
                    # the source again (reopening it) rather than serve nothing until a
                    # restart. A source that ended normally ends the pipeline.
                    if time.monotonic() - started >= self._source_backoff.max_s:
                        self._source_backoff.reset()
                    delay = self._source_backoff.next_delay()
                    self._metrics.source_failures.labels(self.name).inc()
                    log.exception(
                        "pipeline %s: source failed (%d in a row); opening it again in %.1f s",
                        self.name,
                        self._source_backoff.attempt,
                        delay,
                    )
                    last_ns = None
                    self._stopping.wait(delay)
        finally:
            self._source_done.set()

    # -- inference thread ------------------------------------------------------------------

    def _infer_loop(self) -> None:
        try:
            while True:
                self._apply_swap()
                if self._model is None:
                    if self._stopping.is_set() or self._source_done.is_set():
                        break
                    self._model_ready.wait(_POLL_S)
                    continue
                batch = self._collect()
                if batch:
                    started_ns = time.perf_counter_ns()
                    self._process(batch)
                    self._sizer.record(len(batch), (time.perf_counter_ns() - started_ns) / 1e9)
                elif self._source_done.is_set() and not self._frames:
                    break
                self._maybe_emit()
            self._emit_window(final=True)
        except Exception:
            log.exception("pipeline %s: inference loop failed; the pipeline stops", self.name)
        finally:
            self._finished.set()

    def _infer_pipelined(self) -> None:
        """The inference loop with ``batches_in_flight`` batches on the model at once.

        This thread keeps the order: it collects and prepares the next batch while the
        model runs the earlier ones on the pool, and finishes (selection, outbox, metrics)
        each in the order it was collected, so everything after the model stays
        single-threaded as in ``_infer_loop``. A swap waits until the batches of the old
        model are finished, since the swap closes it.
        """
        slots = self._in_flight
        pool = ThreadPoolExecutor(slots, thread_name_prefix=f"ctm-model-{self._label}")
        running: deque[_Running] = deque()
        last_done_ns = time.perf_counter_ns()
        try:
            while True:
                if self._pending is not None and running:
                    last_done_ns = self._finish_oldest(running, last_done_ns)
                    continue
                self._apply_swap()
                model = self._model
                if model is None:
                    if self._stopping.is_set() or self._source_done.is_set():
                        break
                    self._model_ready.wait(_POLL_S)
                    continue
                if len(running) < slots and (self._frames or not running):
                    batch = self._collect()
                    if batch:
                        kept, tensors = self._prepare(batch)
                        if kept:
                            future = pool.submit(self._run_model, model, tensors)
                            running.append(_Running(model, kept, tensors, future))
                    elif self._source_done.is_set() and not self._frames and not running:
                        break
                else:
                    last_done_ns = self._finish_oldest(running, last_done_ns)
                self._maybe_emit()
            self._emit_window(final=True)
        except Exception:
            log.exception("pipeline %s: inference loop failed; the pipeline stops", self.name)
        finally:
            pool.shutdown(wait=True)
            self._finished.set()

    def _finish_oldest(self, running: deque[_Running], last_done_ns: int) -> int:
        """Finish the oldest running batch; feed the sizer its share of the throughput."""
        item = running.popleft()
        output, done_ns = item.future.result()
        self._finish(item.model, item.kept, item.tensors, output, done_ns)
        now_ns = time.perf_counter_ns()
        # With batches overlapping, a batch's cost is the time between two finishes.
        self._sizer.record(len(item.kept), (now_ns - last_done_ns) / 1e9)
        return now_ns

    def _apply_swap(self) -> None:
        if self._pending is None:  # the common case, read without the lock: checked per batch
            return
        with self._swap_lock:
            new, self._pending = self._pending, None
        if new is None:
            return
        old = self._model
        if old is not None:
            # Close the old version's window so every telemetry message names one model.
            self._emit_window(final=True)
        self._model = new
        if self._monitor is not None:
            self._monitor.reset()
        self._drift = DriftState(score=0.0, drifted=False, ready=False)
        self._drift_pending.clear()
        self._drift_pending_n = 0
        self._metrics.model.labels(self.name).info(
            {"model": new.model, "version": new.version, "sha256": new.sha256}
        )
        self._metrics.model_swaps.labels(self.name).inc()
        if old is not None:
            old.backend.close()
            log.info("pipeline %s: swapped %s -> %s", self.name, old.version, new.version)

    def _collect(self) -> list[_Arrival]:
        """Return the next micro-batch: up to the sizer's cap, waiting at most
        ``max_wait_ms`` after the first frame arrived, and not at all when frames come
        further apart than that (waiting would only add latency, never batch size).
        """
        frames = self._frames
        if not frames.wait(_POLL_S):
            return []
        cap = self._sizer.cap
        batch: list[_Arrival] = []
        frames.take(cap, batch)
        if len(batch) < cap and self._arrival_gap_s < self._max_wait_s:
            deadline_ns = batch[0][1] + int(self._max_wait_s * 1e9)
            while len(batch) < cap:
                remaining_s = (deadline_ns - time.monotonic_ns()) / 1e9
                if remaining_s <= 0 or not frames.wait(remaining_s):
                    break
                frames.take(cap - len(batch), batch)
        return batch

    def _prepare(self, arrivals: list[_Arrival]) -> tuple[list[_Arrival], list[np.ndarray]]:
        """Return the frames that fit the model and their input tensors; count the rest."""
        kept: list[_Arrival] = []
        tensors: list[np.ndarray] = []
        shape, dtype, preprocess = self._input_shape, self._input_dtype, self._preprocess
        for item in arrivals:
            frame = item[0]
            try:
                if not isinstance(frame, Frame):
                    raise TypeError(f"source yielded {type(frame).__name__}, not a Frame")
                x = frame.tensor if preprocess is None else preprocess(frame.tensor)
                # Frames that already fit (the usual case) skip the conversion call.
                if not (type(x) is np.ndarray and x.dtype == dtype and x.shape == shape):
                    x = np.asarray(x, dtype=dtype)
                    if x.shape != shape:
                        raise ValueError(f"shape {x.shape}, the model takes {shape}")
            except Exception as exc:
                self._reject_frame("bad_input", str(exc))
                continue
            kept.append(item)
            tensors.append(x)
        return kept, tensors

    def _process(self, arrivals: list[_Arrival]) -> None:
        model = self._model
        assert model is not None
        kept, tensors = self._prepare(arrivals)
        if not kept:
            return
        output, done_ns = self._run_model(model, tensors)
        self._finish(model, kept, tensors, output, done_ns)

    @staticmethod
    def _run_model(
        model: ServingModel, tensors: list[np.ndarray]
    ) -> tuple[np.ndarray | ContinuumError | ValueError, int]:
        """Run a micro-batch through the model; return its output (or the error) and when.

        The backend takes the frames as they are (``infer_frames``): it stacks them into its
        own input buffer, or runs them one by one where that is faster on this machine.
        """
        try:
            output: np.ndarray | ContinuumError | ValueError = model.backend.infer_frames(tensors)
        except (ContinuumError, ValueError) as exc:
            output = exc
        return output, time.monotonic_ns()

    def _finish(
        self,
        model: ServingModel,
        kept: list[_Arrival],
        tensors: list[np.ndarray],
        output: np.ndarray | ContinuumError | ValueError,
        done_ns: int,
    ) -> None:
        """Select, queue and count the frames of one inferred batch (the inference thread)."""
        n = len(kept)
        try:
            if isinstance(output, Exception):
                raise output
            # Checked once here; selection takes the checked form without checking again.
            scored = Probabilities.from_outputs(output)
            if scored.values.shape[0] != n:
                raise ValueError(f"model returned {scored.values.shape[0]} rows for {n} inputs")
        except (ContinuumError, ValueError) as exc:
            for _ in kept:
                self._reject_frame("inference_error", str(exc))
            return
        probs = scored.values
        confidence = probs.max(axis=1)
        prediction = probs.argmax(axis=1)
        latency_ms = [(done_ns - item[1]) / 1e6 for item in kept]
        if self._monitor is not None:
            self._update_drift(confidence)
        seqs = self._outbox.reserve_seqs(n)
        ctx = SelectionContext.for_node(
            self.node, seqs, drift_active=self._drift.drifted, drift_score=self._drift.score
        )
        try:
            selected = np.flatnonzero(self._policy.decide(scored, ctx))
        except (ContinuumError, ValueError) as exc:
            # A model whose output the policy cannot judge must not stop the loop: the
            # frames were inferred, none is uplinked, and the reason is counted and logged.
            self._warn_once("selection", f"selection failed, nothing uplinked: {exc}")
            selected = np.empty(0, dtype=np.int64)
        over_budget = 0
        entries: list[SampleEntry] = []
        now_s = time.monotonic()
        for i in selected:
            frame = kept[i][0]
            tensor = tensors[i]
            if self._bucket is not None:
                size = tensor.nbytes + _RECORD_OVERHEAD_BYTES
                if not self._bucket.try_take(size, now_s):
                    if not self._bucket.fits(size):
                        self._warn_once(
                            "budget_too_small",
                            f"a {size}-byte sample never fits the {self._bucket.burst_bytes}-byte "
                            "budget burst: raise budget_kbps",
                        )
                    over_budget += 1
                    continue
            immediate = frame.label is not None and frame.label_delay_s <= 0
            entries.append(
                SampleEntry(
                    pipeline=self.name,
                    model_version=model.version,
                    data_class=str(self.spec.data_class),
                    seq=seqs[i],
                    captured_at_ns=frame.captured_at_ns,
                    tensor=tensor,
                    prediction=int(prediction[i]),
                    confidence=float(confidence[i]),
                    label=int(frame.label) if immediate and frame.label is not None else None,
                    fields=frame.fields,
                )
            )
        result = self._outbox.append_samples(entries)
        stored = set(result.kept)
        feedback = [
            FeedbackEntry(
                pipeline=self.name,
                seq=seqs[i],
                label=int(kept[i][0].label),  # type: ignore[arg-type]
                due_at=kept[i][0].captured_at_ns / 1e9 + kept[i][0].label_delay_s,
            )
            for i in selected
            if seqs[i] in stored and kept[i][0].label is not None and kept[i][0].label_delay_s > 0
        ]
        self._outbox.append_feedback(feedback)
        if result.appended or feedback:
            self._on_enqueued()

        labelled = 0
        correct = 0
        for row, item in enumerate(kept):
            label = item[0].label
            if label is not None:
                labelled += 1
                correct += int(prediction[row]) == label

        w = self._window
        w.frames += n
        w.uplinked += result.appended
        w.dropped += over_budget + result.refused
        w.labelled += labelled
        w.correct += correct
        w.confidence_sum += float(confidence.sum())
        if len(w.latencies_ms) < _MAX_LATENCIES_PER_WINDOW:
            w.latencies_ms.extend(latency_ms)

        self._m_frames.inc(n)
        self._m_batch.observe(n)
        for value in latency_ms:
            self._m_latency.observe(value / 1000.0)
        if len(selected):
            self._m_selected.inc(len(selected))
        if over_budget:
            self._m_over_budget.inc(over_budget)

    def _update_drift(self, confidence: np.ndarray) -> None:
        """Feed the drift monitor, pooling small batches (see ``_DRIFT_POOL_SHARE``)."""
        assert self._monitor is not None
        self._drift_pending.append(confidence)
        self._drift_pending_n += confidence.size
        now = time.monotonic()
        if self._drift_pending_n < self._drift_pool and now < self._drift_due:
            return
        values = (
            self._drift_pending[0]
            if len(self._drift_pending) == 1
            else np.concatenate(self._drift_pending)
        )
        self._drift_pending.clear()
        self._drift_pending_n = 0
        self._drift_due = now + _DRIFT_MAX_DELAY_S
        self._drift = self._monitor.update(values)
        self._m_drift_score.set(self._drift.score)
        self._m_drifted.set(1.0 if self._drift.drifted else 0.0)

    # -- telemetry -------------------------------------------------------------------------

    def _maybe_emit(self) -> None:
        if time.monotonic() - self._window.started >= self._interval_s:
            self._emit_window(final=False)

    def _emit_window(self, *, final: bool) -> None:
        w = self._window
        now = time.monotonic()
        self._window = _Window(started=now)
        model = self._model
        elapsed = now - w.started
        if model is None or elapsed <= 0 or (final and w.frames == 0):
            return
        latencies = np.asarray(w.latencies_ms, dtype=np.float64)
        p50 = p95 = None
        if latencies.size:
            p50, p95 = (min(float(v), 3.6e6) for v in np.percentile(latencies, [50, 95]))
        mean_conf = None
        if w.frames:
            mean_conf = min(1.0, max(0.0, w.confidence_sum / w.frames))
        score = self._drift.score
        message = Telemetry(
            schema_version=SCHEMA_VERSION,
            node=self.node,
            pipeline=self.name,
            model_version=model.version,
            window_s=min(max(elapsed, 1e-6), 86_400.0),
            frames=w.frames,
            uplinked=w.uplinked,
            dropped=w.dropped,
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            mean_confidence=mean_conf,
            drift_score=score if math.isfinite(score) and score >= 0 else 0.0,
            drifted=self._drift.drifted,
            labelled=w.labelled,
            correct=w.correct,
            ts=self._wall(),
        )
        try:
            self._on_telemetry(message)
        except Exception:
            log.exception("pipeline %s: telemetry handler failed", self.name)

    # -- helpers ---------------------------------------------------------------------------

    def _reject_frame(self, reason: str, detail: str) -> None:
        self._metrics.frames_rejected.labels(self.name, reason).inc()
        self._warn_once(reason, f"frame rejected ({reason}): {detail}")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("pipeline %s: %s (further ones are only counted)", self.name, message)
