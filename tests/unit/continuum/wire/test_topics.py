"""The MQTT topic scheme: builders, parse, and the names a topic level may hold."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from continuum.errors import ProtocolError
from continuum.wire import topics
from continuum.wire.topics import ParsedTopic


class TestBuildThenParse:
    @pytest.mark.parametrize(
        ("topic", "expected"),
        [
            (
                topics.node_status("acme", "cam-lux1-a"),
                ParsedTopic("acme", "status", node="cam-lux1-a"),
            ),
            (
                topics.node_reported("acme", "cam-lux1-a"),
                ParsedTopic("acme", "reported", node="cam-lux1-a"),
            ),
            (
                topics.node_desired("acme", "cam-lux1-a"),
                ParsedTopic("acme", "desired", node="cam-lux1-a"),
            ),
            (
                topics.node_stored("acme", "cam-lux1-a"),
                ParsedTopic("acme", "stored", node="cam-lux1-a"),
            ),
            (
                topics.samples("acme", "line-7-inspection", "cam-lux1-a"),
                ParsedTopic("acme", "samples", node="cam-lux1-a", pipeline="line-7-inspection"),
            ),
            (
                topics.telemetry("acme", "line-7-inspection", "cam-lux1-a"),
                ParsedTopic("acme", "telemetry", node="cam-lux1-a", pipeline="line-7-inspection"),
            ),
            (
                topics.feedback("acme", "line-7-inspection", "cam-lux1-a"),
                ParsedTopic("acme", "feedback", node="cam-lux1-a", pipeline="line-7-inspection"),
            ),
            (
                topics.artifact_manifest("acme", "inspector", "v12"),
                ParsedTopic("acme", "artifact", model="inspector", version="v12"),
            ),
            (
                topics.artifact_chunk("acme", "inspector", "v12", 0),
                ParsedTopic("acme", "artifact", model="inspector", version="v12", chunk=0),
            ),
            (
                topics.artifact_chunk("acme", "inspector", "1.2.0", 1234),
                ParsedTopic("acme", "artifact", model="inspector", version="1.2.0", chunk=1234),
            ),
        ],
    )
    def test_parse_returns_what_the_builder_was_given(
        self, topic: str, expected: ParsedTopic
    ) -> None:
        assert topics.parse(topic) == expected

    def test_every_topic_sits_under_the_tenant_prefix(self) -> None:
        built = [
            topics.node_status("acme", "n1"),
            topics.samples("acme", "p", "n1"),
            topics.artifact_chunk("acme", "m", "v1", 3),
        ]
        assert all(t.startswith("ctm/acme/") for t in built)
        assert topics.tenant_filter("acme") == "ctm/acme/#"

    def test_shared_wraps_a_filter_as_a_shared_subscription(self) -> None:
        filter_ = "ctm/acme/pipelines/+/samples/+"
        assert topics.shared(filter_) == f"$share/ingest/{filter_}"
        assert topics.shared(filter_, group="audit") == f"$share/audit/{filter_}"


class TestNamesThatCannotBeTopicLevels:
    @pytest.mark.parametrize(
        "name",
        [
            "",
            "+",
            "#",
            "cam/1",
            "cam+1",
            "cam#",
            "line-7/#",
            "Acme",
            "a b",
            "-a",
            "a-",
            ".a",
            "acme\n",
            "acme\x00",
            "caf\u00e9",
            "a" * 65,
        ],
    )
    def test_check_name_rejects_wildcards_separators_and_odd_characters(self, name: str) -> None:
        with pytest.raises(ProtocolError, match="invalid node name") as info:
            topics.check_name(name, "node")
        assert info.value.reason == "bad_name"

    @pytest.mark.parametrize("name", ["a", "acme", "cam-lux1-a", "v1.2_rc", "0", "a" * 64])
    def test_check_name_returns_a_valid_name_unchanged(self, name: str) -> None:
        assert topics.check_name(name, "node") == name

    @pytest.mark.parametrize(
        ("build", "what"),
        [
            (lambda: topics.node_status("acme/#", "n1"), "tenant"),
            (lambda: topics.node_desired("acme", "+"), "node"),
            (lambda: topics.samples("acme", "line/7", "n1"), "pipeline"),
            (lambda: topics.telemetry("acme", "p", "n1/#"), "node"),
            (lambda: topics.artifact_manifest("acme", "m+", "v1"), "model"),
            (lambda: topics.artifact_chunk("acme", "m", "v1/..", 0), "version"),
        ],
    )
    def test_builders_refuse_injected_levels_and_name_the_part(
        self, build: Callable[[], str], what: str
    ) -> None:
        with pytest.raises(ProtocolError, match=f"invalid {what} name") as info:
            build()
        assert info.value.reason == "bad_name"

    def test_negative_chunk_index_is_rejected(self) -> None:
        with pytest.raises(ProtocolError, match="chunk index") as info:
            topics.artifact_chunk("acme", "m", "v1", -1)
        assert info.value.reason == "bad_topic"


class TestParseOfARepeatedTopic:
    """Ingest parses the same few topics at every message; ``parse`` remembers them."""

    def test_the_same_topic_parses_the_same_every_time(self) -> None:
        topic = topics.samples("acme", "digits", "cam-7")
        first = topics.parse(topic)
        assert (
            topics.parse(topic)
            == first
            == ParsedTopic("acme", "samples", node="cam-7", pipeline="digits")
        )

    def test_a_rejected_topic_is_rejected_every_time(self) -> None:
        for _ in range(2):
            with pytest.raises(ProtocolError, match="invalid") as info:
                topics.parse("ctm/acme/pipelines/digits/samples/CAM")
            assert info.value.reason == "bad_name"

    def test_what_it_remembers_stays_bounded(self) -> None:
        for i in range(topics._PARSED_MAX + 10):
            assert topics.parse(f"ctm/acme/nodes/n{i}/status").node == f"n{i}"
        assert len(topics._PARSED) <= topics._PARSED_MAX


class TestParseRejectsForeignTopics:
    @pytest.mark.parametrize(
        "topic",
        [
            "",
            "ctm",
            "$SYS/broker/load/messages/received/1min",
            "other/acme/nodes/n1/status",
            "ctm/acme/nodes/n1",
            "ctm/acme/nodes/n1/unknown",
            "ctm/acme/nodes/n1/status/extra",
            "ctm/acme/pipelines/p/samples",
            "ctm/acme/pipelines/p/unknown/n1",
            "ctm/acme/pipelines/p/samples/n1/extra",
            "ctm/acme/models/m/v1",
            "ctm/acme/models/m/v1/chunks",
            "ctm/acme/models/m/v1/chunks/x",
            "ctm/acme/models/m/v1/chunks/-1",
            "ctm/acme/models/m/v1/chunks/007",
            "ctm/acme/models/m/v1/chunks/\u0663",
            "ctm/acme/models/m/v1/other",
            "ctm/acme/unknown/n1/status",
        ],
    )
    def test_parse_rejects_topics_outside_the_scheme(self, topic: str) -> None:
        with pytest.raises(ProtocolError, match="not a continuum topic") as info:
            topics.parse(topic)
        assert info.value.reason == "bad_topic"

    @pytest.mark.parametrize(
        "topic",
        [
            "ctm/ACME/nodes/n1/status",
            "ctm/acme/nodes/+/status",
            "ctm/acme/pipelines/#/samples/n1",
            "ctm/acme/models/m/V1/manifest",
        ],
    )
    def test_parse_rejects_invalid_names_inside_the_scheme(self, topic: str) -> None:
        with pytest.raises(ProtocolError, match="invalid") as info:
            topics.parse(topic)
        assert info.value.reason == "bad_name"
