"""The sensor gateway source without a network: payload forms, hold-last alignment, the
window/stride cut, labels, drop-oldest, the shape check and the config refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml

from continuum.errors import ConfigError
from continuum.labels import TIER
from continuum.signing import generate_keypair
from edge_agent._sensor_windows import (
    MalformedReadingError,
    Reading,
    Windower,
    parse_reading,
)
from edge_agent.agent import load_pipelines, load_sources
from edge_agent.config import AgentSettings
from edge_agent.gateway import SensorGatewaySource
from edge_agent.metrics import AgentMetrics
from edge_agent.sources import load_source

TOPICS = {"vibration": "f/l1/p7/vibration", "temperature": "f/l1/p7/temperature"}
ORDER = ["vibration", "temperature"]


def _chunk(values: list[float], ts: float = 100.0, **extra: object) -> Reading:
    return parse_reading(json.dumps({"ts": ts, "values": values, **extra}).encode(), now=0.0)


def _value(value: float, ts: float = 100.0) -> Reading:
    return parse_reading(json.dumps({"ts": ts, "value": value}).encode(), now=0.0)


class TestPayloadForms:
    def test_a_chunk_a_single_reading_and_a_bare_number_parse(self) -> None:
        chunk = parse_reading(b'{"ts": 5.0, "rate_hz": 4, "values": [1, 2.5]}', now=9.0)
        assert chunk.values.tolist() == [1.0, 2.5] and chunk.ts == 5.0 and chunk.rate_hz == 4.0
        single = parse_reading(b'{"value": 41.2, "label": 1, "label_delay_s": 3}', now=9.0)
        assert single.values.tolist() == [41.2] and single.ts == 9.0
        assert single.label == 1 and single.label_delay_s == 3.0
        assert parse_reading(b"12.5", now=7.0).values.tolist() == [12.5]

    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            (b"\xff\xfe", "not JSON"),
            (b"{not json", "not JSON"),
            (b'"hot"', "str, not a number"),
            (b'{"ts": 1}', "exactly one of"),
            (b'{"value": 1, "values": [1]}', "exactly one of"),
            (b'{"values": []}', "list of 1 to"),
            (b'{"values": [1, "x"]}', "an item of values"),
            (b'{"value": NaN}', "not finite"),
            (b'{"value": true}', "bool, not a number"),
            (b'{"values": [1, 1e300]}', "float32's range"),
            (b"-1e39", "float32's range"),
            (b'{"value": 1, "rate_hz": 0}', "rate_hz"),
            (b'{"value": 1, "label": -1}', "label"),
            (b'{"value": 1, "label": 0.5}', "label"),
            (b'{"value": 1, "label_delay_s": -2}', "label_delay_s"),
        ],
    )
    def test_malformed_payloads_name_the_problem(self, payload: bytes, reason: str) -> None:
        with pytest.raises(MalformedReadingError, match=reason):
            parse_reading(payload, now=0.0)


class TestAlignmentAndWindows:
    def test_slow_channels_are_held_at_their_last_reading(self) -> None:
        windower = Windower(["vibration", "temperature"], window=4, stride=4)
        assert windower.feed("vibration", _chunk([9, 9])) == []  # temperature not read yet
        assert windower.samples_unaligned == 2
        windower.feed("temperature", _value(40.0))
        assert windower.feed("vibration", _chunk([1, 2])) == []
        windower.feed("temperature", _value(41.0))
        (window,) = windower.feed("vibration", _chunk([3, 4, 5], ts=200.0, rate_hz=10))
        np.testing.assert_array_equal(window.tensor, [[1, 2, 3, 4], [40, 40, 41, 41]])
        assert window.tensor.dtype == np.float32
        assert window.ts == pytest.approx(200.1)  # the window's last sample

    def test_windows_overlap_by_window_minus_stride(self) -> None:
        windower = Windower(["v"], window=4, stride=2)
        windows = windower.feed("v", _chunk(list(range(10))))
        assert [w.tensor[0].tolist() for w in windows] == [
            [0, 1, 2, 3],
            [2, 3, 4, 5],
            [4, 5, 6, 7],
            [6, 7, 8, 9],
        ]

    def test_a_stride_longer_than_the_window_skips_samples_across_chunks(self) -> None:
        windower = Windower(["v"], window=2, stride=5)
        first = windower.feed("v", _chunk([0, 1, 2]))
        second = windower.feed("v", _chunk([3, 4, 5, 6, 7, 8, 9, 10, 11]))
        assert [w.tensor[0].tolist() for w in first + second] == [[0, 1], [5, 6], [10, 11]]

    def test_a_stale_channel_makes_no_rows(self) -> None:
        windower = Windower(["v", "t"], window=2, stride=2, max_stale_s=5.0)
        windower.feed("t", _value(40.0, ts=100.0))
        assert windower.feed("v", _chunk([1, 2], ts=104.0)) != []
        assert windower.feed("v", _chunk([3, 4], ts=106.0)) == []
        assert windower.samples_unaligned == 2

    def test_a_window_carries_the_largest_label_of_its_rows(self) -> None:
        windower = Windower(["v"], window=4, stride=4)
        assert windower.feed("v", _chunk([1, 2, 3, 4]))[0].label is None
        windower.feed("v", _chunk([1, 2], label=0, label_delay_s=2))
        (window,) = windower.feed("v", _chunk([3, 4], label=1, label_delay_s=5))
        assert window.label == 1 and window.label_delay_s == 5.0


def _message(topic: str, payload: object) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return message


class TestSource:
    def test_the_oldest_window_is_dropped_when_the_consumer_falls_behind(self) -> None:
        source = SensorGatewaySource(TOPICS, window=2, channels=ORDER, queue_frames=3)
        windower = Windower(source.channels, source.window, source.stride)
        source._on_message(windower, _message(TOPICS["temperature"], {"value": 40}))
        for i in range(5):
            source._on_message(
                windower, _message(TOPICS["vibration"], {"ts": 1.0, "values": [i, i]})
            )
        source._on_message(windower, _message(TOPICS["vibration"], b"garbage"))
        source._on_message(windower, _message("f/l1/other", {"value": 1}))  # not ours: ignored
        counts = source.counts()
        assert counts.decoded == 5 and counts.dropped == {"backpressure": 2}
        assert counts.malformed == 1
        kept = [frame.tensor[0, 0] for frame in source._queue]
        assert kept == [2, 3, 4]
        metrics = AgentMetrics()
        metrics.watch_source("press-7", source)
        text = metrics.render().decode()
        assert 'continuum_edge_source_messages_malformed_total{pipeline="press-7"} 1.0' in text
        assert (
            'continuum_edge_source_frames_dropped_total{pipeline="press-7",reason="backpressure"} '
            "2.0" in text
        )

    def test_the_pipeline_shape_must_be_channels_by_window(self) -> None:
        source = SensorGatewaySource(TOPICS, window=1024, stride=512, channels=ORDER)
        source.check_input_shape((2, 1024))
        with pytest.raises(ConfigError, match=r"\[3, 1024\].*\[2, 1024\].*shape=\(2, 1024\)"):
            source.check_input_shape((3, 1024))

    @pytest.mark.parametrize(
        ("args", "problem"),
        [
            ({"topics": {}}, "map each channel"),
            ({"topics": {"v": "f/+/v"}}, "without wildcards"),
            ({"topics": {"a": "t", "b": "t"}}, "share a topic"),
            ({"window": 0}, "window must be"),
            ({"stride": 1.5}, "stride must be"),
            ({"qos": 2}, "qos"),
            ({"password": "x"}, "without username"),
            ({"tls_ca": "/nonexistent/ca.pem"}, "tls_ca"),
            ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_min_s"),
            ({"channels": None}, "row order, clock"),
            ({"channels": ["vibration", "current"]}, "name each channel of topics"),
            ({"channels": ["vibration", "vibration"]}, "name each channel of topics"),
        ],
    )
    def test_bad_config_is_refused_naming_the_fix(
        self, args: dict[str, object], problem: str
    ) -> None:
        full: dict[str, object] = {"topics": TOPICS, "window": 8, "channels": ORDER, **args}
        with pytest.raises(ConfigError, match=problem):
            load_source("edge_agent.gateway:SensorGatewaySource", full)

    def test_a_closed_source_ends_its_iteration(self) -> None:
        source = SensorGatewaySource(
            TOPICS, window=2, channels=ORDER, port=1, connect_timeout_s=0.2
        )
        source.close()
        assert list(source) == []


class TestAgentStart:
    def _settings(self, tmp_path: Path, window: int) -> AgentSettings:
        spec = {
            "name": "press-7",
            "tenant": "acme",
            "data_class": "internal",
            "edge": {"model": "bearing-ae", "input": {"shape": [2, 8]}, "where": {TIER: "edge"}},
            "uplink": {"policy": {"kind": "random", "rate": 0.1}},
        }
        (tmp_path / "press.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
        _, public = generate_keypair()
        (tmp_path / "tenant.pub.pem").write_bytes(public)
        config = {
            "node_id": "edge-1",
            "tenant": "acme",
            "labels": {TIER: "edge"},
            "state_dir": "state",
            "trusted_public_key": "tenant.pub.pem",
            "pipelines": [
                {
                    "spec": "press.yaml",
                    "source": {
                        "ref": "edge_agent.gateway:SensorGatewaySource",
                        "args": {"topics": TOPICS, "window": window, "channels": ORDER},
                    },
                }
            ],
        }
        (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        return AgentSettings.load(tmp_path / "agent.yaml")

    def test_the_agent_refuses_a_pipeline_shape_the_source_does_not_make(
        self, tmp_path: Path
    ) -> None:
        settings = self._settings(tmp_path, window=16)
        specs = load_pipelines(settings)
        with pytest.raises(ConfigError, match=r"pipelines\.0\.source.*\[2, 8\].*\[2, 16\]"):
            load_sources(settings, specs)
        good = load_sources(self._settings(tmp_path, window=8), specs)["press-7"]
        # PyYAML sorted the topics' keys (temperature first); the rows keep the declared order.
        assert isinstance(good, SensorGatewaySource) and good.channels == tuple(ORDER)
