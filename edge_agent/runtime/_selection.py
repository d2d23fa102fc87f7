"""After the model: one inferred batch read through the pipeline's task (its output
contract), its scores, input tensors and (once due) label outcomes fed to the drift watch,
the uplink policy applied, the bandwidth budget spent, the selected samples and their
delayed labels put into the durable outbox, and the batch counted."""

from __future__ import annotations

import heapq
import logging
import time

import numpy as np

from continuum.errors import ContinuumError
from continuum.select import SelectionContext
from continuum.task import TaskOutputs
from edge_agent.metrics import observe_many
from edge_agent.model_manager import ServingModel
from edge_agent.outbox import FeedbackEntry, SampleEntry
from edge_agent.runtime._core import Held
from edge_agent.runtime._frames import Arrival
from edge_agent.runtime._telemetry import TelemetryWindows

log = logging.getLogger(__name__)

#: Approximate wire bytes of one sample record besides its tensor (codec record header).
_RECORD_OVERHEAD_BYTES = 40
_MAX_LATENCIES_PER_WINDOW = 100_000
#: While frames wait in the queue (the source is ahead of the model), the samples selected
#: from a batch are committed together with those of the batches after it, up to this long
#: after the first of them was selected, this many samples or this many tensor bytes: one
#: SQLite commit costs about 100 us whatever it holds, as much as the rest of the work on a
#: batch of 32 tiny frames (measured, edge_overhead).  See ``_commit_uplink`` for why the
#: wait is safe.
_GROUP_COMMIT_S = 0.02
_GROUP_COMMIT_SAMPLES = 256
_GROUP_COMMIT_BYTES = 4 << 20


