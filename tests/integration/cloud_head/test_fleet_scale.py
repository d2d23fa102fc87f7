"""The fleet registry over a real mosquitto with a simulated fleet: current, and flips in time.

200 agents of ``tests.fleet_simulator`` heartbeat every half second; the worker must hold
each one current within two periods and see a killed agent offline within two periods, a
silent one (half-open, no will) soon after two periods, and wills that fired while it was
away once it is back; a registry whose handling is slowed below the fleet's rate falls
behind, says so, and marks no live node offline.  ``benchmarks/fleet_scale.py`` runs the
same at scale.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_head.fleet import FleetRegistry, FleetUpdate, FleetWorker
from continuum.embedded import EmbeddedBroker
from continuum.wire.mqtt import BrokerSettings
from tests.fleet_simulator import SimulatorProcess

pytestmark = pytest.mark.integration

AGENTS = 200
PERIOD_S = 0.5
#: The period the simulated agents state in their status (``fleet_simulator``: at least 1 s),
#: by which the registry judges their silence.
STATED_PERIOD_S = max(1.0, PERIOD_S)


def wait_for(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


@pytest.fixture
def tenant() -> str:
    return f"scale-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fleet(mqtt_broker: EmbeddedBroker, tenant: str) -> Iterator[tuple[SimulatorProcess, list[str]]]:
    names = [f"sim-{i:03d}" for i in range(AGENTS)]
    with SimulatorProcess(mqtt_broker.host, mqtt_broker.port, tenant, period_s=PERIOD_S) as sim:
        sim.add(names)
        yield sim, names


@pytest.fixture
def registry(tmp_path: Path, tenant: str) -> Iterator[FleetRegistry]:
    with FleetRegistry(tenant, tmp_path / "fleet.db", heartbeat_interval_s=PERIOD_S) as reg:
        yield reg


class SlowedRegistry(FleetRegistry):
    """The real registry, whose handling costs ``delay_s`` more per message while ``slow`` is
    set (as a starved CPU would make it) and stops while ``stalled`` is set (as a paused
    process or a blocked thread would)."""

    def __init__(self, *args: Any, delay_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slow = threading.Event()
        self.stalled = threading.Event()
        self.released = threading.Event()
        self.delay_s = delay_s

    def handle(self, topic: str, payload: bytes) -> FleetUpdate:
        if self.slow.is_set():
            time.sleep(self.delay_s)
        if self.stalled.is_set():
            self.released.wait(30.0)
        return super().handle(topic, payload)


def worker(registry: FleetRegistry, broker: EmbeddedBroker) -> FleetWorker:
    """The cloud head's fleet worker; ``with`` starts and stops it."""
    return FleetWorker(registry, BrokerSettings(host=broker.host, port=broker.port))


class TestFleetAtScale:
    def test_every_node_is_current_and_a_killed_sample_flips_offline_within_two_periods(
        self,
        mqtt_broker: EmbeddedBroker,
        fleet: tuple[SimulatorProcess, list[str]],
        registry: FleetRegistry,
    ) -> None:
        sim, names = fleet
        with worker(registry, mqtt_broker):
            wait_for(lambda: sum(up for up, _ in registry.liveness().values()) == AGENTS, 10.0)
            for _ in range(3):
                time.sleep(PERIOD_S)
                now = time.time()
                lags = [now - seen for up, seen in registry.liveness().values() if up]
                assert len(lags) == AGENTS
                assert max(lags) <= 2 * PERIOD_S, f"a node is {max(lags):.2f} s behind"

            killed = sim.kill(names[:20])
            time.sleep(2 * PERIOD_S)
            live = registry.liveness()
            for node, at in killed.items():
                up, seen = live[node]
                assert not up, f"{node} still online {2 * PERIOD_S} s after it died"
                assert 0 <= seen - at <= 2 * PERIOD_S  # the will's arrival is its last sign
            assert sum(up for up, _ in live.values()) == AGENTS - 20
            assert registry.stats()["timed_out"] == 0
            assert sim.counts()["dropped"] == 0

    def test_a_silent_node_without_a_last_will_is_marked_offline_after_two_periods(
        self,
        mqtt_broker: EmbeddedBroker,
        fleet: tuple[SimulatorProcess, list[str]],
        registry: FleetRegistry,
    ) -> None:
        sim, names = fleet
        with worker(registry, mqtt_broker):
            wait_for(lambda: sum(up for up, _ in registry.liveness().values()) == AGENTS, 10.0)
            silenced = sim.silence(names[:10])  # sockets stay open: the broker sends no will
            wait_for(lambda: registry.stats()["timed_out"] == 10, 2 * STATED_PERIOD_S + 1.0)
            elapsed = time.time() - min(silenced.values())
            # Not before the bound, less the last beat (up to a period before the silence).
            assert elapsed > 2 * STATED_PERIOD_S - PERIOD_S - 0.1
            live = registry.liveness()
            assert [n for n in names[:10] if live[n][0]] == []
            assert sum(up for up, _ in live.values()) == AGENTS - 10

    def test_wills_that_fired_while_the_worker_was_away_are_seen_when_it_is_back(
        self,
        mqtt_broker: EmbeddedBroker,
        fleet: tuple[SimulatorProcess, list[str]],
        registry: FleetRegistry,
    ) -> None:
        sim, names = fleet
        with worker(registry, mqtt_broker):
            wait_for(lambda: sum(up for up, _ in registry.liveness().values()) == AGENTS, 10.0)
        sim.kill(names[:5])
        time.sleep(0.5)
        with worker(registry, mqtt_broker):  # status at QoS 0: the retained wills replay
            wait_for(lambda: [n for n in names[:5] if registry.liveness()[n][0]] == [], 5.0)
            wait_for(lambda: sum(up for up, _ in registry.liveness().values()) == AGENTS - 5, 5.0)


