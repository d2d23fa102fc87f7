"""The fleet registry: nodes from retained status and reported state, telemetry history."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_head.fleet import FleetRegistry, FleetUpdate
from continuum.errors import ConfigError, NotFoundError
from continuum.labels import LabelSelector
from continuum.wire import topics
from continuum.wire.messages import NodeStatus, ReportedModel, ReportedState, Telemetry
from tests.fleet_kit import Clock
from tests.fleet_kit import node_status as status

TENANT = "acme"
SHA = "ab" * 32


def reported(node: str, version: str = "v1", state: str = "serving") -> bytes:
    model = ReportedModel(model="inspector", version=version, sha256=SHA, state=state)  # type: ignore[arg-type]
    return ReportedState(node=node, pipelines={"digits": model}, ts=900.0).to_payload()


def telemetry(node: str, ts: float, *, version: str = "v1", correct: int = 9) -> Telemetry:
    return Telemetry(
        node=node,
        pipeline="digits",
        model_version=version,
        window_s=10.0,
        frames=100,
        uplinked=5,
        dropped=0,
        labelled=10,
        correct=correct,
        ts=ts,
    )


def send_telemetry(fleet: FleetRegistry, t: Telemetry) -> FleetUpdate:
    return fleet.handle(topics.telemetry(TENANT, t.pipeline, t.node), t.to_payload())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fleet(tmp_path: Path, clock: Clock) -> Iterator[FleetRegistry]:
    with FleetRegistry(TENANT, tmp_path / "fleet.db", clock=clock) as registry:
        yield registry


class TestNodeStatus:
    def test_a_status_registers_the_node_with_its_labels_and_capabilities(
        self, fleet: FleetRegistry
    ) -> None:
        update = fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        assert update == FleetUpdate(kind="status", node="cam-1")
        [node] = fleet.nodes()
        assert node.node == "cam-1" and node.online
        assert node.labels["continuum.io/site"] == "lux-1"
        assert node.status is not None and node.status.backends == ["onnxruntime"]
        assert node.pipelines == ["digits"]
        assert node.last_seen == 1_000.0

    def test_the_last_will_marks_the_node_offline_and_keeps_it(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        clock.now = 1_050.0
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1", online=False))
        [node] = fleet.nodes()
        assert not node.online
        assert node.labels["continuum.io/tier"] == "edge"
        assert fleet.nodes(online=True) == []
        assert fleet.stats()["online"] == 0

    def test_nodes_are_selected_by_labels(self, fleet: FleetRegistry) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1", site="lux-1"))
        fleet.handle(topics.node_status(TENANT, "cam-2"), status("cam-2", site="par-1"))
        fleet.handle(topics.node_status(TENANT, "cam-3"), status("cam-3", site="lux-2"))
        chosen = fleet.nodes(LabelSelector({"continuum.io/site": "lux-*"}))
        assert [n.node for n in chosen] == ["cam-1", "cam-3"]
        assert len(fleet.nodes()) == 3


class TestEmptyMessages:
    """Issue 12: one empty message per node erased three nodes and their history."""

    @pytest.mark.parametrize("kind", ["status", "reported"])
    def test_an_empty_message_keeps_the_node_its_labels_and_history(
        self, fleet: FleetRegistry, clock: Clock, kind: str
    ) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        fleet.handle(topics.node_reported(TENANT, "cam-1"), reported("cam-1"))
        send_telemetry(fleet, telemetry("cam-1", 950.0))
        clock.now = 1_010.0
        topic = getattr(topics, f"node_{kind}")(TENANT, "cam-1")

        update = fleet.handle(topic, b"")

        assert (update.kind, update.reason) == ("rejected", f"empty_{kind}")
        assert "continuum fleet remove" in update.detail
        [node] = fleet.nodes()
        assert node.online and node.labels["continuum.io/site"] == "lux-1"
        assert node.last_seen == 1_000.0  # an empty message is no news from the node
        assert fleet.reported_model("cam-1", "digits") is not None
        assert len(fleet.telemetry("cam-1", "digits")) == 1
        assert fleet.stats()["rejected"] == {f"empty_{kind}": 1}

    def test_an_empty_status_keeps_a_node_known_only_from_the_file(self, tmp_path: Path) -> None:
        with FleetRegistry(TENANT, tmp_path / "f.db") as fleet:
            fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        with FleetRegistry(TENANT, tmp_path / "f.db") as fleet:
            update = fleet.handle(topics.node_status(TENANT, "cam-1"), b"")
            assert (update.kind, update.reason) == ("rejected", "empty_status")
            assert [n.node for n in fleet.nodes()] == ["cam-1"]

    def test_an_empty_status_of_an_unknown_node_is_counted_as_cleared(
        self, fleet: FleetRegistry
    ) -> None:
        update = fleet.handle(topics.node_status(TENANT, "cam-9"), b"")
        assert update == FleetUpdate(kind="cleared", node="cam-9")
        assert fleet.nodes() == []
        assert fleet.stats()["cleared"] == 1 and fleet.stats()["rejected"] == {}


class TestRemove:
    def test_remove_deletes_the_node_and_its_history(self, fleet: FleetRegistry) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        fleet.handle(topics.node_status(TENANT, "cam-2"), status("cam-2"))
        for ts in (950.0, 960.0):
            send_telemetry(fleet, telemetry("cam-1", ts))
        fleet.tick()  # one window stored, the other still pending: both go
        send_telemetry(fleet, telemetry("cam-1", 970.0))

        assert fleet.remove("cam-1") == 3

        assert [n.node for n in fleet.nodes()] == ["cam-2"]
        assert fleet.telemetry("cam-1", "digits") == []
        assert fleet.stats()["removed"] == 1

    def test_an_unknown_node_is_named_not_removed(self, fleet: FleetRegistry) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        with pytest.raises(NotFoundError, match="no node 'cam-9'"):
            fleet.remove("cam-9")
        assert fleet.stats()["removed"] == 0

    def test_a_removed_node_that_sends_a_status_again_is_admitted_as_new(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        send_telemetry(fleet, telemetry("cam-1", 950.0))
        fleet.remove("cam-1")
        clock.now = 1_020.0
        assert fleet.handle(topics.node_status(TENANT, "cam-1"), heartbeat("cam-1", 920.0)).kind
        [node] = fleet.nodes()
        assert node.online and node.last_seen == 1_020.0
        assert fleet.telemetry("cam-1", "digits") == []

    def test_a_removed_node_is_no_longer_timed_out(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        fleet.remove("cam-1")
        clock.now = 1_100.0
        assert fleet.tick() == []
        assert fleet.nodes() == []


class TestReportedState:
    def test_reported_models_are_kept_per_pipeline(self, fleet: FleetRegistry) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        fleet.handle(topics.node_reported(TENANT, "cam-1"), reported("cam-1", "v2"))
        model = fleet.reported_model("cam-1", "digits")
        assert model is not None and (model.version, model.state) == ("v2", "serving")
        node = fleet.get("cam-1")
        assert node is not None and node.model("digits") == model
        assert fleet.reported_model("cam-1", "other") is None
        assert fleet.reported_model("cam-9", "digits") is None

    def test_a_newer_report_replaces_the_old(self, fleet: FleetRegistry) -> None:
        fleet.handle(topics.node_reported(TENANT, "cam-1"), reported("cam-1", "v1"))
        fleet.handle(topics.node_reported(TENANT, "cam-1"), reported("cam-1", "v2", "failed"))
        model = fleet.reported_model("cam-1", "digits")
        assert model is not None and (model.version, model.state) == ("v2", "failed")


class TestTelemetry:
    def test_history_is_returned_from_a_time_on_oldest_first(self, fleet: FleetRegistry) -> None:
        for ts in (30.0, 10.0, 20.0):
            send_telemetry(fleet, telemetry("cam-1", ts))
        assert [t.ts for t in fleet.telemetry("cam-1", "digits", since_ts=15.0)] == [20.0, 30.0]
        assert len(fleet.telemetry("cam-1", "digits")) == 3

    def test_history_can_be_limited_to_one_model_version(self, fleet: FleetRegistry) -> None:
        send_telemetry(fleet, telemetry("cam-1", 10.0, version="v1"))
        send_telemetry(fleet, telemetry("cam-1", 20.0, version="v2", correct=4))
        [window] = fleet.telemetry("cam-1", "digits", model_version="v2")
        assert window.accuracy == pytest.approx(0.4)

    def test_the_newest_window_is_the_nodes_last_telemetry(self, fleet: FleetRegistry) -> None:
        send_telemetry(fleet, telemetry("cam-1", 20.0, version="v2"))
        send_telemetry(fleet, telemetry("cam-1", 10.0, version="v1"))
        last = fleet.last_telemetry("cam-1", "digits")
        assert last is not None and last.model_version == "v2"
        [node] = fleet.nodes()
        assert node.telemetry["digits"].model_version == "v2"
        assert fleet.last_telemetry("cam-2", "digits") is None

    def test_telemetry_refreshes_last_seen(self, fleet: FleetRegistry, clock: Clock) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        clock.now = 2_000.0
        send_telemetry(fleet, telemetry("cam-1", 1_990.0))
        node = fleet.get("cam-1")
        assert node is not None and node.last_seen == 2_000.0


class TestRejects:
    @pytest.mark.parametrize(
        ("topic", "payload", "reason"),
        [
            (
                topics.node_status("globex", "cam-1"),
                status("cam-1", tenant="globex"),
                "wrong_tenant",
            ),
            (topics.node_status(TENANT, "cam-1"), status("cam-1", tenant="globex"), "wrong_tenant"),
            (topics.node_status(TENANT, "cam-2"), status("cam-1"), "node_mismatch"),
            (topics.node_reported(TENANT, "cam-2"), reported("cam-1"), "node_mismatch"),
            (
                topics.telemetry(TENANT, "other", "cam-1"),
                telemetry("cam-1", 1.0).to_payload(),
                "pipeline_mismatch",
            ),
            (topics.node_status(TENANT, "cam-1"), b"{not json", "invalid_json"),
            (topics.node_status(TENANT, "cam-1"), b'{"node": "cam-1"}', "schema"),
            (topics.node_desired(TENANT, "cam-1"), b"{}", "unexpected_topic"),
            ("not/a/topic", b"{}", "bad_topic"),
        ],
    )
    def test_a_bad_message_is_rejected_and_counted(
        self, fleet: FleetRegistry, topic: str, payload: bytes, reason: str
    ) -> None:
        update = fleet.handle(topic, payload)
        assert (update.kind, update.reason) == ("rejected", reason)
        assert fleet.stats()["rejected"] == {reason: 1}
        assert fleet.nodes() == []

    def test_garbage_bytes_never_raise(self, fleet: FleetRegistry) -> None:
        for payload in (b"\x00\xff" * 50, b"null", b"[]", b'{"online": true}'):
            assert fleet.handle(topics.node_status(TENANT, "cam-1"), payload).kind == "rejected"


class TestPersistence:
    def test_the_registry_survives_a_restart(self, tmp_path: Path) -> None:
        with FleetRegistry(TENANT, tmp_path / "f.db") as fleet:
            fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
            send_telemetry(fleet, telemetry("cam-1", 5.0))
        with FleetRegistry(TENANT, tmp_path / "f.db") as fleet:
            assert [n.node for n in fleet.nodes()] == ["cam-1"]
            assert len(fleet.telemetry("cam-1", "digits")) == 1


def heartbeat(node: str, ts: float, **changes: object) -> bytes:
    """The status an agent re-publishes each heartbeat period: the same but for ``ts``."""
    base = NodeStatus.model_validate_json(status(node))
    return base.model_copy(update={"ts": ts, **changes}).to_payload()


class TestHeartbeats:
    def test_a_heartbeat_refreshes_last_seen_and_the_status_time(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        clock.now = 1_001.5
        update = fleet.handle(topics.node_status(TENANT, "cam-1"), heartbeat("cam-1", 901.25))
        assert update == FleetUpdate(kind="status", node="cam-1")
        node = fleet.get("cam-1")
        assert node is not None and node.online and node.last_seen == 1_001.5
        assert node.status is not None and node.status.ts == 901.25
        assert fleet.stats()["status"] == 2

    def test_a_status_that_changes_more_than_its_time_is_applied_in_full(
        self, fleet: FleetRegistry
    ) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        changed = heartbeat("cam-1", 901.0, labels={"continuum.io/site": "par-1"})
        fleet.handle(topics.node_status(TENANT, "cam-1"), changed)
        assert fleet.nodes()[0].labels == {"continuum.io/site": "par-1"}

    @pytest.mark.parametrize(
        ("tail", "reason"),
        [
            (b"-5}", "schema"),
            (b'"901"}', "schema"),
            (b"1e999}", "schema"),
            (b"901", "invalid_json"),
        ],
    )
    def test_a_heartbeat_with_a_bad_time_is_rejected_and_changes_nothing(
        self, fleet: FleetRegistry, clock: Clock, tail: bytes, reason: str
    ) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        clock.now = 1_005.0
        good = heartbeat("cam-1", 901.0)
        bad = good[: good.rindex(b'"ts":') + len(b'"ts":')] + tail
        update = fleet.handle(topics.node_status(TENANT, "cam-1"), bad)
        assert (update.kind, update.reason) == ("rejected", reason)
        [node] = fleet.nodes()
        assert node.online and node.last_seen == 1_000.0

    def test_other_processes_see_heartbeats_once_a_tick_flushed_them(
        self, tmp_path: Path, clock: Clock
    ) -> None:
        with (
            FleetRegistry(TENANT, tmp_path / "f.db", clock=clock) as writer,
            FleetRegistry(TENANT, tmp_path / "f.db", clock=clock) as reader,
        ):
            writer.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
            assert reader.nodes() == []
            writer.tick()
            assert [n.last_seen for n in reader.nodes()] == [1_000.0]
            clock.now = 1_001.0
            writer.handle(topics.node_status(TENANT, "cam-1"), heartbeat("cam-1", 901.0))
            assert reader.liveness() == {"cam-1": (True, 1_000.0)}
            writer.tick()
            assert reader.liveness() == {"cam-1": (True, 1_001.0)}


class TestSilentNodes:
    @pytest.fixture
    def fleet(self, tmp_path: Path, clock: Clock) -> Iterator[FleetRegistry]:
        with FleetRegistry(
            TENANT, tmp_path / "fleet.db", clock=clock, heartbeat_interval_s=10.0
        ) as registry:
            yield registry

    def test_a_node_silent_for_over_two_periods_is_marked_offline_and_counted(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        fleet.handle(topics.node_status(TENANT, "cam-2"), status("cam-2"))
        clock.now = 1_015.0
        fleet.handle(topics.node_status(TENANT, "cam-2"), heartbeat("cam-2", 1_015.0))
        clock.now = 1_020.0
        assert fleet.tick() == []  # exactly two periods: not yet
        clock.now = 1_020.5
        assert fleet.tick() == ["cam-1"]
        assert fleet.liveness() == {"cam-1": (False, 1_000.0), "cam-2": (True, 1_015.0)}
        assert fleet.stats()["timed_out"] == 1
        node = fleet.get("cam-1")
        assert node is not None and node.labels["continuum.io/site"] == "lux-1"

    def test_a_timed_out_node_comes_back_with_its_next_status(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        clock.now = 1_030.0
        fleet.tick()
        fleet.handle(topics.node_status(TENANT, "cam-1"), heartbeat("cam-1", 930.0))
        assert fleet.liveness() == {"cam-1": (True, 1_030.0)}
        clock.now = 1_045.0
        assert fleet.tick() == []

    def test_a_node_that_left_with_its_last_will_is_not_timed_out_again(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1", online=False))
        clock.now = 1_100.0
        assert fleet.tick() == []
        assert fleet.stats()["timed_out"] == 0

    def test_each_node_is_judged_by_the_heartbeat_period_its_status_states(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        # The registry's default is 10 s; cam-fast beats every 2 s, cam-slow every 60 s.
        fleet.handle(topics.node_status(TENANT, "cam-fast"), status("cam-fast", heartbeat_s=2.0))
        fleet.handle(topics.node_status(TENANT, "cam-slow"), status("cam-slow", heartbeat_s=60))
        fleet.handle(topics.node_status(TENANT, "cam-old"), status("cam-old"))
        assert fleet.tick_interval_s <= 0.5  # a quarter of the shortest period in use
        clock.now = 1_004.5
        assert fleet.tick() == ["cam-fast"]
        clock.now = 1_020.5
        assert fleet.tick() == ["cam-old"]
        clock.now = 1_119.0
        beat = heartbeat("cam-slow", 1_019.0, heartbeat_s=60.0)
        fleet.handle(topics.node_status(TENANT, "cam-slow"), beat)
        clock.now = 1_200.0
        assert fleet.tick() == []
        clock.now = 1_239.5
        assert fleet.tick() == ["cam-slow"]

    def test_a_node_changing_its_period_is_judged_by_the_new_one(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1", heartbeat_s=60))
        changed = status("cam-1", heartbeat_s=2.0, ts=1_000.0)  # sent now, as agents do
        fleet.handle(topics.node_status(TENANT, "cam-1"), changed)
        clock.now = 1_004.5
        assert fleet.tick() == ["cam-1"]

    def test_a_node_stored_online_is_timed_out_two_periods_after_a_restart(
        self, tmp_path: Path, clock: Clock
    ) -> None:
        """A restarted registry watches the nodes its file says are online, even those no
        retained status names any more (cleared): two periods from its first tick."""
        path = tmp_path / "f.db"
        with FleetRegistry(TENANT, path, clock=clock, heartbeat_interval_s=10.0) as fleet:
            fleet.handle(topics.node_status(TENANT, "cam-1"), status("cam-1"))
            fleet.handle(topics.node_status(TENANT, "cam-2"), status("cam-2"))
        clock.now = 2_000.0
        with FleetRegistry(TENANT, path, clock=clock, heartbeat_interval_s=10.0) as fleet:
            assert fleet.tick() == []  # the broker's replay has two periods to arrive
            clock.now = 2_010.0
            fleet.handle(topics.node_status(TENANT, "cam-2"), heartbeat("cam-2", 2_010.0))
            clock.now = 2_020.5
            assert fleet.tick() == ["cam-1"]
            assert fleet.liveness() == {"cam-1": (False, 1_000.0), "cam-2": (True, 2_010.0)}

    @pytest.mark.parametrize("period", [0.5, 7200.0])
    def test_a_stated_period_out_of_bounds_is_rejected(
        self, fleet: FleetRegistry, period: float
    ) -> None:
        base = NodeStatus.model_validate_json(status("cam-1")).model_dump()
        payload = json.dumps({**base, "heartbeat_s": period}).encode()
        update = fleet.handle(topics.node_status(TENANT, "cam-1"), payload)
        assert update.kind == "rejected"
        assert "heartbeat_s" in update.detail

    @pytest.mark.parametrize("period", [0.0, -1.0, 7200.0])
    def test_a_heartbeat_period_out_of_bounds_is_refused(
        self, tmp_path: Path, period: float
    ) -> None:
        with pytest.raises(ConfigError, match="heartbeat_interval_s"):
            FleetRegistry(TENANT, tmp_path / "f.db", heartbeat_interval_s=period)


class TestTenantsShareAHeadNotAFleet:
    def test_each_tenant_has_its_own_fleet_registry_on_a_shared_head(self, tmp_path: Path) -> None:
        """DESIGN §7.3: two tenants on one cloud head state never list each other's nodes."""
        from cloud_head.paths import HeadPaths

        paths = HeadPaths(tmp_path / "cloud")
        paths.state.mkdir(parents=True)
        assert paths.fleet_db("acme") != paths.fleet_db("medica")
        assert paths.controller("acme", "p") != paths.controller("medica", "p")
        with FleetRegistry("acme", paths.fleet_db("acme")) as acme:
            acme.handle(topics.node_status("acme", "cam-a"), status("cam-a", tenant="acme"))
            acme.tick()
        with FleetRegistry("medica", paths.fleet_db("medica")) as medica:
            assert medica.nodes() == []


