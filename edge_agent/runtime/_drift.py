"""Drift watching on the edge: the pipeline's drift detector fed with each batch's
confidences, pooled so that small batches do not pay for a rescoring each."""

from __future__ import annotations

import time

import numpy as np
from prometheus_client import Gauge

from continuum.drift import DriftMonitor, DriftState, KSSpec, PSISpec

#: The drift monitor rescores its whole window on every update, which costs as much as a
#: tiny model's inference; small batches are pooled until an eighth of the detector's
#: window (at most ``_DRIFT_MAX_POOL`` confidences) or ``_DRIFT_MAX_DELAY_S`` is in hand.
#: The detector sees the same values, at most that much later.
_DRIFT_POOL_SHARE = 8
_DRIFT_MAX_POOL = 32
_DRIFT_MAX_DELAY_S = 0.1

_NOT_READY = DriftState(score=0.0, drifted=False, ready=False)


class DriftWatch:
    """The pipeline's drift state (``state``), kept by its detector if it has one.

    Args:
        detector: the pipeline's detector; None: ``state`` stays "no drift, not ready".
        score, drifted: this pipeline's drift gauges.
    """

    def __init__(self, detector: PSISpec | KSSpec | None, *, score: Gauge, drifted: Gauge) -> None:
        self._monitor = DriftMonitor(detector) if detector is not None else None
        #: Whether a detector watches (``update`` may only be called then).
        self.active = self._monitor is not None
        self.state = _NOT_READY
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._pool = (
            max(1, min(_DRIFT_MAX_POOL, detector.window // _DRIFT_POOL_SHARE))
            if detector is not None
            else 1
        )
        self._due = 0.0
        self._m_score = score
        self._m_drifted = drifted

    def update(self, confidence: np.ndarray) -> None:
        """Feed the detector one batch's confidences, pooling small batches."""
        assert self._monitor is not None
        self._pending.append(confidence)
        self._pending_n += confidence.size
        now = time.monotonic()
        if self._pending_n < self._pool and now < self._due:
            return
        values = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending.clear()
        self._pending_n = 0
        self._due = now + _DRIFT_MAX_DELAY_S
        self.state = self._monitor.update(values)
        self._m_score.set(self.state.score)
        self._m_drifted.set(1.0 if self.state.drifted else 0.0)

    def reset(self) -> None:
        """Start over (a new model: its confidences are another distribution)."""
        if self._monitor is not None:
            self._monitor.reset()
        self.state = _NOT_READY
        self._pending.clear()
        self._pending_n = 0
