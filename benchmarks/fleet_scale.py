"""Benchmark the fleet registry against a growing fleet of simulated agents (issue 5).

Run: ``python benchmarks/fleet_scale.py`` (a few minutes; ``--help`` for the flags).

One mosquitto on loopback (``EmbeddedBroker``); the registry process runs the real
``FleetWorker`` and ``FleetRegistry`` on a temporary SQLite file, as the cloud head's fleet
actor does; simulated agents (``tests/fleet_simulator.py``: asyncio MQTT 5 clients with the
agent's last will and retained ``NodeStatus`` heartbeat) run on a few simulator processes,
because one process's file-descriptor limit (``ulimit -Hn``) caps its sockets.

The fleet grows in steps. At each one the benchmark measures:

- connect: seconds from TCP connect to CONNACK per agent (p50/p99) and the ramp's wall time;
- lag: for every live node, now minus the registry's last-seen time, sampled each period
  (p50/p99/max) and the share of samples within two heartbeat periods;
- flip: a sample of agents is killed abruptly (socket closed, no DISCONNECT, so the broker
  fires their wills); seconds from the kill until the registry holds each one offline;
- CPU of the registry process, of mosquitto and of the simulators over the lag window, and
  the registry's CPU per status message;
- baseline: a bare paho subscriber with the registry's own subscriptions, which only counts
  what arrives, connected for a short window after the registry's: its CPU per message is
  the cost of receiving, so ``ratio`` is what the registry adds to it.

The ramp stops at the first step where the registry falls behind (share current < 99%, or a
flip slower than two periods), and the last line says the largest fleet it held.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# The simulator is shared with the integration test and lives under tests/ (see its docstring).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud_head.fleet import FleetRegistry, FleetWorker, subscriptions
from continuum.embedded import EmbeddedBroker
from continuum.wire.mqtt import BrokerSettings
from tests.fleet_simulator import SimulatorProcess, raise_fd_limit

TENANT = "bench"
DEFAULT_STEPS = "1000,2500,5000,10000,15000,20000"
SHARE_CURRENT_MIN = 0.99
#: Descriptors kept free below the hard limit: the broker's own files, registry, baseline.
FD_MARGIN = 64


# -- child processes ------------------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    """Return the user + system CPU seconds of process ``pid`` so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _registry_main(conn: Connection, host: str, port: int, db: str, period_s: float) -> None:
    """Run the cloud head's fleet worker and registry; answer the benchmark's questions."""
    raise_fd_limit()
    registry = FleetRegistry(TENANT, db, heartbeat_interval_s=period_s)
    worker = FleetWorker(registry, BrokerSettings(host=host, port=port))
    worker.start()
    conn.send(("ok", None))
    while True:
        command, *args = conn.recv()
        if command == "lags":
            live = registry.liveness()
            now = time.time()
            conn.send(("ok", {node: (up, now - seen) for node, (up, seen) in live.items()}))
        elif command == "flips":
            conn.send(("ok", _watch_flips(registry, *args)))
        elif command == "stats":
            conn.send(("ok", worker.stats()))
        elif command == "stop":
            worker.stop()
            registry.close()
            conn.send(("ok", None))
            return


