"""``continuum demo``: the whole closed loop on one machine, on embedded defaults.

Starts a mosquitto broker on loopback and a local Ray cluster (a head labelled cloud, a
worker labelled edge), deploys the cloud head of ``pipelines/digits_inspection.py`` as
named Ray actors, lets it train and publish the first model, starts edge-agent processes
that stream digits as cameras, drifts one site's camera part-way, and lets the loop
notice, uplink, retrain, gate, canary and promote. Everything it writes stays under one
working directory; it ends with ``report.json``, ``report.png`` and a printed summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from continuum.errors import ConfigError

MARKER = ".continuum-demo"
PIPELINE_MODULE = "pipelines.digits_inspection"
TENANT = "acme"


@dataclass(frozen=True)
class DemoOptions:
    """What one demo run does; every field has a command-line flag."""

    duration_s: float = 180.0
    agents: int = 3
    drift: str = "blur_contrast"
    drift_at_s: float = 40.0
    workdir: Path = Path("continuum-demo")
    fps: float = 20.0
    live: bool = True
    label_delay_s: float = 3.0


@dataclass
class AgentProcess:
    """One edge-agent process of the demo."""

    node: str
    site: str
    drifted: bool
    config: Path
    log: Path
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Timeline:
    """What the run saw, kept for the report."""

    stream_start: float = 0.0
    drift_at: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, what: str, **details: Any) -> None:
        self.events.append({"t": time.time(), "event": what, **details})


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    defaults = DemoOptions()
    parser = subparsers.add_parser(
        "demo",
        help="run the closed loop end to end on one machine",
        description="Run the full edge-to-cloud loop on embedded defaults: a local mosquitto, "
        "a local Ray cluster (head labelled cloud, worker labelled edge), the digits "
        "inspection pipeline with edge-agent processes as cameras, drift at one site, "
        "selective uplink, retraining on Ray Train, gate, canary and promotion. Writes "
        "report.json and report.png into the working directory.",
    )
    parser.add_argument(
        "--duration",
        type=_positive("duration", 30.0, 3600.0),
        default=defaults.duration_s,
        metavar="SECONDS",
        help=f"how long the cameras stream, in seconds (30-3600; default {defaults.duration_s:g})",
    )
    parser.add_argument(
        "--agents",
        type=_int_range("agents", 2, 8),
        default=defaults.agents,
        help=f"number of edge agents (2-8; default {defaults.agents}); the last one is alone "
        "at site lux-2, where the camera drifts",
    )
    parser.add_argument(
        "--drift",
        default=defaults.drift,
        metavar="KIND",
        help=f"the camera fault at the drifted site (default {defaults.drift}; "
        "one of blur, contrast, blur_contrast, rotation, inversion, noise, occlusion, "
        "brightness)",
    )
    parser.add_argument(
        "--drift-at",
        type=_positive("drift-at", 10.0, 3000.0),
        default=defaults.drift_at_s,
        metavar="SECONDS",
        help=f"seconds after streaming starts when the drift begins (default "
        f"{defaults.drift_at_s:g})",
    )
    parser.add_argument(
        "--fps",
        type=_positive("fps", 1.0, 200.0),
        default=defaults.fps,
        help=f"frames per second per camera (default {defaults.fps:g})",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=defaults.workdir,
        help="working directory for the broker, Ray, the store, the registry, logs and the "
        f"report (default ./{defaults.workdir}); a previous demo's directory is replaced",
    )
    parser.add_argument(
        "--no-live", action="store_true", help="print progress lines instead of a live table"
    )
    parser.set_defaults(run=run)


def _positive(name: str, low: float, high: float) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name} takes a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"--{name} must be between {low:g} and {high:g}, got {value:g}"
            )
        return value

    return parse


def _int_range(name: str, low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--{name} takes a whole number, got {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"--{name} must be between {low} and {high}, got {value}"
            )
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; 0 when it completed and met its targets."""
    from pipelines.digits.data import DRIFT_KINDS

    if args.drift not in DRIFT_KINDS:
        raise ConfigError(
            f"--drift {args.drift!r} is not a camera fault the demo knows; "
            f"use one of {', '.join(DRIFT_KINDS)}"
        )
    if args.drift_at >= args.duration - 20:
        raise ConfigError(
            f"--drift-at {args.drift_at:g} leaves too little of --duration {args.duration:g} to "
            "recover; make --duration at least --drift-at + 90"
        )
    options = DemoOptions(
        duration_s=args.duration,
        agents=args.agents,
        drift=args.drift,
        drift_at_s=args.drift_at,
        workdir=args.workdir,
        fps=args.fps,
        live=not args.no_live and sys.stdout.isatty(),
    )
    report = run_demo(options)
    if report.get("interrupted"):
        return 130
    return 0 if report.get("targets_met") else 1


