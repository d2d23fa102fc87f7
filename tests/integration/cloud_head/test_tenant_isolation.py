"""Tenants apart on a real mosquitto: the registry's password and ACL files, reloaded by SIGHUP.

DESIGN.md §7 invariant 3 at the broker: tenant B's credential can neither read nor write
tenant A's topics (the test watches for the message and sees none arrive), A's own
traffic flows, and once B is deleted and the broker reloads, B cannot connect and its
open session is dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cloud_head.tenants import TenantCredentials, TenantRegistry
from continuum.embedded import EmbeddedBroker
from continuum.wire import topics

pytestmark = pytest.mark.integration

WAIT_S = 5.0
#: How long to wait for a message that must not arrive, after the control subscriber
#: already got it (mosquitto fans a message out to every subscriber at once).
GRACE_S = 0.3
A, B = "tenant-a", "tenant-b"


class Probe:
    """One MQTT 5 client: records messages, PUBACK codes, CONNACK and disconnects."""

    def __init__(self, broker: EmbeddedBroker, user: str, password: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._acks: dict[int, ReasonCode] = {}
        self._subacks: set[int] = set()
        self._connack: ReasonCode | None = None
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"probe-{user.replace('@', '-')}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(broker.host, broker.port, keepalive=30)
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

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        assert not self.connack().is_failure
        mid = self.client.publish(topic, payload, qos=1).mid
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


@dataclass
class Setup:
    registry: TenantRegistry
    broker: EmbeddedBroker
    credentials: dict[str, TenantCredentials]
    probes: list[Probe]

    def probe(self, user: str, password: str | None = None) -> Probe:
        """Connect a probe as a tenant user or ingest user; closed after the test."""
        if password is None:
            creds = self.credentials[user.removeprefix("ingest@")]
            password = creds.ingest_password if user.startswith("ingest@") else creds.password
        made = Probe(self.broker, user, password)
        self.probes.append(made)
        return made

    def apply(self) -> None:
        """Apply the registry to the broker and wait until it logged the reload."""
        before = _reloads(self.broker.log_path)
        assert self.registry.apply_to_broker(pid=self.broker.pid) == self.broker.pid
        deadline = time.monotonic() + WAIT_S
        while _reloads(self.broker.log_path) == before:
            assert time.monotonic() < deadline, "mosquitto did not log a reload after SIGHUP"
            time.sleep(0.01)


def _reloads(log: Path) -> int:
    return log.read_text(errors="replace").count("Reloading config.")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """A broker on the registry's files; tenants A and B created and applied."""
    registry = TenantRegistry(tmp_path / "tenants")
    broker = EmbeddedBroker(
        tmp_path / "broker", password_file=registry.password_file, acl_file=registry.acl_file
    ).start()
    made = Setup(registry, broker, {}, [])
    try:
        for name in (A, B):
            credentials = registry.create(name).credentials
            assert credentials is not None
            made.credentials[name] = credentials
        made.apply()
        yield made
    finally:
        for probe in made.probes:
            probe.close()
        broker.stop()


def _unique(tag: str) -> bytes:
    return f"{tag}-{time.monotonic_ns()}".encode()


class TestTenantCannotReadAnotherTenant:
    def test_b_subscriptions_to_a_receive_none_of_a_messages(self, setup: Setup) -> None:
        a, b = setup.probe(A), setup.probe(B)
        a.subscribe(topics.tenant_filter(A))  # control: the message does flow
        for filter_ in (topics.tenant_filter(A), "ctm/#", "#", topics.shared("ctm/+/#")):
            b.subscribe(filter_)
        sample, status = _unique("a-sample"), _unique("a-status")
        assert not a.publish(topics.samples(A, "line-7", "cam-1"), sample).is_failure
        assert not a.publish(topics.node_status(A, "cam-1"), status).is_failure
        assert a.got(sample) and a.got(status)
        assert not b.got(sample, GRACE_S)
        assert not b.got(status, 0)
        assert b.received == []

    def test_b_ingest_user_reads_its_own_samples_but_not_a(self, setup: Setup) -> None:
        a, b, b_ingest = setup.probe(A), setup.probe(B), setup.probe(f"ingest@{B}")
        b_ingest.subscribe(topics.shared(topics.pipeline_filter(B, "samples")))
        b_ingest.subscribe(topics.shared(topics.pipeline_filter(A, "samples")))
        a.subscribe(topics.pipeline_filter(A, "samples"))
        own, other = _unique("b-sample"), _unique("a-sample")
        assert not b.publish(topics.samples(B, "line-1", "cam-9"), own).is_failure
        assert not a.publish(topics.samples(A, "line-7", "cam-1"), other).is_failure
        assert b_ingest.got(own)
        assert a.got(other)
        assert not b_ingest.got(other, GRACE_S)


class TestTenantCannotWriteAnotherTenant:
    def test_b_publish_into_a_is_refused_and_never_delivered(self, setup: Setup) -> None:
        a, b = setup.probe(A), setup.probe(B)
        a.subscribe(topics.tenant_filter(A))
        forged_desired, forged_sample = _unique("forged-desired"), _unique("forged-sample")
        for topic, payload in (
            (topics.node_desired(A, "cam-1"), forged_desired),
            (topics.samples(A, "line-7", "cam-1"), forged_sample),
        ):
            reason = b.publish(topic, payload)
            assert reason.is_failure and reason.getName() == "Not authorized"
        control = _unique("a-control")
        assert not a.publish(topics.node_desired(A, "cam-1"), control).is_failure
        assert a.got(control)  # delivered after the forgeries would have been
        assert not a.got(forged_desired, GRACE_S)
        assert not a.got(forged_sample, 0)

    def test_a_own_tree_is_writable_and_readable(self, setup: Setup) -> None:
        a = setup.probe(A)
        a.subscribe(topics.tenant_filter(A))
        payload = _unique("a-desired")
        assert not a.publish(topics.node_desired(A, "cam-1"), payload).is_failure
        assert a.got(payload)


class TestRevocationTakesEffectOnReload:
    def test_deleted_tenant_cannot_connect_and_its_session_is_dropped(self, setup: Setup) -> None:
        b_before = setup.probe(B)
        assert not b_before.connack().is_failure
        setup.registry.delete(B)
        setup.apply()
        assert b_before.disconnected.wait(WAIT_S), "B's open session survived the reload"
        refused = setup.probe(B).connack()
        assert refused.is_failure
        assert refused.getName() in ("Not authorized", "Bad user name or password")
        a = setup.probe(A)  # A is untouched by B's removal
        a.subscribe(topics.tenant_filter(A))
        payload = _unique("a-after")
        assert not a.publish(topics.node_status(A, "cam-1"), payload).is_failure
        assert a.got(payload)

    def test_rotated_password_replaces_the_old_one(self, setup: Setup) -> None:
        old = setup.credentials[A].password
        new = setup.registry.rotate_credentials(A)
        setup.apply()
        assert setup.probe(A, old).connack().is_failure
        assert not setup.probe(A, new.password).connack().is_failure