def _watch_flips(
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


def _bare_main(conn: Connection, host: str, port: int) -> None:
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


class _Child:
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


# -- one step -------------------------------------------------------------------------------


@dataclass
class Step:
    """What one step of the ramp measured."""

    agents: int
    label: str
    connect_p50_ms: float = math.nan
    connect_p99_ms: float = math.nan
    ramp_s: float = math.nan
    rate_in: float = math.nan
    lag_p50: float = math.nan
    lag_p99: float = math.nan
    lag_max: float = math.nan
    current: float = 0.0
    flip_p50: float = math.nan
    flip_max: float = math.nan
    flips_missing: int = 0
    registry_cpu: float = math.nan
    registry_us: float = math.nan
    bare_cpu: float = math.nan
    bare_us: float = math.nan
    bare_rate: float = math.nan
    mosquitto_cpu: float = math.nan
    sims_cpu: float = math.nan
    timed_out: int = 0
    note: str = ""

    def held(self, period_s: float) -> bool:
        """Whether the registry kept up at this step."""
        return (
            self.current >= SHARE_CURRENT_MIN
            and self.flips_missing == 0
            and self.flip_max <= 2 * period_s
            and not self.note
        )


class Bench:
    """The broker, the registry, the baseline and the simulators of one run."""

    def __init__(self, args: argparse.Namespace, workdir: Path, fd_limit: int) -> None:
        self.period_s: float = args.period_s
        self.broker = EmbeddedBroker(workdir / "broker", autosave_interval_s=30).start()
        host, port = self.broker.host, self.broker.port
        self.registry = _Child(_registry_main, host, port, str(workdir / "fleet.db"), self.period_s)
        self.registry.wait(60.0)
        self.bare = _Child(_bare_main, host, port)
        self.sims = [
            SimulatorProcess(host, port, TENANT, period_s=self.period_s)
            for _ in range(args.processes)
        ]
        self.per_process = fd_limit - FD_MARGIN
        self.alive: list[list[str]] = [[] for _ in self.sims]
        self.next_index = 0
        self.rng = random.Random(5)

    def close(self) -> None:
        for sim in self.sims:
            sim.close()
        self.bare.close("stop")
        self.registry.close("stop")
        self.broker.stop()

    @property
    def total(self) -> int:
        return sum(len(a) for a in self.alive)

    def run_step(self, target: int, label: str) -> Step:
        step = Step(target, label)
        period = self.period_s
        # Ramp: spread the new agents over the processes with the fewest.
        want = [len(a) for a in self.alive]
        for _ in range(target - self.total):
            want[want.index(min(want))] += 1
        if max(want) > self.per_process:
            step.note = f"over {self.per_process} sockets per simulator: add --processes"
            return step
        batches = []
        for i, n in enumerate(want):
            names = [f"sim-{self.next_index + k:05d}" for k in range(n - len(self.alive[i]))]
            self.next_index += len(names)
            batches.append(names)
        started = time.perf_counter()
        try:
            with ThreadPoolExecutor(len(self.sims)) as pool:
                took = list(
                    pool.map(lambda sb: sb[0].add(sb[1]), zip(self.sims, batches, strict=True))
                )
        except (RuntimeError, TimeoutError) as exc:
            step.note = f"ramp failed: {exc}"
            return step
        step.ramp_s = time.perf_counter() - started
        for i, names in enumerate(batches):
            self.alive[i].extend(names)
        connects = sorted(t for ts in took for t in ts)
        if connects:
            step.connect_p50_ms = 1e3 * connects[len(connects) // 2]
            step.connect_p99_ms = 1e3 * connects[int(len(connects) * 0.99)]
        alive = {n for names in self.alive for n in names}
        self._settle(alive)

        # The registry's window: lag samples, message rate and CPU.
        window_s = max(5.0, 5 * period)
        before = self._cpu()
        stats0 = self.registry.call("stats")
        started = time.monotonic()
        lags: list[float] = []
        samples = max(3, round(window_s / max(period, 1.0)))
        for k in range(samples):
            time.sleep(max(0.0, started + (k + 1) * window_s / samples - time.monotonic()))
            lags += [lag for node, (_, lag) in self.registry.call("lags").items() if node in alive]
        stats1 = self.registry.call("stats")
        elapsed = time.monotonic() - started
        after = self._cpu()
        handled = stats1["status"] - stats0["status"]
        step.rate_in = handled / elapsed
        step.timed_out = stats1["timed_out"] - stats0["timed_out"]
        lags.sort()
        step.lag_p50 = lags[len(lags) // 2]
        step.lag_p99 = lags[int(len(lags) * 0.99)]
        step.lag_max = lags[-1]
        step.current = sum(1 for lag in lags if lag <= 2 * period) / len(lags)
        step.registry_cpu = (after["registry"] - before["registry"]) / elapsed
        step.registry_us = 1e6 * (after["registry"] - before["registry"]) / max(handled, 1)
        step.mosquitto_cpu = (after["mosquitto"] - before["mosquitto"]) / elapsed
        step.sims_cpu = (after["sims"] - before["sims"]) / elapsed

        # The flip: kill a sample abruptly; the broker publishes their wills.
        sample = min(100, max(10, target // 100))
        killed: dict[str, float] = {}
        for i, sim in enumerate(self.sims):
            share = round(sample * len(self.alive[i]) / max(self.total, 1))
            chosen = self.rng.sample(self.alive[i], min(share, len(self.alive[i])))
            killed.update(sim.kill(chosen))
            self.alive[i] = [n for n in self.alive[i] if n not in killed]
        flips = self.registry.call("flips", killed, 4 * period + 2.0)
        step.flips_missing = len(killed) - len(flips)
        if flips:
            step.flip_p50 = statistics.median(flips.values())
            step.flip_max = max(flips.values())

        # The baseline: the same messages to a subscriber that only counts them.
        if self.bare.call("connect"):
            time.sleep(1.0)
            window_s = max(3.0, 3 * period)
            count0, cpu0, t0 = self.bare.call("count"), _cpu_s(self.bare.pid), time.monotonic()
            time.sleep(window_s)
            count1, cpu1, t1 = self.bare.call("count"), _cpu_s(self.bare.pid), time.monotonic()
            self.bare.call("disconnect")
            step.bare_rate = (count1 - count0) / (t1 - t0)
            step.bare_cpu = (cpu1 - cpu0) / (t1 - t0)
            step.bare_us = 1e6 * (cpu1 - cpu0) / max(count1 - count0, 1)
        return step

    def _settle(self, alive: set[str]) -> None:
        """Wait until the registry holds every live agent online and current, or time out."""
        deadline = time.monotonic() + max(20.0, 10 * self.period_s)
        time.sleep(2 * self.period_s)
        while time.monotonic() < deadline:
            lags = self.registry.call("lags")
            if all(lags.get(n, (False, 0.0))[0] and lags[n][1] <= 2 * self.period_s for n in alive):
                return
            time.sleep(self.period_s / 2)

    def _cpu(self) -> dict[str, float]:
        assert self.broker.pid is not None
        return {
            "registry": _cpu_s(self.registry.pid),
            "mosquitto": _cpu_s(self.broker.pid),
            "sims": sum(_cpu_s(s.pid) for s in self.sims),
        }


# -- report ---------------------------------------------------------------------------------


def _plan(steps: Sequence[int], max_agents: int, capacity: int) -> list[tuple[int, str]]:
    plan: list[tuple[int, str]] = []
    for n in sorted(set(steps)):
        if n > max_agents:
            break
        if n > capacity:
            plan.append((capacity, f"{capacity} (fd cap)"))
            break
        plan.append((n, str(n)))
    return plan


def _row(step: Step, period_s: float) -> str:
    ratio = step.registry_us / step.bare_us if step.bare_us == step.bare_us else math.nan
    flips = f"{step.flip_p50:5.3f}/{step.flip_max:5.3f}"
    if step.flips_missing:
        flips += f" ({step.flips_missing} missed)"
    verdict = "held" if step.held(period_s) else "BEHIND"
    return (
        f"{step.label:>14} {step.connect_p50_ms:6.1f}/{step.connect_p99_ms:<6.1f} "
        f"{step.ramp_s:6.1f} {step.rate_in:8.0f} "
        f"{step.lag_p50:5.2f}/{step.lag_p99:5.2f}/{step.lag_max:5.2f} {100 * step.current:7.2f} "
        f"{flips:>11} {100 * step.registry_cpu:6.1f} {step.registry_us:6.1f} "
        f"{100 * step.bare_cpu:6.1f} {step.bare_us:6.1f} {ratio:5.2f} "
        f"{100 * step.mosquitto_cpu:6.1f} {100 * step.sims_cpu:6.1f} {step.timed_out:5d}  "
        f"{verdict}{'  ' + step.note if step.note else ''}"
    )


HEADER = (
    f"{'agents':>14} {'connect ms':>13} {'ramp s':>6} {'msg/s in':>8} "
    f"{'lag p50/p99/max s':>17} {'current%':>7} {'flip p50/max':>11} {'reg%':>6} "
    f"{'reg us':>6} {'bare%':>6} {'bareus':>6} {'ratio':>5} {'mosq%':>6} {'sims%':>6} "
    f"{'tmout':>5}"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ramp and print the table; return 0 if the first step held."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-agents", type=int, default=20_000, help="largest fleet to try")
    parser.add_argument(
        "--steps", default=DEFAULT_STEPS, help=f"fleet sizes, comma-separated ({DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--period-s", type=float, default=1.0, help="heartbeat period of every agent (1.0)"
    )
    parser.add_argument(
        "--processes", type=int, default=0, help="simulator processes (0: one per 5000, 2-4)"
    )
    args = parser.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--steps must be comma-separated integers, got {args.steps!r}")
    if not steps or min(steps) < 1:
        parser.error("--steps needs at least one fleet size >= 1")
    if args.max_agents < 1:
        parser.error("--max-agents must be >= 1")
    if not 0.1 <= args.period_s <= 60:
        parser.error("--period-s must be within [0.1, 60]")
    if args.processes < 0:
        parser.error("--processes must be >= 0 (0 picks)")
    if args.processes == 0:
        args.processes = min(4, max(2, math.ceil(min(args.max_agents, max(steps)) / 5000)))

    fd_limit = raise_fd_limit()
    # mosquitto holds one descriptor per agent, plus the registry's and the baseline's.
    capacity = fd_limit - FD_MARGIN
    plan = _plan(steps, args.max_agents, capacity)
    print(
        f"fleet_scale: {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, RLIMIT_NOFILE {fd_limit}, heartbeat {args.period_s:g} s, "
        f"{args.processes} simulator processes, steps {[label for _, label in plan]}"
    )
    print(HEADER, flush=True)
    largest = 0
    with tempfile.TemporaryDirectory(prefix="ctm-fleet-scale-") as tmp:
        bench = Bench(args, Path(tmp), fd_limit)
        try:
            for target, label in plan:
                step = bench.run_step(target, label)
                print(_row(step, args.period_s), flush=True)
                if not step.held(args.period_s):
                    break
                largest = target
        finally:
            bench.close()
    print(
        "lag: now minus the registry's last-seen time per live node; current: share of lag "
        "samples within 2 periods; reg/bare us: CPU per status received; ratio: reg / bare"
    )
    print(f"largest fleet held: {largest} agents")
    return 0 if largest else 1


if __name__ == "__main__":
    raise SystemExit(main())
