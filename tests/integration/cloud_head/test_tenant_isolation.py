"""Tenants apart on a real mosquitto: the registry's password and ACL files, reloaded by SIGHUP.

DESIGN.md §7 invariant 3 at the broker: none of tenant B's identities (operator, ingest, an
enrolled node) can read or write tenant A's topics (the test watches for the message and
sees none arrive), A's own traffic flows between A's identities, and once B is deleted and
the broker reloads, B's identities cannot connect and their open sessions are dropped.
Within a tenant, see ``test_node_identities.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_head.tenants import TenantRegistry, ingest_share_group
from continuum.embedded import EmbeddedBroker
from continuum.wire import topics
from continuum.wire.identities import control_identity, ingest_identity, node_identity
from tests.mqtt_probe import WAIT_S, Probe

pytestmark = pytest.mark.integration

#: How long to wait for a message that must not arrive, after the control subscriber
#: already got it (mosquitto fans a message out to every subscriber at once).
GRACE_S = 0.3
A, B = "tenant-a", "tenant-b"
#: Each tenant's one enrolled node.
NODE = "cam-1"


@dataclass
class Setup:
    registry: TenantRegistry
    broker: EmbeddedBroker
    passwords: dict[str, str]
    probes: list[Probe]

    def probe(self, user: str, password: str | None = None) -> Probe:
        """Connect a probe as one identity (its own password unless given); closed after."""
        secret = self.passwords[user] if password is None else password
        made = Probe(self.broker, user, secret, client_id=user)
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
    """A broker on the registry's files; tenants A and B, each with node cam-1, applied."""
    registry = TenantRegistry(tmp_path / "tenants")
    broker = EmbeddedBroker(
        tmp_path / "broker", password_file=registry.password_file, acl_file=registry.acl_file
    ).start()
    made = Setup(registry, broker, {}, [])
    try:
        for name in (A, B):
            credentials = registry.create(name).credentials
            assert credentials is not None
            made.passwords[credentials.username] = credentials.password
            made.passwords[credentials.control_username] = credentials.control_password
            made.passwords[ingest_identity(name, 0)] = credentials.ingest_password
            node = registry.enroll_node(name, NODE)
            assert node.password is not None
            made.passwords[node.username] = node.password
        made.apply()
        yield made
    finally:
        for probe in made.probes:
            probe.close()
        broker.stop()


A_NODE, B_NODE = node_identity(A, NODE), node_identity(B, NODE)


def _unique(tag: str) -> bytes:
    return f"{tag}-{time.monotonic_ns()}".encode()


class TestTenantCannotReadAnotherTenant:
    def test_b_subscriptions_to_a_receive_none_of_a_messages(self, setup: Setup) -> None:
        a_node, a_operator = setup.probe(A_NODE), setup.probe(A)
        a_operator.subscribe(topics.tenant_filter(A))  # control: the messages do flow
        spies = [setup.probe(B), setup.probe(B_NODE), setup.probe(control_identity(B))]
        for spy in spies:
            for filter_ in (topics.tenant_filter(A), "ctm/#", "#", topics.shared("ctm/+/#")):
                spy.subscribe(filter_)
        sample, status = _unique("a-sample"), _unique("a-status")
        assert not a_node.publish(topics.samples(A, "line-7", NODE), sample).is_failure
        assert not a_node.publish(topics.node_status(A, NODE), status).is_failure
        assert a_operator.got(sample) and a_operator.got(status)
        assert not spies[0].got(sample, GRACE_S)
        assert all(spy.received == [] for spy in spies)

    def test_b_ingest_reads_its_own_samples_but_not_a(self, setup: Setup) -> None:
        a_node, b_node = setup.probe(A_NODE), setup.probe(B_NODE)
        a_ingest, b_ingest = setup.probe(ingest_identity(A, 0)), setup.probe(ingest_identity(B, 0))
        a_group = ingest_share_group(setup.passwords[ingest_identity(A, 0)])
        b_group = ingest_share_group(setup.passwords[ingest_identity(B, 0)])
        b_ingest.subscribe(topics.shared(topics.pipeline_filter(B, "samples"), b_group))
        # B's ingest joins A's samples under every group it can name, its own secret one too.
        for group in (topics.INGEST_SHARE_GROUP, b_group):
            b_ingest.subscribe(topics.shared(topics.pipeline_filter(A, "samples"), group))
        a_ingest.subscribe(topics.shared(topics.pipeline_filter(A, "samples"), a_group))
        own, other = _unique("b-sample"), _unique("a-sample")
        assert not b_node.publish(topics.samples(B, "line-1", NODE), own).is_failure
        assert not a_node.publish(topics.samples(A, "line-7", NODE), other).is_failure
        assert b_ingest.got(own)
        assert a_ingest.got(other)
        assert not b_ingest.got(other, GRACE_S)


