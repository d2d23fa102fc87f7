"""What every part of the pipeline runtime shares: the pipeline's settings, the model
serving and the one to swap in, the frame queue, the window, and the thread signals."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from continuum._retry import Backoff
from continuum.errors import ConfigError, ContinuumError, SpecError
from continuum.select import ScoreHistory, TokenBucket
from continuum.sources import Frame, Source
from continuum.spec import PipelineSpec, resolve_ref
from continuum.wire.messages import Telemetry
from edge_agent.metrics import AgentMetrics
from edge_agent.model_manager import ServingModel
from edge_agent.outbox import FeedbackEntry, Outbox, SampleEntry
from edge_agent.runtime._batching import BatchSizer
from edge_agent.runtime._drift import DriftWatch
from edge_agent.runtime._frames import Arrival, FrameQueue

log = logging.getLogger(__name__)

#: How long the runtime's threads wait at most before they look at their signals again.
POLL_S = 0.1
#: Seconds of budget the token bucket may save up for a burst.
_BUDGET_BURST_S = 2.0


@dataclass
class Window:
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
    #: Binary and anomaly tasks: labelled frames whose label is 1, that the model flagged,
    #: and both (precision and recall at the threshold come from these).
    labelled_positive: int = 0
    predicted_positive: int = 0
    true_positive: int = 0
    #: Regression: sums of absolute and squared errors of the labelled frames.
    abs_error_sum: float = 0.0
    squared_error_sum: float = 0.0
    #: Frames whose task defines a confidence in [0, 1] (classification, binary).
    confident: int = 0
    confidence_sum: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True, order=True)
class Held:
    """A frame not selected at inference, held until its label is due (``select.mistakes``)."""

    due_at: float
    seq: int
    frame: Frame = field(compare=False)
    tensor: np.ndarray = field(compare=False)
    prediction: int = field(compare=False)
    score: float = field(compare=False)
    model_version: str = field(compare=False)


@dataclass(frozen=True, slots=True)
class Running:
    """A batch on the model: what it was run on, and the output to come."""

    model: ServingModel
    kept: list[Arrival]
    tensors: list[np.ndarray]
    future: Future[tuple[np.ndarray | ContinuumError | ValueError, int]]


class RuntimeCore:
    """The shared state of ``PipelineRuntime`` (see there for the arguments)."""

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
        self._preprocess = _preprocess(spec)
        self._policy = spec.uplink.policy
        self._task = edge.task
        history = self._policy.history_window()
        self._history = ScoreHistory(history) if history else None
        #: ``select.mistakes()``: frames held until their labels are due (a heap by due time).
        self._late = self._policy.late_leaf() if edge.task.integer_labels else None
        self._held: list[Held] = []
        self._held_bytes = 0
        #: Selected samples (and their delayed labels) not yet committed to the outbox, and
        #: when the first of them was selected (see ``Selection._commit_uplink``).
        self._group: list[SampleEntry] = []
        self._group_feedback: list[FeedbackEntry] = []
        self._group_bytes = 0
        self._group_since = 0.0
        self._drift = DriftWatch(
            spec.uplink.detectors, pipeline=self.name, metrics=metrics, wall_clock=wall_clock
        )
        self._bucket = (
            TokenBucket.from_kbps(spec.uplink.budget_kbps, burst_s=_BUDGET_BURST_S)
            if spec.uplink.budget_kbps is not None
            else None
        )
        self._frames = FrameQueue(maxsize=max(16, 4 * edge.max_batch))
        self._sizer = BatchSizer(edge.max_batch, overlap=batches_in_flight)
        #: Held by whichever thread runs a batch and what follows it (serial mode): the
        #: inference thread, or the source thread when it runs a frame to completion itself.
        self._work = threading.Lock()
        #: The source thread's smoothed CPU time per frame (its own work, not its waits).
        self._source_cpu_s = 0.0
        #: Set when a frame run on the source thread failed: the pipeline stops.
        self._inline_failed = False
        self._model: ServingModel | None = None
        self._pending: ServingModel | None = None
        self._swap_lock = threading.Lock()
        self._model_ready = threading.Event()
        self._stopping = threading.Event()
        self._source_done = threading.Event()
        self._finished = threading.Event()
        self._window = Window(started=time.monotonic())
        self._warned: set[str] = set()
        # This pipeline's metric children, looked up once: labels() costs a lock and a
        # dict lookup, several times per batch.
        self._m_frames = metrics.frames.labels(self.name)
        self._m_batch = metrics.batch_size.labels(self.name)
        self._m_latency = metrics.inference_latency.labels(self.name)
        self._m_selected = metrics.selected.labels(self.name)
        self._m_over_budget = metrics.budget_dropped.labels(self.name)
        #: Smoothed time between frame arrivals (written by the source thread only).
        self._arrival_gap_s = 0.0
        self._threads: list[threading.Thread] = []

    def _run_inline(self, item: Arrival) -> bool:
        """Run ``item`` to completion on the calling thread if that pays; see InferenceLoop."""
        return False

    def _reject_frame(self, reason: str, detail: str) -> None:
        self._metrics.frames_rejected.labels(self.name, reason).inc()
        self._warn_once(reason, f"frame rejected ({reason}): {detail}")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("pipeline %s: %s (further ones are only counted)", self.name, message)


def _preprocess(spec: PipelineSpec) -> Callable[[Any], Any] | None:
    """The pipeline's frame preparation: its declared image prep, then its preprocess function.

    Either may be absent; with both, the function receives the prepared image.

    Raises:
        ConfigError: the reference does not resolve.
    """
    image = spec.edge.image
    function: Callable[[Any], Any] | None = None
    if spec.edge.preprocess is not None:
        try:
            function = resolve_ref(spec.edge.preprocess, field="edge.preprocess")
        except SpecError as exc:
            raise ConfigError(f"pipeline {spec.name}: {exc}") from exc
    if image is None:
        return function
    if function is None:
        return image.apply
    then = function

    def prepared(frame: Any) -> Any:
        return then(image.apply(frame))

    return prepared
