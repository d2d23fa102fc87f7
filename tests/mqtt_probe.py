"""A raw MQTT 5 client for tests that probe the broker's ACLs: what it may read and write.

It records every message, each PUBACK's reason code (mosquitto answers a refused publish
with 0x87 "not authorized" under MQTT 5), the CONNACK and disconnects, so a test can tell
"refused" from "lost".  ``client_id`` asks for a client id (the broker may replace it with
the username: ``use_username_as_clientid``).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

WAIT_S = 5.0
#: MQTT 5 reason code "not authorized" (0x87): the PUBACK of a publish the ACL refused.
NOT_AUTHORIZED = 135


class Listening(Protocol):
    """A broker on loopback: an ``EmbeddedBroker``, or a test's own mosquitto (its ``port``;
    ``host`` where it has one, else 127.0.0.1)."""

    port: int


class Probe:
    """One MQTT 5 client: records messages, PUBACK codes, CONNACK and disconnects."""

    def __init__(
        self, broker: Listening, user: str, password: str, *, client_id: str | None = None
    ) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._acks: dict[int, ReasonCode] = {}
        self._subacks: set[int] = set()
        self._connack: ReasonCode | None = None
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{user.replace('@', '-')}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(getattr(broker, "host", "127.0.0.1"), broker.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: object, userdata: object, flags: object, reason: ReasonCode,
                    props: object) -> None:  # fmt: skip
        if not self._connected.is_set():
            self._connack = reason
            self._connected.set()

    def _on_disconnect(self, client: object, userdata: object, flags: object,
                       reason: ReasonCode, props: object) -> None:  # fmt: skip
        self.disconnected.set()

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def _on_publish(self, client: object, userdata: object, mid: int, reason: ReasonCode,
                    props: object) -> None:  # fmt: skip
        with self._cond:
            self._acks[mid] = reason
            self._cond.notify_all()

    def _on_subscribe(self, client: object, userdata: object, mid: int,
                      reasons: list[ReasonCode], props: object) -> None:  # fmt: skip
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def connack(self) -> ReasonCode:
        """Wait for the first CONNACK and return its reason code."""
        assert self._connected.wait(WAIT_S), "no CONNACK"
        assert self._connack is not None
        return self._connack

    def subscribe(self, filter_: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        assert not self.connack().is_failure
        _, mid = self.client.subscribe(filter_, qos=1)
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._subacks, WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        assert not self.connack().is_failure
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acks, WAIT_S), "no PUBACK"
            return self._acks[mid]

    def got(self, payload: bytes, timeout_s: float = WAIT_S) -> bool:
        """Return whether ``payload`` arrived within ``timeout_s``."""
        with self._cond:
            return self._cond.wait_for(
                lambda: any(p == payload for _, p in self.received), timeout_s
            )

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()
