"""``continuum demo``: the whole closed loop on one machine, on embedded defaults.

Starts a mosquitto broker on loopback and a local Ray cluster (a head labelled cloud, a
worker labelled edge), deploys the cloud head of ``pipelines/digits_inspection.py`` as
named Ray actors, lets it train and publish the first model, starts edge-agent processes
that stream digits as cameras, drifts one site's camera part-way, and lets the loop
notice, uplink, retrain, gate, canary and promote. Everything it writes stays under one
working directory; it ends with ``report.json``, ``report.png`` and a printed summary.

Two tenants share the infrastructure (``_demo_tenants``): the factory ``acme`` runs the
loop above, the hospital lab ``medica`` runs ``pipelines/lab_forms.py`` beside it, each
with its own broker credentials and ACL, Ray namespace, signing key, store partition and
audit log, under the residency policy ``pipelines/residency.yaml``; the report shows the
policy decisions taken and the evidence that they held.
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from continuum.cli._demo_chaos import CUT_SITE, MIN_TAIL_S, Chaos, start_chaos
from continuum.embedded.site_link import SiteLink
from continuum.embedded.supervisor import Supervisor, SupervisorEvent
from continuum.errors import ConfigError

MARKER = ".continuum-demo"
PIPELINE_MODULE = "pipelines.digits_inspection"
TENANT = "acme"
#: The lab's camera runs slower than the factory's: forms arrive, parts stream.
LAB_FPS_SHARE = 0.4


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
    chaos: bool = False


@dataclass
class AgentProcess:
    """One edge-agent process of the demo."""

    node: str
    site: str
    drifted: bool
    config: Path
    log: Path
    metrics_port: int
    tenant: str = TENANT
    pipeline: str = ""
    spec_path: Path = Path()
    labels: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """Start (or start again) the agent process on its config; its log is appended."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def outbox(self) -> Path:
        """The agent's durable outbox (under the state dir its config names)."""
        return self.config.parent / "state" / "outbox.sqlite3"

    def is_running(self) -> bool:
        """Whether the agent process runs."""
        return self.process is not None and self.process.poll() is None

    def describe_exit(self) -> str:
        """Say how the process ended, for the supervisor's log."""
        code = None if self.process is None else self.process.returncode
        if code is not None and code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"


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
    parser.add_argument(
        "--chaos",
        action="store_true",
        help="attack and fault the run while it goes: garbage on every topic of the tenant "
        "(with its own credential), an edge agent SIGKILL, a broker SIGKILL, an ingest actor "
        "kill and a 30 s link cut at one site; the report accounts for every selected sample",
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
    if args.chaos and args.duration < args.drift_at + MIN_TAIL_S:
        raise ConfigError(
            f"--chaos needs --duration of at least --drift-at + {MIN_TAIL_S:g} "
            f"({args.drift_at + MIN_TAIL_S:g} s) for every fault to land and be recovered from, "
            f"got {args.duration:g}"
        )
    options = DemoOptions(
        duration_s=args.duration,
        agents=args.agents,
        drift=args.drift,
        drift_at_s=args.drift_at,
        workdir=args.workdir,
        fps=args.fps,
        live=not args.no_live and sys.stdout.isatty(),
        chaos=args.chaos,
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

    from continuum.cli._demo_tenants import (
        CLOUD_LABELS,
        EDGE_NODE_LABELS,
        FIRST_TENANT,
        SECOND_TENANT,
        create_tenants,
    )
    from continuum.embedded.broker import EmbeddedBroker
    from continuum.embedded.ray_cluster import LocalRayCluster
    from continuum.wire.mqtt import BrokerSettings

    # A terminal gets the live table; a log file gets wide, plain progress lines.
    console = Console() if options.live else Console(width=150, force_terminal=False)
    workdir = prepare_workdir(options.workdir)
    console.print(f"[bold]continuum demo[/] working directory: {workdir}")
    # Tenants first: the registry writes the broker's password and ACL files.
    registry, tenancy = create_tenants(workdir / "cloud", [FIRST_TENANT, SECOND_TENANT])
    broker = EmbeddedBroker(
        workdir / "broker", password_file=registry.password_file, acl_file=registry.acl_file
    )
    cluster = LocalRayCluster(
        workdir / "ray",
        head_labels=CLOUD_LABELS,
        edge_nodes=[EDGE_NODE_LABELS],
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
        console.print(
            f"  tenants {FIRST_TENANT} and {SECOND_TENANT}, each limited to its own topics "
            f"(ACL {registry.acl_file}); residency policy {tenancy.policy}; their "
            f"passwords, for the operator commands, in {workdir / 'credentials'}"
        )
        return run_loop(
            options,
            workdir,
            BrokerSettings(host=broker.host, port=broker.port),
            console=console,
            dashboard=cluster.dashboard_url,
            tenancy=tenancy,
            embedded_broker=broker,
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
    tenancy: Any = None,
    embedded_broker: Any = None,
) -> dict[str, Any]:
    """Run the loop on a broker and a Ray cluster this process is connected to.

    Deploys both tenants' cloud heads under the residency policy (and tries one deploy the
    policy must refuse), trains their first models, streams from edge-agent processes with
    drift at one of the factory's sites, watches, then stops agents and services and writes
    the report. ``tenancy`` (``_demo_tenants.Tenancy``) carries the tenants' broker
    credentials; without one (an anonymous broker) each tenant gets fresh keys and salts.
    A supervisor restarts a crashed edge agent, and the broker when ``embedded_broker`` (the
    ``EmbeddedBroker`` behind ``broker``) is given, as systemd and the broker's service would;
    ``options.chaos`` faults the run on a schedule (``_demo_chaos``).
    """
    import importlib

    import ray

    from cloud_head.paths import HeadPaths
    from cloud_head.services import CloudHead
    from continuum.cli import _demo_tenants as world
    from continuum.signing import generate_keypair
    from continuum.spec import load_pipeline

    tenants = [world.FIRST_TENANT, world.SECOND_TENANT]
    if tenancy is None:
        tenancy = world.Tenancy(
            policy=world.policy_path(),
            store_labels=dict(world.STORE_LABELS),
            salts=world.write_salts(workdir / "cloud" / "tenants" / "salts", tenants),
        )
    specs = {}
    for module_name in (PIPELINE_MODULE, world.SECOND_PIPELINE_MODULE):
        module = importlib.import_module(module_name)
        path = Path(module.__file__ or "")
        specs[path] = load_pipeline(path)
    spec_path, lab_path = list(specs)
    spec, lab = specs[spec_path], specs[lab_path]
    timeline = Timeline()
    agents: list[AgentProcess] = []
    heads: dict[str, CloudHead] = {}
    telemetry: dict[str, list[dict[str, Any]]] = {}
    controller_status: dict[str, Any] = {}
    lab_status: dict[str, Any] = {}
    policy: dict[str, Any] = {"file": str(tenancy.policy), "store_labels": tenancy.store_labels}
    interrupted = False
    links: dict[str, SiteLink] = {}
    supervisor: Supervisor | None = None
    chaos: Chaos | None = None
    timeline.event("infrastructure up", dashboard=dashboard)
    try:
        keys = workdir / "keys"
        keys.mkdir(exist_ok=True)
        public_keys: dict[str, Path] = {}
        private: dict[str, bytes] = {}
        for tenant in tenants:
            if tenant in tenancy.signing_keys:
                key_path, public_path = tenancy.signing_keys[tenant]
                private[tenant] = key_path.read_bytes()
                public_keys[tenant] = public_path
                continue
            private_pem, public_pem = generate_keypair()
            (keys / f"{tenant}.key").write_bytes(private_pem)
            os.chmod(keys / f"{tenant}.key", 0o600)
            (keys / f"{tenant}.pub").write_bytes(public_pem)
            private[tenant] = private_pem
            public_keys[tenant] = keys / f"{tenant}.pub"

        # One cloud head state for both: stores, registry and audit logs keep tenants apart.
        paths = HeadPaths(workdir / "cloud")
        with console.status("deploying both tenants' cloud heads on Ray under the policy"):
            for tenant, pipeline in ((spec.tenant, spec), (lab.tenant, lab)):
                heads[tenant] = CloudHead.deploy(
                    tenant,
                    [pipeline],
                    paths,
                    tenancy.broker_for(tenant, broker),
                    private[tenant],
                    code_version=_code_version(),
                    policy=tenancy.policy,
                    store_labels=tenancy.store_labels,
                    tenants_root=paths.tenants if tenancy.credentials else None,
                    actor="continuum-demo",
                )
            policy["refused_deploy"] = world.try_refused_deploy(
                lab,
                CloudHead,
                paths,
                tenancy.broker_for(lab.tenant, broker),
                private[lab.tenant],
                tenancy,
            )
        refused = policy["refused_deploy"]
        console.print(
            f"  cloud heads of {', '.join(tenants)} deployed; "
            + (
                f"{refused['tenant']}/{refused['pipeline']} ({refused['data_class']}) refused "
                "at deploy by the residency policy"
                if refused.get("refused")
                else "[red]the confidential variant was NOT refused[/]"
            )
        )
        timeline.event("policy refusal", **refused)
        with console.status("training the first models on Ray Train (placed on the cloud node)"):
            firsts = [
                heads[spec.tenant].controllers[spec.name].bootstrap.remote(),
                heads[lab.tenant].controllers[lab.name].bootstrap.remote(),
            ]
            first, lab_first = ray.get(firsts, timeout=600)
        console.print(
            f"  first models {spec.tenant}/{first} and {lab.tenant}/{lab_first} registered, "
            "signed and published"
        )
        timeline.event("first model", version=first)
        policy["isolation"] = world.isolation_probe(broker, tenancy)

        timeline.stream_start = time.time()
        timeline.drift_at = timeline.stream_start + options.drift_at_s
        if options.chaos:  # the cut site's boxes reach the broker over a link that can fail
            links[CUT_SITE] = SiteLink(broker.host, broker.port, name=CUT_SITE).start()
        for node, site, drifted in _sites(options.agents):
            site_broker = broker
            if site in links:
                site_broker = broker.model_copy(
                    update={"host": links[site].host, "port": links[site].port}
                )
            agents.append(
                _start_agent(
                    workdir,
                    node,
                    site,
                    drifted,
                    spec_path,
                    tenancy.broker_for(spec.tenant, site_broker),
                    options,
                    public_keys[spec.tenant],
                    timeline.drift_at,
                    tenant=spec.tenant,
                    pipeline=spec.name,
                    tenancy=tenancy,
                )
            )
        agents.append(
            _start_agent(
                workdir,
                "lab-lux3-a",
                "lux-3",
                False,
                lab_path,
                tenancy.broker_for(lab.tenant, broker),
                replace(options, fps=max(1.0, options.fps * LAB_FPS_SHARE)),
                public_keys[lab.tenant],
                timeline.drift_at,
                tenant=lab.tenant,
                pipeline=lab.name,
                tenancy=tenancy,
                fields=world.LAB_FIELDS,
            )
        )
        policy["uplink_plans"] = world.uplink_plans(tenancy, agents, specs)
        console.print(
            f"  {len(agents)} edge agents streaming at {options.fps:g} frames/s; "
            f"drift ({options.drift}) at site lux-2 in {options.drift_at_s:g} s"
        )
        for node, plan in policy["uplink_plans"].items():
            console.print(f"  uplink plan of {node}: {plan}")
        console.print(
            "  agent metrics (Prometheus): "
            + ", ".join(f"{a.node} http://127.0.0.1:{a.metrics_port}/metrics" for a in agents)
        )
        timeline.event(
            "agents started",
            nodes=[a.node for a in agents],
            metrics={a.node: f"http://127.0.0.1:{a.metrics_port}/metrics" for a in agents},
        )
        supervisor = _supervise(agents, embedded_broker, timeline, console)
        if options.chaos:
            chaos = start_chaos(
                options,
                timeline,
                console,
                heads=heads,
                spec=spec,
                agents=[a for a in agents if a.tenant == spec.tenant],
                attacker=tenancy.broker_for(spec.tenant, broker),
                embedded_broker=embedded_broker,
                links=links,
            )
        controller_status = _watch(console, heads, spec.name, agents, timeline, options)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: shutting down cleanly[/]")
    finally:
        with console.status("stopping the edge agents and the cloud services"):
            if chaos is not None:
                chaos.stop()
            if supervisor is not None:
                supervisor.stop()
            if embedded_broker is not None and not embedded_broker.running:
                with contextlib.suppress(Exception):
                    embedded_broker.start()  # the agents' last receipts need it
            for link in links.values():
                link.restore()
            _stop_agents(agents)
            for link in links.values():
                link.stop()
            for tenant, head in heads.items():
                telemetry |= _collect_telemetry(head, [a for a in agents if a.tenant == tenant])
            if spec.tenant in heads:
                with contextlib.suppress(Exception):
                    controller_status = ray.get(
                        heads[spec.tenant].controllers[spec.name].status.remote(), timeout=10
                    )
            if lab.tenant in heads:
                with contextlib.suppress(Exception):
                    lab_status = ray.get(heads[lab.tenant].ingest[0].stats.remote(), timeout=10)
            for head in heads.values():
                with contextlib.suppress(Exception):
                    head.stop(timeout_s=30)
    from continuum.cli._demo_account import sample_account
    from continuum.cli._demo_report import build_report, print_summary, write_plot

    account = None
    if heads:
        account = sample_account(
            paths.store,
            [(a.node, a.tenant, a.pipeline, a.outbox) for a in agents],
        )
        policy["store"] = {lab.name: world.store_evidence(paths.store, lab.tenant, lab.name)}
        policy["lab_ingest"] = lab_status
        policy["audit"] = {
            tenant: world.audit_evidence(paths.audit, [tenant], public_keys)[tenant]
            for tenant in heads
        }
    report = build_report(
        workdir=workdir,
        tenant=spec.tenant,
        pipeline=spec.name,
        options=asdict(options) | {"workdir": str(workdir)},
        agents=[(a.node, a.site, a.drifted) for a in agents if a.tenant == spec.tenant],
        telemetry=telemetry,
        controller=controller_status,
        timeline=asdict(timeline),
        drift_kind=options.drift,
        dashboard=dashboard,
        interrupted=interrupted,
        second_tenant={
            "tenant": lab.tenant,
            "pipeline": lab.name,
            "agents": [(a.node, a.site) for a in agents if a.tenant == lab.tenant],
        },
        policy=policy,
        account=account,
        chaos=options.chaos,
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
    *,
    tenant: str,
    pipeline: str,
    tenancy: Any,
    fields: dict[str, str] | None = None,
) -> AgentProcess:
    import yaml

    from continuum.embedded._process import free_port
    from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER

    home = workdir / "edge" / node
    home.mkdir(parents=True)
    metrics_port = free_port()
    labels = {TIER: "edge", SITE: site, COUNTRY: "LU", JURISDICTION: "LU"}
    connection: dict[str, Any] = {"host": broker.host, "port": broker.port}
    if broker.username is not None:
        connection |= {"username": broker.username, "password": broker.password}
    config: dict[str, Any] = {
        "node_id": node,
        "tenant": tenant,
        "labels": labels,
        "broker": connection,
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
                        **({"fields": fields} if fields else {}),
                    },
                },
            }
        ],
        # The tenant's policy: the agent drops or hashes what may not leave the site.
        "residency": {
            "policy": str(tenancy.policy),
            "store_labels": tenancy.store_labels,
            "salt_file": str(tenancy.salts[tenant]),
        },
    }
    path = home / "agent.yaml"
    path.touch(mode=0o600)  # it holds the tenant's broker password
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    agent = AgentProcess(
        node,
        site,
        drifted,
        path,
        home / "agent.log",
        metrics_port,
        tenant=tenant,
        pipeline=pipeline,
        spec_path=spec_path,
        labels=labels,
    )
    agent.spawn()
    return agent


