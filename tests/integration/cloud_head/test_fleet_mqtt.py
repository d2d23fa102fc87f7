"""The fleet worker over a real mosquitto: retained status replayed, the last will seen."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_head.fleet import FleetRegistry, FleetWorker
from continuum.embedded import EmbeddedBroker
from continuum.wire import topics
from continuum.wire.messages import NodeStatus, Telemetry
from continuum.wire.mqtt import BrokerSettings

pytestmark = pytest.mark.integration


def status(tenant: str, node: str, online: bool) -> bytes:
    return NodeStatus(
        node=node,
        tenant=tenant,
        online=online,
        labels={"continuum.io/tier": "edge"},
        backends=["onnxruntime"],
        agent_version="0.1.0",
        pipelines=["digits"],
        ts=time.time(),
    ).to_payload()


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


def edge_client(broker: EmbeddedBroker, tenant: str, node: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=node, protocol=mqtt.MQTTv5)
    client.will_set(topics.node_status(tenant, node), status(tenant, node, False), 1, True)
    client.connect(broker.host, broker.port, keepalive=5)
    client.loop_start()
    return client


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
