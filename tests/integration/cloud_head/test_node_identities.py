"""Inside a tenant every identity acts only as itself, on a real mosquitto (DESIGN.md §7.6).

One broker per module, started by ``continuum.embedded.broker`` on the tenant registry's own
password and ACL files: tenant acme with enrolled nodes a, b and c, tenant medica with node m.
Plain MQTT 5 clients then probe, with each identity's own password, what the generated ACL
grants: a node writes only its own data topics and reads only its own control topics; only
the cloud roles write desired state, receipts and artifacts; the broker binds client ids to
identities, so no one takes over another's session; and a revoked node is cut off by the
broker's reload while the rest of the fleet keeps working.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloud_head.tenants import Quotas, TenantRegistry, ingest_share_group
from continuum.cli import EXIT_OK, main
from continuum.embedded import EmbeddedBroker
from continuum.wire import topics
from continuum.wire.identities import control_identity, ingest_identity, node_identity
from tests.mqtt_probe import NOT_AUTHORIZED, WAIT_S, Probe

pytestmark = pytest.mark.integration

ACME, MEDICA, PIPELINE = "acme", "medica", "inspect"
#: How long to wait for a message that must not arrive, once a later fence message did
#: (mosquitto delivers one connection's messages in order).
GRACE_S = 0.3

NODE_A, NODE_B, NODE_C = (node_identity(ACME, n) for n in ("a", "b", "c"))
NODE_M = node_identity(MEDICA, "m")
CONTROL, INGEST = control_identity(ACME), ingest_identity(ACME, 0)


@dataclass
class Tenancy:
    """The registry under ``root/tenants``, its broker and every identity's password."""

    root: Path
    registry: TenantRegistry
    broker: EmbeddedBroker
    passwords: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def tenancy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenancy]:
    """Tenants acme (nodes a, b, c) and medica (node m) on a broker reading their files."""
    root = tmp_path_factory.mktemp("head")
    registry = TenantRegistry(root / "tenants")
    passwords: dict[str, str] = {}
    for tenant, nodes in ((ACME, ("a", "b", "c")), (MEDICA, ("m",))):
        credentials = registry.create(tenant, Quotas(edge_nodes=3)).credentials
        assert credentials is not None
        passwords[credentials.username] = credentials.password
        passwords[credentials.control_username] = credentials.control_password
        for user in credentials.ingest_usernames:
            passwords[user] = credentials.ingest_password
        for node in nodes:
            enrolled = registry.enroll_node(tenant, node)
            assert enrolled.password is not None
            passwords[enrolled.username] = enrolled.password
    broker = EmbeddedBroker(
        root / "broker", password_file=registry.password_file, acl_file=registry.acl_file
    ).start()
    try:
        yield Tenancy(root, registry, broker, passwords)
    finally:
        broker.stop()


Connect = Callable[..., Probe]


@pytest.fixture
def connect(tenancy: Tenancy) -> Iterator[Connect]:
    """Connect a probe as an identity (its own password unless given); closed after the test.

    Its client id is the identity, as agents and services use: the broker forces it anyway.
    """
    made: list[Probe] = []

    def _connect(user: str, password: str | None = None, client_id: str | None = None) -> Probe:
        secret = tenancy.passwords[user] if password is None else password
        probe = Probe(tenancy.broker, user, secret, client_id=client_id or user)
        made.append(probe)
        return probe

    yield _connect
    for probe in made:
        probe.close()


def _unique(tag: str) -> bytes:
    return f"{tag}-{time.monotonic_ns()}".encode()


def _refused(probe: Probe, topic: str, payload: bytes) -> bool:
    return probe.publish(topic, payload).value == NOT_AUTHORIZED


