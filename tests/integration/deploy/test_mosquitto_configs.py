"""deploy/mosquitto for real: the dev config and the example ACL keep tenants apart.

A mosquitto starts from ``deploy/mosquitto/mosquitto.dev.conf`` (only its port and file
paths rewritten) with ``deploy/mosquitto/acl.example`` and a password file made by
``mosquitto_passwd``; MQTT 5 clients then probe what each credential can read and write.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from continuum.embedded._process import free_port
from continuum.embedded.broker import find_mosquitto
from continuum.wire import topics
from tests.tools import require_tool

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "mosquitto"
WAIT_S = 5.0
#: How long a probe listens for a message that must not arrive, after the control
#: subscriber already got it (mosquitto fans a message out to all subscribers at once).
GRACE_S = 0.3

PASSWORDS = {"acme": "acme-secret", "globex": "globex-secret", "ingest@acme": "ingest-secret"}


@dataclass(frozen=True)
class Broker:
    """A running dev-config broker: where it listens and its log."""

    port: int
    log: Path


def _find_mosquitto_passwd() -> str:
    return require_tool("mosquitto_passwd", "apt-get install mosquitto")


def render_dev_config(text: str, values: dict[str, str]) -> str:
    """Return the dev config with the arguments of the directives in ``values`` replaced."""
    seen: set[str] = set()
    lines = []
    for line in text.splitlines():
        directive = line.split(" ", 1)[0]
        if directive in values:
            line = f"{directive} {values[directive]}"
            seen.add(directive)
        lines.append(line)
    missing = set(values) - seen
    assert not missing, f"mosquitto.dev.conf lost its {sorted(missing)} directive(s)"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # As root mosquitto drops to user `mosquitto`, which cannot read this tmp dir.
        lines.append("user root")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def dev_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Start mosquitto with the dev config, the example ACL and a fresh password file."""
    work = tmp_path_factory.mktemp("mosquitto-dev")
    passwd = work / "passwd"
    tool = _find_mosquitto_passwd()
    for index, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if index == 0 else []
        subprocess.run([tool, "-b", *create, str(passwd), user, password], check=True, timeout=10)
    acl = work / "acl"
    shutil.copyfile(DEPLOY / "acl.example", acl)
    data = work / "data"
    data.mkdir()
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        render_dev_config(
            (DEPLOY / "mosquitto.dev.conf").read_text(),
            {
                "listener": f"{port} 127.0.0.1",
                "password_file": str(passwd),
                "acl_file": str(acl),
                "persistence_location": f"{data}/",
            },
        )
    )
    log = work / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"mosquitto rejected the dev config:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not listen on {port}:\n{log.read_text()}")
                time.sleep(0.02)
        yield Broker(port, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT_S)


