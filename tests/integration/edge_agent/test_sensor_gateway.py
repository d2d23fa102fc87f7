"""The sensor gateway source on a real mosquitto: a real topic's readings become the expected
windows, the simulated line gateway's readings become labelled (3, 1024) windows, and a
broker restart is survived by both ends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from continuum.embedded import EmbeddedBroker
from continuum.sources import Frame
from continuum.wire import topics
from continuum.wire.codec import decode_feedback, decode_samples
from edge_agent.gateway import SensorGatewaySource
from pipelines.maintenance.bearings import CHANNELS, WINDOW
from pipelines.maintenance.data import load_splits
from pipelines.maintenance.gateway import SimulatedGateway
from pipelines.maintenance.train import Recipe, fit, save
from tests.edge_agent_kit import AgentRig, CloudStandIn, desired_for, wait_for

pytestmark = pytest.mark.integration

WAIT_S = 10.0


class _Reader:
    """Iterate a source on a thread of its own and keep every frame."""

    def __init__(self, source: SensorGatewaySource) -> None:
        self.source = source
        self.frames: list[Frame] = []
        self._iterator: Iterator[Frame] = iter(source)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for frame in self._iterator:
            self.frames.append(frame)

    def wait_for(self, n: int, timeout_s: float = WAIT_S) -> list[Frame]:
        deadline = time.monotonic() + timeout_s
        while len(self.frames) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.frames) >= n, f"{len(self.frames)} frames of {n} in {timeout_s} s"
        return self.frames

    def close(self) -> None:
        self.source.close()
        self._thread.join(timeout=WAIT_S)


def _publisher(broker: EmbeddedBroker) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


class TestRealTopic:
    def test_readings_become_the_expected_windows(self, mqtt_broker: EmbeddedBroker) -> None:
        topics = {"vibration": "factory/t1/p7/vibration", "temperature": "factory/t1/p7/temp"}
        source = SensorGatewaySource(
            topics, window=8, stride=4, channels=["vibration", "temperature"], port=mqtt_broker.port
        )
        reader = _Reader(source)
        publisher = _publisher(mqtt_broker)
        try:
            assert source.ready(WAIT_S)
            sends = [
                (topics["temperature"], {"ts": 10.0, "value": 40.0}),
                (topics["vibration"], {"ts": 10.0, "rate_hz": 8, "values": list(range(6))}),
                (topics["vibration"], b"not a reading"),
                (topics["temperature"], {"ts": 10.7, "value": 41.5}),
                (topics["vibration"], {"ts": 10.75, "rate_hz": 8, "values": list(range(6, 12))}),
            ]
            for topic, body in sends:
                payload = body if isinstance(body, bytes) else json.dumps(body)
                publisher.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)
            frames = reader.wait_for(2)
        finally:
            publisher.loop_stop()
            publisher.disconnect()
            reader.close()
        assert [f.tensor.shape for f in frames] == [(2, 8), (2, 8)]
        np.testing.assert_array_equal(frames[0].tensor[0], np.arange(8))
        np.testing.assert_array_equal(frames[0].tensor[1], [40] * 6 + [41.5] * 2)
        np.testing.assert_array_equal(frames[1].tensor[0], np.arange(4, 12))
        assert frames[1].captured_at_ns == int((10.75 + 5 / 8) * 1e9)
        assert source.counts().malformed == 1


class TestSimulatedGateway:
    def test_the_line_gateway_streams_labelled_windows(self, mqtt_broker: EmbeddedBroker) -> None:
        gateway = SimulatedGateway(
            port=mqtt_broker.port, machines={"press-7": "A"}, speed=32, wear_per_s=0.05
        )
        source = SensorGatewaySource(
            **gateway.source_args("press-7", "127.0.0.1", mqtt_broker.port)
        )
        source.check_input_shape((len(CHANNELS), WINDOW))
        reader = _Reader(source)
        try:
            assert source.ready(WAIT_S)
            with gateway:
                frames = reader.wait_for(12)
        finally:
            reader.close()
        for frame in frames:
            assert frame.tensor.shape == (3, WINDOW) and frame.tensor.dtype == np.float32
            assert frame.label in (0, 1) and frame.label_delay_s == 3.0
            assert 15 < frame.tensor[1].mean() < 80  # deg C, held between readings
            assert 5 < frame.tensor[2].mean() < 20  # A
        # Continuous shaft-locked vibration: the 1x line stands out of every window's spectrum.
        spectrum = np.abs(np.fft.rfft(frames[-1].tensor[0] - frames[-1].tensor[0].mean()))
        assert 27 <= int(np.argmax(spectrum)) <= 33  # 1 Hz bins; type A runs near 30 Hz


class TestBrokerRestart:
    def test_source_and_gateway_come_back_after_a_broker_restart(
        self, private_mqtt_broker: EmbeddedBroker
    ) -> None:
        broker = private_mqtt_broker
        gateway = SimulatedGateway(port=broker.port, speed=32)
        source = SensorGatewaySource(
            **gateway.source_args("press-7", "127.0.0.1", broker.port),
            reconnect_min_s=0.2,
            reconnect_max_s=1.0,
            keepalive_s=2,
        )
        reader = _Reader(source)
        try:
            assert source.ready(WAIT_S)
            with gateway:
                reader.wait_for(3)
                broker.kill()
                time.sleep(1.5)
                broker.start()
                before = len(reader.frames)
                reader.wait_for(before + 3, timeout_s=20.0)
        finally:
            reader.close()
        counts = source.counts()
        assert counts.failures >= 1 and counts.reconnects >= 1


class TestAgentEndToEnd:
    def test_a_real_agent_scores_gateway_windows_and_uplinks_them_with_labels(
        self, mqtt_broker: EmbeddedBroker, tmp_path: Path
    ) -> None:
        from pipelines.predictive_maintenance import pipe

        name, node = pipe.spec.name, "press-edge-1"
        cloud = CloudStandIn(mqtt_broker.host, mqtt_broker.port, "acme")
        cloud.subscribe(f"ctm/acme/pipelines/{name}/#")
        rig = AgentRig(tmp_path, port=mqtt_broker.port, node=node, pipeline=name, cloud=cloud)
        rig.spec = tmp_path / "press.yaml"
        rig.spec.write_text(pipe.spec.to_yaml(), encoding="utf-8")
        train = load_splits().train
        _, onnx_path = save(fit(train.x[:300], train.y[:300], recipe=Recipe(epochs=2)), tmp_path)
        gateway = SimulatedGateway(
            port=mqtt_broker.port, speed=32, wear_per_s=0.05, label_delay_s=0.5, seed=3
        )
        source = {
            "ref": "edge_agent.gateway:SensorGatewaySource",
            "args": gateway.source_args("press-7", mqtt_broker.host, mqtt_broker.port),
        }
        agent = rig.agent(source=source, confirm_stored=False, telemetry_interval_s=0.5)
        try:
            agent.start()
            want = desired_for(onnx_path, rig.private, model="bearing-ae", version="v1")
            cloud.publish_artifact(onnx_path, want)
            cloud.set_desired(node, {name: want}, 1, signer=rig.private)
            with gateway:
                batches = wait_for(
                    lambda: (
                        [decode_samples(p) for _, p, _ in cloud.messages("/samples/")]
                        if len(cloud.messages("/samples/")) >= 2
                        else None
                    ),
                    timeout_s=40.0,
                )
                feedback = wait_for(lambda: cloud.messages("/feedback/"), timeout_s=20.0)
        finally:
            rig.stop_agents()
            for topic in (topics.node_desired("acme", node), topics.node_status("acme", node)):
                cloud.publish(topic, b"", retain=True)
            cloud.close()
        records = [r for b in batches for r in b.records]
        assert all(r.tensor.shape == (3, WINDOW) for r in records)
        assert all(b.model_version == "v1" for b in batches)
        labels = {label for _, label in decode_feedback(feedback[0][1]).items}
        assert labels <= {0, 1}
        # Rows in the declared order, though the config's YAML sorted the topics' keys.
        assert all(20 < r.tensor[1].mean() < 80 and 5 < r.tensor[2].mean() < 20 for r in records)
        decoded = agent.metrics.render().decode()
        assert f'continuum_edge_source_frames_decoded_total{{pipeline="{name}"}}' in decoded
