"""A hostile client inside the tenant: one edge box's own identity turned against the rest.

DESIGN.md §7 invariants 6 and 7 (issue 14, "Done when"), on a real mosquitto started on the
tenant registry's password and ACL files, with a real edge agent (node A, its own enrolled
identity), a real ingest worker (``ingest.0@acme``) writing real Parquet, and the tenant's
control identity publishing signed desired state:

- with node B's identity, every forgery the outside probe made is refused by the broker
  (MQTT 5 PUBACK "not authorized") and never reaches a subscriber: A's retained desired
  state, A's receipts, model manifests and chunks, A's status and telemetry, A's samples;
  joining ingest's shared subscription or subscribing to A's topics delivers nothing;
- with another tenant's identity, connecting under A's client id neither kicks A off nor
  takes its session: A keeps its one connection and applies the next real desired state;
- while all that goes on, every sample id A queued ends in the store exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud_head.ingest import IngestService, IngestWorker
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from cloud_head.tenants import TenantRegistry, ingest_share_group
from continuum.embedded import EmbeddedBroker
from continuum.spec import load_pipeline
from continuum.wire import topics
from continuum.wire.codec import sample_id
from continuum.wire.identities import control_identity, ingest_identity, node_identity
from continuum.wire.messages import NodeStatus, SeqRange, StoredReceipt
from continuum.wire.mqtt import BrokerSettings
from tests.edge_agent_kit import (
    AgentRig,
    CloudStandIn,
    pattern_source,
    raw_ids,
    record_selected,
    stored_ids,
    wait_for,
)
from tests.mqtt_probe import NOT_AUTHORIZED, Probe

pytestmark = pytest.mark.integration

TENANT, OTHER, PIPELINE = "acme", "medica", "inspect"
NODE_A, NODE_B, NODE_M = "node-a", "node-b", "node-m"
#: How long to wait for a message that must not arrive once a fence message did.
GRACE_S = 0.5


@dataclass
class Tenancy:
    """The registry, its broker and every identity's password."""

    registry: TenantRegistry
    broker: EmbeddedBroker
    passwords: dict[str, str]
    probes: list[Probe]

    def settings(self, identity: str, **extra: Any) -> BrokerSettings:
        """Broker settings that log in as ``identity``."""
        return BrokerSettings(
            host=self.broker.host,
            port=self.broker.port,
            username=identity,
            password=self.passwords[identity],
            **extra,
        )

    def probe(self, identity: str, *, client_id: str | None = None) -> Probe:
        """A raw MQTT 5 client logged in as ``identity`` (closed after the test)."""
        made = Probe(self.broker, identity, self.passwords[identity], client_id=client_id)
        self.probes.append(made)
        return made


@pytest.fixture
def tenancy(tmp_path: Path) -> Iterator[Tenancy]:
    """Two tenants, acme with nodes A and B and medica with node M, on an ACL broker."""
    registry = TenantRegistry(tmp_path / "tenants")
    passwords: dict[str, str] = {}
    for name in (TENANT, OTHER):
        credentials = registry.create(name).credentials
        assert credentials is not None
        passwords[name] = credentials.password
        passwords[control_identity(name)] = credentials.control_password
        passwords[ingest_identity(name, 0)] = credentials.ingest_password
    for tenant, node in ((TENANT, NODE_A), (TENANT, NODE_B), (OTHER, NODE_M)):
        enrolled = registry.enroll_node(tenant, node)
        assert enrolled.password is not None and enrolled.username == node_identity(tenant, node)
        passwords[enrolled.username] = enrolled.password
    broker = EmbeddedBroker(
        tmp_path / "broker", password_file=registry.password_file, acl_file=registry.acl_file
    ).start()
    made = Tenancy(registry, broker, passwords, [])
    try:
        yield made
    finally:
        for probe in made.probes:
            probe.close()
        broker.stop()


def _marker(tag: str) -> bytes:
    return f"{tag}-{time.monotonic_ns()}".encode()


def _status(node: str, marker: str) -> bytes:
    forged = NodeStatus(
        node=node,
        tenant=TENANT,
        online=True,
        labels={"continuum.io/site": marker},
        agent_version="forged",
        ts=time.time(),
    )
    return forged.to_payload()


def _receipt(node: str, first: int, last: int) -> bytes:
    return StoredReceipt(node=node, seqs=[SeqRange((first, last))], ts=time.time()).to_payload()