def prepare_workdir(path: Path) -> Path:
    """Return ``path`` made empty and marked as a demo directory; refuse foreign directories."""
    path = path.resolve()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--workdir {path} is a file; choose a directory")
        if any(path.iterdir()) and not (path / MARKER).exists():
            raise ConfigError(
                f"--workdir {path} is not empty and was not made by continuum demo; "
                "choose another directory or empty it"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by `continuum demo`; it replaces this directory\n")
    return path


def _sites(count: int) -> list[tuple[str, str, bool]]:
    """Return (node, site, drifted) per agent: all at lux-1 but the last, alone at lux-2."""
    out = []
    letters = "abcdefgh"
    for index in range(count - 1):
        out.append((f"cam-lux1-{letters[index]}", "lux-1", False))
    out.append(("cam-lux2-a", "lux-2", True))
    return out


def _code_version() -> str:
    from importlib import metadata

    try:
        version = metadata.version("continuum")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
        if commit:
            version = f"{version}+g{commit}"
    return version


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Start the embedded defaults, run the closed loop, stop them; return the report."""
    from rich.console import Console

    from continuum.embedded.broker import EmbeddedBroker
    from continuum.embedded.ray_cluster import LocalRayCluster
    from continuum.labels import SITE, TIER
    from continuum.wire.mqtt import BrokerSettings

    # A terminal gets the live table; a log file gets wide, plain progress lines.
    console = Console() if options.live else Console(width=120, force_terminal=False)
    workdir = prepare_workdir(options.workdir)
    console.print(f"[bold]continuum demo[/] working directory: {workdir}")
    broker = EmbeddedBroker(workdir / "broker")
    cluster = LocalRayCluster(
        workdir / "ray",
        edge_nodes=[{TIER: "edge", SITE: "lux-1"}],
        dashboard=True,
        head_cpus=3,
        edge_cpus=1,
    )
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with console.status("starting mosquitto and the local Ray cluster"):
            broker.start()
            cluster.start()
            cluster.connect(namespace=TENANT, log_to_driver=False)
        console.print(
            f"  mosquitto on {broker.host}:{broker.port}; Ray at {cluster.address}\n"
            f"  Ray dashboard {cluster.dashboard_url} (token auth: the token is in "
            f"{cluster.token_path})"
        )
        return run_loop(
            options,
            workdir,
            BrokerSettings(host=broker.host, port=broker.port),
            console=console,
            dashboard=cluster.dashboard_url,
        )
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        with console.status("stopping Ray and mosquitto"):
            cluster.stop()
            broker.stop()


def run_loop(
    options: DemoOptions,
    workdir: Path,
    broker: Any,
    *,
    console: Any,
    dashboard: str | None,
) -> dict[str, Any]:
    """Run the loop on a broker and a Ray cluster this process is connected to.

    Deploys the cloud head, trains the first model, streams from edge-agent processes with
    drift at one site, watches, then stops agents and services and writes the report.
    """
    import importlib

    import ray

    from cloud_head.services import CloudHead, HeadPaths
    from continuum.signing import generate_keypair
    from continuum.spec import load_pipeline

    module = importlib.import_module(PIPELINE_MODULE)
    spec_path = Path(module.__file__ or "")
    spec = load_pipeline(spec_path)
    timeline = Timeline()
    agents: list[AgentProcess] = []
    head: CloudHead | None = None
    telemetry: dict[str, list[dict[str, Any]]] = {}
    controller_status: dict[str, Any] = {}
    interrupted = False
    timeline.event("infrastructure up", dashboard=dashboard)
    try:
        keys = workdir / "keys"
        keys.mkdir(exist_ok=True)
        private_pem, public_pem = generate_keypair()
        (keys / f"{spec.tenant}.key").write_bytes(private_pem)
        os.chmod(keys / f"{spec.tenant}.key", 0o600)
        (keys / f"{spec.tenant}.pub").write_bytes(public_pem)

        paths = HeadPaths(workdir / "cloud")
        with console.status("deploying the cloud head on Ray (ingest, fleet, controller)"):
            head = CloudHead.deploy(
                spec.tenant, [spec], paths, broker, private_pem, code_version=_code_version()
            )
        controller = head.controllers[spec.name]
        with console.status("training the first model on Ray Train (placed on the cloud node)"):
            first = ray.get(controller.bootstrap.remote(), timeout=300)
        console.print(f"  first model {first} registered, signed and published")
        timeline.event("first model", version=first)

        timeline.stream_start = time.time()
        timeline.drift_at = timeline.stream_start + options.drift_at_s
        for node, site, drifted in _sites(options.agents):
            agents.append(
                _start_agent(
                    workdir,
                    node,
                    site,
                    drifted,
                    spec_path,
                    broker,
                    options,
                    keys / f"{spec.tenant}.pub",
                    timeline.drift_at,
                )
            )
        console.print(
            f"  {len(agents)} edge agents streaming at {options.fps:g} frames/s; "
            f"drift ({options.drift}) at site lux-2 in {options.drift_at_s:g} s"
        )
        console.print(
            "  agent metrics (Prometheus): "
            + ", ".join(f"{a.node} http://127.0.0.1:{a.metrics_port}/metrics" for a in agents)
        )
        timeline.event(
            "agents started",
            nodes=[a.node for a in agents],
            metrics={a.node: f"http://127.0.0.1:{a.metrics_port}/metrics" for a in agents},
        )
        controller_status = _watch(console, head, spec.name, agents, timeline, options)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: shutting down cleanly[/]")
    finally:
        with console.status("stopping the edge agents and the cloud services"):
            _stop_agents(agents)
            if head is not None:
                telemetry = _collect_telemetry(head, spec.name, agents)
                with contextlib.suppress(Exception):
                    controller_status = ray.get(
                        head.controllers[spec.name].status.remote(), timeout=10
                    )
                with contextlib.suppress(Exception):
                    head.stop(timeout_s=30)
    from continuum.cli._demo_report import build_report, print_summary, write_plot

    report = build_report(
        workdir=workdir,
        tenant=spec.tenant,
        pipeline=spec.name,
        options=asdict(options) | {"workdir": str(workdir)},
        agents=[(a.node, a.site, a.drifted) for a in agents],
        telemetry=telemetry,
        controller=controller_status,
        timeline=asdict(timeline),
        drift_kind=options.drift,
        dashboard=dashboard,
        interrupted=interrupted,
    )
    (workdir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    write_plot(report, workdir / "report.png")
    print_summary(console, report)
    return report


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _start_agent(
    workdir: Path,
    node: str,
    site: str,
    drifted: bool,
    spec_path: Path,
    broker: Any,
    options: DemoOptions,
    public_key: Path,
    drift_at: float,
) -> AgentProcess:
    import yaml

    from continuum.embedded._process import free_port
    from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER

    home = workdir / "edge" / node
    home.mkdir(parents=True)
    metrics_port = free_port()
    config = {
        "node_id": node,
        "tenant": TENANT,
        "labels": {TIER: "edge", SITE: site, COUNTRY: "LU", JURISDICTION: "LU"},
        "broker": {"host": broker.host, "port": broker.port},
        "state_dir": str(home / "state"),
        "trusted_public_key": str(public_key),
        "telemetry_interval_s": 2.0,
        "metrics_host": "127.0.0.1",
        "metrics_port": metrics_port,
        "pipelines": [
            {
                "spec": str(spec_path),
                "source": {
                    "ref": "pipelines.digits.camera:DigitsCamera",
                    "args": {
                        "fps": options.fps,
                        "seed": sum(map(ord, node)),
                        "label_delay_s": options.label_delay_s,
                        "drift_kind": options.drift if drifted else None,
                        "drift_start_unix": drift_at,
                    },
                },
            }
        ],
    }
    path = home / "agent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    agent = AgentProcess(node, site, drifted, path, home / "agent.log", metrics_port)
    with open(agent.log, "wb") as log:
        agent.process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return agent


def _stop_agents(agents: list[AgentProcess], timeout_s: float = 20.0) -> None:
    for agent in agents:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for agent in agents:
        if agent.process is None:
            continue
        try:
            agent.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            agent.process.kill()
            agent.process.wait()


def _collect_telemetry(
    head: Any, pipeline: str, agents: list[AgentProcess]
) -> dict[str, list[dict[str, Any]]]:
    import ray

    refs = {a.node: head.fleet.telemetry.remote(a.node, pipeline, 0.0) for a in agents}
    out: dict[str, list[dict[str, Any]]] = {}
    for node, ref in refs.items():
        try:
            out[node] = ray.get(ref, timeout=30)
        except Exception:
            out[node] = []
    return out


def _watch(
    console: Any,
    head: Any,
    pipeline: str,
    agents: list[AgentProcess],
    timeline: Timeline,
    options: DemoOptions,
) -> dict[str, Any]:
    """Show live progress until the duration is over; return the last controller status."""
    import ray
    from rich.live import Live

    from continuum.cli._demo_report import live_view

    controller = head.controllers[pipeline]
    status: dict[str, Any] = {}
    end = timeline.stream_start + options.duration_s
    seen_trainings = 0
    last_stage = ""
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        if not options.live:
            live.stop()
        last_print = 0.0
        while time.time() < end:
            time.sleep(1.0)
            for agent in agents:
                if agent.process is not None and agent.process.poll() is not None:
                    console.print(
                        f"[red]edge agent {agent.node} exited with {agent.process.returncode}; "
                        f"see {agent.log}[/]"
                    )
                    agent.process = None
            try:
                status = ray.get(controller.status.remote(), timeout=10)
                nodes = ray.get(head.fleet.nodes.remote(), timeout=10)
                ingest = [ray.get(a.stats.remote(), timeout=10) for a in head.ingest]
            except Exception as error:  # a slow poll must not end the demo
                console.print(f"[yellow]progress poll failed: {error}[/]")
                continue
            trainings = status.get("trainings", [])
            for record in trainings[seen_trainings:]:
                timeline.event("training started", reason=record["reason"])
            seen_trainings = len(trainings)
            rollout = status.get("rollout", {})
            stage = f"{rollout.get('stage')}:{rollout.get('candidate')}"
            if stage != last_stage:
                timeline.event(
                    "rollout",
                    stage=rollout.get("stage"),
                    version=rollout.get("candidate"),
                    reason=rollout.get("reason"),
                )
                last_stage = stage
            view = live_view(agents, nodes, ingest, status, timeline, pipeline)
            if options.live:
                live.update(view)
            elif time.time() - last_print > 10:
                console.print(view)
                last_print = time.time()
    return status
