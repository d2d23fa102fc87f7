"""The source thread: frames pulled at the source's own pace into the frame queue, and a
failed source opened again with backoff rather than serving nothing until a restart."""

from __future__ import annotations

import logging
import time

from edge_agent.runtime._core import POLL_S, RuntimeCore

log = logging.getLogger(__name__)

#: Weight of the newest inter-arrival gap in its moving average.
_GAP_SMOOTHING = 0.1


class SourceLoop(RuntimeCore):
    """The source part of ``PipelineRuntime`` (see there)."""

    def _cpu_mark(self) -> float | None:
        """This thread's CPU time now, while a frame might run here (serial mode, batches of
        one frame); else None: a saturated source feeding larger batches pays no clock."""
        if self._in_flight == 1 and self._sizer.cap == 1:
            return time.thread_time()
        return None

    def _pull(self) -> None:
        # Frames only flow once there is a model to run them through.
        while not self._model_ready.wait(POLL_S):
            if self._stopping.is_set():
                self._source_done.set()
                return
        last_ns: int | None = None
        try:
            while not self._stopping.is_set():
                started = time.monotonic()
                try:
                    cpu_mark = self._cpu_mark()
                    for frame in self._source:
                        if self._stopping.is_set():
                            break
                        arrived_ns = time.monotonic_ns()
                        if cpu_mark is not None:
                            # This thread's CPU time to produce the frame (decoding, copying),
                            # not the time it waited for it: what running the frame here too
                            # would take from the source (see InferenceLoop._run_inline).
                            cpu_s = time.thread_time() - cpu_mark
                            self._source_cpu_s += _GAP_SMOOTHING * (cpu_s - self._source_cpu_s)
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
                        if cpu_mark is None or not self._run_inline(item):
                            while not self._frames.put(item, POLL_S):
                                if self._stopping.is_set():
                                    break
                        cpu_mark = self._cpu_mark()
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
