"""What the demo leans on to show recovery: a supervisor that restarts, a site link that cuts."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from continuum.embedded import EmbeddedBroker
from continuum.embedded.site_link import SiteLink
from continuum.embedded.supervisor import Supervisor, SupervisorEvent

pytestmark = pytest.mark.integration


def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class SleepService:
    """A real process to supervise."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.spawns = 0

    def spawn(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.spawns += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def service() -> Any:
    service = SleepService()
    service.spawn()
    yield service
    service.stop()


class TestSupervisorRestartsWhatDied:
    def test_a_killed_process_is_restarted_after_its_backoff(self, service: SleepService) -> None:
        events: list[SupervisorEvent] = []
        supervisor = Supervisor(events.append, restart_min_s=0.4, restart_max_s=0.4, poll_s=0.02)
        supervisor.watch("sleeper", alive=service.alive, restart=service.spawn)
        supervisor.start()
        try:
            first = service.process
            service.kill()
            killed_at = time.monotonic()
            wait_for(lambda: service.spawns == 2)
            waited = time.monotonic() - killed_at
        finally:
            supervisor.stop()
        assert service.alive() and service.process is not first
        assert waited >= 0.2  # the jittered delay is drawn from [min/2, min]
        assert [e.kind for e in events] == ["crashed", "restarted"]
        assert supervisor.restarts() == {"sleeper": 1}

    def test_crashes_in_a_row_back_off_longer_each_time(self) -> None:
        events: list[SupervisorEvent] = []
        attempts: list[float] = []

        def failing_restart() -> None:
            attempts.append(time.monotonic())
            raise OSError("cannot start")

        supervisor = Supervisor(events.append, restart_min_s=0.1, restart_max_s=10.0, poll_s=0.01)
        supervisor.watch("broken", alive=lambda: False, restart=failing_restart)
        supervisor.start()
        try:
            wait_for(lambda: len(attempts) >= 4)
        finally:
            supervisor.stop()
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert gaps[2] > gaps[0]  # 0.1 -> 0.2 -> 0.4 base, each jittered down by half at most
        assert [e.kind for e in events[:3]] == ["crashed", "failed", "failed"]

    def test_a_stopped_supervisor_restarts_nothing(self, service: SleepService) -> None:
        supervisor = Supervisor(restart_min_s=0.05, restart_max_s=0.05, poll_s=0.01)
        supervisor.watch("sleeper", alive=service.alive, restart=service.spawn)
        supervisor.start()
        supervisor.stop()
        service.kill()
        time.sleep(0.3)
        assert service.spawns == 1 and not service.alive()

    def test_a_killed_broker_comes_back_on_its_port(
        self, private_mqtt_broker: EmbeddedBroker
    ) -> None:
        supervisor = Supervisor(restart_min_s=0.2, restart_max_s=0.2, poll_s=0.02)
        supervisor.watch(
            "mosquitto",
            alive=lambda: private_mqtt_broker.running,
            restart=private_mqtt_broker.start,
        )
        supervisor.start()
        try:
            private_mqtt_broker.kill()
            # A restart counts once start() returned, i.e. once the port accepts again
            # (``running`` turns true as soon as the process exists).
            wait_for(lambda: supervisor.restarts() == {"mosquitto": 1})
            with socket.create_connection((private_mqtt_broker.host, private_mqtt_broker.port), 2):
                pass
        finally:
            supervisor.stop()


class Client:
    """A plain paho client that records its connects and disconnects."""

    def __init__(self, port: int) -> None:
        self.connects = 0
        self.disconnected = threading.Event()
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"link-{port}")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(0.1, 0.2)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_connect(self, *args: Any) -> None:
        self.connects += 1
        self.disconnected.clear()
        self.connected.set()

    def _on_disconnect(self, *args: Any) -> None:
        self.connected.clear()
        self.disconnected.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class TestSiteLink:
    def test_mqtt_passes_through_and_a_cut_drops_the_site_until_it_is_back(
        self, mqtt_broker: EmbeddedBroker
    ) -> None:
        with SiteLink(mqtt_broker.host, mqtt_broker.port, name="lux-1") as link:
            client = Client(link.port)
            try:
                assert client.connected.wait(5)
                info = client.client.publish("link/test", b"x", qos=1)
                info.wait_for_publish(5)
                assert info.is_published()

                assert link.cut(1.0) == 1
                assert client.disconnected.wait(5)
                time.sleep(0.5)
                assert not client.connected.is_set() and link.refused >= 1  # still cut
                assert client.connected.wait(5)  # back after the cut
                assert client.connects == 2 and not link.is_cut
            finally:
                client.close()
