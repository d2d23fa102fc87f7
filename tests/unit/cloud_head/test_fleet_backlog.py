"""A fleet registry that falls behind knows it, says so, and condemns no live node for silence."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_head.fleet import FleetRegistry
from continuum.wire import topics
from tests.fleet_kit import Clock, node_status

TENANT = "acme"
PERIOD = 10.0
NODES = ("cam-1", "cam-2", "cam-3", "cam-4")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fleet(tmp_path: Path, clock: Clock) -> Iterator[FleetRegistry]:
    with FleetRegistry(TENANT, tmp_path / "fleet.db", clock=clock) as registry:
        yield registry


def beat(fleet: FleetRegistry, clock: Clock, at: float, node: str, sent: float) -> None:
    """The registry handles, at ``at``, the heartbeat ``node`` sent at ``sent``."""
    clock.now = at
    assert (
        fleet.handle(
            topics.node_status(TENANT, node), node_status(node, ts=sent, heartbeat_s=PERIOD)
        ).kind
        == "status"
    )


def start(fleet: FleetRegistry, clock: Clock, nodes: tuple[str, ...] = NODES) -> None:
    """Every node's first status at 1000 and a prompt heartbeat at 1010: all current."""
    for node in nodes:
        beat(fleet, clock, 1_000.0, node, 1_000.0)
    for node in nodes:
        beat(fleet, clock, 1_010.0, node, 1_010.0)
    assert fleet.tick() == []
    assert not fleet.stats()["behind"]


def online(fleet: FleetRegistry) -> dict[str, bool]:
    return {node: up for node, (up, _) in fleet.liveness().items()}


