"""Telemetry: one ``Telemetry`` message per window of the pipeline's frames, naming the one
model version that served them."""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from continuum.wire.messages import SCHEMA_VERSION, Telemetry
from edge_agent.runtime._core import RuntimeCore, Window

log = logging.getLogger(__name__)


class TelemetryWindows(RuntimeCore):
    """The telemetry part of ``PipelineRuntime`` (see there)."""

    def _maybe_emit(self) -> None:
        if time.monotonic() - self._window.started >= self._interval_s:
            self._emit_window(final=False)

    def _emit_window(self, *, final: bool) -> None:
        """Send the window's telemetry and start a new one (a final window only if it saw
        frames)."""
        w = self._window
        now = time.monotonic()
        self._window = Window(started=now)
        model = self._model
        elapsed = now - w.started
        if model is None or elapsed <= 0 or (final and w.frames == 0):
            return
        latencies = np.asarray(w.latencies_ms, dtype=np.float64)
        p50 = p95 = None
        if latencies.size:
            p50, p95 = (min(float(v), 3.6e6) for v in np.percentile(latencies, [50, 95]))
        mean_conf = None
        if w.confident:
            mean_conf = min(1.0, max(0.0, w.confidence_sum / w.confident))
        drift = self._drift
        score = drift.score
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
            drifted=bool(drift.drifted),
            drift=drift.readings(),
            labelled=w.labelled,
            correct=w.correct,
            labelled_positive=w.labelled_positive,
            predicted_positive=w.predicted_positive,
            true_positive=w.true_positive,
            abs_error_sum=w.abs_error_sum,
            squared_error_sum=w.squared_error_sum,
            ts=self._wall(),
        )
        try:
            self._on_telemetry(message)
        except Exception:
            log.exception("pipeline %s: telemetry handler failed", self.name)