class Probe:
    """One MQTT 5 client logged in as ``user``; records what it receives and PUBACK codes."""

    def __init__(self, broker: Broker, user: str, password: str | None = None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._arrived = threading.Condition()
        self._acks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._connack: ReasonCode | None = None
        self._connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"probe-{user.replace('@', '-')}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(user, PASSWORDS[user] if password is None else password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason: ReasonCode,
        props: object,
    ) -> None:
        self._connack = reason
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._arrived:
            self.received.append((msg.topic, msg.payload))
            self._arrived.notify_all()

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, props: object
    ) -> None:
        with self._arrived:
            self._acks[mid] = reason
            self._arrived.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        props: object,
    ) -> None:
        with self._arrived:
            self._subacks[mid] = reasons
            self._arrived.notify_all()

    def connack(self) -> ReasonCode:
        """Wait for CONNACK and return its reason code."""
        assert self._connected.wait(WAIT_S), "no CONNACK"
        assert self._connack is not None
        return self._connack

    def subscribe(self, filter_: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        assert not self.connack().is_failure
        _, mid = self.client.subscribe(filter_, qos=1)
        with self._arrived:
            assert self._arrived.wait_for(lambda: mid in self._subacks, WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        assert not self.connack().is_failure
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        with self._arrived:
            assert self._arrived.wait_for(lambda: mid in self._acks, WAIT_S), "no PUBACK"
            return self._acks[mid]

    def wait_for(self, payload: bytes, timeout_s: float = WAIT_S) -> bool:
        """Return whether a message with ``payload`` arrived within ``timeout_s``."""
        with self._arrived:
            return self._arrived.wait_for(
                lambda: any(p == payload for _, p in self.received), timeout_s
            )

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probes(dev_broker: Broker) -> Iterator[dict[str, Probe]]:
    """One connected probe per credential of PASSWORDS."""
    made = {user: Probe(dev_broker, user) for user in PASSWORDS}
    try:
        yield made
    finally:
        for probe in made.values():
            probe.close()


def _unique(tag: str) -> bytes:
    return f"{tag}-{time.monotonic_ns()}".encode()


class TestTenantCredentialCannotReadAnotherTenant:
    def test_subscription_to_other_tenant_receives_none_of_its_samples(
        self, probes: dict[str, Probe]
    ) -> None:
        acme, globex = probes["acme"], probes["globex"]
        acme.subscribe(topics.tenant_filter("globex"))
        acme.subscribe("ctm/#")
        globex.subscribe(topics.tenant_filter("globex"))  # control: the message does flow
        payload = _unique("globex-sample")
        topic = topics.samples("globex", "line-7", "cam-1")
        assert not globex.publish(topic, payload).is_failure
        assert globex.wait_for(payload)
        assert not acme.wait_for(payload, GRACE_S)

    def test_shared_subscription_does_not_open_another_tenants_tree(
        self, probes: dict[str, Probe]
    ) -> None:
        acme, globex = probes["acme"], probes["globex"]
        acme.subscribe(topics.shared(topics.tenant_filter("globex")))
        globex.subscribe(topics.tenant_filter("globex"))
        payload = _unique("globex-telemetry")
        assert not globex.publish(topics.telemetry("globex", "line-7", "cam-1"), payload).is_failure
        assert globex.wait_for(payload)
        assert not acme.wait_for(payload, GRACE_S)

    def test_retained_status_of_another_tenant_is_not_replayed(
        self, dev_broker: Broker, probes: dict[str, Probe]
    ) -> None:
        status = topics.node_status("globex", "cam-9")
        payload = _unique("globex-status")
        assert not probes["globex"].publish(status, payload, retain=True).is_failure
        late_globex, late_acme = Probe(dev_broker, "globex"), Probe(dev_broker, "acme")
        try:
            late_globex.subscribe(status)
            late_acme.subscribe(topics.tenant_filter("globex"))
            assert late_globex.wait_for(payload)
            assert not late_acme.wait_for(payload, GRACE_S)
        finally:
            probes["globex"].publish(status, b"", retain=True)  # clear the retained message
            late_globex.close()
            late_acme.close()


class TestTenantCredentialCannotWriteAnotherTenant:
    def test_desired_state_published_into_another_tenant_is_refused(
        self, probes: dict[str, Probe]
    ) -> None:
        acme, globex = probes["acme"], probes["globex"]
        desired = topics.node_desired("globex", "cam-1")
        globex.subscribe(desired)
        payload = _unique("forged-desired")
        reason = acme.publish(desired, payload)
        assert reason.is_failure and reason.getName() == "Not authorized"
        assert not globex.wait_for(payload, GRACE_S)

    def test_own_tenant_tree_is_writable_and_readable(self, probes: dict[str, Probe]) -> None:
        acme = probes["acme"]
        desired = topics.node_desired("acme", "cam-1")
        acme.subscribe(desired)
        payload = _unique("acme-desired")
        assert not acme.publish(desired, payload).is_failure
        assert acme.wait_for(payload)


class TestIngestCredentialReadsOnlyItsTenantsSamples:
    def test_shared_group_receives_the_tenants_samples_and_feedback(
        self, probes: dict[str, Probe]
    ) -> None:
        ingest, acme = probes["ingest@acme"], probes["acme"]
        ingest.subscribe(topics.shared("ctm/acme/pipelines/+/samples/+"))
        ingest.subscribe(topics.shared("ctm/acme/pipelines/+/feedback/+"))
        sample, label = _unique("acme-sample"), _unique("acme-feedback")
        assert not acme.publish(topics.samples("acme", "line-7", "cam-1"), sample).is_failure
        assert not acme.publish(topics.feedback("acme", "line-7", "cam-1"), label).is_failure
        assert ingest.wait_for(sample)
        assert ingest.wait_for(label)

    def test_other_tenants_samples_and_own_control_topics_stay_hidden(
        self, probes: dict[str, Probe]
    ) -> None:
        ingest, acme, globex = probes["ingest@acme"], probes["acme"], probes["globex"]
        ingest.subscribe(topics.shared("ctm/globex/pipelines/+/samples/+"))
        ingest.subscribe(topics.tenant_filter("acme"))
        globex.subscribe(topics.tenant_filter("globex"))
        acme.subscribe(topics.tenant_filter("acme"))
        other, status = _unique("globex-sample"), _unique("acme-status")
        assert not globex.publish(topics.samples("globex", "line-7", "cam-1"), other).is_failure
        assert not acme.publish(topics.node_status("acme", "cam-1"), status).is_failure
        assert globex.wait_for(other) and acme.wait_for(status)
        assert not ingest.wait_for(other, GRACE_S)
        assert not ingest.wait_for(status, GRACE_S)

    def test_ingest_sends_its_tenants_nodes_their_receipts_and_no_one_elses(
        self, probes: dict[str, Probe]
    ) -> None:
        ingest, acme = probes["ingest@acme"], probes["acme"]
        receipts = topics.node_stored("acme", "cam-1")
        acme.subscribe(receipts)
        receipt = _unique("acme-receipt")
        assert not ingest.publish(receipts, receipt).is_failure
        assert acme.wait_for(receipt)
        refused = ingest.publish(topics.node_stored("globex", "cam-1"), b"x")
        assert refused.is_failure and refused.getName() == "Not authorized"

    def test_ingest_cannot_publish_desired_state(self, probes: dict[str, Probe]) -> None:
        reason = probes["ingest@acme"].publish(topics.node_desired("acme", "cam-1"), b"x")
        assert reason.is_failure and reason.getName() == "Not authorized"


class TestDevBrokerRefusesUnknownCredentials:
    def test_wrong_password_gets_no_session(self, dev_broker: Broker) -> None:
        probe = Probe(dev_broker, "acme", password="not-the-password")
        try:
            reason = probe.connack()
            assert reason.is_failure
            assert reason.getName() in ("Bad user name or password", "Not authorized")
        finally:
            probe.close()