class TestABacklogWithholdsSilenceVerdicts:
    def test_nodes_whose_heartbeats_wait_in_the_queue_stay_online(
        self, fleet: FleetRegistry, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        start(fleet, clock)
        # The registry falls behind: at 1031 it handles cam-1's beat of 1020 (11 s late);
        # the beats cam-2..4 sent at 1020 still wait behind it, so by the clock all three
        # have been silent for 21 s, over two periods.
        with caplog.at_level(logging.WARNING, logger="cloud_head.fleet"):
            beat(fleet, clock, 1_031.0, "cam-1", 1_020.0)
            assert fleet.tick() == []
        stats = fleet.stats()
        assert stats["behind"] and stats["timed_out"] == 0
        assert stats["overdue"] == 3
        assert stats["lag_s"] == pytest.approx(11.0)
        assert all(online(fleet).values())
        assert "is behind" in caplog.text and "withheld" in caplog.text
        # Still behind while the queue drains: the beats of 1020 arrive 13 s late.
        beat(fleet, clock, 1_033.0, "cam-2", 1_020.0)
        beat(fleet, clock, 1_033.0, "cam-3", 1_020.0)
        beat(fleet, clock, 1_033.0, "cam-4", 1_020.0)
        assert fleet.tick() == []
        # Caught up: the beats handled now are fresh.
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cloud_head.fleet"):
            for node in NODES:
                beat(fleet, clock, 1_034.0, node, 1_033.9)
            assert fleet.tick() == []
        stats = fleet.stats()
        assert not stats["behind"] and stats["behind_episodes"] == 1 and stats["overdue"] == 0
        assert stats["timed_out"] == 0 and all(online(fleet).values())
        assert "caught up after 3.0 s" in caplog.text

    def test_last_wills_still_mark_nodes_offline_while_behind(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        start(fleet, clock)
        beat(fleet, clock, 1_031.0, "cam-1", 1_020.0)
        assert fleet.tick() == []
        assert fleet.stats()["behind"]
        clock.now = 1_031.5
        fleet.handle(
            topics.node_status(TENANT, "cam-4"),
            node_status("cam-4", ts=1_010.0, online=False, heartbeat_s=PERIOD),
        )
        fleet.tick()
        assert online(fleet) == {"cam-1": True, "cam-2": True, "cam-3": True, "cam-4": False}

    def test_silence_verdicts_resume_once_caught_up(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        start(fleet, clock)
        beat(fleet, clock, 1_031.0, "cam-1", 1_020.0)
        assert fleet.tick() == []
        for node in ("cam-1", "cam-2", "cam-3"):  # cam-4 went half-open: nothing more
            beat(fleet, clock, 1_034.0, node, 1_033.9)
        assert fleet.tick() == ["cam-4"]
        assert not fleet.stats()["behind"]
        assert online(fleet)["cam-4"] is False and fleet.stats()["timed_out"] == 1

    def test_a_registry_that_hears_nothing_is_not_behind_on_anything(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        """Its broker connection is down: its nodes go offline by silence, as designed."""
        start(fleet, clock)
        beat(fleet, clock, 1_031.0, "cam-1", 1_020.0)
        assert fleet.tick() == []
        clock.now = 1_040.0
        assert fleet.tick() == []  # one quiet period: the backlog may still be draining
        assert fleet.stats()["behind"]
        clock.now = 1_051.5  # over two periods with nothing handled
        assert sorted(fleet.tick()) == ["cam-1", "cam-2", "cam-3", "cam-4"]
        assert not fleet.stats()["behind"]


class TestAStalledRegistryIsBehind:
    """Its handling stopped (a paused process, a blocked thread) while messages wait unread:
    the tick thread must not read the silence it caused as its nodes' silence."""

    def test_one_stalled_tick_holds_the_verdicts_two_make_it_behind(
        self, fleet: FleetRegistry, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        start(fleet, clock)
        clock.now = 1_031.0  # nothing handled since 1010; the nodes' beats wait unread
        assert fleet.tick(unread=True) == []
        assert not fleet.stats()["behind"]  # one look may be a message that just arrived
        clock.now = 1_031.25
        with caplog.at_level(logging.WARNING, logger="cloud_head.fleet"):
            assert fleet.tick(unread=True) == []
        state = fleet.backlog()
        assert state.behind and state.stalled and state.overdue == 4
        assert "wait unread" in caplog.text and "21.2 s" in caplog.text
        clock.now = 1_040.0  # still nothing handled, still waiting: still behind
        assert fleet.tick(unread=True) == []
        for node in NODES:  # the queue drains: old beats, then fresh ones
            beat(fleet, clock, 1_040.5, node, 1_020.0)
        assert fleet.tick() == []
        for node in NODES:
            beat(fleet, clock, 1_041.0, node, 1_040.9)
        assert fleet.tick() == []
        stats = fleet.stats()
        assert not stats["behind"] and stats["timed_out"] == 0 and all(online(fleet).values())

    def test_unread_bytes_while_heartbeats_are_handled_are_no_stall(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        start(fleet, clock)
        for t in (1_020.0, 1_030.0):
            for node in ("cam-1", "cam-2", "cam-3"):  # cam-4 went half-open
                beat(fleet, clock, t, node, t)
        clock.now = 1_030.5
        assert fleet.tick(unread=True) == ["cam-4"]
        assert not fleet.stats()["behind"]

    def test_handling_other_messages_while_bytes_wait_is_no_stall(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        """New agents' first statuses (parsed in full, no heartbeats yet) keep it busy."""
        start(fleet, clock)
        for node in NODES:
            beat(fleet, clock, 1_020.0, node, 1_020.0)
        fleet.tick()
        beat(fleet, clock, 1_023.0, "cam-5", 1_023.0)  # a new node's first status
        clock.now = 1_023.1
        assert fleet.tick(unread=True) == []
        clock.now = 1_023.2
        assert fleet.tick(unread=True) == []
        assert not fleet.backlog().stalled and not fleet.stats()["behind"]

    def test_a_registry_yet_to_handle_its_first_message_is_not_stalled(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        """Just connected: the broker's replay waits unread at its first ticks."""
        assert fleet.tick(unread=True) == []
        clock.now = 1_000.25
        assert fleet.tick(unread=True) == []
        assert not fleet.backlog().stalled and not fleet.stats()["behind"]

    def test_nothing_unread_and_nothing_handled_is_silence(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        start(fleet, clock)
        clock.now = 1_030.5
        assert sorted(fleet.tick(unread=False)) == list(NODES)


class TestClocksAreNotABacklog:
    def test_a_node_whose_clock_is_minutes_off_leaves_the_verdicts_alone(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        skews = {"cam-1": 300.0, "cam-2": 0.0, "cam-3": 0.0, "cam-4": 0.0}  # cam-1: 5 min slow
        for t in (1_000.0, 1_010.0, 1_020.0):
            for node, skew in skews.items():
                if node != "cam-4" or t == 1_000.0:  # cam-4 goes half-open after its first
                    beat(fleet, clock, t, node, t - skew)
            assert fleet.tick() == []
        clock.now = 1_020.5
        assert fleet.tick() == ["cam-4"]
        assert not fleet.stats()["behind"]

    def test_a_clock_ahead_of_the_clouds_is_learnt_at_once(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        """A node 8 s ahead beats with a negative lag; its floor follows at once, so a queue
        of 4 s on top of it reads as one (less the floor's rise of 0.05 of a period)."""
        start(fleet, clock, ("cam-1",))
        beat(fleet, clock, 1_020.0, "cam-1", 1_028.0)
        fleet.tick()
        assert not fleet.stats()["behind"]
        beat(fleet, clock, 1_033.0, "cam-1", 1_037.0)
        fleet.tick()
        assert fleet.backlog().excess_periods == pytest.approx(0.35)
        assert fleet.stats()["behind"]

    def test_a_registry_that_starts_behind_sees_its_queue(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        """The first heartbeats it handles are already 6 s old: a queue, not six-second
        offsets (the floor starts at zero, not at the first lag)."""
        for node in NODES:
            beat(fleet, clock, 1_000.0, node, 1_000.0)
        for node in NODES:
            beat(fleet, clock, 1_016.0, node, 1_010.0)
        assert fleet.tick() == []
        assert fleet.stats()["behind"]

    def test_a_clock_step_of_the_whole_fleet_wears_off(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        start(fleet, clock, ("cam-1", "cam-2"))
        episodes_at = []
        # From 1020 on every heartbeat reads 6 s old (a clock step, not a queue).
        for k in range(2, 40):
            t = 1_000.0 + k * PERIOD
            beat(fleet, clock, t, "cam-1", t - 6.0)
            beat(fleet, clock, t, "cam-2", t - 6.0)
            fleet.tick()
            episodes_at.append(fleet.stats()["behind"])
        assert episodes_at[0] is True  # it cannot tell a step from a queue at first
        caught_up = episodes_at.index(False)
        assert caught_up <= 30  # 0.02 of a period per beat: 0.6 -> below 0.1 in ~25 beats
        assert not any(episodes_at[caught_up:])


class TestLagIsReported:
    def test_the_histogram_gives_the_lag_quantiles_of_a_window(
        self, fleet: FleetRegistry, clock: Clock
    ) -> None:
        start(fleet, clock)
        before = fleet.backlog()
        for i, node in enumerate(NODES):
            beat(fleet, clock, 1_020.0 + 0.3 * i, node, 1_020.0)  # 0, 0.3, 0.6, 0.9 s late
        fleet.tick()
        state = fleet.backlog()
        assert state.heartbeats == before.heartbeats + 4
        assert state.lag_quantile(0.5, since=before) == 0.5
        assert state.lag_quantile(0.99, since=before) == 1.0
        assert state.lag_max_s == pytest.approx(0.9)
        assert math.isnan(state.lag_quantile(0.5, since=state))
