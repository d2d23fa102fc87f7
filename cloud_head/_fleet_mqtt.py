"""The fleet registry's MQTT runner: subscribe to a tenant's node status, reported state and
telemetry, tick the registry by the clock, and report its own broker connection.

Public through ``cloud_head.fleet``; the protocol logic it runs is ``FleetRegistry`` there.
"""

from __future__ import annotations

import fcntl
import logging
import struct
import termios
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cloud_head._mqtt import BrokerConnection, reason_code_failed
from continuum._retry import FailureLog
from continuum.errors import NotReadyError, ProtocolError
from continuum.wire import topics
from continuum.wire.identities import control_identity
from continuum.wire.mqtt import BrokerSettings, connect, make_client, publish_and_wait

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from cloud_head.fleet import FleetRegistry

_log = logging.getLogger("cloud_head.fleet")


def subscriptions(tenant: str) -> list[tuple[str, int]]:
    """Return the (filter, QoS) pairs the fleet registry of ``tenant`` subscribes to.

    Status at QoS 0: it is retained and the worker subscribes again at every connect, so the
    broker replays every node's latest status (and any last will that fired meanwhile) after
    an outage; QoS 1 would only add a PUBACK per heartbeat, which made a bare paho subscriber
    spend 79 instead of 56 us per status here.  Reported state likewise is retained, but
    rare; telemetry is not retained, so both stay at QoS 1 and queue in the session.
    """
    return [
        (topics.nodes_filter(tenant, "status"), 0),
        (topics.nodes_filter(tenant, "reported"), 1),
        (topics.pipeline_filter(tenant, "telemetry"), 1),
    ]


def _relayable(tenant: str, topic: str) -> bool:
    """Whether ``topic`` is one the control identity writes: a node's desired state or a
    model artifact of ``tenant``."""
    try:
        parsed = topics.parse(topic)
    except ProtocolError:
        return False
    return parsed.tenant == tenant and parsed.kind in ("desired", "artifact")