class TestTenantCannotWriteAnotherTenant:
    def test_b_publish_into_a_is_refused_and_never_delivered(self, setup: Setup) -> None:
        a_node, a_operator = setup.probe(A_NODE), setup.probe(A)
        a_operator.subscribe(topics.tenant_filter(A))
        forged_desired, forged_sample = _unique("forged-desired"), _unique("forged-sample")
        for user in (control_identity(B), B_NODE, ingest_identity(B, 0)):
            b = setup.probe(user)
            for topic, payload in (
                (topics.node_desired(A, NODE), forged_desired),
                (topics.samples(A, "line-7", NODE), forged_sample),
                (topics.node_stored(A, NODE), forged_sample),
            ):
                reason = b.publish(topic, payload)
                assert reason.is_failure and reason.getName() == "Not authorized", (user, topic)
        control = _unique("a-control")
        assert not a_node.publish(topics.node_status(A, NODE), control).is_failure
        assert a_operator.got(control)  # delivered after the forgeries would have been
        assert not a_operator.got(forged_desired, GRACE_S)
        assert not a_operator.got(forged_sample, 0)

    def test_a_identities_talk_within_a(self, setup: Setup) -> None:
        a_node, a_control = setup.probe(A_NODE), setup.probe(control_identity(A))
        a_node.subscribe(topics.node_desired(A, NODE))
        payload = _unique("a-desired")
        assert not a_control.publish(topics.node_desired(A, NODE), payload).is_failure
        assert a_node.got(payload)


class TestRevocationTakesEffectOnReload:
    def test_deleted_tenant_cannot_connect_and_its_sessions_are_dropped(self, setup: Setup) -> None:
        b_users = (B, B_NODE, control_identity(B), ingest_identity(B, 0))
        before = [setup.probe(user) for user in b_users]
        assert not any(probe.connack().is_failure for probe in before)
        setup.registry.delete(B)
        setup.apply()
        for user, probe in zip(b_users, before, strict=True):
            assert probe.disconnected.wait(WAIT_S), f"{user}'s open session survived the reload"
        for probe in before:
            probe.close()  # stop its reconnects before the refusal is probed
        for user in b_users:
            refused = setup.probe(user).connack()
            assert refused.is_failure, user
            assert refused.getName() in ("Not authorized", "Bad user name or password")
        a_node, a_operator = setup.probe(A_NODE), setup.probe(A)  # A is untouched
        a_operator.subscribe(topics.tenant_filter(A))
        payload = _unique("a-after")
        assert not a_node.publish(topics.node_status(A, NODE), payload).is_failure
        assert a_operator.got(payload)

    def test_rotated_passwords_replace_the_old_ones(self, setup: Setup) -> None:
        old = {user: setup.passwords[user] for user in (A, control_identity(A))}
        new = setup.registry.rotate_credentials(A)
        setup.apply()
        for user, password in old.items():
            assert setup.probe(user, password).connack().is_failure, user
        assert not setup.probe(A, new.password).connack().is_failure
        assert not setup.probe(control_identity(A), new.control_password).connack().is_failure
        assert not setup.probe(ingest_identity(A, 3), new.ingest_password).connack().is_failure
