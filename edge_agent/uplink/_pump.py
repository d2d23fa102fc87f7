"""The uplink's protocol, free of threads: what goes on the wire, in which order, and what
each answer from the broker or from ingest does to the outbox.

``UplinkPump`` reads the oldest records from the durable outbox, encodes them with the wire
codec and publishes them at QoS 1 while the link's in-flight window has room; a PUBACK
deletes the records (or, with receipts, leaves them to ingest's receipt), anything else
puts them back and holds that kind of record back for a jittered, growing while.  It also
publishes the retained node status (and its heartbeat), the retained reported state and
telemetry, applies ingest's receipts, and keeps the outbox within its age bound.

Every method runs on the caller's thread (``Uplink``'s pump thread); the only thing that
crosses threads is the PUBACK, which the link reports on its network thread: the pump
hands it to ``handover``, and the caller brings it back to ``settle`` on its own thread.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from continuum._retry import Backoff, FailureLog
from continuum.errors import NotReadyError, ProtocolError
from continuum.spec import DataClass
from continuum.wire import topics
from continuum.wire.codec import (
    FeedbackBatch,
    SampleBatch,
    SampleRecord,
    encode_feedback,
    encode_samples,
)
from continuum.wire.messages import ReportedState, StoredReceipt, Telemetry
from edge_agent.link import PublishCallback, PublishOutcome
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import Outbox, PendingFeedback, PendingSamples, RefusedRange

log = logging.getLogger(__name__)

Kind = Literal["samples", "feedback", "telemetry", "status", "reported"]

_FEEDBACK_PER_MESSAGE = 4096
#: Runs of refused sample ids named in the one log line per refusal.
_REFUSED_IDS_LOGGED = 20
_EXPIRE_EVERY_S = 30.0
_RECLAIM_EVERY_S = 300.0
_GAUGES_EVERY_S = 2.0
#: How long a kind of record is held back after the broker routed one nowhere: about
#: ``_HOLD_MIN_S`` the first time, about twice as long each time after, at most
#: ``_HOLD_MAX_S``; a delivery ends it.
_HOLD_MIN_S = 1.0
_HOLD_MAX_S = 30.0


class Publisher(Protocol):
    """What the pump needs from the MQTT link (``MqttLink``)."""

    @property
    def connected(self) -> bool:
        """Whether the session is up."""
        ...

    @property
    def inflight(self) -> int:
        """QoS 1 publishes still waiting for their PUBACK."""
        ...

    def free_slots(self) -> int:
        """Publishes the in-flight window still takes."""
        ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        on_done: PublishCallback | None = None,
        force: bool = False,
    ) -> int:
        """Publish; ``on_done`` gets the broker's answer (see ``MqttLink.publish``)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """The broker's answer to one publish of ``kind``, for the records ``keys`` it carried."""

    kind: Kind
    keys: tuple[int, ...]
    outcome: PublishOutcome


class UplinkPump:
    """Drive the uplink's protocol on the caller's thread; see the module docstring.

    Args:
        node, tenant: this node.
        outbox: the durable outbox.
        publisher: the MQTT link.
        metrics: the agent's metrics.
        status_payload: builds the current retained ``NodeStatus`` payload (online=True).
        heartbeat_interval_s: how often the status is re-published.
        max_records, max_bytes: bounds of one samples message.
        handover: receives each ``Ack`` on the link's network thread; the caller passes it
            back to ``settle`` on its own thread.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        node: str,
        tenant: str,
        outbox: Outbox,
        publisher: Publisher,
        metrics: AgentMetrics,
        status_payload: Callable[[], bytes],
        heartbeat_interval_s: float,
        max_records: int,
        max_bytes: int,
        handover: Callable[[Ack], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.tenant = tenant
        self._outbox = outbox
        self._link = publisher
        self._metrics = metrics
        self._status_payload = status_payload
        self._heartbeat_s = heartbeat_interval_s
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._handover = handover
        self._clock = clock
        self._status_topic = topics.node_status(tenant, node)
        self._reported_topic = topics.node_reported(tenant, node)
        self._status_due = 0.0  # when the status is next published
        self._hold_until: dict[Kind, float] = {}
        self._holds: dict[Kind, Backoff] = {}
        self._nobody = FailureLog("uplink delivery (no subscriber on the broker)", log)
        now = clock()
        self._next_expire = now + _EXPIRE_EVERY_S
        self._next_reclaim = now + _RECLAIM_EVERY_S
        self._next_gauges = 0.0

    # -- what goes out ---------------------------------------------------------------------

    def status_now(self) -> None:
        """Publish the status at the next ``send_status`` (the link just connected)."""
        self._status_due = 0.0

    def send_status(self) -> None:
        """Publish the retained status if its heartbeat is due."""
        now = self._clock()
        if now >= self._status_due:
            self._link.publish(self._status_topic, self._status_payload(), retain=True, force=True)
            self._metrics.published.labels("status").inc()
            self._status_due = now + self._heartbeat_s

    def send_reported(self, state: ReportedState) -> None:
        """Publish ``state`` retained.

        Raises:
            NotReadyError: the link is down; publish it again later.
        """
        self._link.publish(self._reported_topic, state.to_payload(), retain=True, force=True)
        self._metrics.published.labels("reported").inc()

    def send_telemetry(self, message: Telemetry) -> None:
        """Publish one telemetry window (an answer other than a PUBACK only counts).

        Raises:
            NotReadyError: the link is down or its window is full; send it again later.
        """
        topic = topics.telemetry(self.tenant, message.pipeline, self.node)
        self._link.publish(topic, message.to_payload(), on_done=self._on_done("telemetry", ()))
        self._metrics.published.labels("telemetry").inc()

    def send_feedback(self) -> None:
        """Publish due delayed labels while the link's window has room."""
        while self._link.free_slots() > 0 and not self.held("feedback"):
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

    def send_samples(self) -> None:
        """Publish the oldest samples, a batch per message, while the window has room."""
        while self._link.free_slots() > 0 and not self.held("samples"):
            pending = self._outbox.next_samples(self._max_records, self._max_bytes)
            if pending is None:
                return
            try:
                payload = encode_samples(self._batch(pending))
            except (ProtocolError, ValueError) as exc:
                self._unsendable("samples", pending, exc)
                continue
            self._publish_records(
                "samples",
                topics.samples(self.tenant, pending.pipeline, self.node),
                payload,
                pending.seqs,
            )

    def held(self, kind: Kind) -> bool:
        """Whether records of ``kind`` are held back (the broker routed the last nowhere)."""
        return self._clock() < self._hold_until.get(kind, 0.0)

    def _batch(self, pending: PendingSamples) -> SampleBatch:
        return SampleBatch(
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

    def _on_done(self, kind: Kind, keys: tuple[int, ...]) -> PublishCallback:
        def done(outcome: PublishOutcome) -> None:
            # Network thread: hand over to the caller's thread, which owns the outbox writes.
            self._handover(Ack(kind=kind, keys=keys, outcome=outcome))

        return done

    # -- what comes back -------------------------------------------------------------------

    def settle(self, ack: Ack) -> None:
        """Apply the broker's answer: delivered records are acknowledged; records routed
        nowhere (no ingest subscribed) or refused are released and their kind held back."""
        kind, outcome = ack.kind, ack.outcome
        if outcome.delivered:
            self._metrics.acked.labels(kind).inc()
            self._metrics.uplink_bytes.labels(kind).inc(outcome.payload_bytes)
            if kind in ("samples", "feedback"):
                self._acknowledge(kind, ack.keys)
                hold = self._holds.get(kind)
                if hold is not None:
                    hold.reset()
                self._nobody.recovered()
            return
        self._metrics.publish_failed.labels(kind, outcome.reason).inc()
        if kind not in ("samples", "feedback"):
            return  # telemetry nobody listens to is not worth keeping
        # The broker took the message but routed it nowhere (no ingest subscribed) or
        # refused it: keep the records and try again later, backing off.
        self._release(kind, ack.keys)
        hold = self._holds.setdefault(kind, Backoff(_HOLD_MIN_S, _HOLD_MAX_S))
        self._hold_until[kind] = self._clock() + hold.next_delay()
        self._nobody.failed(f"{kind}: broker answered {outcome.reason}")

    def apply_receipt(self, receipt: StoredReceipt) -> None:
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

    # -- upkeep ----------------------------------------------------------------------------

    def maintain(self) -> None:
        """Expire old records, reclaim pages and update the outbox gauges, each when due."""
        now = self._clock()
        if now >= self._next_expire:
            self._next_expire = now + _EXPIRE_EVERY_S
            self._outbox.expire()
        if now >= self._next_reclaim:
            self._next_reclaim = now + _RECLAIM_EVERY_S
            self._outbox.reclaim()
        if now >= self._next_gauges:
            self._next_gauges = now + _GAUGES_EVERY_S
            self._update_gauges()

    def outbox_idle(self) -> bool:
        """Whether the outbox holds nothing to send or to be confirmed (labels not yet due
        aside)."""
        stats = self._outbox.stats()
        # Sent labels awaiting a receipt are due again only later, but are not done with.
        unconfirmed = sum(p.feedback_awaiting_receipt for p in stats.pipelines.values())
        due = self._outbox.next_feedback_due()
        return stats.samples == 0 and unconfirmed == 0 and (due is None or due > time.time())

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
