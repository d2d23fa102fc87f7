"""The uplink path: the residency gate in front of the outbox, and the pump behind it.

``ResidencyGate`` applies each pipeline's uplink plan to selected samples before the outbox
writes them, so data that may not leave the node never touches its disk.  ``Uplink`` is the
pump: one thread reads the oldest records from the durable outbox, encodes them with the wire
codec and publishes them at QoS 1 while the link's in-flight window has room; a PUBACK
deletes the records (or, with receipts, leaves them to ingest's receipt), anything else puts
them back for a later attempt.  The same thread publishes telemetry windows, the retained
node status (and its heartbeat) and the retained reported state, and keeps the outbox
within its age bound.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from continuum.errors import NotReadyError, ProtocolError
from continuum.residency import UplinkPlan
from continuum.spec import DataClass
from continuum.wire import topics
from continuum.wire.codec import (
    MAX_FIELDS,
    FeedbackBatch,
    SampleBatch,
    SampleRecord,
    encode_feedback,
    encode_samples,
    field_value_bytes,
)
from continuum.wire.codec import FieldValue as WireValue
from continuum.wire.messages import ReportedState, StoredReceipt, Telemetry
from edge_agent.link import FailureLog, MqttLink, PublishOutcome
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import (
    Outbox,
    PendingFeedback,
    PendingSamples,
    RefusedRange,
    SampleEntry,
)

__all__ = ["ResidencyGate", "Uplink"]

log = logging.getLogger(__name__)

Kind = Literal["samples", "feedback", "telemetry", "status", "reported"]
_T = TypeVar("_T")

_TELEMETRY_BACKLOG = 10_000
#: Receipts waiting for the pump; past this the oldest is dropped (it only costs a resend).
_RECEIPT_BACKLOG = 10_000
_FEEDBACK_PER_MESSAGE = 4096
#: Runs of refused sample ids named in the one log line per refusal.
_REFUSED_IDS_LOGGED = 20
_EXPIRE_EVERY_S = 30.0
_RECLAIM_EVERY_S = 300.0
_GAUGES_EVERY_S = 2.0
_HOLD_MIN_S = 1.0
_HOLD_MAX_S = 30.0


class ResidencyGate:
    """Apply each pipeline's uplink plan to selected samples before the outbox writes them.

    A pipeline whose plan keeps samples at the edge queues none; otherwise the plan's
    dropped fields are removed and its hashed fields pseudonymised with the tenant's salt.
    Fields the pipeline does not declare are of the pipeline's own class and pass as they
    are.  Numbers are stringified (the wire carries text and bytes); a field the wire cannot
    carry (over ``MAX_FIELD_BYTES``, or past ``MAX_FIELDS``) is dropped and counted.

    Args:
        plans: pipeline -> its plan, or None where no policy applies (fields pass).
        salt: the tenant's field-hashing salt (needed when a plan hashes).
        metrics: the agent's metrics (kept-at-edge samples, dropped and hashed fields).
    """

    def __init__(
        self,
        plans: Mapping[str, UplinkPlan | None],
        *,
        salt: bytes | None,
        metrics: AgentMetrics,
    ) -> None:
        self._plans = dict(plans)
        self._salt = salt or b""
        self._metrics = metrics
        self._warned: set[tuple[str, str]] = set()
        self._warn_lock = threading.Lock()

    def admit(self, entries: Sequence[SampleEntry]) -> list[SampleEntry]:
        """Return ``entries`` as they may be queued: plan applied, kept-at-edge ones left out."""
        out: list[SampleEntry] = []
        kept: dict[str, int] = {}
        for entry in entries:
            plan = self._plans.get(entry.pipeline)
            if plan is not None and plan.keep_at_edge:
                kept[entry.pipeline] = kept.get(entry.pipeline, 0) + 1
                continue
            if not entry.fields:
                out.append(entry)
                continue
            out.append(dataclasses.replace(entry, fields=self._fields(entry, plan)))
        for pipeline, count in kept.items():
            self._metrics.kept_at_edge.labels(pipeline).inc(count)
        return out

    def _fields(self, entry: SampleEntry, plan: UplinkPlan | None) -> dict[str, WireValue]:
        pipeline = entry.pipeline
        fields: Mapping[str, object] = entry.fields
        if plan is not None and (plan.dropped or plan.hashed):
            dropped = sum(1 for name in plan.dropped if name in fields)
            hashed = sum(1 for name in plan.hashed if name in fields)
            fields = plan.apply(fields, salt=self._salt)
            if dropped:
                self._metrics.fields_dropped.labels(pipeline, "residency").inc(dropped)
            if hashed:
                self._metrics.fields_hashed.labels(pipeline).inc(hashed)
        out: dict[str, WireValue] = {}
        for name, value in fields.items():
            wire = value if isinstance(value, str | bytes) else str(value)
            problem = _unsendable_field(name, wire, len(out))
            if problem is not None:
                # One such field would make every batch it travels in unsendable.
                reason, why = problem
                self._metrics.fields_dropped.labels(pipeline, reason).inc()
                self._warn_once(pipeline, name, f"field {name!r} dropped: {why}")
                continue
            out[name] = wire
        return out

    def _warn_once(self, pipeline: str, name: str, message: str) -> None:
        with self._warn_lock:
            if (pipeline, name) in self._warned:
                return
            self._warned.add((pipeline, name))
        log.warning("pipeline %s: %s (further ones are only counted)", pipeline, message)


def _unsendable_field(name: str, value: WireValue, index: int) -> tuple[str, str] | None:
    """Return (reason, why) the wire cannot carry ``value`` as field number ``index``."""
    if index >= MAX_FIELDS:
        return "too_many", f"a sample carries at most MAX_FIELDS ({MAX_FIELDS}) fields"
    try:
        field_value_bytes(name, value)
    except ProtocolError as exc:
        # The value is str or bytes here, so a bad value is text that is not valid UTF-8.
        return ("too_large" if exc.reason == "too_large" else "bad_text"), str(exc)
    return None


@dataclass(frozen=True, slots=True)
class _Ack:
    kind: Kind
    keys: tuple[int, ...]
    outcome: PublishOutcome


class Uplink:
    """Drain the outbox and the telemetry backlog over ``link``; see the module docstring.

    Args:
        node, tenant: this node.
        outbox: the durable outbox.
        link: the MQTT link.
        metrics: the agent's metrics.
        status_payload: builds the current retained ``NodeStatus`` payload (online=True).
        heartbeat_interval_s: how often the status is re-published.
        max_records, max_bytes: bounds of one samples message.
    """

    def __init__(
        self,
        *,
        node: str,
        tenant: str,
        outbox: Outbox,
        link: MqttLink,
        metrics: AgentMetrics,
        status_payload: Callable[[], bytes],
        heartbeat_interval_s: float,
        max_records: int,
        max_bytes: int,
    ) -> None:
        self.node = node
        self.tenant = tenant
        self._outbox = outbox
        self._link = link
        self._metrics = metrics
        self._status_payload = status_payload
        self._heartbeat_s = heartbeat_interval_s
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._status_topic = topics.node_status(tenant, node)
        self._reported_topic = topics.node_reported(tenant, node)
        self._wake = threading.Condition()
        self._acks: collections.deque[_Ack] = collections.deque()
        self._receipts: collections.deque[StoredReceipt] = collections.deque()
        self._telemetry: collections.deque[Telemetry] = collections.deque()
        self._reported: ReportedState | None = None
        self._reported_dirty = False
        self._status_due = 0.0  # monotonic time the status is next published
        self._hold_until: dict[Kind, float] = {}
        self._hold_s: dict[Kind, float] = {}
        self._nobody = FailureLog("uplink delivery (no subscriber on the broker)", log)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent_total = 0

    # -- inputs (any thread) ---------------------------------------------------------------

    def wake(self) -> None:
        """Tell the pump there may be something to send."""
        with self._wake:
            self._wake.notify()

    def connected(self) -> None:
        """The link (re)connected: publish status and reported state again first."""
        with self._wake:
            self._status_due = 0.0
            self._reported_dirty = self._reported is not None
            self._wake.notify()

    def queue_telemetry(self, message: Telemetry) -> None:
        """Send ``message`` when the link allows (kept in memory, oldest dropped past a bound)."""
        with self._wake:
            if len(self._telemetry) >= _TELEMETRY_BACKLOG:
                lost = self._telemetry.popleft()
                self._metrics.dropped.labels(lost.pipeline, "telemetry_backlog").inc()
            self._telemetry.append(message)
            self._wake.notify()

    def queue_receipt(self, receipt: StoredReceipt) -> None:
        """Apply ingest's ``receipt`` to the outbox on the pump thread.

        Receipts arrive on the MQTT network thread, which must not wait on the outbox's
        disk (it also reads PUBACKs); the pump, which settles those, applies them after.
        """
        with self._wake:
            if len(self._receipts) >= _RECEIPT_BACKLOG:
                self._receipts.popleft()  # its records are sent again and confirmed then
                self._metrics.rejected_messages.labels("receipt_backlog").inc()
            self._receipts.append(receipt)
            self._wake.notify()

    def set_reported(self, state: ReportedState) -> None:
        """Publish ``state`` (retained) as soon as possible; only the latest one counts."""
        with self._wake:
            self._reported = state
            self._reported_dirty = True
            self._wake.notify()

    @property
    def telemetry_backlog(self) -> int:
        """Telemetry messages waiting for the link."""
        with self._wake:
            return len(self._telemetry)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the pump thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"ctm-uplink-{self.tenant}", daemon=True
            )
            self._thread.start()

    def stop(self, flush_timeout_s: float) -> bool:
        """Keep sending for up to ``flush_timeout_s`` until nothing is pending, then stop.

        Returns whether everything was sent and acknowledged; what was not stays in the
        outbox (telemetry in memory is lost).
        """
        deadline = time.monotonic() + flush_timeout_s
        flushed = False
        while time.monotonic() < deadline:
            if self._idle():
                flushed = True
                break
            if not self._link.connected:
                break
            self.wake()
            time.sleep(0.02)
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(max(0.5, deadline - time.monotonic()))
            self._thread = None
        self._drain_acks()
        return flushed

    def _idle(self) -> bool:
        with self._wake:
            busy = bool(self._telemetry or self._acks or self._receipts or self._reported_dirty)
        if busy or self._link.inflight:
            return False
        stats = self._outbox.stats()
        # Sent labels awaiting a receipt are due again only later, but are not done with.
        unconfirmed = sum(p.feedback_awaiting_receipt for p in stats.pipelines.values())
        due = self._outbox.next_feedback_due()
        return stats.samples == 0 and unconfirmed == 0 and (due is None or due > time.time())

    # -- pump thread -----------------------------------------------------------------------

    def _run(self) -> None:
        next_expire = time.monotonic() + _EXPIRE_EVERY_S
        next_reclaim = time.monotonic() + _RECLAIM_EVERY_S
        next_gauges = 0.0
        while not self._stop.is_set():
            try:
                self._drain_acks()
                if self._link.connected:
                    self._send_state()
                    self._send_telemetry()
                    self._send_feedback()
                    self._send_samples()
                now = time.monotonic()
                if now >= next_expire:
                    next_expire = now + _EXPIRE_EVERY_S
                    self._outbox.expire()
                if now >= next_reclaim:
                    next_reclaim = now + _RECLAIM_EVERY_S
                    self._outbox.reclaim()
                if now >= next_gauges:
                    next_gauges = now + _GAUGES_EVERY_S
                    self._update_gauges()
            except NotReadyError:
                pass  # the link dropped or the outbox closed mid-way; the loop retries
            except Exception:
                log.exception("uplink pump iteration failed")
            with self._wake:
                if not self._acks and not self._receipts and not self._stop.is_set():
                    self._wake.wait(self._sleep_s())

    def _sleep_s(self) -> float:
        timeout = 0.5
        due = None
        try:
            due = self._outbox.next_feedback_due()
        except NotReadyError:
            return timeout
        if due is not None:
            timeout = min(timeout, max(0.01, due - time.time()))
        return timeout

    def _held(self, kind: Kind) -> bool:
        return time.monotonic() < self._hold_until.get(kind, 0.0)

    def _send_state(self) -> None:
        now = time.monotonic()
        if now >= self._status_due:
            self._link.publish(self._status_topic, self._status_payload(), retain=True, force=True)
            self._metrics.published.labels("status").inc()
            self._status_due = now + self._heartbeat_s
        with self._wake:
            state = self._reported if self._reported_dirty else None
            self._reported_dirty = False
        if state is not None:
            try:
                self._link.publish(
                    self._reported_topic, state.to_payload(), retain=True, force=True
                )
            except NotReadyError:
                with self._wake:
                    self._reported_dirty = True
                raise
            self._metrics.published.labels("reported").inc()

    def _send_telemetry(self) -> None:
        while self._link.free_slots() > 0:
            with self._wake:
                if not self._telemetry:
                    return
                message = self._telemetry[0]
            topic = topics.telemetry(self.tenant, message.pipeline, self.node)
            self._link.publish(topic, message.to_payload(), on_done=self._on_done("telemetry", ()))
            with self._wake:
                if self._telemetry and self._telemetry[0] is message:
                    self._telemetry.popleft()
            self._metrics.published.labels("telemetry").inc()

    def _send_feedback(self) -> None:
        while self._link.free_slots() > 0 and not self._held("feedback"):
            pending = self._outbox.next_feedback(_FEEDBACK_PER_MESSAGE)
            if pending is None:
                return
            try:
                payload = encode_feedback(FeedbackBatch(pending.pipeline, self.node, pending.items))
            except ProtocolError as exc:
                self._unsendable("feedback", pending, exc)
                continue
            self._publish_records(
                "feedback",
                topics.feedback(self.tenant, pending.pipeline, self.node),
                payload,
                pending.ids,
            )

    def _send_samples(self) -> None:
        while self._link.free_slots() > 0 and not self._held("samples"):
            pending = self._outbox.next_samples(self._max_records, self._max_bytes)
            if pending is None:
                return
            try:
                batch = SampleBatch(
                    pipeline=pending.pipeline,
                    node=self.node,
                    model_version=pending.model_version,
                    data_class=DataClass(pending.data_class),
                    records=tuple(
                        SampleRecord(
                            seq=r.seq,
                            captured_at_ns=r.captured_at_ns,
                            tensor=r.tensor,
                            prediction=r.prediction,
                            confidence=r.confidence,
                            label=r.label,
                            fields=r.fields,
                        )
                        for r in pending.records
                    ),
                )
                payload = encode_samples(batch)
            except (ProtocolError, ValueError) as exc:
                self._unsendable("samples", pending, exc)
                continue
            self._publish_records(
                "samples",
                topics.samples(self.tenant, pending.pipeline, self.node),
                payload,
                pending.seqs,
            )

    def _publish_records(
        self, kind: Kind, topic: str, payload: bytes, keys: tuple[int, ...]
    ) -> None:
        try:
            self._link.publish(topic, payload, on_done=self._on_done(kind, keys))
        except NotReadyError:
            self._release(kind, keys)
            raise
        self._metrics.published.labels(kind).inc()

    def _unsendable(
        self, kind: Kind, pending: PendingSamples | PendingFeedback, exc: Exception
    ) -> None:
        # Records the codec refuses can never be sent; keeping them would block the queue
        # (and no receipt would ever come for them).
        log.error("dropping %s the wire format refuses: %s", kind, exc)
        if isinstance(pending, PendingSamples):
            self._outbox.discard_samples(pending.seqs)
            count = len(pending.seqs)
        else:
            self._outbox.discard_feedback(pending.ids)
            count = len(pending.ids)
        self._metrics.dropped.labels(pending.pipeline, "unencodable").inc(count)

    def _on_done(self, kind: Kind, keys: tuple[int, ...]) -> Callable[[PublishOutcome], None]:
        def done(outcome: PublishOutcome) -> None:
            # Network thread: hand over to the pump, which owns the outbox writes.
            with self._wake:
                self._acks.append(_Ack(kind, keys, outcome))
                self._wake.notify()

        return done

    def _drain_acks(self) -> None:
        """Settle the PUBACKs, then apply the receipts, that the network thread handed over."""
        while (ack := self._take(self._acks)) is not None:
            self._settle(ack)
        while (receipt := self._take(self._receipts)) is not None:
            self._confirm(receipt)

    def _take(self, handed_over: collections.deque[_T]) -> _T | None:
        """Pop the oldest of what the network thread handed over, if any (under the lock)."""
        with self._wake:
            return handed_over.popleft() if handed_over else None

    def _confirm(self, receipt: StoredReceipt) -> None:
        """Forget the samples ``receipt`` says are stored or refused for good (counting and
        logging those refused) and the delayed labels it says are recorded."""
        samples = self._outbox.confirm_samples(receipt.seqs)
        labels = self._outbox.confirm_feedback(receipt.labels)
        for refusal in receipt.refused:
            ended = self._outbox.refuse_samples(refusal.seqs, refusal.reason)
            if ended:
                self._note_refused(refusal.reason, ended)
        self._metrics.receipts.inc()
        if samples:
            self._metrics.confirmed.inc(samples)
        if labels:
            self._metrics.labels_confirmed.inc(labels)

    def _note_refused(self, reason: str, ended: Sequence[RefusedRange]) -> None:
        """Count samples ingest refused for good, and log their ids once per refusal."""
        counts: collections.Counter[str] = collections.Counter()
        for run in ended:
            counts[run.pipeline] += run.count
        for pipeline, count in counts.items():
            self._metrics.samples_refused.labels(pipeline, reason).inc(count)
        ids = [
            f"{self.node}:{r.first_seq}"
            if r.first_seq == r.last_seq
            else f"{self.node}:{r.first_seq}-{r.last_seq}"
            for r in ended[:_REFUSED_IDS_LOGGED]
        ]
        more = len(ended) - len(ids)
        log.warning(
            "ingest refused %d sample(s) of %s for good (%s); removed from the outbox: %s%s",
            sum(counts.values()),
            ", ".join(sorted(counts)),
            reason,
            ", ".join(ids),
            f" and {more} more run(s) (Outbox.refused lists them)" if more else "",
        )

    def _settle(self, ack: _Ack) -> None:
        kind, outcome = ack.kind, ack.outcome
        if outcome.delivered:
            self._metrics.acked.labels(kind).inc()
            self._metrics.uplink_bytes.labels(kind).inc(outcome.payload_bytes)
            if kind in ("samples", "feedback"):
                self._acknowledge(kind, ack.keys)
                self._hold_s.pop(kind, None)
                self._nobody.recovered()
            return
        self._metrics.publish_failed.labels(kind, outcome.reason).inc()
        if kind not in ("samples", "feedback"):
            return  # telemetry nobody listens to is not worth keeping
        # The broker took the message but routed it nowhere (no ingest subscribed) or
        # refused it: keep the records and try again later, backing off.
        self._release(kind, ack.keys)
        hold = min(_HOLD_MAX_S, self._hold_s.get(kind, _HOLD_MIN_S / 2) * 2)
        self._hold_s[kind] = hold
        self._hold_until[kind] = time.monotonic() + hold
        self._nobody.failed(f"{kind}: broker answered {outcome.reason}")

    def _acknowledge(self, kind: Kind, keys: tuple[int, ...]) -> None:
        if kind == "samples":
            self._outbox.ack_samples(keys)
        else:
            self._outbox.ack_feedback(keys)

    def _release(self, kind: Kind, keys: tuple[int, ...]) -> None:
        if kind == "samples":
            self._outbox.release_samples(keys)
        elif kind == "feedback":
            self._outbox.release_feedback(keys)

    def _update_gauges(self) -> None:
        m = self._metrics
        for pipeline, part in self._outbox.stats().pipelines.items():
            m.outbox_depth.labels(pipeline, "samples").set(part.samples)
            m.outbox_depth.labels(pipeline, "feedback").set(part.feedback)
            m.outbox_awaiting_receipt.labels(pipeline, "samples").set(part.samples_awaiting_receipt)
            m.outbox_awaiting_receipt.labels(pipeline, "feedback").set(
                part.feedback_awaiting_receipt
            )
            m.outbox_bytes.labels(pipeline).set(part.bytes)
            m.outbox_max_bytes.labels(pipeline).set(part.max_bytes)
            m.outbox_oldest_age.labels(pipeline).set(part.oldest_age_s)
        self._metrics.connected.set(1.0 if self._link.connected else 0.0)
