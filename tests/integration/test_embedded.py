"""The embedded defaults for real: label placement on a local Ray cluster; a mosquitto broker."""

from __future__ import annotations

import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import ray
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from continuum.embedded import EmbeddedBroker, LocalRayCluster
from continuum.errors import ConfigError, NotReadyError
from continuum.labels import SITE, TIER

pytestmark = pytest.mark.integration

WAIT_S = 10.0


@ray.remote(num_cpus=1)
def node_of_this_task() -> str:
    """Return the id of the node the task ran on."""
    return ray.get_runtime_context().get_node_id()


def labels_by_node_id() -> dict[str, dict[str, str]]:
    """Return the labels of every live node, keyed by node id."""
    return {node["NodeID"]: node["Labels"] for node in ray.nodes() if node["Alive"]}


def run_where(selector: dict[str, str]) -> dict[str, str]:
    """Run a task with ``selector`` and return the labels of the node it ran on."""
    ref = node_of_this_task.options(label_selector=selector).remote()
    return labels_by_node_id()[ray.get(ref, timeout=60)]


class TestTasksRunWhereTheirLabelSelectorPoints:
    def test_cloud_selector_runs_on_the_head(self, ray_cluster: LocalRayCluster) -> None:
        labels = run_where({TIER: "cloud"})
        assert labels[TIER] == "cloud"

    def test_edge_selector_runs_on_the_edge_node(self, ray_cluster: LocalRayCluster) -> None:
        labels = run_where({TIER: "edge"})
        assert (labels[TIER], labels[SITE]) == ("edge", "lux-1")

    def test_not_and_in_expressions_select_nodes(self, ray_cluster: LocalRayCluster) -> None:
        assert run_where({TIER: "!edge"})[TIER] == "cloud"
        assert run_where({TIER: "in(edge,hpc)"})[TIER] == "edge"

    def test_unsatisfiable_selector_stays_pending_until_cancelled(
        self, ray_cluster: LocalRayCluster
    ) -> None:
        ref = node_of_this_task.options(label_selector={TIER: "hpc"}).remote()
        ready, _ = ray.wait([ref], timeout=3.0)
        assert ready == []
        ray.cancel(ref)
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(ref, timeout=WAIT_S)


class TestLocalRayCluster:
    def test_every_node_registers_with_its_labels(self, ray_cluster: LocalRayCluster) -> None:
        registered = sorted(
            sorted((k, v) for k, v in labels.items() if not k.startswith("ray.io/"))
            for labels in labels_by_node_id().values()
        )
        expected = sorted(sorted(node.labels.items()) for node in ray_cluster.nodes)
        assert registered == expected

    def test_token_is_private_to_the_cluster(self, ray_cluster: LocalRayCluster) -> None:
        token_path = ray_cluster.token_path
        assert token_path is not None
        assert token_path.stat().st_mode & 0o077 == 0
        assert ray_cluster.client_env == {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
        }
        assert len(ray_cluster.auth_token or "") == 64

    def test_stopping_another_cluster_ends_its_processes_and_spares_this_one(
        self, ray_cluster: LocalRayCluster, tmp_path: Path
    ) -> None:
        other = LocalRayCluster(tmp_path / "other", edge_nodes=[], head_cpus=1)
        try:
            other.start()
            session = other.nodes[0].pid  # each node runs in a session of its own
            started = live_processes_in_session(session)
        finally:
            other.stop()
        assert len(started) > 3  # gcs_server, raylet, agents: not just `ray start`
        assert started & live_processes_in_session(session) == set()
        assert ray_cluster.running
        assert run_where({TIER: "edge"})[TIER] == "edge"

    def test_invalid_label_is_refused_before_anything_starts(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="tier,site"):
            LocalRayCluster(tmp_path, edge_nodes=[{"continuum.io/tier,site": "edge"}])

    def test_too_long_temp_dir_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="unix sockets"):
            LocalRayCluster(tmp_path, temp_dir=tmp_path / ("x" * 60))


def live_processes_in_session(session_id: int) -> set[tuple[int, str]]:
    """Return (pid, start time) of every live, non-zombie process in a session (Linux /proc)."""
    found: set[tuple[int, str]] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == session_id:
            found.add((int(entry.name), fields[19]))
    return found


