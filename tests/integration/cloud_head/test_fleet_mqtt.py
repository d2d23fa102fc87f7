"""The fleet worker over a real mosquitto: retained status replayed, the last will seen, and
the live faults of issue 12: empty messages sent by the nodes' own identities, and a
SIGKILLed broker; on a broker that knows the tenant the worker connects as its control
identity (control@TENANT).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_head.fleet import FleetRegistry, FleetWorker
from cloud_head.tenants import NodeCredentials, TenantCredentials, TenantRegistry
from continuum.embedded import EmbeddedBroker
from continuum.wire import topics
from continuum.wire.messages import NodeStatus, Telemetry
from continuum.wire.mqtt import BrokerSettings

pytestmark = pytest.mark.integration


def status(tenant: str, node: str, online: bool, heartbeat_s: float | None = None) -> bytes:
    return NodeStatus(
        node=node,
        tenant=tenant,
        online=online,
        labels={"continuum.io/tier": "edge", "continuum.io/site": f"site-{node}"},
        backends=["onnxruntime"],
        agent_version="0.1.0",
        pipelines=["digits"],
        heartbeat_s=heartbeat_s,
        ts=time.time(),
    ).to_payload()


def window(node: str) -> bytes:
    return Telemetry(
        node=node,
        pipeline="digits",
        model_version="v1",
        window_s=5.0,
        frames=50,
        uplinked=2,
        dropped=0,
        ts=time.time(),
    ).to_payload()


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


def edge_client(
    broker: EmbeddedBroker,
    tenant: str,
    node: str,
    credentials: NodeCredentials | None = None,
) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=node, protocol=mqtt.MQTTv5)
    if credentials is not None:  # the node's own identity (edge.NODE@TENANT)
        client.username_pw_set(credentials.username, credentials.password)
    client.will_set(topics.node_status(tenant, node), status(tenant, node, False), 1, True)
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    client.connect(broker.host, broker.port, keepalive=5)
    client.loop_start()
    return client


class Heartbeats:
    """Edge nodes that re-publish their retained status every ``period_s``, as agents do."""

    def __init__(self, broker: EmbeddedBroker, tenant: str, nodes: list[str], period_s: float):
        self.tenant, self.period_s = tenant, period_s
        self.clients = {node: edge_client(broker, tenant, node) for node in nodes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-heartbeats", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            for node, client in self.clients.items():
                if client.is_connected():
                    payload = status(self.tenant, node, True, heartbeat_s=self.period_s)
                    client.publish(topics.node_status(self.tenant, node), payload, 1, True)
            if self._stop.wait(self.period_s):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()


#: The nodes the tenant broker enrols, each with its own identity.
NODES = ("cam-1", "cam-2", "cam-3")
#: The broker, the tenant, its credentials and its enrolled nodes' credentials.
TenantBroker = tuple[EmbeddedBroker, str, TenantCredentials, dict[str, NodeCredentials]]


@pytest.fixture
def tenant_broker(tmp_path: Path) -> Iterator[TenantBroker]:
    """A mosquitto on a tenant registry's password and ACL files, with one tenant and the
    nodes ``NODES`` enrolled: the tenant's credentials and each node's."""
    tenants = TenantRegistry(tmp_path / "tenants")
    tenant = f"it-{uuid.uuid4().hex[:8]}"
    credentials = tenants.create(tenant).credentials
    assert credentials is not None
    nodes = {node: tenants.enroll_node(tenant, node) for node in NODES}
    broker = EmbeddedBroker(
        tmp_path / "broker", password_file=tenants.password_file, acl_file=tenants.acl_file
    ).start()
    try:
        yield broker, tenant, credentials, nodes
    finally:
        broker.stop()


class TestFleetWorker:
    def test_retained_status_is_replayed_and_the_last_will_marks_a_node_offline(
        self, tmp_path: Path, mqtt_broker: EmbeddedBroker
    ) -> None:
        tenant = f"it-{uuid.uuid4().hex[:8]}"
        edge = edge_client(mqtt_broker, tenant, "cam-1")
        edge.publish(topics.node_status(tenant, "cam-1"), status(tenant, "cam-1", True), 1, True)
        window = Telemetry(
            node="cam-1",
            pipeline="digits",
            model_version="v1",
            window_s=5.0,
            frames=50,
            uplinked=2,
            dropped=0,
            ts=time.time(),
        )
        registry = FleetRegistry(tenant, tmp_path / "fleet.db")
        worker = FleetWorker(registry, BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port))
        try:
            # Started after the status was published: only the retained copy can tell it.
            worker.start()
            wait_for(lambda: [n.online for n in registry.nodes()] == [True])
            info = edge.publish(topics.telemetry(tenant, "digits", "cam-1"), window.to_payload(), 1)
            info.wait_for_publish(timeout=10)
            wait_for(lambda: len(registry.telemetry("cam-1", "digits")) == 1)

            edge.loop_stop()
            edge.socket().close()  # the box loses power: no DISCONNECT, the broker sends the will
            wait_for(lambda: [n.online for n in registry.nodes()] == [False])
            assert worker.stats()["connected"]
        finally:
            worker.stop()
            registry.close()


class TestEmptyStatusMessages:
    """Issue 12, fault 1: one empty message per node made the registry forget three nodes."""

    def test_empty_messages_from_the_nodes_own_identities_keep_nodes_labels_and_history(
        self, tmp_path: Path, tenant_broker: TenantBroker
    ) -> None:
        broker, tenant, credentials, enrolled = tenant_broker
        settings = BrokerSettings(
            host=broker.host,
            port=broker.port,
            username=credentials.control_username,
            password=credentials.control_password,
        )
        nodes = list(NODES)
        edges = [edge_client(broker, tenant, node, enrolled[node]) for node in nodes]
        registry = FleetRegistry(tenant, tmp_path / "fleet.db")
        worker = FleetWorker(registry, settings)
        try:
            worker.start()
            for node, edge in zip(nodes, edges, strict=True):
                edge.publish(topics.node_status(tenant, node), status(tenant, node, True), 1, True)
            # The retained statuses arrive once the worker is subscribed; telemetry is not
            # retained, so it is sent only then (on a loaded machine the subscribe can lag).
            wait_for(lambda: len(registry.nodes(online=True)) == 3)
            for node, edge in zip(nodes, edges, strict=True):
                edge.publish(topics.telemetry(tenant, "digits", node), window(node), 1)
            wait_for(lambda: sum(len(registry.telemetry(n, "digits")) for n in nodes) == 3)

            # Each box (a compromised one, say) may write only its own status: it sends a
            # stray empty publish, then clears its retained status.
            for node, edge in zip(nodes, edges, strict=True):
                for retain in (False, True):
                    sent = edge.publish(topics.node_status(tenant, node), b"", 1, retain)
                    sent.wait_for_publish(timeout=10)
            wait_for(
                lambda: sum(worker.stats()["rejected"].values()) + registry.stats()["cleared"] == 6
            )

            assert worker.stats()["rejected"] == {"empty_status": 6}
            kept = registry.nodes()
            assert [n.node for n in kept] == nodes
            assert all(n.online for n in kept)
            assert [n.labels["continuum.io/site"] for n in kept] == [f"site-{n}" for n in nodes]
            assert [len(registry.telemetry(n, "digits")) for n in nodes] == [1, 1, 1]
            assert worker.stats()["nodes"] == 3
        finally:
            worker.stop()
            registry.close()
            for edge in edges:
                edge.disconnect()
                edge.loop_stop()

        # The retained statuses are gone from the broker now; a restarted fleet still has
        # every node from its own file, and watches them by the clock.
        with FleetRegistry(tenant, tmp_path / "fleet.db") as restarted:
            assert [n.node for n in restarted.nodes()] == nodes
            assert [len(restarted.telemetry(n, "digits")) for n in nodes] == [1, 1, 1]


class TestBrokerDeath:
    """Issue 12, fault 4: after a broker SIGKILL every node stayed online for 150 s."""

    PERIOD_S = 2.0

    def test_nodes_go_offline_within_two_periods_and_come_back_after_a_restart(
        self,
        tmp_path: Path,
        private_mqtt_broker: EmbeddedBroker,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.WARNING, logger="cloud_head.fleet")
        tenant = f"it-{uuid.uuid4().hex[:8]}"
        broker = private_mqtt_broker
        registry = FleetRegistry(tenant, tmp_path / "fleet.db")
        worker = FleetWorker(registry, BrokerSettings(host=broker.host, port=broker.port))
        edges = Heartbeats(broker, tenant, ["cam-1", "cam-2"], self.PERIOD_S)
        try:
            worker.start()
            wait_for(lambda: len(registry.nodes(online=True)) == 2)
            assert worker.stats()["connected"] and worker.stats()["disconnected_since"] is None

            killed_at = time.time()
            broker.kill()
            wait_for(lambda: registry.nodes(online=True) == [], timeout_s=4 * self.PERIOD_S)
            offline_after_s = time.time() - killed_at
            # Each node's last message came at most one period before the kill.
            assert offline_after_s <= 2 * self.PERIOD_S + 1.0
            stats = worker.stats()
            assert not stats["connected"] and stats["disconnects"] == 1
            assert killed_at - 0.5 <= stats["disconnected_since"] <= killed_at + 1.0
            assert stats["timed_out"] == 2

            time.sleep(2.0)  # paho retries meanwhile: the loss is still logged once
            broker.restart()
            wait_for(lambda: len(registry.nodes(online=True)) == 2, timeout_s=40)
            wait_for(lambda: worker.stats()["connected"])
            assert worker.stats()["disconnected_since"] is None
            assert worker.stats()["disconnects"] == 1
            messages = [r.getMessage() for r in caplog.records]
            assert sum("broker connection failed" in m for m in messages) == 1
            assert sum("broker connection recovered" in m for m in messages) == 1
        finally:
            edges.close()
            worker.stop()
            registry.close()


class TestTickFailures:
    """A tick that keeps failing (the registry cannot write its file) is logged once."""

    def test_a_failing_tick_is_logged_once_not_at_every_tick(
        self, tmp_path: Path, mqtt_broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG, logger="cloud_head.fleet")
        tenant = f"it-{uuid.uuid4().hex[:8]}"
        registry = FleetRegistry(tenant, tmp_path / "fleet.db", flush_interval_s=0.05)
        worker = FleetWorker(registry, BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port))
        try:
            worker.start()
            wait_for(lambda: worker.connected)
            registry.close()  # from now on each tick's flush fails: its file is closed
            update = registry.handle(
                topics.node_status(tenant, "cam-1"), status(tenant, "cam-1", True)
            )
            assert update.kind == "status"  # kept in memory, to be written by the next tick
            time.sleep(30 * registry.tick_interval_s)
        finally:
            worker.stop()
        failed = [r for r in caplog.records if "tick" in r.getMessage()]
        assert len(failed) > 10, "the ticks did not fail: the test proved nothing"
        warned = [r for r in failed if r.levelno >= logging.WARNING]
        assert len(warned) == 1, [r.getMessage() for r in warned]
        assert f"fleet registry tick of {tenant} failed" in warned[0].getMessage()
        assert "closed database" in warned[0].getMessage()