#: What node B's identity tries to write, as the outside probe did (finding 1, 2 and 9).
FORGERIES = {
    "A's retained desired state": lambda m: (topics.node_desired(TENANT, NODE_A), m, True),
    "A's receipts": lambda m: (topics.node_stored(TENANT, NODE_A), m, False),
    "A's status (labels ingest trusts)": lambda m: (
        topics.node_status(TENANT, NODE_A),
        _status(NODE_A, m.decode()),
        True,
    ),
    "A's reported state": lambda m: (topics.node_reported(TENANT, NODE_A), m, True),
    "A's telemetry (canary accuracy)": lambda m: (
        topics.telemetry(TENANT, PIPELINE, NODE_A),
        m,
        False,
    ),
    "A's samples": lambda m: (topics.samples(TENANT, PIPELINE, NODE_A), m, False),
    "A's delayed labels": lambda m: (topics.feedback(TENANT, PIPELINE, NODE_A), m, False),
    "a model manifest": lambda m: (topics.artifact_manifest(TENANT, "inspector", "v9"), m, True),
    "a model chunk": lambda m: (topics.artifact_chunk(TENANT, "inspector", "v9", 0), m, True),
    "B's own desired state": lambda m: (topics.node_desired(TENANT, NODE_B), m, True),
    "any receipt": lambda m: (topics.node_stored(TENANT, NODE_B), m, False),
}


class TestANodeActsOnlyAsItself:
    @pytest.mark.parametrize("forgery", sorted(FORGERIES))
    def test_node_b_cannot_write_it(self, tenancy: Tenancy, forgery: str) -> None:
        observer = tenancy.probe(TENANT)  # the operator reads the whole tree
        observer.subscribe(topics.tenant_filter(TENANT))
        attacker = tenancy.probe(node_identity(TENANT, NODE_B))
        topic, payload, _retained = FORGERIES[forgery](_marker("forged"))
        reason = attacker.publish(topic, payload)
        assert reason.value == NOT_AUTHORIZED, f"{forgery}: PUBACK {reason}"
        # A fence from B's own telemetry topic, which B may write: once it arrived, the
        # forgery (published and refused before it) would have arrived too.
        fence = _marker("fence")
        assert not attacker.publish(topics.telemetry(TENANT, PIPELINE, NODE_B), fence).is_failure
        assert observer.got(fence)
        assert not observer.got(payload, GRACE_S), f"{forgery} reached a subscriber"

    def test_node_b_reads_nothing_of_node_a(self, tenancy: Tenancy) -> None:
        attacker = tenancy.probe(node_identity(TENANT, NODE_B))
        for filter_ in (
            topics.shared(topics.pipeline_filter(TENANT, "samples")),  # the well-known group
            topics.tenant_filter(TENANT),
            topics.node_desired(TENANT, NODE_A),
            topics.node_stored(TENANT, NODE_A),
            "#",
        ):
            attacker.subscribe(filter_)
        node_a, control = (
            tenancy.probe(node_identity(TENANT, NODE_A)),
            tenancy.probe(control_identity(TENANT)),
        )
        ingest = tenancy.probe(ingest_identity(TENANT, 0))
        secret_group = ingest_share_group(tenancy.passwords[ingest_identity(TENANT, 0)])
        ingest.subscribe(topics.shared(topics.pipeline_filter(TENANT, "samples"), secret_group))
        sample, desired = _marker("a-sample"), _marker("a-desired")
        assert not node_a.publish(topics.samples(TENANT, PIPELINE, NODE_A), sample).is_failure
        assert not control.publish(topics.node_desired(TENANT, NODE_A), desired).is_failure
        assert ingest.got(sample)
        assert not attacker.got(sample, GRACE_S) and not attacker.got(desired, 0)
        assert attacker.received == []

    @pytest.mark.parametrize("thief", [node_identity(OTHER, NODE_M), node_identity(TENANT, NODE_B)])
    def test_nobody_takes_over_a_nodes_session_by_its_client_id(
        self, tenancy: Tenancy, thief: str
    ) -> None:
        identity = node_identity(TENANT, NODE_A)
        node_a = tenancy.probe(identity, client_id=identity)
        node_a.subscribe(topics.node_desired(TENANT, NODE_A))
        taken = tenancy.probe(thief, client_id=identity)  # the id the outside probe guessed
        taken.subscribe(topics.node_desired(TENANT, NODE_A))
        time.sleep(GRACE_S)
        assert not node_a.disconnected.is_set(), f"{thief} kicked node A off"
        message = _marker("control")
        control = tenancy.probe(control_identity(TENANT))
        assert not control.publish(topics.node_desired(TENANT, NODE_A), message).is_failure
        assert node_a.got(message), "node A's control message did not reach it"
        assert not taken.got(message, GRACE_S)