def _supervise(
    agents: list[AgentProcess], broker: Any, timeline: Timeline, console: Any
) -> Supervisor:
    """Restart crashed agents (and the embedded broker) with backoff, noting each on the
    timeline, as systemd's ``Restart=on-failure`` and the broker's service would."""

    def on_event(event: SupervisorEvent) -> None:
        timeline.event(event.kind, service=event.service, detail=event.detail)
        colour = "green" if event.kind == "restarted" else "yellow"
        delay = f"; restart in {event.delay_s:.1f} s" if event.kind != "restarted" else ""
        console.print(
            f"[{colour}]supervisor: {event.service} {event.kind}: {event.detail}{delay}[/]"
        )

    supervisor = Supervisor(on_event)
    for agent in agents:
        supervisor.watch(
            f"edge agent {agent.node}",
            alive=agent.is_running,
            restart=agent.spawn,
            describe_exit=agent.describe_exit,
        )
    if broker is not None:
        supervisor.watch(
            "mosquitto",
            alive=lambda: broker.running,
            restart=broker.start,
            describe_exit=lambda: "is not running",
        )
    return supervisor.start()


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


def _collect_telemetry(head: Any, agents: list[AgentProcess]) -> dict[str, list[dict[str, Any]]]:
    import ray

    refs = {a.node: head.fleet.telemetry.remote(a.node, a.pipeline, 0.0) for a in agents}
    out: dict[str, list[dict[str, Any]]] = {}
    for node, ref in refs.items():
        try:
            out[node] = ray.get(ref, timeout=30)
        except Exception:
            out[node] = []
    return out


def _watch(
    console: Any,
    heads: dict[str, Any],
    pipeline: str,
    agents: list[AgentProcess],
    timeline: Timeline,
    options: DemoOptions,
) -> dict[str, Any]:
    """Show live progress until the duration is over; return the last controller status."""
    import ray
    from rich.live import Live

    from continuum.cli._demo_report import live_view

    head = heads[TENANT]
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
            try:
                status = ray.get(controller.status.remote(), timeout=10)
                nodes = [
                    n for h in heads.values() for n in ray.get(h.fleet.nodes.remote(), timeout=10)
                ]
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
