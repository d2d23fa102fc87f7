"""Benchmark the fleet registry against a growing fleet of simulated agents (issues 5, 18).

Run: ``python benchmarks/fleet_scale.py`` (a few minutes; ``--help`` for the flags;
``--json PATH`` writes the result).  The headline run is
``python benchmarks/fleet_scale.py --steps 1000,2500,5000,10000,15000,20000 --json fleet.json``
on a quiet machine.

One mosquitto on loopback (``EmbeddedBroker``); the registry process runs the real
``FleetWorker`` and ``FleetRegistry`` on a temporary SQLite file, as the cloud head's fleet
actor does; simulated agents (``tests/fleet_simulator.py``: asyncio MQTT 5 clients with the
agent's last will and retained ``NodeStatus`` heartbeat) run on a few simulator processes,
because one process's file-descriptor limit (``ulimit -Hn``) caps its sockets.

At each step of the ramp, over a window of steady heartbeats:

- sent: heartbeats the simulators wrote (their own counters) against N / period, the rate the
  fleet should send; processed: statuses the registry handled (its own counter) over the same
  window: a registry that queues or a broker that drops shows as heartbeats not processed;
- lag: payload ``ts`` to the registry's handling of it, from the registry's lag histogram
  (``FleetRegistry.backlog()``; a bucket's upper bound, so ``p99 <= 2 s`` is what it shows);
- false offline: live agents (not killed) the registry ever held offline during the step,
  polled each period, and its ``timed_out`` count (offline verdicts by silence);
- behind: whether the registry said it was behind (and withheld silence verdicts);
- flip: a sample of agents is killed abruptly (no DISCONNECT: the broker fires their wills);
  seconds from the kill until the registry holds each one offline;
- CPU of the registry, mosquitto and the simulators over the window, and the registry's CPU
  per status; the bare baseline (a paho subscriber with the registry's subscriptions that only
  counts) over a short window after: its rate and CPU per status.

A step is held if >= 99% of the heartbeats sent were processed, the p99 lag is under two
periods, no live agent was ever held offline (none timed out) and every killed one flipped
(by its will) within two periods.
The ramp stops at the first step not held and names what stopped it: the simulators (they
sent under 99% of N / period), the machine (all cores busy), mosquitto, or the registry; the
file-descriptor limit caps the plan before it starts.  The per-core ceiling is statuses per
registry CPU-second; past it, the registry scales out as ingest does (the plan is printed).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The simulator is shared with the integration test and lives under tests/ (see its docstring).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _harness as harness
from _fleet_processes import TENANT, Child, bare_main, cpu_s, registry_main

from continuum.embedded import EmbeddedBroker
from tests.fleet_simulator import SimulatorProcess, raise_fd_limit

DEFAULT_STEPS = "1000,2500,5000,10000,15000,20000"
GOAL_AGENTS = 20_000
PROCESSED_MIN = 0.99
#: Descriptors kept free below the hard limit: the broker's own files, registry, baseline.
FD_MARGIN = 64
#: A process at this share of a core (or the machine at this share of its cores) is saturated.
SATURATED = 0.9


# -- one step -------------------------------------------------------------------------------


@dataclass
class Step:
    """What one step of the ramp measured (rates per second, lags in seconds)."""

    agents: int
    expected_rate: float  # N / period: what the fleet should send
    sent_rate: float = math.nan
    rate_in: float = math.nan  # statuses the registry processed per second
    processed: float = math.nan  # share of the heartbeats sent that were processed
    lag_p50: float = math.nan
    lag_p99: float = math.nan
    lag_max: float = math.nan
    false_offline: int = 0  # live agents ever held offline during the step
    timed_out: int = 0  # offline verdicts by silence during the step
    behind: int = 0  # episodes the registry said it was behind
    overdue_max: int = 0  # most nodes whose silence verdict it withheld at once
    flip_p50: float = math.nan
    flip_max: float = math.nan
    flips_missing: int = 0
    connect_p99_ms: float = math.nan
    ramp_s: float = math.nan
    registry_cpu: float = math.nan
    registry_us: float = math.nan
    mosquitto_cpu: float = math.nan
    sims_cpu: list[float] = field(default_factory=list)
    bare_rate: float = math.nan
    bare_cpu: float = math.nan
    bare_us: float = math.nan
    load: float = math.nan  # the machine's 1-minute load average at the end of the window
    failed: str = ""  # a ramp that could not be set up

    def held(self, period_s: float) -> bool:
        """Whether the registry kept up at this step (the module docstring's four tests)."""
        return (
            not self.failed
            and self.processed >= PROCESSED_MIN
            and self.lag_p99 < 2 * period_s
            and self.false_offline == 0
            and self.timed_out == 0
            and self.flips_missing == 0
            and self.flip_max <= 2 * period_s
        )

    def limit(self, cpus: int) -> str:
        """Name what stopped the step: the simulators, the machine, mosquitto or the registry."""
        if self.failed:
            return self.failed
        total = self.registry_cpu + self.mosquitto_cpu + sum(self.sims_cpu)
        busy = (
            f"{100 * total:.0f}% of {cpus} cores busy (registry {100 * self.registry_cpu:.0f}%, "
            f"mosquitto {100 * self.mosquitto_cpu:.0f}%, simulators "
            f"{100 * sum(self.sims_cpu):.0f}%), load average {self.load:.1f}"
        )
        if self.sent_rate < PROCESSED_MIN * self.expected_rate:
            busiest = max(self.sims_cpu, default=math.nan)
            short = f"sent {self.sent_rate:,.0f}/s of {self.expected_rate:,.0f}/s"
            if busiest >= SATURATED:
                return f"simulators' CPU: {short}, busiest at {100 * busiest:.0f}% of a core"
            return f"machine: the simulators were not scheduled in time ({short}); {busy}"
        if total >= SATURATED * cpus or self.load >= cpus:
            return f"machine: {busy}"
        if self.mosquitto_cpu >= SATURATED:
            return f"mosquitto at {100 * self.mosquitto_cpu:.0f}% of a core"
        return f"registry at {100 * self.registry_cpu:.0f}% of a core"


class Bench:
    """The broker, the registry, the baseline and the simulators of one run."""

    def __init__(self, args: argparse.Namespace, workdir: Path, fd_limit: int) -> None:
        self.period_s: float = args.period_s
        self.window_s: float = max(args.window_s, 3 * self.period_s)
        self.broker = EmbeddedBroker(workdir / "broker", autosave_interval_s=30).start()
        host, port = self.broker.host, self.broker.port
        self.registry = Child(registry_main, host, port, str(workdir / "fleet.db"), self.period_s)
        self.registry.wait(60.0)
        self.bare = Child(bare_main, host, port)
        self.sims = [
            SimulatorProcess(host, port, TENANT, period_s=self.period_s)
            for _ in range(args.processes)
        ]
        self.per_process = fd_limit - FD_MARGIN
        self.alive: list[list[str]] = [[] for _ in self.sims]
        self.killed: set[str] = set()
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

    def run_step(self, target: int) -> Step:
        step = Step(target, target / self.period_s)
        stats0, backlog0 = self.registry.call("stats")
        if not self._ramp(step, target):
            return step
        down: set[str] = set()
        self._settle(down)
        self._window(step, down)
        self._flip(step, down)
        stats1, backlog1 = self.registry.call("stats")
        step.false_offline = len(down - self.killed)
        step.timed_out = stats1["timed_out"] - stats0["timed_out"]
        step.behind = backlog1.episodes - backlog0.episodes + int(backlog0.behind)
        self._bare(step)
        return step

    def _ramp(self, step: Step, target: int) -> bool:
        want = [len(a) for a in self.alive]
        for _ in range(target - self.total):
            want[want.index(min(want))] += 1
        if max(want) > self.per_process:
            step.failed = f"fd limit: over {self.per_process} sockets per simulator"
            return False
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
            step.failed = f"ramp failed: {exc}"
            return False
        step.ramp_s = time.perf_counter() - started
        for i, names in enumerate(batches):
            self.alive[i].extend(names)
        connects = sorted(t for ts in took for t in ts)
        if connects:
            step.connect_p99_ms = 1e3 * connects[int(len(connects) * 0.99)]
        return True

    def _poll_down(self, down: set[str]) -> tuple[int, float, int]:
        """Add the agents the registry holds offline to ``down``; return how many it knows,
        the oldest last-seen age of those it holds online and how many are overdue."""
        offline, known, oldest, overdue = self.registry.call("down")
        down.update(offline)
        return known, oldest, overdue

    def _settle(self, down: set[str]) -> None:
        """Wait until the registry knows every agent and none is older than two periods."""
        deadline = time.monotonic() + max(20.0, 10 * self.period_s)
        time.sleep(2 * self.period_s)
        while time.monotonic() < deadline:
            known, oldest, _ = self._poll_down(down)
            if known >= self.total + len(self.killed) and oldest <= 2 * self.period_s:
                return
            time.sleep(self.period_s / 2)

    def _window(self, step: Step, down: set[str]) -> None:
        """Measure sent, processed, lag and CPU over a window of steady heartbeats."""
        sent0, (stats0, backlog0), cpu0 = self._sent(), self.registry.call("stats"), self._cpu()
        started = time.monotonic()
        polls = 3  # each costs the registry a read of every node: few, so its CPU is its own
        overdue = 0
        for k in range(polls):
            time.sleep(max(0.0, started + (k + 1) * self.window_s / polls - time.monotonic()))
            overdue = max(overdue, self._poll_down(down)[2])
        sent1, (stats1, backlog1), cpu1 = self._sent(), self.registry.call("stats"), self._cpu()
        elapsed = time.monotonic() - started
        sent, handled = sent1 - sent0, stats1["status"] - stats0["status"]
        step.sent_rate, step.rate_in = sent / elapsed, handled / elapsed
        step.processed = handled / sent if sent else math.nan
        step.overdue_max = overdue
        step.lag_p50 = backlog1.lag_quantile(0.5, since=backlog0)
        step.lag_p99 = backlog1.lag_quantile(0.99, since=backlog0)
        step.lag_max = backlog1.lag_quantile(1.0, since=backlog0)
        step.registry_cpu = (cpu1["registry"] - cpu0["registry"]) / elapsed
        step.registry_us = 1e6 * (cpu1["registry"] - cpu0["registry"]) / max(handled, 1)
        step.mosquitto_cpu = (cpu1["mosquitto"] - cpu0["mosquitto"]) / elapsed
        step.sims_cpu = [(b - a) / elapsed for a, b in zip(cpu0["sims"], cpu1["sims"], strict=True)]
        step.load = os.getloadavg()[0]

    def _flip(self, step: Step, down: set[str]) -> None:
        """Kill a sample abruptly (the broker publishes their wills) and time their flips."""
        sample = min(100, max(10, step.agents // 100))
        killed: dict[str, float] = {}
        for i, sim in enumerate(self.sims):
            share = round(sample * len(self.alive[i]) / max(self.total, 1))
            chosen = self.rng.sample(self.alive[i], min(share, len(self.alive[i])))
            killed.update(sim.kill(chosen))
            self.alive[i] = [n for n in self.alive[i] if n not in killed]
        self.killed.update(killed)
        flips = self.registry.call("flips", killed, 4 * self.period_s + 2.0)
        self._poll_down(down)
        step.flips_missing = len(killed) - len(flips)
        if flips:
            step.flip_p50 = statistics.median(flips.values())
            step.flip_max = max(flips.values())

    def _bare(self, step: Step) -> None:
        """The same messages to a subscriber that only counts them: its rate and CPU."""
        if not self.bare.call("connect"):
            return
        time.sleep(1.0)
        window_s = max(3.0, 3 * self.period_s)
        count0, cpu0, t0 = self.bare.call("count"), cpu_s(self.bare.pid), time.monotonic()
        time.sleep(window_s)
        count1, cpu1, t1 = self.bare.call("count"), cpu_s(self.bare.pid), time.monotonic()
        self.bare.call("disconnect")
        step.bare_rate = (count1 - count0) / (t1 - t0)
        step.bare_cpu = (cpu1 - cpu0) / (t1 - t0)
        step.bare_us = 1e6 * (cpu1 - cpu0) / max(count1 - count0, 1)

    def _sent(self) -> int:
        return sum(sim.counts()["sent"] for sim in self.sims)

    def _cpu(self) -> dict[str, Any]:
        assert self.broker.pid is not None
        return {
            "registry": cpu_s(self.registry.pid),
            "mosquitto": cpu_s(self.broker.pid),
            "sims": [cpu_s(s.pid) for s in self.sims],
        }


# -- report ---------------------------------------------------------------------------------


def _plan(steps: Sequence[int], max_agents: int, capacity: int) -> tuple[list[int], str]:
    plan: list[int] = []
    for n in sorted(set(steps)):
        if n > max_agents:
            break
        if n > capacity:
            plan.append(capacity)
            return plan, (
                f"the file-descriptor limit caps the fleet at {capacity} agents: raise "
                f"`ulimit -Hn` above {n + FD_MARGIN} for {n}"
            )
        plan.append(n)
    return plan, ""


HEADER = (
    f"{'agents':>7} {'N/period':>8} {'sent/s':>8} {'proc/s':>8} {'proc%':>6} "
    f"{'lag p50/p99':>11} {'false off':>9} {'tmout':>5} {'behind':>6} {'flip p50/max':>12} "
    f"{'reg%':>5} {'reg us':>6} {'mosq%':>5} {'sims%':>9} {'bare/s':>8} {'bareus':>6}  verdict"
)


def _row(step: Step, period_s: float) -> str:
    flips = f"{step.flip_p50:.2f}/{step.flip_max:.2f}"
    if step.flips_missing:
        flips += f"({step.flips_missing}!)"
    sims = "/".join(f"{100 * c:.0f}" for c in step.sims_cpu) or "-"
    return (
        f"{step.agents:>7} {step.expected_rate:8.0f} {step.sent_rate:8.0f} {step.rate_in:8.0f} "
        f"{100 * step.processed:6.2f} {step.lag_p50:5.2g}/{step.lag_p99:<5.2g} "
        f"{step.false_offline:9d} {step.timed_out:5d} {step.behind:6d} {flips:>12} "
        f"{100 * step.registry_cpu:5.0f} {step.registry_us:6.1f} {100 * step.mosquitto_cpu:5.0f} "
        f"{sims:>9} {step.bare_rate:8.0f} {step.bare_us:6.1f}  "
        f"{'held' if step.held(period_s) else 'NOT HELD'}"
    )


def _verdicts(
    report: harness.Report,
    steps: list[Step],
    period_s: float,
    largest: int,
    goal: int,
    capped: str,
) -> None:
    cpus = os.cpu_count() or 1
    report.verdict(
        harness.Verdict(
            name=f"{goal:,} agents at {1 / period_s:g} heartbeat/s held",
            target=f">= {goal:,} agents",
            measured=f"{largest:,} agents held" + (f" ({capped})" if capped else ""),
            met=largest >= goal,
        )
    )
    false_offline = sum(s.false_offline for s in steps)
    report.verdict(
        harness.Verdict(
            name="no live agent held offline at any step (overloaded ones included)",
            target="0",
            measured=f"{false_offline} ({sum(s.timed_out for s in steps)} timed out)",
            met=false_offline == 0,
        )
    )
    held = [s for s in steps if s.held(period_s)]
    unheld = [s for s in steps if not s.held(period_s)]
    measured = held or [s for s in steps if not s.failed and s.registry_cpu > 0]
    if measured:
        best = max(measured, key=lambda s: s.agents)
        ceiling = best.rate_in / best.registry_cpu if best.registry_cpu > 0 else math.nan
        replicas = math.ceil(goal / period_s / ceiling) if ceiling == ceiling else 0
        where = "" if held else " (a step not held: a loaded machine)"
        print(
            f"\nper-core ceiling of the registry: {ceiling:,.0f} statuses per CPU-second "
            f"({best.registry_us:.1f} us each at {best.agents:,} agents{where}; the bare "
            f"subscriber {best.bare_us:.1f} us) = {ceiling * period_s:,.0f} agents at a "
            f"{period_s:g} s period on one core.\nplan for {goal:,}: {replicas} registry "
            "replicas on their own cores behind a shared subscription ($share/fleet/...), as "
            "ingest scales out. Each node's heartbeats must reach one replica (a broker "
            "that shares by topic hash, e.g. EMQX's hash_topic), or the replicas share "
            "last-seen through the fleet store and one of them judges silence (mosquitto "
            "shares round-robin); the paho receive alone is the bare column's cost."
        )
        report.case(
            "per-core ceiling", [ceiling], "statuses/CPU-s", agents=best.agents, held=bool(held)
        )
    if unheld:
        print(f"stopped at {unheld[0].agents:,} agents by the {unheld[0].limit(cpus)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ramp, print the table and verdicts; return 0 if the first step held."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-agents", type=int, default=20_000, help="largest fleet to try")
    parser.add_argument(
        "--steps", default=DEFAULT_STEPS, help=f"fleet sizes, comma-separated ({DEFAULT_STEPS})"
    )
    parser.add_argument("--period-s", type=float, default=1.0, help="heartbeat period (1.0)")
    parser.add_argument("--window-s", type=float, default=10.0, help="measured window per step")
    parser.add_argument(
        "--processes", type=int, default=0, help="simulator processes (0: one per 5000, 2-4)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the result as JSON"
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
    plan, capped = _plan(steps, args.max_agents, fd_limit - FD_MARGIN)
    with tempfile.TemporaryDirectory(prefix="ctm-fleet-scale-") as tmp:
        report = harness.Report("fleet_scale", paths=[Path(tmp)], uses=("paho",))
        note = f" ({capped})" if capped else ""
        print(
            f"RLIMIT_NOFILE {fd_limit}, heartbeat {args.period_s:g} s, window "
            f"{args.window_s:g} s, {args.processes} simulator processes, steps {plan}{note}"
        )
        print(HEADER, flush=True)
        results: list[Step] = []
        bench = Bench(args, Path(tmp), fd_limit)
        try:
            for target in plan:
                step = bench.run_step(target)
                results.append(step)
                print(_row(step, args.period_s), flush=True)
                held = step.held(args.period_s)
                limit = "" if held else step.limit(os.cpu_count() or 1)
                report.case(
                    f"{target} agents",
                    [step.rate_in],
                    "statuses/s",
                    held=held,
                    limit=limit,
                    **asdict(step),
                )
                if not step.held(args.period_s):
                    break
        finally:
            bench.close()
        print(
            "sent: the simulators' own count; proc: statuses the registry handled in the same "
            "window; lag: payload ts to handling (histogram bucket bounds, s); false off: live "
            "agents ever held offline; tmout: offline verdicts by silence; behind: episodes the "
            "registry withheld them; bare: a subscriber that only counts"
        )
        largest = max((s.agents for s in results if s.held(args.period_s)), default=0)
        print(f"largest fleet held: {largest:,} agents" + (f"; {capped}" if capped else ""))
        _verdicts(report, results, args.period_s, largest, GOAL_AGENTS, capped)
        report.finish(args.json)
    return 0 if largest else 1


if __name__ == "__main__":
    raise SystemExit(main())
