"""The edge agent's MQTT link: one MQTT 5 session to the broker, kept up through outages.

Protocol logic (``InflightWindow``; ``Backoff`` and ``FailureLog`` from ``continuum._retry``)
is plain, thread-free code;
``MqttLink`` is the thin runner around paho: one named network thread drives
``client.loop`` and reconnects with capped, jittered exponential backoff; QoS 1 publishes
are bounded by ``max_inflight`` and each one reports its PUBACK to a callback, so the
outbox deletes only what the broker has taken.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from continuum._retry import Backoff, FailureLog
from continuum.errors import NotReadyError
from continuum.wire import mqtt
from continuum.wire.messages import MAX_CHUNK_BYTES

__all__ = ["InflightWindow", "MqttLink", "PublishOutcome"]

log = logging.getLogger(__name__)

#: PUBACK reason "No matching subscribers": the broker took the message and dropped it.
NO_MATCHING_SUBSCRIBERS = 0x10
_SUBSCRIBE_BATCH = 64
#: The largest MQTT packet the agent takes (MQTT 5 Maximum Packet Size, sent in CONNECT): an
#: artifact chunk, the largest thing it receives, plus room for its topic and properties.
#: The broker drops anything larger instead of delivering it, so a 200 MB publish on the
#: desired-state topic never reaches (and is never read into the memory of) the agent.
MAX_PACKET_BYTES = MAX_CHUNK_BYTES + 64 * 1024
_LOOP_TIMEOUT_S = 0.1


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    """How the broker answered one QoS 1 publish.

    ``delivered`` is true only for PUBACK "Success"; "No matching subscribers" (the broker
    dropped the message) and error codes are not deliveries, so durable records stay in
    the outbox and are sent again.
    """

    delivered: bool
    reason: str
    payload_bytes: int


PublishCallback = Callable[[PublishOutcome], None]


class InflightWindow:
    """The QoS 1 messages waiting for PUBACK, by packet id, bounded by ``capacity``.

    A PUBACK can arrive (on the network thread) before ``publish`` returned its packet id
    to the caller; such early answers are parked and matched in ``register``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[PublishCallback | None, int]] = {}
        self._early: dict[int, tuple[bool, str]] = {}
        self._idle = threading.Condition(self._lock)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def free(self) -> int:
        """Return how many more publishes the window admits."""
        with self._lock:
            return max(0, self.capacity - len(self._pending))

    def register(
        self, mid: int, callback: PublishCallback | None, payload_bytes: int
    ) -> PublishOutcome | None:
        """Track ``mid``; return its outcome at once if its PUBACK already arrived."""
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._pending[mid] = (callback, payload_bytes)
                return None
            self._idle.notify_all()
        return PublishOutcome(early[0], early[1], payload_bytes)

    def complete(
        self, mid: int, delivered: bool, reason: str
    ) -> tuple[PublishCallback | None, PublishOutcome] | None:
        """Resolve ``mid``; return its callback and outcome, or park an early answer."""
        with self._lock:
            entry = self._pending.pop(mid, None)
            if entry is None:
                self._early[mid] = (delivered, reason)
                return None
            self._idle.notify_all()
        callback, size = entry
        return callback, PublishOutcome(delivered, reason, size)

    def wait_empty(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; return whether that happened in time."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True


class MqttLink:
    """One persistent MQTT 5 session: LWT, retained status, backoff, bounded QoS 1 publishes.

    Args:
        client_id: the MQTT client id (stable per node, so the broker keeps the session).
        broker: connection settings (``reconnect_min_s``/``reconnect_max_s`` optional).
        will: (topic, payload) the broker publishes, retained, if the link dies.
        max_inflight: most QoS 1 publishes waiting for PUBACK.
        on_message: called on the network thread with (topic, payload, retained); must be
            quick and must not raise (exceptions are logged and swallowed).
        on_connect: called on the network thread after each successful CONNACK with
            ``session_present``; subscriptions are already renewed by then.
        on_disconnect: called on the network thread when an established session drops.
    """

    def __init__(
        self,
        *,
        client_id: str,
        broker: mqtt.BrokerSettings,
        will: tuple[str, bytes] | None,
        max_inflight: int,
        on_message: Callable[[str, bytes, bool], None],
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._broker = broker
        self._client = mqtt.make_client(client_id, broker, will=will, max_inflight=max_inflight)
        self._thread_name = f"{client_id}-link"  # the client id names tenant and node
        # With a register-write hook set, paho never writes to the socket from the caller's
        # thread: publish() only queues and wakes the network thread, which does all I/O.
        self._client.on_socket_register_write = _noop_socket_hook
        self._client.on_socket_unregister_write = _noop_socket_hook
        self._client.connect_timeout = broker.connect_timeout_s
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_publish = self._handle_publish
        self._client.on_message = self._handle_message
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._window = InflightWindow(max_inflight)
        self._backoff = Backoff(
            getattr(broker, "reconnect_min_s", 0.5), getattr(broker, "reconnect_max_s", 60.0), rng
        )
        self._health = FailureLog(f"MQTT link to {broker.host}:{broker.port}")
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._closing = False
        self._lock = threading.Lock()
        self._subscriptions: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._connects = 0
        self._connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        self._connect_props.SessionExpiryInterval = broker.session_expiry_s
        self._connect_props.MaximumPacketSize = MAX_PACKET_BYTES

    # -- state -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a session is established (CONNACK received, not dropped since)."""
        return self._connected.is_set()

    @property
    def connects(self) -> int:
        """Successful connections so far (the first one included)."""
        return self._connects

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a session; return whether there is one."""
        return self._connected.wait(timeout_s)

    def free_slots(self) -> int:
        """Return how many QoS 1 publishes may be started now (0 while disconnected)."""
        return self._window.free() if self.connected else 0

    @property
    def inflight(self) -> int:
        """QoS 1 publishes waiting for PUBACK."""
        return len(self._window)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the network thread; it connects and keeps reconnecting until ``stop``."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0, final: tuple[str, bytes] | None = None) -> None:
        """Flush in-flight publishes, publish ``final`` (retained), disconnect, join.

        Every wait is bounded by ``timeout_s`` in total; what is not acknowledged by then
        stays in the outbox for the next start.
        """
        deadline = time.monotonic() + timeout_s
        self._closing = True
        if self.connected:
            self._window.wait_empty(max(0.0, deadline - time.monotonic()))
            if final is not None:
                done = threading.Event()
                try:
                    self.publish(
                        final[0], final[1], retain=True, force=True, on_done=lambda _: done.set()
                    )
                    done.wait(max(0.0, deadline - time.monotonic()))
                except NotReadyError:
                    pass
            self._client.disconnect()
            # The network thread writes the DISCONNECT and closes the socket.
            while self._client.socket() is not None and time.monotonic() < deadline:
                time.sleep(0.01)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.warning("MQTT network thread did not stop within %.1f s", timeout_s)
            self._thread = None
        self._connected.clear()

    # -- publish / subscribe ---------------------------------------------------------------

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
        """Publish at QoS 1 (or 0) and return the packet id.

        ``on_done`` runs on the network thread when the PUBACK arrives (QoS 1) and must be
        quick.  ``force`` admits the publish beyond ``max_inflight`` (small control
        messages such as status).

        Raises:
            NotReadyError: not connected, or the in-flight window is full; try later.
        """
        if not self.connected:
            raise NotReadyError("the MQTT link is not connected")
        if not force and self._window.free() <= 0:
            raise NotReadyError("the MQTT in-flight window is full")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # NO_CONN means the link dropped after the check above: paho keeps a QoS 1 message
        # and sends it after reconnecting, so it is still in flight.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise NotReadyError(f"paho refused a publish to {topic}: {paho.error_string(info.rc)}")
        if qos == 0:
            if on_done is not None:
                on_done(PublishOutcome(True, "qos0", len(payload)))
            return info.mid
        early = self._window.register(info.mid, on_done, len(payload))
        if early is not None and on_done is not None:
            on_done(early)
        return info.mid

    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        """Subscribe now (if connected) and after every reconnect; retained messages follow."""
        new = []
        with self._lock:
            for topic in topics:
                if topic not in self._subscriptions:
                    self._subscriptions[topic] = qos
                    new.append(topic)
        if new and self.connected:
            self._send_subscribe(new, qos)

    def resubscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        """Subscribe again (if connected) so the broker resends the retained messages."""
        again = list(topics)
        with self._lock:
            for topic in again:
                self._subscriptions.setdefault(topic, qos)
        if again and self.connected:
            self._send_subscribe(again, qos)

    def unsubscribe(self, topics: Iterable[str]) -> None:
        """Forget subscriptions (also on the broker, if connected)."""
        gone = []
        with self._lock:
            for topic in topics:
                if self._subscriptions.pop(topic, None) is not None:
                    gone.append(topic)
        if gone and self.connected:
            for start in range(0, len(gone), _SUBSCRIBE_BATCH):
                self._client.unsubscribe(gone[start : start + _SUBSCRIBE_BATCH])

    def subscriptions(self) -> list[str]:
        """Return the topic filters this link keeps subscribed."""
        with self._lock:
            return sorted(self._subscriptions)

    def _send_subscribe(self, topics: list[str], qos: int) -> None:
        for start in range(0, len(topics), _SUBSCRIBE_BATCH):
            batch = [
                (topic, SubscribeOptions(qos=qos))
                for topic in topics[start : start + _SUBSCRIBE_BATCH]
            ]
            self._client.subscribe(batch)

    # -- network thread --------------------------------------------------------------------

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            if self._client.socket() is None:
                self._connected.clear()
                if self._closing:
                    break
                try:
                    if first:
                        first = False
                        rc = self._client.connect(
                            self._broker.host,
                            self._broker.port,
                            keepalive=self._broker.keepalive_s,
                            clean_start=False,
                            properties=self._connect_props,
                        )
                    else:
                        rc = self._client.reconnect()
                except (OSError, ValueError) as exc:
                    self._health.failed(f"cannot connect: {exc}")
                    self._stop.wait(self._backoff.next_delay())
                    continue
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._health.failed(f"cannot connect: {paho.error_string(rc)}")
                    self._stop.wait(self._backoff.next_delay())
                    continue
            try:
                rc = self._client.loop(timeout=_LOOP_TIMEOUT_S)
            except Exception as exc:  # a bug in a callback must not kill the link
                log.exception("MQTT network loop raised; reconnecting")
                rc = MQTTErrorCode.MQTT_ERR_UNKNOWN
                self._health.failed(f"network loop raised {exc!r}")
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not self._closing:
                self._connected.clear()
                self._health.failed(f"connection lost: {paho.error_string(rc)}")
                self._stop.wait(self._backoff.next_delay())
        # Let a queued DISCONNECT go out before the socket is dropped.
        if self._client.socket() is not None:
            self._client.loop(timeout=_LOOP_TIMEOUT_S)

    def _handle_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._health.failed(f"broker refused the session: {reason}")
            return
        self._connects += 1
        self._backoff.reset()
        self._health.recovered()
        log.info(
            "MQTT session up with %s:%s (session present: %s)",
            self._broker.host,
            self._broker.port,
            flags.session_present,
        )
        with self._lock:
            by_qos: dict[int, list[str]] = {}
            for topic, qos in self._subscriptions.items():
                by_qos.setdefault(qos, []).append(topic)
        # Subscribe again even when the broker kept the session: a fresh SUBSCRIBE makes it
        # resend retained messages (desired state, artifact chunks) missed while offline.
        for qos, topics in by_qos.items():
            self._send_subscribe(sorted(topics), qos)
        self._connected.set()
        if self._on_connect is not None:
            try:
                self._on_connect(bool(flags.session_present))
            except Exception:
                log.exception("on_connect handler failed")

    def _handle_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self._closing and self._on_disconnect is not None:
            try:
                self._on_disconnect()
            except Exception:
                log.exception("on_disconnect handler failed")

    def _handle_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        code = reason.value if isinstance(reason, ReasonCode) else int(reason)
        delivered = code == 0
        name = "success" if delivered else _reason_name(reason)
        resolved = self._window.complete(mid, delivered, name)
        if resolved is None:
            return
        callback, outcome = resolved
        if callback is not None:
            try:
                callback(outcome)
            except Exception:
                log.exception("publish callback failed")

    def _handle_message(
        self, client: paho.Client, userdata: Any, message: paho.MQTTMessage
    ) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = ""
        try:
            self._on_message(topic, bytes(message.payload), bool(message.retain))
        except Exception:
            log.exception("handler for a message on %r failed", topic)


def _reason_name(reason: ReasonCode) -> str:
    if isinstance(reason, ReasonCode):
        if reason.value == NO_MATCHING_SUBSCRIBERS:
            return "no_subscribers"
        return str(reason.getName()).lower().replace(" ", "_")
    return f"code_{reason}"


def _noop_socket_hook(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Stand in for an external event loop's write registration (see ``MqttLink``)."""