class TestANodeActsOnlyAsItself:
    def test_node_publishes_its_own_status_and_samples(self, connect: Connect) -> None:
        node, control, ingest = connect(NODE_A), connect(CONTROL), connect(INGEST)
        control.subscribe(topics.nodes_filter(ACME, "status"))
        ingest.subscribe(topics.shared(topics.pipeline_filter(ACME, "samples")))
        status, sample = _unique("a-status"), _unique("a-sample")
        assert not node.publish(topics.node_status(ACME, "a"), status).is_failure
        assert not node.publish(topics.samples(ACME, PIPELINE, "a"), sample).is_failure
        assert control.got(status) and ingest.got(sample)

    def test_node_cannot_write_another_nodes_topics_nor_cloud_topics(
        self, connect: Connect
    ) -> None:
        node, control, ingest = connect(NODE_A), connect(CONTROL), connect(INGEST)
        operator, victim = connect(ACME), connect(NODE_B)
        operator.subscribe(topics.tenant_filter(ACME))  # reads the whole tree
        control.subscribe(topics.nodes_filter(ACME, "status"))
        control.subscribe(topics.pipeline_filter(ACME, "telemetry"))
        ingest.subscribe(topics.shared(topics.pipeline_filter(ACME, "samples")))
        victim.subscribe(topics.node_desired(ACME, "b"))
        victim.subscribe(topics.node_stored(ACME, "b"))
        forged = {
            topics.node_status(ACME, "b"): _unique("forged-status"),
            topics.samples(ACME, PIPELINE, "b"): _unique("forged-samples"),
            topics.telemetry(ACME, PIPELINE, "b"): _unique("forged-telemetry"),
            topics.node_stored(ACME, "b"): _unique("forged-stored"),
            topics.node_desired(ACME, "b"): _unique("forged-desired"),
            topics.artifact_manifest(ACME, "digits", "v9"): _unique("forged-manifest"),
        }
        for topic, payload in forged.items():
            assert _refused(node, topic, payload), topic
        fence = _unique("fence")
        assert not node.publish(topics.node_status(ACME, "a"), fence).is_failure
        assert operator.got(fence) and control.got(fence)
        for observer in (operator, control, ingest, victim):
            assert not any(observer.got(p, 0) for p in forged.values())

    def test_node_cannot_read_another_nodes_desired_state(self, connect: Connect) -> None:
        node, control = connect(NODE_A), connect(CONTROL)
        node.subscribe(topics.nodes_filter(ACME, "desired"))
        node.subscribe(topics.node_desired(ACME, "b"))
        other, own = _unique("desired-b"), _unique("desired-a")
        assert not control.publish(topics.node_desired(ACME, "b"), other).is_failure
        assert not control.publish(topics.node_desired(ACME, "a"), own).is_failure
        assert node.got(own)
        assert not node.got(other, GRACE_S)


