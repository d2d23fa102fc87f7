"""Drift watching on the edge: every detector of the pipeline, each fed its own signal.

The outputs detectors get each batch's confidences, the inputs detectors the batch's
preprocessed input tensors, both pooled so that small batches do not pay for a rescoring
each.  The labels detectors get a frame's outcome (wrong or right) only once its label is
due, ``label_delay_s`` after capture, as the outbox's delayed feedback is: a detector that
read labels the moment a frame is inferred would see the future.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from continuum.drift import Detector, DriftState, Monitor, monitor_for
from continuum.wire.messages import DriftReading
from edge_agent.metrics import AgentMetrics

#: A monitor rescores its whole window on every update, which costs as much as a tiny
#: model's inference; batches are pooled until a quarter of the detector's window (at most
#: ``_MAX_POOL`` values) or ``_MAX_DELAY_S`` is in hand.  The detector sees the same values,
#: at most that much later.  A quarter, not less: at an eighth (25 values of the default
#: 200-value window) a saturated micro-batch of 32 frames paid a rescoring per batch, a
#: sixth of the agent's whole per-batch work on the digits CNN (measured, edge_overhead).
_POOL_SHARE = 4
_MAX_POOL = 64
_MAX_DELAY_S = 0.1
#: Outcomes waiting for their label's time, at most; further ones are not kept (a label
#: delay of hours at a high frame rate must not grow the heap without bound).
_MAX_WAITING_LABELS = 100_000

_NOT_READY = DriftState(score=0.0, drifted=False, ready=False)


@dataclass
class _Watched:
    """One detector, its monitor, what it has pooled, and its gauges."""

    spec: Detector
    monitor: Monitor
    pool: int
    pending: list[np.ndarray] = field(default_factory=list)
    pending_n: int = 0
    due: float = 0.0

    def add(self, values: list[np.ndarray] | np.ndarray, n: int, now: float) -> bool:
        """Pool ``values``; return whether the pool is due for the monitor."""
        if isinstance(values, list):
            self.pending.extend(values)
        else:
            self.pending.append(values)
        self.pending_n += n
        return self.pending_n >= self.pool or now >= self.due

    def flush(self, now: float) -> DriftState:
        """Feed the pooled values to the monitor and return its state."""
        pending = self.pending
        self.pending = []
        self.pending_n = 0
        self.due = now + _MAX_DELAY_S
        if self.spec.signal == "inputs":
            return self.monitor.update(pending)  # the tensors themselves, one per frame
        values = pending[0] if len(pending) == 1 else np.concatenate(pending)
        return self.monitor.update(values)


class DriftWatch:
    """The pipeline's drift detectors and their verdicts, updated batch by batch.

    Args:
        detectors: the pipeline's detectors (``UplinkSpec.detectors``); none: nothing to do.
        pipeline: the pipeline's name, for the gauges.
        metrics: the agent's metrics.
        wall_clock: the clock labels are due by (the frames' capture clock).
    """

    def __init__(
        self,
        detectors: tuple[Detector, ...],
        *,
        pipeline: str,
        metrics: AgentMetrics,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._watched = [
            _Watched(spec, monitor_for(spec), max(1, min(_MAX_POOL, spec.window // _POOL_SHARE)))
            for spec in detectors
        ]
        self._outputs = [w for w in self._watched if w.spec.signal == "outputs"]
        self._inputs = [w for w in self._watched if w.spec.signal == "inputs"]
        self._labels = [w for w in self._watched if w.spec.signal == "labels"]
        #: Whether any detector watches (``update`` does nothing otherwise).
        self.active = bool(self._watched)
        #: Whether a labels detector wants the outcomes of labelled frames.
        self.wants_labels = bool(self._labels)
        #: The detectors whose verdict is drift now (what ``select.drift`` leaves fire on).
        self.drifted: frozenset[Detector] = frozenset()
        self._states = [_NOT_READY] * len(self._watched)
        self._waiting: list[tuple[float, int, float]] = []  # (due_at, order, error)
        self._order = 0
        self._wall = wall_clock
        self._m_score = metrics.drift_score.labels(pipeline)
        self._m_drifted = metrics.drifted.labels(pipeline)
        self._m_signal = [
            (
                metrics.drift_signal_score.labels(pipeline, w.spec.signal, w.spec.describe()),
                metrics.drift_signal_drifted.labels(pipeline, w.spec.signal, w.spec.describe()),
            )
            for w in self._watched
        ]

    @property
    def score(self) -> float:
        """The largest score of the detectors (0.0 without any)."""
        return max((s.score for s in self._states), default=0.0)

    def readings(self) -> list[DriftReading]:
        """Each detector's latest verdict, for telemetry."""
        return [
            DriftReading(
                signal=w.spec.signal,
                kind=w.spec.kind,
                score=state.score if math.isfinite(state.score) and state.score >= 0 else 0.0,
                drifted=state.drifted,
                ready=state.ready,
                feature=state.feature,
            )
            for w, state in zip(self._watched, self._states, strict=True)
        ]

    def update(
        self,
        confidence: np.ndarray,
        tensors: list[np.ndarray],
        outcomes: list[tuple[float, bool]],
    ) -> None:
        """Feed one inferred batch: its confidences, its input tensors, and the outcome
        (due time, prediction wrong) of each labelled frame; labels not yet due wait."""
        if not self.active:
            return
        now = time.monotonic()
        changed = False
        for w in self._outputs:
            if w.add(confidence, confidence.size, now):
                changed |= self._flush(w, now)
        for w in self._inputs:
            if w.add(tensors, len(tensors), now):
                changed |= self._flush(w, now)
        if self._labels:
            changed |= self._feed_labels(outcomes, now)
        if changed:
            self._publish()

    def reset(self) -> None:
        """Start over with a new model: every detector takes a new reference.

        The outputs are the new model's own distribution.  The labels judge the new model,
        so outcomes of the old one still waiting are dropped.  The inputs did not change
        with the model, but the new one was trained for what the camera shows now: the
        current stream becomes the reference, so the detector stops reporting a drift the
        new model answers and watches for the next one.
        """
        for w in self._watched:
            w.monitor.reset()
            w.pending = []
            w.pending_n = 0
        self._waiting.clear()
        self._states = [_NOT_READY] * len(self._watched)
        self._publish()

    def _feed_labels(self, outcomes: list[tuple[float, bool]], now: float) -> bool:
        waiting = self._waiting
        for due_at, wrong in outcomes:
            if len(waiting) >= _MAX_WAITING_LABELS:
                break
            self._order += 1
            heapq.heappush(waiting, (due_at, self._order, 1.0 if wrong else 0.0))
        wall = self._wall()
        due: list[float] = []
        while waiting and waiting[0][0] <= wall:
            due.append(heapq.heappop(waiting)[2])
        if not due:
            return False
        errors = np.asarray(due, dtype=np.float64)
        changed = False
        for w in self._labels:
            if w.add(errors, errors.size, now):
                changed |= self._flush(w, now)
        return changed

    def _flush(self, watched: _Watched, now: float) -> bool:
        index = self._watched.index(watched)
        state = watched.flush(now)
        changed = state != self._states[index]
        self._states[index] = state
        return changed

    def _publish(self) -> None:
        """Set the verdicts the selection reads and the gauges."""
        self.drifted = frozenset(
            w.spec for w, s in zip(self._watched, self._states, strict=True) if s.drifted
        )
        self._m_score.set(self.score)
        self._m_drifted.set(1.0 if self.drifted else 0.0)
        for (score, drifted), state in zip(self._m_signal, self._states, strict=True):
            score.set(state.score)
            drifted.set(1.0 if state.drifted else 0.0)
