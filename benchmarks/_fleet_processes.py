"""The fleet_scale benchmark's helper processes: the registry under test and the bare baseline.

Each runs in its own spawned process and answers the benchmark's commands over a pipe.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from cloud_head.fleet import FleetRegistry, FleetWorker, subscriptions
from continuum.wire.mqtt import BrokerSettings
from tests.fleet_simulator import raise_fd_limit

TENANT = "bench"


def cpu_s(pid: int) -> float:
    """Return the user + system CPU seconds of process ``pid`` so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def registry_main(conn: Connection, host: str, port: int, db: str, period_s: float) -> None:
    """Run the cloud head's fleet worker and registry; answer the benchmark's questions."""
    raise_fd_limit()
    registry = FleetRegistry(TENANT, db, heartbeat_interval_s=period_s)
    worker = FleetWorker(registry, BrokerSettings(host=host, port=port))
    worker.start()
    conn.send(("ok", None))
    while True:
        command, *args = conn.recv()
        if command == "down":  # nodes held offline, the oldest last-seen of the rest, overdue
            live = registry.liveness()
            down = [node for node, (up, _) in live.items() if not up]
            oldest = min((seen for up, seen in live.values() if up), default=time.time())
            overdue = registry.backlog().overdue
            conn.send(("ok", (down, len(live), time.time() - oldest, overdue)))
        elif command == "flips":
            conn.send(("ok", watch_flips(registry, *args)))
        elif command == "stats":
            conn.send(("ok", (worker.stats(), registry.backlog())))
        elif command == "stop":
            worker.stop()
            registry.close()
            conn.send(("ok", None))
            return


def watch_flips(
    registry: FleetRegistry, killed: dict[str, float], timeout_s: float
) -> dict[str, float]:
    """Return each killed node's seconds from its kill until the registry held it offline.

    A last will sets the node's last-seen time when it is applied, which times the flip
    exactly; a node marked offline for silence keeps its older last-seen time, so the poll
    that saw it bounds its flip instead.
    """
    flips: dict[str, float] = {}
    deadline = time.time() + timeout_s
    while len(flips) < len(killed) and time.time() < deadline:
        time.sleep(0.2)
        live = registry.liveness()
        polled = time.time()
        for node, at in killed.items():
            up, seen = live.get(node, (True, 0.0))
            if node not in flips and not up:
                flips[node] = (seen if seen >= at else polled) - at
    return flips


def bare_main(conn: Connection, host: str, port: int) -> None:
    """Count what the registry's subscriptions deliver, and nothing else, while connected."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.subscribeoptions import SubscribeOptions

    count = 0
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        nonlocal count
        count += 1

    def on_subscribe(*args: Any) -> None:
        subscribed.set()

    client: Any = None
    while True:
        command, *_ = conn.recv()
        if command == "connect":
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"bare-{uuid.uuid4().hex[:8]}",
                protocol=mqtt.MQTTv5,
            )
            client.on_message = on_message
            client.on_subscribe = on_subscribe
            client.connect(host, port, keepalive=30, clean_start=True)
            client.loop_start()
            subscribed.clear()
            # Live messages only: the retained replay at subscribe is not a steady-state cost.
            client.subscribe(
                [(f, SubscribeOptions(qos=q, retainHandling=2)) for f, q in subscriptions(TENANT)]
            )
            conn.send(("ok", subscribed.wait(30.0)))
        elif command == "count":
            conn.send(("ok", count))
        elif command == "disconnect":
            if client is not None:
                client.disconnect()
                client.loop_stop()
                client = None
            conn.send(("ok", None))
        elif command == "stop":
            conn.send(("ok", None))
            return


class Child:
    """A spawned helper process answering commands over a pipe."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def call(self, *command: Any, timeout_s: float = 120.0) -> Any:
        self._conn.send(command)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float = 120.0) -> Any:
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"{self.process.name} did not answer within {timeout_s} s")
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.process.name} failed: {value}")
        return value

    def close(self, *command: Any) -> None:
        if self.process.is_alive():
            with contextlib.suppress(RuntimeError, TimeoutError, OSError, EOFError):
                self.call(*command, timeout_s=30.0)
        self.process.join(10.0)
        if self.process.is_alive():
            self.process.kill()