class TestCloudRoles:
    def test_control_writes_desired_state_and_artifacts(self, connect: Connect) -> None:
        control, node = connect(CONTROL), connect(NODE_A)
        node.subscribe(topics.node_desired(ACME, "a"))
        node.subscribe(topics.models_filter(ACME))
        desired, manifest = _unique("desired"), _unique("manifest")
        assert not control.publish(topics.node_desired(ACME, "a"), desired).is_failure
        assert not control.publish(topics.artifact_manifest(ACME, "m", "v1"), manifest).is_failure
        assert node.got(desired) and node.got(manifest)
        assert _refused(control, topics.samples(ACME, PIPELINE, "a"), b"x")

    def test_ingest_reads_samples_through_the_share_and_writes_receipts(
        self, connect: Connect
    ) -> None:
        ingest, node = connect(INGEST), connect(NODE_A)
        ingest.subscribe(topics.shared(topics.pipeline_filter(ACME, "samples")))
        ingest.subscribe(topics.shared(topics.pipeline_filter(ACME, "feedback")))
        node.subscribe(topics.node_stored(ACME, "a"))
        sample, label = _unique("sample"), _unique("feedback")
        assert not node.publish(topics.samples(ACME, PIPELINE, "a"), sample).is_failure
        assert not node.publish(topics.feedback(ACME, PIPELINE, "a"), label).is_failure
        assert ingest.got(sample) and ingest.got(label)
        receipt = _unique("receipt")
        assert not ingest.publish(topics.node_stored(ACME, "a"), receipt).is_failure
        assert node.got(receipt)
        assert _refused(ingest, topics.node_desired(ACME, "a"), b"x")

    def test_the_operator_reads_and_writes_nothing(self, connect: Connect) -> None:
        operator = connect(ACME)
        for topic in (topics.node_desired(ACME, "a"), topics.samples(ACME, PIPELINE, "a")):
            assert _refused(operator, topic, b"x"), topic

    def test_a_node_joining_a_share_group_takes_nothing_from_ingest(
        self, tenancy: Tenancy, connect: Connect
    ) -> None:
        intruder, ingest, node = connect(NODE_B), connect(INGEST), connect(NODE_A)
        group = ingest_share_group(tenancy.passwords[INGEST])
        samples_filter = topics.pipeline_filter(ACME, "samples")
        ingest.subscribe(topics.shared(samples_filter, group))
        # Every group the node can name: the well-known one, and a guess of the secret one.
        for guess in (topics.INGEST_SHARE_GROUP, "ingest-0"):
            intruder.subscribe(topics.shared(samples_filter, guess))
        samples = [_unique(f"sample-{i}") for i in range(10)]
        for payload in samples:
            assert not node.publish(topics.samples(ACME, PIPELINE, "a"), payload).is_failure
        assert all(ingest.got(p) for p in samples)  # none was handed to the intruder
        assert intruder.received == []


class TestClientIdsAreBoundToIdentities:
    @pytest.mark.parametrize("claimant", [NODE_B, NODE_M], ids=["same-tenant", "other-tenant"])
    def test_claiming_a_nodes_client_id_does_not_take_its_session(
        self, connect: Connect, claimant: str
    ) -> None:
        node, control = connect(NODE_A), connect(CONTROL)
        node.subscribe(topics.node_desired(ACME, "a"))
        intruder = connect(claimant, client_id=NODE_A)
        assert not intruder.connack().is_failure
        desired = _unique("desired")
        assert not control.publish(topics.node_desired(ACME, "a"), desired).is_failure
        assert node.got(desired)
        assert not node.disconnected.is_set()
        assert not intruder.got(desired, 0)


class TestRevocation:
    def test_revoked_node_is_cut_off_and_the_rest_of_the_fleet_keeps_working(
        self, tenancy: Tenancy, connect: Connect
    ) -> None:
        revoked, kept, control = connect(NODE_C), connect(NODE_A), connect(CONTROL)
        revoked.subscribe(topics.node_desired(ACME, "c"))
        kept.subscribe(topics.node_desired(ACME, "a"))
        assert not revoked.connack().is_failure
        password_file = tenancy.root / "acme.password"
        password_file.write_text(tenancy.passwords[ACME] + "\n")
        argv = ["node", "revoke", ACME, "c", "--root", str(tenancy.root)]
        argv += ["--password-file", str(password_file), "--broker-pid", str(tenancy.broker.pid)]
        code = main(argv)
        assert code == EXIT_OK
        assert revoked.disconnected.wait(WAIT_S), "the revoked node's session survived"
        assert connect(NODE_C).connack().is_failure  # its password is gone
        late = _unique("desired-c")
        assert not control.publish(topics.node_desired(ACME, "c"), late).is_failure
        desired = _unique("desired-a")
        assert not control.publish(topics.node_desired(ACME, "a"), desired).is_failure
        assert kept.got(desired) and not kept.disconnected.is_set()
        assert not revoked.got(late, GRACE_S)
        status = _unique("a-status")
        assert not kept.publish(topics.node_status(ACME, "a"), status).is_failure