class Selection(TelemetryWindows):
    """The selection part of ``PipelineRuntime`` (see there)."""

    def _finish(
        self,
        model: ServingModel,
        kept: list[Arrival],
        tensors: list[np.ndarray],
        output: np.ndarray | ContinuumError | ValueError,
        done_ns: int,
    ) -> None:
        """Select, queue and count the frames of one inferred batch (the inference thread)."""
        scored = self._scored(output, kept)
        if scored is None:
            return
        # The score is what the outputs detectors watch and a sample record carries: the
        # top probability, P(positive), the predicted value or the anomaly score.
        score = scored.score
        # A record's prediction is an integer: the class, or 0/1 at the threshold; a
        # regression's value travels in the score.
        prediction = (
            np.zeros(len(kept), dtype=np.int64)
            if scored.kind == "regression"
            else scored.prediction.astype(np.int64)
        )
        latency_ms = [(done_ns - item[1]) / 1e6 for item in kept]
        if self._drift.active:
            self._drift.update(score, tensors, self._outcomes(kept, prediction))
        seqs = self._outbox.reserve_seqs(len(kept))
        selected = self._select(scored, seqs)
        if self._history is not None:
            self._history.push(score)
        entries, over_budget = self._within_budget(
            model, kept, tensors, selected, seqs, prediction, score
        )
        self._queue(kept, selected, seqs, entries)
        self._count(kept, scored, latency_ms, len(selected), over_budget)
        if self._group and (
            not self._frames
            or self._group_bytes >= _GROUP_COMMIT_BYTES
            or len(self._group) >= _GROUP_COMMIT_SAMPLES
            or time.monotonic() - self._group_since >= _GROUP_COMMIT_S
        ):
            self._commit_uplink()
        if self._late is not None:
            self._hold(model, kept, tensors, selected, seqs, prediction, score)
            self._release_due()

    def _hold(
        self,
        model: ServingModel,
        kept: list[Arrival],
        tensors: list[np.ndarray],
        selected: np.ndarray,
        seqs: range,
        prediction: np.ndarray,
        score: np.ndarray,
    ) -> None:
        """Keep the labelled frames not selected now until their labels are due, within the
        leaf's ``hold_frames`` and ``hold_mb``."""
        late = self._late
        assert late is not None
        limit_bytes = late.hold_mb * 2**20
        taken = set(selected.tolist())
        for row, (frame, _) in enumerate(kept):
            if row in taken or frame.label is None or frame.label_delay_s > late.hold_s:
                continue
            held = Held(
                due_at=frame.captured_at_ns / 1e9 + max(0.0, frame.label_delay_s),
                seq=seqs[row],
                frame=frame,
                tensor=tensors[row],
                prediction=int(prediction[row]),
                score=float(score[row]),
                model_version=model.version,
            )
            if (
                len(self._held) >= late.hold_frames
                or self._held_bytes + held.tensor.nbytes > limit_bytes
            ):
                # Full: a new frame is not held, so the frames whose labels come soonest
                # are kept (forgetting them would waste the wait already spent).
                self._warn_once(
                    "mistakes_full",
                    f"{late.hold_frames} frames or {late.hold_mb:g} MiB already wait for "
                    "their labels: newer frames are not held (raise mistakes(hold_frames=..., "
                    "hold_mb=...))",
                )
                continue
            heapq.heappush(self._held, held)
            self._held_bytes += held.tensor.nbytes

    def _release_due(self) -> None:
        """Select the held frames whose labels are due and show a mistake (the
        ``mistakes()`` leaf), with their labels; forget the rest (the inference thread)."""
        late = self._late
        if late is None or not self._held:
            return
        now = self._wall()
        due: list[Held] = []
        while self._held and self._held[0].due_at <= now:
            due.append(heapq.heappop(self._held))
            self._held_bytes -= due[-1].tensor.nbytes
        if not due:
            return
        wrong = np.array([h.prediction != h.frame.label for h in due], dtype=np.bool_)
        seeds = SelectionContext.for_node(self.node, [h.seq for h in due]).seeds
        picked = [h for h, take in zip(due, late.decide_late(seeds, wrong), strict=True) if take]
        if not picked:
            return
        entries: list[SampleEntry] = []
        over_budget = 0
        now_s = time.monotonic()
        for held in picked:
            size = held.tensor.nbytes + _RECORD_OVERHEAD_BYTES
            if self._bucket is not None and not self._bucket.try_take(size, now_s):
                over_budget += 1
                continue
            frame = held.frame
            entries.append(
                SampleEntry(
                    pipeline=self.name,
                    model_version=held.model_version,
                    data_class=str(self.spec.data_class),
                    seq=held.seq,
                    captured_at_ns=frame.captured_at_ns,
                    tensor=held.tensor,
                    prediction=held.prediction,
                    confidence=held.score,
                    label=None if frame.label is None else int(frame.label),
                    fields=frame.fields,
                )
            )
        result = self._outbox.append_samples(entries)
        if result.appended:
            self._on_enqueued()
        w = self._window
        w.uplinked += result.appended
        w.dropped += over_budget + result.refused
        self._m_selected.inc(len(picked))
        if over_budget:
            self._m_over_budget.inc(over_budget)

    def _outcomes(self, kept: list[Arrival], prediction: np.ndarray) -> list[tuple[float, bool]]:
        """(when its label is known, whether the prediction was wrong) of each labelled
        frame, for a labels detector; frames without a label tell nothing, and neither
        does a regression's (no prediction is plainly right or wrong)."""
        if not self._drift.wants_labels or not self._task.integer_labels:
            return []
        return [
            (
                frame.captured_at_ns / 1e9 + max(0.0, frame.label_delay_s),
                int(prediction[row]) != frame.label,
            )
            for row, (frame, _) in enumerate(kept)
            if frame.label is not None
        ]

    def _scored(
        self, output: np.ndarray | ContinuumError | ValueError, kept: list[Arrival]
    ) -> TaskOutputs | None:
        """The batch's outputs read by the task's contract, checked once; None (frames
        rejected) if the model failed, broke the contract or answered with the wrong rows."""
        n = len(kept)
        try:
            if isinstance(output, Exception):
                raise output
            # Checked once here; selection takes the checked form without checking again.
            scored = self._task.read(output)
            if scored.rows != n:
                raise ValueError(f"model returned {scored.rows} rows for {n} inputs")
        except (ContinuumError, ValueError) as exc:
            for _ in kept:
                self._reject_frame("inference_error", str(exc))
            return None
        return scored

    def _select(self, scored: TaskOutputs, seqs: range) -> np.ndarray:
        """The rows the uplink policy selects (none, counted and logged, if it cannot judge)."""
        drift = self._drift
        ctx = SelectionContext.for_node(
            self.node,
            seqs,
            drift_score=drift.score,
            drifted=drift.drifted,
            recent_scores=None if self._history is None else self._history.values(),
        )
        try:
            return np.flatnonzero(self._policy.decide(scored, ctx))
        except (ContinuumError, ValueError) as exc:
            # A model whose output the policy cannot judge must not stop the loop: the
            # frames were inferred, none is uplinked, and the reason is counted and logged.
            self._warn_once("selection", f"selection failed, nothing uplinked: {exc}")
            return np.empty(0, dtype=np.int64)

    def _within_budget(
        self,
        model: ServingModel,
        kept: list[Arrival],
        tensors: list[np.ndarray],
        selected: np.ndarray,
        seqs: range,
        prediction: np.ndarray,
        confidence: np.ndarray,
    ) -> tuple[list[SampleEntry], int]:
        """The outbox entries of the selected rows the bandwidth budget allows, and how
        many it did not."""
        over_budget = 0
        entries: list[SampleEntry] = []
        now_s = time.monotonic()
        bucket = self._bucket
        for i in selected:
            frame = kept[i][0]
            tensor = tensors[i]
            if bucket is not None:
                size = tensor.nbytes + _RECORD_OVERHEAD_BYTES
                if not bucket.try_take(size, now_s):
                    if not bucket.fits(size):
                        self._warn_once(
                            "budget_too_small",
                            f"a {size}-byte sample never fits the {bucket.burst_bytes}-byte "
                            "budget burst: raise budget_kbps",
                        )
                    over_budget += 1
                    continue
            # A class label known at capture rides in the record; a regression's value, which
            # the record's integer label field cannot hold, follows as feedback (``_queue``).
            immediate = (
                frame.label is not None and frame.label_delay_s <= 0 and self._task.integer_labels
            )
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
        return entries, over_budget

    def _queue(
        self,
        kept: list[Arrival],
        selected: np.ndarray,
        seqs: range,
        entries: list[SampleEntry],
    ) -> None:
        """Add ``entries`` and the delayed labels of their frames to the group that
        ``_commit_uplink`` commits."""
        if not entries:  # most batches: nothing selected, or nothing within the budget
            return
        if not self._group:
            self._group_since = time.monotonic()
        self._group.extend(entries)
        self._group_bytes += sum(e.tensor.nbytes for e in entries)
        integer = self._task.integer_labels
        self._group_feedback.extend(
            FeedbackEntry(
                pipeline=self.name,
                seq=seqs[i],
                label=int(label) if integer else float(label),
                due_at=frame.captured_at_ns / 1e9 + max(0.0, frame.label_delay_s),
            )
            for i in selected
            if (label := (frame := kept[i][0]).label) is not None
            and (frame.label_delay_s > 0 or not integer)
        )

    def _commit_uplink(self) -> None:
        """Commit the grouped samples to the outbox, then their delayed labels (of the
        samples it kept); only then count them as uplinked and wake the uplink.

        Why waiting for the group is safe (invariant 7.1): nothing reports a grouped sample
        before this commit returns: the window's ``uplinked``/``dropped`` counts, the
        telemetry (a window is only sent after this ran, ``_emit_window``) and the uplink
        pump (``on_enqueued``, and it reads only committed rows) all come after it.  A crash
        before the commit loses samples that nothing has reported, as a crash a moment
        before their batch's selection would; their seqs are never reused.  The outbox's
        own durability settings are untouched.  Groups only form while frames are queued
        and last at most ``_GROUP_COMMIT_S``; the window's end, a swap and the loop's end
        commit what is pending.
        """
        entries = self._group
        if not entries:
            return
        feedback = self._group_feedback
        self._group, self._group_feedback, self._group_bytes = [], [], 0
        result = self._outbox.append_samples(entries)
        if feedback:
            stored = set(result.kept)
            feedback = [f for f in feedback if f.seq in stored]
            self._outbox.append_feedback(feedback)
        w = self._window
        w.uplinked += result.appended
        w.dropped += result.refused
        if result.appended or feedback:
            self._on_enqueued()

    def _commit_after_failure(self) -> None:
        """Commit what is grouped when the loop stops on an error: the samples of the
        batches finished before it were decided and stay so (best effort: the error may be
        the outbox's own)."""
        try:
            self._commit_uplink()
        except Exception:
            log.exception("pipeline %s: committing the selected samples failed", self.name)

    def _maybe_emit(self) -> None:
        """After each batch: commit a group once no frame is queued (frames that were
        queued when it was kept waiting may all have been rejected), then the window."""
        if self._group and not self._frames:
            self._commit_uplink()
        super()._maybe_emit()

    def _emit_window(self, *, final: bool) -> None:
        self._commit_uplink()  # its samples count in the window they were selected in
        super()._emit_window(final=final)

    def _count(
        self,
        kept: list[Arrival],
        scored: TaskOutputs,
        latency_ms: list[float],
        selected: int,
        over_budget: int,
    ) -> None:
        """Add the batch to the telemetry window and the metrics."""
        n = len(kept)
        w = self._window
        rows = [row for row, item in enumerate(kept) if item[0].label is not None]
        if rows:
            labels = np.array([kept[row][0].label for row in rows], dtype=np.float64)
            predicted = scored.prediction[rows]
            w.labelled += len(rows)
            if scored.kind == "regression":
                errors = predicted - labels
                w.abs_error_sum += float(np.abs(errors).sum())
                w.squared_error_sum += float(np.square(errors).sum())
            else:
                w.correct += int(np.count_nonzero(predicted == labels))
            if scored.threshold is not None:
                positive, flagged = labels == 1.0, predicted == 1.0
                w.labelled_positive += int(np.count_nonzero(positive))
                w.predicted_positive += int(np.count_nonzero(flagged))
                w.true_positive += int(np.count_nonzero(positive & flagged))
        w.frames += n
        w.dropped += over_budget
        confidence = scored.confidence
        if confidence is not None:
            w.confident += n
            w.confidence_sum += float(confidence.sum())
        if len(w.latencies_ms) < _MAX_LATENCIES_PER_WINDOW:
            w.latencies_ms.extend(latency_ms)

        self._m_frames.inc(n)
        self._m_batch.observe(n)
        observe_many(self._m_latency, [value / 1000.0 for value in latency_ms])
        if selected:
            self._m_selected.inc(selected)
        if over_budget:
            self._m_over_budget.inc(over_budget)