class TestNothingLostUnderAttack:
    @pytest.mark.timeout(180)
    def test_every_sample_node_a_queued_is_stored_once_while_b_forges_and_steals(
        self, tmp_path: Path, tenancy: Tenancy
    ) -> None:
        control = CloudStandIn(
            tenancy.broker.host,
            tenancy.broker.port,
            TENANT,
            settings=tenancy.settings(control_identity(TENANT)),
        )
        identity = node_identity(TENANT, NODE_A)
        (tmp_path / "node-a").mkdir()
        rig = AgentRig(
            tmp_path / "node-a",
            node=NODE_A,
            tenant=TENANT,
            pipeline=PIPELINE,
            broker={
                "host": tenancy.broker.host,
                "port": tenancy.broker.port,
                "username": identity,
                "password": tenancy.passwords[identity],
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 1.0,
            },
            cloud=control,
        )
        store = SampleStore(tmp_path / "store")
        labels = LabelStore(tmp_path / "labels.db")
        service = IngestService(
            TENANT, [load_pipeline(rig.spec)], store, labels, tmp_path / "seen.db"
        )
        worker = IngestWorker(
            service,
            tenancy.settings(ingest_identity(TENANT, 0), session_expiry_s=600),
            client_id=ingest_identity(TENANT, 0),
        )
        worker.start()
        thief = tenancy.probe(node_identity(TENANT, NODE_B))
        thief.subscribe(topics.shared(topics.pipeline_filter(TENANT, "samples")))
        thief.subscribe(topics.tenant_filter(TENANT))
        frames = 1200
        agent = rig.agent(source=pattern_source([0.0], count=frames, fps=60.0))
        selected = record_selected(agent)
        stop = threading.Event()
        refused: list[int] = []

        def forge() -> None:  # B confirms A's samples before ingest stores them, all along
            seq = 0
            while not stop.is_set():
                reason = thief.publish(topics.node_stored(TENANT, NODE_A), _receipt(NODE_A, 0, seq))
                refused.append(reason.value)
                seq += 50
                time.sleep(0.05)

        forger = threading.Thread(target=forge, daemon=True)
        try:
            agent.start()
            rig.roll_out("v1", generation=1)
            forger.start()
            wait_for(lambda: len(stored_ids(store, TENANT, PIPELINE)) >= 60, timeout_s=30.0)
            # The session was never taken: the cloud's next desired state still applies.
            rig.roll_out("v2", generation=2)
            wait_for(lambda: agent.runtimes[PIPELINE].model_version == "v2", timeout_s=30.0)
            wait_for(lambda: agent.runtimes[PIPELINE].finished, timeout_s=90.0)
            expected = {sample_id(NODE_A, seq) for seq in selected}
            wait_for(lambda: stored_ids(store, TENANT, PIPELINE) == expected, timeout_s=60.0)
            wait_for(lambda: agent.outbox.stats().samples == 0, timeout_s=30.0)
        finally:
            stop.set()
            forger.join(timeout=5)
            agent.stop(timeout_s=5.0)
            worker.stop()
            service.close()
            labels.close()
            control.close()
        assert len(selected) == frames
        raw = raw_ids(store, TENANT, PIPELINE)
        assert len(raw) == len(set(raw)) == frames  # each once, none lost
        assert refused and set(refused) == {NOT_AUTHORIZED}
        stolen = [p for t, p in thief.received if t.startswith(f"ctm/{TENANT}/pipelines/")]
        assert stolen == [], f"node B received {len(stolen)} of node A's messages"
        assert agent.link.connects == 1  # nobody kicked it off


class TestTheCloudSideHearsARefusal:
    def test_a_publish_the_acl_refuses_is_an_error_not_a_success(self, tenancy: Tenancy) -> None:
        # The fleet relays the controllers' desired state and artifacts: a refused one
        # must fail the rollout step, not pass as published.
        from continuum.errors import AccessDeniedError
        from continuum.wire.mqtt import connect, make_client, publish_and_wait

        settings = tenancy.settings(control_identity(TENANT))
        client = make_client(control_identity(TENANT), settings)
        connect(client, settings)
        client.loop_start()
        try:
            publish_and_wait(client, topics.node_desired(TENANT, NODE_A), b"{}", retain=False)
            with pytest.raises(AccessDeniedError, match="may not write that topic"):
                publish_and_wait(client, topics.samples(TENANT, PIPELINE, NODE_A), b"forged")
            publish_and_wait(client, topics.node_desired(TENANT, NODE_B), b"{}", retain=False)
        finally:
            client.loop_stop()
            client.disconnect()
