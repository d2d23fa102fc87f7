"""Broker connection settings and a connected paho-mqtt 2.x client, shared by both sides.

One home for how continuum speaks MQTT 5: protocol version, TLS and credentials, session
expiry, the connect handshake with a timeout, and publishing that waits for the broker's
acknowledgement with a bound. paho is imported lazily so the core stays importable without it.

A client certificate is loaded again before each (re)connect when its files changed
(``ClientTls``): a renewed certificate (``continuum certs sign --renew``) is picked up by a
running agent or service at its next connection, without a restart and without losing its
session or outbox.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from continuum._retry import FailureLog
from continuum.errors import (
    AccessDeniedError,
    ConfigError,
    NotReadyError,
    OperationTimeoutError,
)

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)


class BrokerSettings(BaseModel):
    """Where the broker is and how to authenticate to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port (8883 for TLS).")
    username: str | None = Field(None, description="MQTT username (the tenant credential).")
    password: str | None = Field(None, description="MQTT password.")
    tls_ca: Path | None = Field(None, description="CA bundle; setting it turns TLS on.")
    tls_cert: Path | None = Field(None, description="Client certificate for mutual TLS.")
    tls_key: Path | None = Field(None, description="Private key of the client certificate.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval.")
    session_expiry_s: int = Field(
        3600,
        ge=0,
        le=7 * 24 * 3600,
        description="How long the broker keeps this client's session and QoS 1 queue offline.",
    )
    connect_timeout_s: float = Field(10.0, gt=0, le=300, description="Bound on one connect.")


