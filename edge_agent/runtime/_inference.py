"""The inference thread: micro-batches collected from the frame queue, prepared, run on the
model (one at a time, or several in flight on a pool), and finished in order; a new model
is swapped in between two batches, never during one."""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from continuum.errors import ContinuumError
from continuum.sources import Frame
from edge_agent.model_manager import ServingModel
from edge_agent.runtime._core import POLL_S, Running
from edge_agent.runtime._frames import Arrival
from edge_agent.runtime._selection import Selection

log = logging.getLogger(__name__)

#: A frame runs to completion on the source thread only while the source's own CPU time per
#: frame is below this share of a frame's cost on the model and after it (see _run_inline).
_INLINE_SOURCE_SHARE = 0.25


class InferenceLoop(Selection):
    """The inference part of ``PipelineRuntime`` (see there)."""

    def _infer_loop(self) -> None:
        try:
            while not self._inline_failed:
                # Waits happen outside the work lock, so the source may run frames meanwhile.
                if self._model is None and self._pending is None:
                    if self._stopping.is_set() or self._source_done.is_set():
                        break
                    self._model_ready.wait(POLL_S)
                    continue
                if self._model is not None:
                    self._frames.wait(POLL_S)
                with self._work:
                    self._apply_swap()
                    if self._model is None:
                        continue
                    batch = self._collect(wait_s=0.0)
                    if batch:
                        started_ns = time.perf_counter_ns()
                        self._process(batch)
                        spent_s = (time.perf_counter_ns() - started_ns) / 1e9
                        self._sizer.record(len(batch), spent_s)
                    elif self._source_done.is_set() and not self._frames:
                        break
                    self._release_due()
                    self._maybe_emit()
            with self._work:
                self._emit_window(final=True)
        except Exception:
            log.exception("pipeline %s: inference loop failed; the pipeline stops", self.name)
            with self._work:
                self._commit_after_failure()
        finally:
            self._finished.set()

    def _run_inline(self, item: Arrival) -> bool:
        """Run one frame to completion on the calling (source) thread; False: queue it.

        Serial mode only, while batches are of one frame (``BatchSizer.cap``), nothing is
        queued (so frames stay in order) and the source's own CPU time per frame is small
        beside the model's: then handing the frame to the inference thread buys no overlap
        and costs two thread wake-ups (tens of microseconds, more than a small model's run).
        A source that spends CPU on each frame (decoding video) keeps the hand-off, so that
        it decodes the next frame while the model runs this one.
        """
        if self._in_flight != 1 or self._sizer.cap != 1 or self._frames:
            return False
        if self._source_cpu_s > _INLINE_SOURCE_SHARE * self._sizer.frame_cost_s:
            return False
        if not self._work.acquire(blocking=False):
            return False
        try:
            self._apply_swap()
            if self._model is None or self._frames or self._sizer.cap != 1:
                return False
            try:
                started_ns = time.perf_counter_ns()
                self._process([item])
                self._sizer.record(1, (time.perf_counter_ns() - started_ns) / 1e9)
                self._release_due()
                self._maybe_emit()
            except Exception:
                log.exception("pipeline %s: inference failed; the pipeline stops", self.name)
                self._commit_after_failure()
                self._inline_failed = True
                self._stopping.set()
            return True
        finally:
            self._work.release()

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
        running: deque[Running] = deque()
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
                    self._model_ready.wait(POLL_S)
                    continue
                if len(running) < slots and (self._frames or not running):
                    batch = self._collect()
                    if batch:
                        kept, tensors = self._prepare(batch)
                        if kept:
                            future = pool.submit(self._run_model, model, tensors)
                            running.append(Running(model, kept, tensors, future))
                    elif self._source_done.is_set() and not self._frames and not running:
                        break
                else:
                    last_done_ns = self._finish_oldest(running, last_done_ns)
                self._release_due()
                self._maybe_emit()
            self._emit_window(final=True)
        except Exception:
            log.exception("pipeline %s: inference loop failed; the pipeline stops", self.name)
            self._commit_after_failure()
        finally:
            pool.shutdown(wait=True)
            self._finished.set()

    def _finish_oldest(self, running: deque[Running], last_done_ns: int) -> int:
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
        self._drift.reset()
        self._metrics.model.labels(self.name).info(
            {"model": new.model, "version": new.version, "sha256": new.sha256}
        )
        self._metrics.model_swaps.labels(self.name).inc()
        if old is not None:
            old.backend.close()
            log.info("pipeline %s: swapped %s -> %s", self.name, old.version, new.version)

    def _collect(self, wait_s: float = POLL_S) -> list[Arrival]:
        """Return the next micro-batch: up to the sizer's cap, waiting at most ``wait_s``
        for a first frame and ``max_wait_ms`` after it arrived, and not at all when frames
        come further apart than that (waiting would only add latency, never batch size).
        """
        frames = self._frames
        if not frames.wait(wait_s):
            return []
        cap = self._sizer.cap
        batch: list[Arrival] = []
        frames.take(cap, batch)
        if len(batch) < cap and self._arrival_gap_s < self._max_wait_s:
            deadline_ns = batch[0][1] + int(self._max_wait_s * 1e9)
            while len(batch) < cap:
                remaining_s = (deadline_ns - time.monotonic_ns()) / 1e9
                if remaining_s <= 0 or not frames.wait(remaining_s):
                    break
                frames.take(cap - len(batch), batch)
        return batch

    def _prepare(self, arrivals: list[Arrival]) -> tuple[list[Arrival], list[np.ndarray]]:
        """Return the frames that fit the model and their input tensors; count the rest."""
        kept: list[Arrival] = []
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

    def _process(self, arrivals: list[Arrival]) -> None:
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