class MqttClient:
    """A paho 2 / MQTT 5 client for the tests: connect, subscribe and publish, bounded waits."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        client_id: str,
        *,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: ReasonCode | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry_s
        self.client.connect(
            broker.host, broker.port, keepalive=30, clean_start=clean_start, properties=properties
        )
        self.client.loop_start()
        assert self._connected.wait(WAIT_S), "no CONNACK"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason
        self._connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _m: Any, _r: Any, _p: Any) -> None:
        self._subscribed.set()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos=qos)
        assert self._subscribed.wait(WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published()

    def next_message(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class TestEmbeddedBroker:
    def test_published_message_reaches_a_subscriber(self, mqtt_broker: EmbeddedBroker) -> None:
        subscriber = MqttClient(mqtt_broker, "sub-roundtrip")
        publisher = MqttClient(mqtt_broker, "pub-roundtrip")
        try:
            subscriber.subscribe("ctm/acme/test/roundtrip")
            publisher.publish("ctm/acme/test/roundtrip", b"\x00hello")
            message = subscriber.next_message()
        finally:
            publisher.close()
            subscriber.close()
        assert (message.topic, message.payload, message.qos) == (
            "ctm/acme/test/roundtrip",
            b"\x00hello",
            1,
        )

    def test_retained_message_survives_a_restart(self, private_mqtt_broker: EmbeddedBroker) -> None:
        publisher = MqttClient(private_mqtt_broker, "pub-retained")
        publisher.publish("ctm/acme/nodes/n1/desired", b"v2", retain=True)
        publisher.close()
        port = private_mqtt_broker.port

        private_mqtt_broker.restart()

        subscriber = MqttClient(private_mqtt_broker, "sub-retained")
        try:
            subscriber.subscribe("ctm/acme/nodes/+/desired")
            message = subscriber.next_message()
        finally:
            subscriber.close()
        assert private_mqtt_broker.port == port
        assert (message.payload, message.retain) == (b"v2", True)

    def test_queued_qos1_message_for_an_offline_session_survives_a_restart(
        self, private_mqtt_broker: EmbeddedBroker
    ) -> None:
        # clean_start=False from the first connection: mosquitto 2.0.11 does not restore a
        # session opened with clean start (paho's default for a first connect) after a restart.
        ingest = MqttClient(
            private_mqtt_broker, "ingest-1", clean_start=False, session_expiry_s=600
        )
        ingest.subscribe("ctm/acme/pipelines/p/samples/+")
        ingest.close()
        publisher = MqttClient(private_mqtt_broker, "edge-1")
        publisher.publish("ctm/acme/pipelines/p/samples/edge-1", b"sample-7")
        publisher.close()

        private_mqtt_broker.restart()

        ingest = MqttClient(
            private_mqtt_broker, "ingest-1", clean_start=False, session_expiry_s=600
        )
        try:
            message = ingest.next_message()
        finally:
            ingest.close()
        assert (message.topic, message.payload) == (
            "ctm/acme/pipelines/p/samples/edge-1",
            b"sample-7",
        )

    def test_a_killed_broker_starts_again_on_the_same_port(
        self, private_mqtt_broker: EmbeddedBroker
    ) -> None:
        port = private_mqtt_broker.port
        private_mqtt_broker.kill()
        assert not private_mqtt_broker.running

        private_mqtt_broker.restart()

        client = MqttClient(private_mqtt_broker, "after-kill")
        client.close()
        assert (private_mqtt_broker.port, client.connack) == (port, 0)

    def test_password_file_refuses_anonymous_clients(self, tmp_path: Path) -> None:
        passwords = tmp_path / "passwd"
        subprocess.run(
            ["mosquitto_passwd", "-b", "-c", str(passwords), "acme-edge", "s3cret"], check=True
        )
        with EmbeddedBroker(tmp_path / "broker", password_file=passwords) as broker:
            anonymous = MqttClient(broker, "anonymous")
            anonymous.close()
            known = MqttClient(broker, "known", username="acme-edge", password="s3cret")
            known.close()
        assert anonymous.connack is not None and anonymous.connack.is_failure
        assert known.connack == 0

    def test_password_broker_binds_client_ids_to_usernames_on_its_listener(
        self, tmp_path: Path, mqtt_broker: EmbeddedBroker
    ) -> None:
        # A listener setting in mosquitto 2.0: it must follow the listener line to count.
        passwords = tmp_path / "passwd"
        subprocess.run(
            ["mosquitto_passwd", "-b", "-c", str(passwords), "edge.a@acme", "s3cret"], check=True
        )
        with EmbeddedBroker(tmp_path / "broker", password_file=passwords) as broker:
            lines = broker.config_path.read_text().splitlines()
            client = MqttClient(broker, "claimed-id", username="edge.a@acme", password="s3cret")
            client.close()
        assert client.connack == 0  # mosquitto took the config
        assert lines[0].startswith("#") and lines[1].startswith("listener ")
        assert "use_username_as_clientid true" in lines[2:]
        anonymous = mqtt_broker.config_path.read_text()
        assert "use_username_as_clientid" not in anonymous  # the shared test broker is as before

    def test_port_in_use_is_refused_naming_the_address(
        self, mqtt_broker: EmbeddedBroker, tmp_path: Path
    ) -> None:
        clash = EmbeddedBroker(tmp_path, port=mqtt_broker.port)
        with pytest.raises(NotReadyError, match=f"{mqtt_broker.address} is already in use"):
            clash.start()
        assert not clash.running

    def test_broker_that_fails_to_start_reports_its_log(self, tmp_path: Path) -> None:
        acl = tmp_path / "missing-acl"  # mosquitto refuses to start without it
        broker = EmbeddedBroker(tmp_path / "broker", acl_file=acl)
        with pytest.raises(NotReadyError, match="exited with code") as raised:
            broker.start()
        assert str(broker.log_path) in str(raised.value)
        assert "missing-acl" in str(raised.value)

    def test_missing_mosquitto_names_the_package(self, tmp_path: Path) -> None:
        broker = EmbeddedBroker(tmp_path, executable=str(tmp_path / "no-such-mosquitto"))
        with pytest.raises(NotReadyError, match="apt-get install mosquitto"):
            broker.start()
