"""One pipeline's real-time loop: frames in, predictions out, the selected slice to the outbox.

Per pipeline, a source thread pulls frames at the source's own pace into a short queue and
an inference thread runs adaptive micro-batches (up to the batch size that measured
cheapest per frame, at most ``max_batch`` frames, or ``max_wait_ms`` after the first one),
then: latency per frame (arrival to result), the drift detectors (confidences, input
tensors, labels once due), the uplink policy, the bandwidth budget, the durable outbox,
delayed labels, and one ``Telemetry`` message per window.  A new model is swapped in
between two batches, never during one.  While batches are of one frame and the source
spends little CPU per frame (a camera that waits for its next frame), the source thread
runs each frame to completion itself instead of handing it over: two thread wake-ups cost
more than a small model's whole run (``InferenceLoop._run_inline``).

The rooms, each a private module: ``_source`` (the source thread), ``_frames`` (the
hand-off queue), ``_batching`` (the batch sizer), ``_inference`` (the inference thread and
model swaps), ``_selection`` (after the model: selection, budget, outbox, counting),
``_drift`` (the drift watch), ``_telemetry`` (the windows), ``_core`` (shared state).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from continuum.select import Probabilities
from edge_agent.model_manager import ServingModel
from edge_agent.runtime._inference import InferenceLoop
from edge_agent.runtime._source import SourceLoop

__all__ = ["PipelineRuntime", "as_probabilities"]

log = logging.getLogger(__name__)


def as_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Return ``outputs`` as class probabilities (rows of non-negatives summing to 1).

    Models are expected to end in a softmax; a model that returns logits gets one here so
    that confidence, drift and selection still mean what they say.  The array is read-only
    (see ``continuum.select.Probabilities``, where the rule lives).
    """
    return Probabilities.from_outputs(outputs).values


class PipelineRuntime(InferenceLoop, SourceLoop):
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
