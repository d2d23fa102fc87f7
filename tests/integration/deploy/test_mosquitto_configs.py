"""deploy/mosquitto for real: the dev config and the example ACL let each identity act only
as itself.

A mosquitto starts from ``deploy/mosquitto/mosquitto.dev.conf`` (only its port and file
paths rewritten) with ``deploy/mosquitto/acl.example`` (tenant acme, node cam-1) and a
password file made by ``mosquitto_passwd``; MQTT 5 clients then probe what each identity
can read and write, and whether one can take over another's session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from continuum.embedded._process import free_port
from continuum.embedded.broker import find_mosquitto
from continuum.wire import topics
from tests.mqtt_probe import Probe
from tests.tools import require_tool

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "mosquitto"
WAIT_S = 5.0
#: How long a probe listens for a message that must not arrive, after the control
#: subscriber already got it (mosquitto fans a message out to all subscribers at once).
GRACE_S = 0.3

OPERATOR, CONTROL, INGEST = "acme", "control@acme", "ingest.0@acme"
NODE, UNKNOWN = "edge.cam-1@acme", "edge.cam-2@acme"
#: Every identity gets a password; only UNKNOWN (never enrolled) has no block in the ACL.
PASSWORDS = {
    OPERATOR: "acme-secret",
    CONTROL: "control-secret",
    INGEST: "ingest-secret",
    NODE: "cam-1-secret",
    UNKNOWN: "cam-2-secret",
    "globex": "globex-secret",
}


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


def connect_probe(
    broker: Broker, user: str, password: str | None = None, *, client_id: str | None = None
) -> Probe:
    """Connect a probe as ``user`` (its password from PASSWORDS unless one is given)."""
    given = PASSWORDS[user] if password is None else password
    return Probe(broker, user, given, client_id=client_id)


@pytest.fixture
def probes(dev_broker: Broker) -> Iterator[dict[str, Probe]]:
    """One connected probe per credential of PASSWORDS."""
    made = {user: connect_probe(dev_broker, user) for user in PASSWORDS}
    try:
        yield made
    finally:
        for made_probe in made.values():
            made_probe.close()


def _unique(tag: str) -> bytes:
    return f"{tag}-{time.monotonic_ns()}".encode()


class TestANodeActsOnlyAsItself:
    def test_node_publishes_its_own_status_and_samples(self, probes: dict[str, Probe]) -> None:
        node, control, ingest = probes[NODE], probes[CONTROL], probes[INGEST]
        control.subscribe(topics.nodes_filter("acme", "status"))
        ingest.subscribe(topics.shared(topics.pipeline_filter("acme", "samples")))
        status, sample = _unique("cam-1-status"), _unique("cam-1-sample")
        assert not node.publish(topics.node_status("acme", "cam-1"), status).is_failure
        assert not node.publish(topics.samples("acme", "line-7", "cam-1"), sample).is_failure
        assert control.got(status)
        assert ingest.got(sample)

    def test_node_cannot_write_another_nodes_topics_or_cloud_topics(
        self, probes: dict[str, Probe]
    ) -> None:
        node, operator = probes[NODE], probes[OPERATOR]
        operator.subscribe(topics.tenant_filter("acme"))
        forged = {
            topics.node_status("acme", "cam-2"): _unique("forged-status"),
            topics.samples("acme", "line-7", "cam-2"): _unique("forged-sample"),
            topics.node_desired("acme", "cam-1"): _unique("forged-own-desired"),
            topics.node_stored("acme", "cam-1"): _unique("forged-own-receipt"),
            topics.artifact_manifest("acme", "digits", "v9"): _unique("forged-manifest"),
        }
        for topic, payload in forged.items():
            reason = node.publish(topic, payload)
            assert reason.is_failure and reason.getName() == "Not authorized", topic
        fence = _unique("fence")
        assert not node.publish(topics.node_status("acme", "cam-1"), fence).is_failure
        assert operator.got(fence)
        assert not any(operator.got(p, 0) for p in forged.values())

    def test_node_reads_its_own_desired_state_and_not_anothers(
        self, probes: dict[str, Probe]
    ) -> None:
        node, control = probes[NODE], probes[CONTROL]
        node.subscribe(topics.nodes_filter("acme", "desired"))
        own, other = _unique("desired-cam-1"), _unique("desired-cam-2")
        assert not control.publish(topics.node_desired("acme", "cam-2"), other).is_failure
        assert not control.publish(topics.node_desired("acme", "cam-1"), own).is_failure
        assert node.got(own)
        assert not node.got(other, GRACE_S)


class TestCloudRoles:
    def test_operator_reads_its_tree_and_writes_nothing(self, probes: dict[str, Probe]) -> None:
        operator, node = probes[OPERATOR], probes[NODE]
        operator.subscribe(topics.tenant_filter("acme"))
        status = _unique("status")
        assert not node.publish(topics.node_status("acme", "cam-1"), status).is_failure
        assert operator.got(status)
        reason = operator.publish(topics.node_desired("acme", "cam-1"), b"x")
        assert reason.is_failure and reason.getName() == "Not authorized"

    def test_ingest_reads_samples_and_feedback_and_writes_receipts_only(
        self, probes: dict[str, Probe]
    ) -> None:
        ingest, node = probes[INGEST], probes[NODE]
        ingest.subscribe(topics.shared(topics.pipeline_filter("acme", "samples")))
        ingest.subscribe(topics.shared(topics.pipeline_filter("acme", "feedback")))
        node.subscribe(topics.node_stored("acme", "cam-1"))
        sample, label = _unique("sample"), _unique("feedback")
        assert not node.publish(topics.samples("acme", "line-7", "cam-1"), sample).is_failure
        assert not node.publish(topics.feedback("acme", "line-7", "cam-1"), label).is_failure
        assert ingest.got(sample) and ingest.got(label)
        receipt = _unique("receipt")
        assert not ingest.publish(topics.node_stored("acme", "cam-1"), receipt).is_failure
        assert node.got(receipt)
        for topic in (topics.node_desired("acme", "cam-1"), topics.node_stored("globex", "c")):
            reason = ingest.publish(topic, b"x")
            assert reason.is_failure and reason.getName() == "Not authorized", topic


class TestIdentitiesWithoutABlock:
    def test_an_identity_nobody_enrolled_reads_and_writes_nothing(
        self, probes: dict[str, Probe]
    ) -> None:
        stranger, node, operator = probes[UNKNOWN], probes[NODE], probes[OPERATOR]
        stranger.subscribe("#")
        operator.subscribe(topics.tenant_filter("acme"))
        reason = stranger.publish(topics.node_status("acme", "cam-2"), b"x")
        assert reason.is_failure and reason.getName() == "Not authorized"
        status = _unique("status")
        assert not node.publish(topics.node_status("acme", "cam-1"), status).is_failure
        assert operator.got(status)
        assert not stranger.got(status, GRACE_S)

    def test_another_tenant_without_a_block_gets_nothing_of_acme(
        self, probes: dict[str, Probe]
    ) -> None:
        globex, node, operator = probes["globex"], probes[NODE], probes[OPERATOR]
        globex.subscribe(topics.tenant_filter("acme"))
        globex.subscribe(topics.shared(topics.pipeline_filter("acme", "samples")))
        operator.subscribe(topics.tenant_filter("acme"))
        sample = _unique("sample")
        assert not node.publish(topics.samples("acme", "line-7", "cam-1"), sample).is_failure
        assert operator.got(sample)
        assert not globex.got(sample, GRACE_S)


class TestClientIdsAreBoundToIdentities:
    def test_claiming_a_nodes_client_id_does_not_take_its_session(
        self, dev_broker: Broker, probes: dict[str, Probe]
    ) -> None:
        control = probes[CONTROL]
        for same_identity in (probes[NODE], probes[UNKNOWN]):
            same_identity.close()  # one identity, one session: they would take turns
        # The node connects with its identity as client id, as an agent does; another
        # identity asks for the same client id and is given its own instead.
        node = connect_probe(dev_broker, NODE, client_id=NODE)
        intruder = None
        try:
            node.subscribe(topics.node_desired("acme", "cam-1"))
            intruder = connect_probe(dev_broker, UNKNOWN, client_id=NODE)
            assert not intruder.connack().is_failure
            desired = _unique("desired")
            assert not control.publish(topics.node_desired("acme", "cam-1"), desired).is_failure
            assert node.got(desired)
            assert not node.disconnected.is_set()
            assert not intruder.got(desired, 0)
        finally:
            node.close()
            if intruder is not None:
                intruder.close()


class TestDevBrokerRefusesUnknownCredentials:
    def test_wrong_password_gets_no_session(self, dev_broker: Broker) -> None:
        stranger = connect_probe(dev_broker, NODE, password="not-the-password")
        try:
            reason = stranger.connack()
            assert reason.is_failure
            assert reason.getName() in ("Bad user name or password", "Not authorized")
        finally:
            stranger.close()