class TestABackloggedRegistry:
    """The agents state a 1 s period (``fleet_simulator``) and beat every 0.5 s: 400 statuses
    a second from 200 of them.  A live node looks silent once the registry handles it less
    often than every 2 s, i.e. fewer than 100 statuses a second."""

    @pytest.fixture
    def registry(self, tmp_path: Path, tenant: str) -> Iterator[SlowedRegistry]:
        with SlowedRegistry(
            tenant, tmp_path / "slow.db", heartbeat_interval_s=PERIOD_S, delay_s=0.02
        ) as registry:
            yield registry

    def test_slowed_it_says_it_is_behind_and_marks_no_live_node_offline(
        self,
        mqtt_broker: EmbeddedBroker,
        fleet: tuple[SimulatorProcess, list[str]],
        registry: SlowedRegistry,
    ) -> None:
        sim, names = fleet
        with worker(registry, mqtt_broker):
            wait_for(lambda: sum(up for up, _ in registry.liveness().values()) == AGENTS, 10.0)
            registry.slow.set()  # ~50 statuses a second: each node handled every ~4 s
            wait_for(lambda: registry.stats()["behind"], 5.0)
            killed = sim.kill(names[:3])  # their wills still count while it is behind
            wait_for(lambda: registry.stats()["overdue"] > 0, 10.0)
            stats = registry.stats()
            assert stats["behind"] and stats["lag_s"] > 1.0 and stats["timed_out"] == 0
            registry.slow.clear()
            wait_for(lambda: not registry.stats()["behind"], 30.0)
            live = registry.liveness()
            assert [n for n in killed if live[n][0]] == []
            assert [n for n in names[3:] if not live[n][0]] == []
            stats = registry.stats()
            assert stats["timed_out"] == 0 and stats["behind_episodes"] == 1
            assert registry.backlog().lag_quantile(0.99) >= 2.0  # over a stated period

    def test_stalled_with_messages_unread_it_marks_no_live_node_offline(
        self,
        mqtt_broker: EmbeddedBroker,
        fleet: tuple[SimulatorProcess, list[str]],
        registry: SlowedRegistry,
    ) -> None:
        with worker(registry, mqtt_broker):
            wait_for(lambda: sum(up for up, _ in registry.liveness().values()) == AGENTS, 10.0)
            registry.stalled.set()
            wait_for(lambda: registry.backlog().stalled, 5.0)
            time.sleep(3.0)  # over two stated periods without a message handled
            state = registry.backlog()
            assert state.behind and state.overdue == AGENTS
            registry.released.set()
            registry.stalled.clear()
            wait_for(lambda: not registry.stats()["behind"], 30.0)
            assert sum(up for up, _ in registry.liveness().values()) == AGENTS
            assert registry.stats()["timed_out"] == 0