class TestRelayForTheControllers:
    """The fleet's connection is the control identity; it relays only what control writes."""

    @pytest.mark.parametrize(
        "topic",
        [
            topics.node_status(TENANT, "n1"),
            topics.node_stored(TENANT, "n1"),
            topics.samples(TENANT, "p", "n1"),
            topics.node_desired("other", "n1"),
            "ctm/acme/anything",
        ],
    )
    def test_a_topic_control_does_not_write_is_refused_naming_it(
        self, fleet: FleetRegistry, topic: str
    ) -> None:
        from cloud_head.fleet import FleetWorker
        from continuum.errors import ProtocolError
        from continuum.wire.mqtt import BrokerSettings

        worker = FleetWorker(fleet, BrokerSettings())
        with pytest.raises(ProtocolError, match="relays only"):
            worker.publish(topic, b"x")

    def test_desired_state_and_artifacts_wait_for_the_connection(
        self, fleet: FleetRegistry
    ) -> None:
        from cloud_head.fleet import FleetWorker
        from continuum.errors import NotReadyError
        from continuum.wire.mqtt import BrokerSettings

        worker = FleetWorker(fleet, BrokerSettings())
        for topic in (
            topics.node_desired(TENANT, "n1"),
            topics.artifact_manifest(TENANT, "m", "v1"),
            topics.artifact_chunk(TENANT, "m", "v1", 0),
        ):
            with pytest.raises(NotReadyError, match="not connected"):
                worker.publish(topic, b"x")
