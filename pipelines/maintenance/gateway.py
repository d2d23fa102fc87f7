"""A simulated line gateway: machines' sensor readings published on a real MQTT broker.

It plays the part of the gateway next to the presses (Greengrass, Node-RED, a PLC bridge):
every ``chunk`` accelerometer samples it publishes, per machine, one temperature and one
current reading and then the vibration chunk, on ``{prefix}/{machine}/{channel}``, in the
payload forms ``edge_agent.gateway.SensorGatewaySource`` reads::

    {prefix}/{machine}/temperature  {"ts": 1765090000.25, "value": 41.7}
    {prefix}/{machine}/current      {"ts": 1765090000.25, "value": 12.3}
    {prefix}/{machine}/vibration    {"ts": 1765090000.25, "rate_hz": 1024.0,
                                     "values": [...256 samples...],
                                     "label": 0, "label_delay_s": 3.0}

Each machine's bearing wears at ``wear_per_s`` simulated seconds and is replaced (wear 0)
when it reaches ``replace_at``; ``label`` is the maintenance record the plant will know later
(1 from ``FAULT_WEAR`` on), attached so the agent can send it as delayed feedback (None:
no labels).  ``speed`` compresses time: 8 publishes eight seconds of readings per second.
From ``drift_after_s`` (wall seconds after the start) the site drifts: ``machine_b`` replaces
each machine with a new type-B one, ``sensor_ageing`` ages its sensors (``data.DRIFTS``).
The machines draw from seeds at ``data.GATEWAY_SEED_BASE`` and up, so nothing published is in
a split.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from continuum.errors import ConfigError
from pipelines.maintenance.bearings import (
    CHANNELS,
    FAULT_WEAR,
    FS_HZ,
    WINDOW,
    Machine,
    SensorState,
    VibrationStream,
    make_machine,
)
from pipelines.maintenance.data import DRIFTS, GATEWAY_SEED_BASE

__all__ = ["SimulatedGateway", "topics_for"]

log = logging.getLogger(__name__)


def topics_for(prefix: str, machine: str) -> dict[str, str]:
    """Return channel -> topic of ``machine`` under ``prefix`` (the source's ``topics`` arg)."""
    return {channel: f"{prefix}/{machine}/{channel}" for channel in CHANNELS}


@dataclass
class _Unit:
    """One machine on the line and the state of its bearing and sensors."""

    machine: Machine
    stream: VibrationStream
    rng: np.random.Generator
    wear: float
    sensor: SensorState


class SimulatedGateway:
    """Publish machines' readings (see the module docstring) until ``stop``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        machines: Mapping[str, str] | None = None,
        prefix: str = "factory/line-1",
        chunk: int = 256,
        speed: float = 1.0,
        seed: int = 0,
        wear_per_s: float = 0.01,
        replace_at: float = 0.75,
        label_delay_s: float | None = 3.0,
        drift: str | None = None,
        drift_after_s: float | None = None,
        username: str | None = None,
        password: str | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        machines = dict(machines or {"press-7": "A"})
        if chunk < 1 or speed <= 0 or wear_per_s < 0 or not FAULT_WEAR < replace_at <= 1:
            raise ConfigError(
                f"need chunk >= 1, speed > 0, wear_per_s >= 0 and {FAULT_WEAR} < replace_at "
                f"<= 1; got {chunk=} {speed=} {wear_per_s=} {replace_at=}"
            )
        if drift is not None and (drift not in DRIFTS or drift_after_s is None):
            raise ConfigError(
                f"drift {drift!r}: use one of {', '.join(DRIFTS)} with drift_after_s set"
            )
        self.prefix, self.chunk, self.speed = prefix, chunk, speed
        self.wear_per_s, self.replace_at = wear_per_s, replace_at
        self.label_delay_s = label_delay_s
        self.drift, self.drift_after_s = drift, drift_after_s
        self._kinds = machines
        self._seed = seed
        self._units: dict[str, _Unit] = {}
        for index, (name, kind) in enumerate(machines.items()):
            rng = np.random.default_rng([GATEWAY_SEED_BASE + seed, index])
            machine = make_machine(kind, rng)
            self._units[name] = _Unit(
                machine,
                VibrationStream(machine, rng),
                rng,
                float(rng.uniform(0, 0.4)),
                SensorState(),
            )
        self._drifted = False
        self.published = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"sim-gateway-{seed}-{time.monotonic_ns() % 1_000_000}",
            protocol=mqtt.MQTTv311,
        )
        self._client.connect_timeout = connect_timeout_s
        self._client.reconnect_delay_set(1, 5)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._host, self._port = host, port

    def topics(self, machine: str) -> dict[str, str]:
        """Return channel -> topic of ``machine``."""
        return topics_for(self.prefix, machine)

    def source_args(self, machine: str, host: str, port: int) -> dict[str, Any]:
        """Return the ``SensorGatewaySource`` args that read ``machine`` as the model wants it:
        its topics, the channel order of ``CHANNELS`` and windows of ``WINDOW``."""
        return {
            "host": host,
            "port": port,
            "topics": self.topics(machine),
            "channels": list(CHANNELS),
            "window": WINDOW,
        }

    def wear(self, machine: str) -> float:
        """Return the current wear of ``machine``'s bearing."""
        return self._units[machine].wear

    def _apply_drift(self) -> None:
        assert self.drift is not None
        kind, sensor = DRIFTS[self.drift]
        for index, (name, unit) in enumerate(self._units.items()):
            if self.drift == "machine_b":
                rng = np.random.default_rng([GATEWAY_SEED_BASE + self._seed, 1000 + index])
                machine = make_machine(kind, rng)
                self._units[name] = _Unit(machine, VibrationStream(machine, rng), rng, 0.0, sensor)
            else:
                unit.sensor = sensor
        self._drifted = True
        log.info("simulated gateway: drift %s from now on", self.drift)

    def publish_chunk(self) -> None:
        """Publish one chunk for every machine and advance the simulated time by it."""
        now = time.time()
        seconds = self.chunk / FS_HZ
        for name, unit in self._units.items():
            topics = self.topics(name)
            temperature, current = unit.machine.slow_readings(unit.wear, unit.rng, unit.sensor)
            vibration = unit.stream.next(self.chunk, unit.wear, unit.sensor)
            body: dict[str, Any] = {
                "ts": now,
                "rate_hz": FS_HZ,
                "values": [round(float(v), 5) for v in vibration],
            }
            if self.label_delay_s is not None:
                body["label"] = int(unit.wear >= FAULT_WEAR)
                body["label_delay_s"] = self.label_delay_s
            for channel, payload in (
                ("temperature", {"ts": now, "value": round(temperature, 3)}),
                ("current", {"ts": now, "value": round(current, 3)}),
                ("vibration", body),
            ):
                self._client.publish(topics[channel], json.dumps(payload), qos=0)
                self.published += 1
            unit.wear += self.wear_per_s * seconds
            if unit.wear >= self.replace_at:
                unit.wear = 0.0  # maintenance replaced the bearing

    def start(self) -> SimulatedGateway:
        """Connect and publish on a thread of its own, paced at ``speed`` times real time.

        Raises:
            OSError: the broker cannot be reached (within ``connect_timeout_s``).
        """
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="sim-gateway", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        period = self.chunk / FS_HZ / self.speed
        started = next_at = time.monotonic()
        while not self._stop.is_set():
            if (
                self.drift is not None
                and not self._drifted
                and self.drift_after_s is not None
                and time.monotonic() - started >= self.drift_after_s
            ):
                self._apply_drift()
            self.publish_chunk()
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        """Stop publishing and disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> SimulatedGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
