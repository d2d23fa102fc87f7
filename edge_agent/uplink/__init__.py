"""The uplink path: the residency gate in front of the outbox, and the pump behind it.

``ResidencyGate`` (``_gate``) applies each pipeline's uplink plan to selected samples before
the outbox writes them, so data that may not leave the node never touches its disk.
``Uplink`` is the pump's thread: it runs the uplink's protocol (``_pump.UplinkPump``: what
goes on the wire and what each answer does to the outbox) whenever there may be something
to send, and takes over what other threads hand it (PUBACKs from the link's network thread,
ingest's receipts, telemetry windows, the reported state).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from continuum.errors import NotReadyError
from continuum.wire.messages import ReportedState, StoredReceipt, Telemetry
from edge_agent.link import MqttLink
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import Outbox
from edge_agent.uplink._gate import ResidencyGate
from edge_agent.uplink._pump import Ack, UplinkPump

__all__ = ["ResidencyGate", "Uplink"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_TELEMETRY_BACKLOG = 10_000
#: Receipts waiting for the pump; past this the oldest is dropped (it only costs a resend).
_RECEIPT_BACKLOG = 10_000


class Uplink:
    """Drain the outbox and the telemetry backlog over ``link``; see the module docstring.

    Takes the arguments of ``UplinkPump`` (``link`` is its publisher) but ``handover`` and
    ``clock``: the pump hands its PUBACKs to this thread.
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
        self._pump = UplinkPump(
            node=node,
            tenant=tenant,
            outbox=outbox,
            publisher=link,
            metrics=metrics,
            status_payload=status_payload,
            heartbeat_interval_s=heartbeat_interval_s,
            max_records=max_records,
            max_bytes=max_bytes,
            handover=self._handover,
        )
        self._wake = threading.Condition()
        self._acks: collections.deque[Ack] = collections.deque()
        self._receipts: collections.deque[StoredReceipt] = collections.deque()
        self._telemetry: collections.deque[Telemetry] = collections.deque()
        self._reported: ReportedState | None = None
        self._reported_dirty = False
        self._status_now = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- inputs (any thread) ---------------------------------------------------------------

    def wake(self) -> None:
        """Tell the pump there may be something to send."""
        with self._wake:
            self._wake.notify()

    def connected(self) -> None:
        """The link (re)connected: publish status and reported state again first."""
        with self._wake:
            self._status_now = True
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

    def _handover(self, ack: Ack) -> None:
        # Network thread: hand over to the pump, which owns the outbox writes.
        with self._wake:
            self._acks.append(ack)
            self._wake.notify()

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
        return self._pump.outbox_idle()

    # -- pump thread -----------------------------------------------------------------------

    def _run(self) -> None:
        pump = self._pump
        while not self._stop.is_set():
            try:
                self._drain_acks()
                if self._link.connected:
                    self._send_state()
                    self._send_telemetry()
                    pump.send_feedback()
                    pump.send_samples()
                pump.maintain()
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

    def _send_state(self) -> None:
        with self._wake:
            if self._status_now:
                self._status_now = False
                self._pump.status_now()
        self._pump.send_status()
        with self._wake:
            state = self._reported if self._reported_dirty else None
            self._reported_dirty = False
        if state is not None:
            try:
                self._pump.send_reported(state)
            except NotReadyError:
                with self._wake:
                    self._reported_dirty = True
                raise

    def _send_telemetry(self) -> None:
        while self._link.free_slots() > 0:
            with self._wake:
                if not self._telemetry:
                    return
                message = self._telemetry[0]
            self._pump.send_telemetry(message)
            with self._wake:
                if self._telemetry and self._telemetry[0] is message:
                    self._telemetry.popleft()

    def _drain_acks(self) -> None:
        """Settle the PUBACKs, then apply the receipts, that the network thread handed over."""
        while (ack := self._take(self._acks)) is not None:
            self._pump.settle(ack)
        while (receipt := self._take(self._receipts)) is not None:
            self._pump.apply_receipt(receipt)

    def _take(self, handed_over: collections.deque[_T]) -> _T | None:
        """Pop the oldest of what the network thread handed over, if any (under the lock)."""
        with self._wake:
            return handed_over.popleft() if handed_over else None
