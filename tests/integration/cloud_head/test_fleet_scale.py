"""The fleet registry over a real mosquitto with a simulated fleet: current, and flips in time.

200 agents of ``tests.fleet_simulator`` heartbeat every half second; the worker must hold
each one current within two periods and see a killed agent offline within two periods, a
silent one (half-open, no will) soon after two periods, and wills that fired while it was
away once it is back.  ``benchmarks/fleet_scale.py`` runs the same at scale.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud_head.fleet import FleetRegistry, FleetWorker
from continuum.embedded import EmbeddedBroker
from continuum.wire.mqtt import BrokerSettings
from tests.fleet_simulator import SimulatorProcess

pytestmark = pytest.mark.integration

AGENTS = 200
PERIOD_S = 0.5


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
            wait_for(lambda: registry.stats()["timed_out"] == 10, 2 * PERIOD_S + 1.0)
            elapsed = time.time() - min(silenced.values())
            assert elapsed > 2 * PERIOD_S - 0.1  # not before the bound (less the last beat)
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