class FleetWorker:
    """Run a ``FleetRegistry`` on MQTT: subscribe to status, reported and telemetry of a tenant.

    A plain (not shared) subscription, because the broker only replays retained status and
    reported state to plain subscriptions; every replica sees every node.  A named thread
    calls the registry's ``tick()`` (flush, silent nodes offline) every ``tick_interval_s``,
    with or without a broker; a failing tick (a locked or full disk) is logged when it starts
    and when it ends, not at every tick.  The worker's own connection is reported, not hidden:
    ``stats()`` carries ``connected``, ``disconnected_since`` and ``disconnects``, and the loss
    and the recovery are logged once each.
    """

    def __init__(
        self, registry: FleetRegistry, broker: BrokerSettings, *, client_id: str | None = None
    ) -> None:
        """Prepare a worker; ``client_id`` names its persistent session."""
        self._registry = registry
        self._broker = broker
        self._client_id = client_id or control_identity(registry.tenant)
        self._subscriptions = subscriptions(registry.tenant)
        self._client: mqtt.Client | None = None
        self._link = BrokerConnection(_log, f"fleet {self._client_id}")
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None
        # Every tick retries (each tick_interval_s); the log says when it starts and ends.
        self._tick_failures = FailureLog(f"fleet registry tick of {registry.tenant}", _log)

    @property
    def connected(self) -> bool:
        """Whether the MQTT session is up and subscribed."""
        return self._link.connected

    def start(self) -> None:
        """Connect and subscribe; raises NotReadyError if the broker is down."""
        if self._client is not None:
            raise RuntimeError("the fleet worker is already running")
        self._stopping.clear()
        client = make_client(self._client_id, self._broker)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        connect(client, self._broker)
        self._client = client
        self._ticker = threading.Thread(
            target=self._tick, name=f"ctm-fleet-tick-{self._registry.tenant}", daemon=True
        )
        self._ticker.start()

    def stop(self) -> None:
        """Disconnect (the session persists) and flush the registry."""
        self._stopping.set()
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.join(10.0)
        self._link.down("stopped", expected=True)

    def stats(self) -> dict[str, Any]:
        """Return the registry counters plus the connection state.

        ``connected``, ``disconnected_since`` (Unix seconds, None while connected) and
        ``disconnects`` (connections lost so far) say whether the fleet view is current.
        """
        return self._registry.stats() | self._link.stats()

    def publish(self, topic: str, payload: bytes, *, timeout_s: float = 30.0) -> None:
        """Publish ``payload`` retained at QoS 1 on a desired-state or artifact ``topic`` of
        the tenant, and return once the broker acknowledged it.

        The fleet's connection is the tenant's control identity: the controllers, which must
        not open a second connection of it, publish through here.

        Raises:
            ProtocolError: ``topic`` is neither a node's desired state nor a model artifact
                topic of this tenant (the control identity writes nothing else).
            NotReadyError: the worker is not connected, or the broker refused the publish.
            OperationTimeoutError: the broker did not acknowledge within ``timeout_s``.
        """
        tenant = self._registry.tenant
        if not _relayable(tenant, topic):
            raise ProtocolError(
                f"the fleet of tenant {tenant!r} relays only its nodes' desired state and its "
                f"model artifacts (the control identity writes nothing else), not {topic!r}",
                reason="bad_topic",
            )
        client = self._client
        if client is None or not self.connected:
            raise NotReadyError(
                f"the fleet of tenant {tenant!r} is not connected to the broker; {topic} was "
                "not published (the controller publishes it again at its next tick)"
            )
        publish_and_wait(client, topic, payload, qos=1, retain=True, timeout_s=timeout_s)

    def clear_retained(self, node: str, timeout_s: float = 10.0) -> list[str]:
        """Clear ``node``'s retained status and reported state on the broker; return the topics.

        For a removed node: a later subscriber (this worker after a restart, a new replica)
        is not replayed a status that would admit it again.  The clear comes back to the
        registry as ``cleared`` messages about a node it no longer knows.

        Raises:
            NotReadyError: the worker is not connected, or the broker refused a publish.
            OperationTimeoutError: the broker did not acknowledge within ``timeout_s``.
        """
        client = self._client
        if client is None or not self.connected:
            raise NotReadyError(
                f"the fleet of tenant {self._registry.tenant!r} is not connected to the broker; "
                "its retained topics were not cleared (they are when the node is removed again)"
            )
        cleared = []
        for topic in (
            topics.node_status(self._registry.tenant, node),
            topics.node_reported(self._registry.tenant, node),
        ):
            publish_and_wait(client, topic, b"", qos=1, retain=True, timeout_s=timeout_s)
            cleared.append(topic)
        return cleared

    def __enter__(self) -> FleetWorker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _tick(self) -> None:
        while True:
            stopping = self._stopping.wait(self._registry.tick_interval_s)
            try:
                self._registry.tick(unread=self._unread())
            except Exception as exc:  # e.g. a locked or full disk: keep the changes, try again
                _log.debug("fleet registry tick failed", exc_info=True)
                self._tick_failures.failed(f"{type(exc).__name__}: {exc}")
            else:
                self._tick_failures.recovered()
            if stopping:
                return

    def _unread(self) -> bool:
        """Whether bytes wait unread on the broker connection (FIONREAD, plus what TLS holds).

        With no heartbeat handled lately, that means the handling stalled, not the nodes.
        """
        client = self._client
        sock: Any = None if client is None else client.socket()
        if sock is None:
            return False
        try:
            if getattr(sock, "pending", None) is not None and sock.pending() > 0:
                return True
            waiting = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except (OSError, ValueError):  # closed meanwhile: nothing waits
            return False
        return bool(struct.unpack("i", waiting)[0] > 0)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code_failed(reason_code):
            _log.warning("broker refused the fleet session: %s", reason_code)
            return
        # Subscribing again at every connect makes the broker replay every retained status,
        # so nodes timed out during an outage come back online at once.
        client.subscribe(self._subscriptions)
        self._link.up()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        self._link.down(reason_code, expected=self._stopping.is_set())

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._registry.handle(message.topic, bytes(message.payload))
