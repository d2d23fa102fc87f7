"""``IngestWorker``: the thin MQTT runner around an ``IngestService``.

A persistent MQTT 5 session on a shared subscription, each message acknowledged only after
its durable write; a deferred message (its node not known yet) is parked unacknowledged and
offered again; each node gets receipts naming what is stored or refused for good.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from cloud_head._mqtt import BrokerConnection, reason_code_failed
from cloud_head.ingest._outcome import Outcome
from cloud_head.ingest._service import IngestService
from continuum._retry import Backoff, FailureLog
from continuum.wire import topics
from continuum.wire.messages import (
    MAX_RECEIPT_RANGES,
    MAX_RECEIPT_REASONS,
    RefusedSeqs,
    StoredReceipt,
    merge_seq_ranges,
)
from continuum.wire.mqtt import BrokerSettings, connect, make_client

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

_log = logging.getLogger("cloud_head.ingest")

#: How soon parked (deferred) messages are offered again when nothing else arrives.
_PARK_RETRY_S: Final = 0.5
#: Most messages parked unacknowledged at once.  Each holds one of the broker's in-flight
#: slots for this session (mosquitto's max_inflight_messages: 20 by default, as in the
#: embedded broker; 100 in deploy/mosquitto), and with all of them held the broker delivers
#: nothing more: past this, a deferred message is held instead (acknowledged without a
#: receipt; its node sends it again), so unknown nodes cannot stall every other node.
_MAX_PARKED: Final = 10


class _Stop:
    """Queue sentinel that ends the processing thread."""


_Message = tuple[str, bytes, int, int]  # topic, payload, mid, qos


@dataclass(slots=True)
class _Receipt:
    """The seq ranges of one node's samples and of its labels that one processed group is
    done with: the ``StoredReceipt`` fields ``seqs``, ``labels`` and ``refused`` (reason ->
    seq ranges) before merging."""

    seqs: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    labels: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    refused: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)


class IngestWorker:
    """Run an ``IngestService`` on MQTT: shared subscription, persistent session, late acks.

    Messages are handled on a named processing thread in groups (whatever has arrived, up to
    ``max_group``) so one store write covers many messages; each is acknowledged only after
    its group was written. A failed write is retried with capped exponential backoff, never
    acknowledged early; a deferred message (its node not known yet) is parked, still
    unacknowledged, and offered again with the next group or after ``_PARK_RETRY_S``, so
    it holds up nothing else. On ``stop`` unacknowledged messages stay with the broker,
    which redelivers them to the session when it comes back.
    """

    def __init__(
        self,
        service: IngestService,
        broker: BrokerSettings,
        *,
        client_id: str | None = None,
        share_group: str | None = None,
        max_group: int = 1024,
        retry_max_s: float = 30.0,
    ) -> None:
        """Prepare a worker; give each replica its own stable ``client_id`` (its session).

        ``share_group`` left out: with a password (an ``ingest.N@TENANT`` identity) the group
        named by that secret (``cloud_head.tenants.ingest_share_group``), which no other
        identity can join to take a share of the samples; without one, ``ingest``.
        """
        if share_group is None:
            from cloud_head._tenant_identities import ingest_share_group

            share_group = (
                topics.INGEST_SHARE_GROUP
                if not broker.password
                else ingest_share_group(broker.password)
            )
        self._service = service
        self._broker = broker
        self._client_id = client_id or f"ctm-ingest-{service.tenant}"
        self._filters = [
            topics.shared(topics.pipeline_filter(service.tenant, "samples"), share_group),
            topics.shared(topics.pipeline_filter(service.tenant, "feedback"), share_group),
        ]
        self._max_group = max_group
        self._retry_max_s = retry_max_s
        # SimpleQueue: a put and a get without Queue's condition variables and task
        # accounting, once per message on the network thread and again on this one.
        self._queue: queue.SimpleQueue[_Message | _Stop] = queue.SimpleQueue()
        self._stopping = threading.Event()
        # connected, disconnected_since, disconnects; the loss and recovery logged once each.
        self._link = BrokerConnection(_log, f"ingest {self._client_id}")
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None
        self._counts: Counter[str] = Counter()
        self._parked: list[_Message] = []
        self._failures = FailureLog("ingest writes", _log)

    @property
    def connected(self) -> bool:
        """Whether the MQTT session is up and subscribed."""
        return self._link.connected

    def start(self) -> None:
        """Connect, subscribe and start processing; raises NotReadyError if the broker is down.

        Starting also freezes the garbage collector's view of every object alive now
        (``gc.freeze``), for the whole process: a full collection otherwise walks every
        object the process ever imported (pyarrow, numpy, pydantic models, Ray), and each
        one stops both the MQTT network thread and the processing thread for 60-300 ms at
        a time on this benchmark's machines, a pause every in-flight sample waits out.
        What ingest allocates per message is freed by reference counting or collected
        among the young objects as before; frozen objects are never collected, so a
        reference cycle alive at start that becomes garbage later stays allocated: a
        bounded cost, once per start, against a pause that recurs while samples flow.
        """
        if self._client is not None:
            raise RuntimeError("the ingest worker is already running")
        gc.freeze()
        self._stopping.clear()
        client = make_client(self._client_id, self._broker, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._thread = threading.Thread(
            target=self._process_loop, name=f"ingest-{self._service.tenant}", daemon=True
        )
        self._thread.start()
        self._client = client  # before connecting: the processor acks through it
        try:
            connect(client, self._broker)
        except BaseException:
            self._client = None
            self._queue.put(_Stop())
            self._thread.join()
            self._thread = None
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the group in hand, acknowledge it and disconnect; the session persists."""
        self._stopping.set()
        self._queue.put(_Stop())
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                _log.error("ingest processing thread did not stop within %.1f s", timeout_s)
            self._thread = None
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._link.down("stopped", expected=True)
        # Messages queued after the stop are unacknowledged; the broker redelivers them.
        while not self._queue.empty():
            self._queue.get_nowait()

    def stats(self) -> dict[str, Any]:
        """Return the service counters plus the connection state and queue depth."""
        snapshot = self._service.stats()
        snapshot.update(self._link.stats())  # connected, disconnected_since, disconnects
        snapshot["queued"] = self._queue.qsize()
        snapshot["acked"] = self._counts["acked"]
        snapshot["retries"] = self._counts["retries"]
        snapshot["unparked"] = self._counts["unparked"]
        return snapshot

    def __enter__(self) -> IngestWorker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code_failed(reason_code):
            _log.warning("broker refused the ingest session: %s", reason_code)
            return
        client.subscribe([(f, 1) for f in self._filters])
        _log.info(
            "ingest %s connected (session present: %s)",
            self._client_id,
            getattr(flags, "session_present", None),
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, props: Any
    ) -> None:
        """Count the worker as connected once the broker granted its subscriptions."""
        refused = [str(code) for code in reason_codes if reason_code_failed(code)]
        if refused:
            _log.error(
                "broker refused ingest's subscriptions %s (%s): check the ACL lets user %r read %s",
                self._filters,
                ", ".join(refused),
                self._broker.username,
                self._filters,
            )
            return
        self._link.up()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        self._link.down(reason_code, expected=self._stopping.is_set())

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put((message.topic, bytes(message.payload), message.mid, message.qos))

    # -- processing thread -----------------------------------------------------------------

    def _process_loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=_PARK_RETRY_S if self._parked else None)
            except queue.Empty:
                self._process([])  # only the parked messages, offered again
                continue
            if isinstance(first, _Stop):
                return
            group = [first]
            stop_after = False
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Stop):
                    stop_after = True
                    break
                group.append(item)
            self._process(group)
            if stop_after:
                return

    def _process(self, group: list[_Message]) -> None:
        """Handle ``group`` (after the parked messages) until every message is written,
        parked or the worker stops; then acknowledge them and send the receipts."""
        group = [*self._parked, *group]
        self._parked = []
        pending = list(range(len(group)))
        backoff = Backoff(0.1, max(0.1, self._retry_max_s))
        done: list[int] = []
        receipts: dict[str, _Receipt] = {}  # node -> the seqs of its samples and labels done with
        while True:
            outcomes = self._service.handle_many([(group[i][0], group[i][1]) for i in pending])
            failed = []
            for i, outcome in zip(pending, outcomes, strict=True):
                if outcome.kind == "deferred" and len(self._parked) < _MAX_PARKED:
                    self._parked.append(group[i])
                elif outcome.ack or outcome.kind == "deferred":
                    # A deferred message past the parking room is held: acknowledged with
                    # no receipt, as any refusal for now.
                    if outcome.kind == "deferred":
                        self._counts["unparked"] += 1
                    done.append(i)
                    _note_receipt(receipts, outcome)
                else:
                    failed.append(i)
            pending = failed
            if not pending:
                break
            self._failures.failed(f"{len(pending)} message(s) not written; nothing is acked")
            self._counts["retries"] += 1
            if self._stopping.wait(backoff.next_delay()):
                return  # unacknowledged: the broker redelivers the whole group later
        self._failures.recovered()
        client = self._client
        for i in sorted(done):
            _topic, _payload, mid, qos = group[i]
            if client is not None and qos > 0:
                client.ack(mid, qos)
            self._counts["acked"] += 1
        if client is not None:
            self._send_receipts(client, receipts)

    def _send_receipts(self, client: mqtt.Client, receipts: dict[str, _Receipt]) -> None:
        """Tell each node which of its samples are stored or refused for good, and which of
        its labels are recorded (QoS 1).

        A receipt lost on the way only costs a resend: the node sends the samples or labels
        again after its ``resend_unconfirmed_s``, ingest finds the samples stored (records
        the labels again in place, refuses them again) and confirms again.  Samples stored,
        labels and refusals go in receipts of their own: an agent from before label (or
        refusal) receipts refuses a receipt naming them, and must still get its samples'
        receipts.
        """
        now = time.time()
        for node, done in receipts.items():
            topic = topics.node_stored(self._service.tenant, node)
            for field, ranges in (("seqs", done.seqs), ("labels", done.labels)):
                merged = merge_seq_ranges(ranges)
                for start in range(0, len(merged), MAX_RECEIPT_RANGES):
                    chunk = merged[start : start + MAX_RECEIPT_RANGES]
                    self._publish_receipt(
                        client,
                        topic,
                        StoredReceipt.model_validate({"node": node, field: chunk, "ts": now}),
                    )
            for receipt in _refusal_receipts(node, done.refused, now):
                self._publish_receipt(client, topic, receipt)

    def _publish_receipt(self, client: mqtt.Client, topic: str, receipt: StoredReceipt) -> None:
        if client.publish(topic, receipt.to_payload(), qos=1).rc == 0:  # MQTT_ERR_SUCCESS
            self._counts["receipts"] += 1