def make_client(
    client_id: str,
    settings: BrokerSettings,
    *,
    manual_ack: bool = False,
    will: tuple[str, bytes] | None = None,
    max_inflight: int = 1000,
) -> mqtt.Client:
    """Return a configured, unconnected MQTT 5 client with a persistent session.

    ``will`` is (topic, payload), published retained at QoS 1 if the connection dies.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.max_inflight_messages_set(max_inflight)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls_ca is not None:
        tls = ClientTls(settings.tls_ca, settings.tls_cert, settings.tls_key)
        client.tls_set_context(tls.context)
        # paho calls this before every socket it opens: connect and each reconnect.
        client.on_pre_connect = tls.on_pre_connect
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.on_socket_open = _no_delay
    connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    connect_props.SessionExpiryInterval = settings.session_expiry_s
    client._continuum_connect_props = connect_props  # type: ignore[attr-defined]
    return client


class ClientTls:
    """A TLS client context whose certificate and key are loaded again when their files change.

    paho keeps one ``SSLContext`` for the life of a client; each new connection is made
    from it. Before each connection ``reload_if_changed`` compares the files' identity
    (inode, size, modification time) with what was loaded and, if they differ, loads the
    pair again into the same context. A pair that does not load (the key written but not
    yet its certificate, a typo in a renewal) is logged once and the previous pair stays in
    use, so a half-done renewal never takes a working node off the broker.

    Raises:
        ConfigError: at construction, when the CA, certificate or key cannot be loaded.
    """

    def __init__(self, ca: Path, cert: Path | None, key: Path | None) -> None:
        if (cert is None) != (key is None):
            raise ConfigError("tls_cert and tls_key go together: give both (mutual TLS) or neither")
        self._cert, self._key = cert, key
        self._lock = threading.Lock()
        self._health = FailureLog(f"loading the client certificate {cert}", log)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the broker's name
        try:
            self.context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"cannot load the broker's CA {ca}: {error}") from error
        self._loaded: tuple[tuple[int, int, int], ...] | None = None
        if cert is not None and key is not None:
            try:
                stamp = self._stamp()
                self.context.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as error:
                raise ConfigError(
                    f"cannot load the client certificate {cert} with key {key}: {error}; "
                    "check both paths and that the key is the certificate's"
                ) from error
            self._loaded = stamp

    def reload_if_changed(self) -> bool:
        """Load the certificate and key again if their files changed; return whether it did."""
        if self._cert is None or self._key is None:
            return False
        with self._lock:
            try:
                stamp = self._stamp()
                if stamp == self._loaded:
                    return False
                # Check the pair in a scratch context first: loading a mismatched pair into
                # the live one would leave it without a usable certificate.
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                    str(self._cert), str(self._key)
                )
                self._loaded = None  # a failure below is tried again at the next connect
                self.context.load_cert_chain(str(self._cert), str(self._key))
            except (OSError, ssl.SSLError) as error:
                self._health.failed(f"{error}; keeping the certificate loaded before")
                return False
            self._loaded = stamp
            self._health.recovered()
        log.info("loaded the renewed client certificate %s", self._cert)
        return True

    def on_pre_connect(self, client: Any, userdata: Any) -> None:
        """paho's ``on_pre_connect``: reload a changed certificate; never raise."""
        try:
            self.reload_if_changed()
        except Exception:  # paho re-raises from this callback and would drop the reconnect
            log.exception("reloading the client certificate failed")

    def _stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in (self._cert, self._key):
            assert path is not None
            info = os.stat(path)
            stamps.append((info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(stamps)


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """Send each MQTT packet at once (TCP_NODELAY), as the broker configs do on their side.

    paho leaves Nagle's algorithm on. A client that sends a PUBACK (for a message it got)
    and then a PUBLISH has the PUBLISH held until the broker's TCP acknowledges the PUBACK,
    which it delays up to 40 ms: an edge agent receiving ingest's receipts sent its samples
    at 25 a second, one per delayed acknowledgement, instead of thousands.
    """
    # Not every socket is TCP (a websocket wrapper, a Unix socket): those keep their mode.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(client: mqtt.Client, settings: BrokerSettings) -> None:
    """Connect with ``clean_start=False`` and wait for CONNACK, bounded by the settings.

    Raises NotReadyError when the broker refuses or cannot be reached (retry with backoff).
    Starts paho's network thread, which then reconnects by itself after drops.
    """
    done = threading.Event()
    outcome: dict[str, Any] = {}
    previous: Any = client.on_connect

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome["reason"] = reason
        done.set()
        if previous is not None:
            previous(c, userdata, flags, reason, props)

    client.on_connect = on_connect
    try:
        client.connect(
            settings.host,
            settings.port,
            keepalive=settings.keepalive_s,
            clean_start=False,
            properties=getattr(client, "_continuum_connect_props", None),
        )
    except OSError as exc:
        raise NotReadyError(
            f"cannot reach the MQTT broker at {settings.host}:{settings.port}: {exc}; "
            "check that it runs and the address is right"
        ) from exc
    client.loop_start()
    try:
        if not done.wait(settings.connect_timeout_s):
            raise NotReadyError(
                f"no CONNACK from {settings.host}:{settings.port} within "
                f"{settings.connect_timeout_s:g} s"
            )
        reason = outcome["reason"]
        if reason.is_failure:
            raise NotReadyError(
                f"the broker at {settings.host}:{settings.port} refused the connection: {reason}"
                " (check the username, password and certificates)"
            )
    except BaseException:
        client.loop_stop()
        client.disconnect()
        raise
    finally:
        client.on_connect = previous


def publish_and_wait(
    client: mqtt.Client,
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    retain: bool = False,
    timeout_s: float = 10.0,
) -> None:
    """Publish and wait until the broker acknowledged it (QoS 1) or the bound runs out.

    Raises:
        NotReadyError: the client is not connected.
        OperationTimeoutError: no acknowledgement within ``timeout_s``.
        AccessDeniedError: the broker refused it (an MQTT 5 PUBACK "not authorized": the
            identity's ACL does not let it write ``topic``), or answered another failure.
    """
    acks = _pubacks(client)
    info = client.publish(topic, payload, qos=qos, retain=retain)
    if info.rc != 0:
        raise NotReadyError(f"publish to {topic} failed with rc={info.rc}; is the client up?")
    info.wait_for_publish(timeout=timeout_s)
    if not info.is_published():
        raise OperationTimeoutError(
            f"the broker did not acknowledge a message on {topic} within {timeout_s:g} s"
        )
    reason = acks.pop(info.mid, None)
    code = getattr(reason, "value", 0)
    # 0 success; 16 "no matching subscribers" (taken, nobody listening: fine for retained).
    if code not in (0, _NO_MATCHING_SUBSCRIBERS):
        raise AccessDeniedError(
            f"the broker refused the message on {topic}: {reason} (code {code}); this "
            "client's identity may not write that topic: check the identity it connects as "
            "and its ACL (cloud_head.tenants writes it from the registry)"
        )


#: MQTT 5 PUBACK reason "No matching subscribers": the broker took the message.
_NO_MATCHING_SUBSCRIBERS = 16
#: PUBACK reasons kept per client until ``publish_and_wait`` reads them; bounded, since
#: other publishes on the same client leave theirs unread.
_MAX_PENDING_ACKS = 4096


def _pubacks(client: mqtt.Client) -> dict[int, Any]:
    """Return ``client``'s PUBACK reason codes by message id, recording from now on.

    paho's ``MQTTMessageInfo`` says only that a message was acknowledged, not how: the
    reason code reaches ``on_publish`` alone, so a refused publish would look delivered.
    The hook is installed once per client and chains any ``on_publish`` set before it.
    """
    acks: dict[int, Any] | None = getattr(client, "_continuum_pubacks", None)
    if acks is not None:
        return acks
    recorded: dict[int, Any] = {}
    previous: Any = client.on_publish  # VERSION2 callbacks take five arguments

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if len(recorded) >= _MAX_PENDING_ACKS:
            recorded.pop(next(iter(recorded)))
        recorded[mid] = reason
        if previous is not None:
            previous(c, userdata, mid, reason, props)

    client.on_publish = on_publish
    client._continuum_pubacks = recorded  # type: ignore[attr-defined]
    return recorded
