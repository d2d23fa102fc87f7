"""``continuum demo``: the whole closed loop on one machine, on embedded defaults.

Starts a mosquitto broker on loopback and a local Ray cluster (a head labelled cloud, a
worker labelled edge), deploys the cloud head of ``pipelines/digits_inspection.py`` as
named Ray actors, lets it train and publish the first model, starts edge-agent processes
that stream digits as cameras, drifts one site's camera part-way, and lets the loop
notice, uplink, retrain, gate, canary and promote. Everything it writes stays under one
working directory; it ends with ``report.json``, ``report.png`` and a printed summary.

Two tenants share the infrastructure (``_tenants``): the factory ``acme`` runs the
loop above, the hospital lab ``medica`` runs ``pipelines/lab_forms.py`` beside it, each
with its own broker identities (one per edge node and per cloud service) and ACL, Ray
namespace, signing key, store partition and audit log, under the residency policy
``pipelines/residency.yaml``; the report shows the policy decisions taken and the evidence
that they held, between the tenants and between the nodes of one tenant.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from continuum.errors import ConfigError
from pipelines.demo._chaos import MIN_TAIL_S
from pipelines.demo._loop import run_loop
from pipelines.demo._options import MARKER, TENANT, DemoOptions

__all__ = ["DemoOptions", "prepare_workdir", "register", "run", "run_demo", "run_loop"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    from pipelines.digits.data import DRIFT_KINDS

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
        f"one of {', '.join(DRIFT_KINDS)})",
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
        "(from an edge box of its own), an edge agent SIGKILL, a broker SIGKILL, an ingest actor "
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


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Start the embedded defaults, run the closed loop, stop them; return the report."""
    from rich.console import Console

    from continuum.embedded.broker import EmbeddedBroker
    from continuum.embedded.ray_cluster import LocalRayCluster
    from continuum.wire.mqtt import BrokerSettings
    from pipelines.demo._agents import sites
    from pipelines.demo._tenants import (
        CLOUD_LABELS,
        EDGE_NODE_LABELS,
        FIRST_TENANT,
        SECOND_TENANT,
        create_tenants,
        nodes_to_enrol,
    )

    # A terminal gets the live table; a log file gets wide, plain progress lines.
    console = Console() if options.live else Console(width=150, force_terminal=False)
    workdir = prepare_workdir(options.workdir)
    console.print(f"[bold]continuum demo[/] working directory: {workdir}")
    # Tenants and their nodes first: the registry writes the broker's password and ACL files.
    factory = [node for node, _, _ in sites(options.agents)]
    registry, tenancy = create_tenants(workdir / "cloud", nodes_to_enrol(factory))
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
            f"  tenants {FIRST_TENANT} and {SECOND_TENANT}, each limited to its own topics and "
            f"every node and cloud service to its own identity (ACL {registry.acl_file}); "
            f"residency policy {tenancy.policy}; the operators' passwords, for the operator "
            f"commands, in {workdir / 'credentials'}; point "
            f"those at this run with --root {workdir / 'cloud'} (or CONTINUUM_CLOUD_ROOT)"
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


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