def _refusal_receipts(
    node: str, refused: Mapping[str, list[tuple[int, int]]], ts: float
) -> list[StoredReceipt]:
    """Receipts naming ``refused`` (reason -> seq ranges), each within the receipt's bounds
    on ranges and reasons."""
    receipts: list[StoredReceipt] = []
    entries: list[RefusedSeqs] = []
    room = MAX_RECEIPT_RANGES
    for reason, ranges in sorted(refused.items()):
        merged = merge_seq_ranges(ranges)
        while merged:
            if room == 0 or len(entries) == MAX_RECEIPT_REASONS:
                receipts.append(StoredReceipt(node=node, refused=entries, ts=ts))
                entries, room = [], MAX_RECEIPT_RANGES
            chunk, merged = merged[:room], merged[room:]
            entries.append(RefusedSeqs(reason=reason, seqs=chunk))
            room -= len(chunk)
    if entries:
        receipts.append(StoredReceipt(node=node, refused=entries, ts=ts))
    return receipts


def _note_receipt(receipts: dict[str, _Receipt], outcome: Outcome) -> None:
    """Add the seq ranges ``outcome`` is done with to its node's receipt, if it names any."""
    if not outcome.seq_ranges and not outcome.label_ranges:
        return
    receipt = receipts.setdefault(outcome.node, _Receipt())
    into = (
        receipt.refused.setdefault(outcome.reason, [])
        if outcome.kind == "rejected"
        else receipt.seqs
    )
    into.extend(outcome.seq_ranges)
    receipt.labels.extend(outcome.label_ranges)
