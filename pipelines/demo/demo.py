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

``--scenario`` picks the factory tenant's loop (``_scenarios``): ``digits`` (the default,
above), ``fraud`` (branch terminals of a Luxembourg bank scoring transactions, an
account-takeover wave at one branch, chargebacks as delayed labels) or ``maintenance``
(presses read through a simulated line gateway on the plant's own broker, a new machine type
at one site, maintenance records as delayed labels).  Each has its own defaults, metric,
targets and picture; the report keeps one shape.
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
    from pipelines.demo._scenarios import SCENARIOS, scenario_named

    defaults = DemoOptions()
    per_scenario = {name: scenario_named(name).defaults for name in SCENARIOS}

    def each(key: str) -> str:
        return ", ".join(f"{name} {values[key]:g}" for name, values in per_scenario.items())

    parser = subparsers.add_parser(
        "demo",
        help="run the closed loop end to end on one machine",
        description="Run the full edge-to-cloud loop on embedded defaults: a local mosquitto, "
        "a local Ray cluster (head labelled cloud, worker labelled edge), the digits "
        "inspection pipeline with edge-agent processes as cameras, drift at one site, "
        "selective uplink, retraining on Ray Train, gate, canary and promotion. Writes "
        "report.json and report.png into the working directory. --scenario fraud and "
        "--scenario maintenance run the same loop on bank transactions and on press sensors; "
        "--scenario hospitals runs three hospitals whose data never leaves them (a broker, "
        "a Ray worker and a store per site) with federated retraining.",
    )
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default=defaults.scenario,
        help="the loop to run: digits (camera inspection, the default), fraud (transaction "
        "scoring at a bank's branches, an account-takeover wave at lux-gare, gated on recall "
        "at 1%% FPR) or maintenance (presses read through a line gateway, a new machine type "
        "at lux-2, gated on F1 at the calibrated anomaly threshold) or hospitals (breast-cancer "
        "screening at three hospitals, restricted data kept at each site, federated "
        "retraining, a device recalibrated at hosp-trier)",
    )
    parser.add_argument(
        "--duration",
        type=_positive("duration", 30.0, 3600.0),
        default=None,
        metavar="SECONDS",
        help=f"how long the sources stream, in seconds (30-3600; default per scenario: "
        f"{each('duration_s')})",
    )
    parser.add_argument(
        "--agents",
        type=_int_range("agents", 2, 8),
        default=None,
        help=f"number of edge agents (2-8, fraud 2-4; default {defaults.agents}); the last "
        "one is alone at the drifted site (digits and maintenance lux-2, fraud lux-gare)",
    )
    parser.add_argument(
        "--drift",
        default=None,
        metavar="KIND",
        help="the drift at the drifted site; digits: a camera fault (default "
        f"{defaults.drift}; one of {', '.join(scenario_named('digits').drifts)}); maintenance: "
        f"{' or '.join(scenario_named('maintenance').drifts)}; fraud: account_takeover",
    )
    parser.add_argument(
        "--drift-at",
        type=_positive("drift-at", 10.0, 3000.0),
        default=None,
        metavar="SECONDS",
        help=f"seconds after streaming starts when the drift begins (default per scenario: "
        f"{each('drift_at_s')})",
    )
    parser.add_argument(
        "--fps",
        type=_positive("fps", 1.0, 200.0),
        default=None,
        help=f"records per second per agent: camera frames, transactions or sensor windows "
        f"(default per scenario: {each('fps')})",
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
        "kill and a 30 s link cut at one site; the report accounts for every selected sample "
        "(digits scenario only)",
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


def options_from(args: argparse.Namespace) -> DemoOptions:
    """Return the run's options: the scenario's defaults with the flags given, checked.

    Raises:
        ConfigError: a drift the scenario does not know, too many agents for its sites, a
            drift too late to recover from, or --chaos where it does not fit.
    """
    from pipelines.demo._scenarios import scenario_named

    scenario = scenario_named(getattr(args, "scenario", "digits"))
    given = {
        "duration_s": args.duration,
        "agents": args.agents,
        "drift": args.drift,
        "drift_at_s": args.drift_at,
        "fps": args.fps,
    }
    options = DemoOptions.for_scenario(
        scenario.name,
        **{key: value for key, value in given.items() if value is not None},
        workdir=args.workdir,
        live=not args.no_live and sys.stdout.isatty(),
        chaos=args.chaos,
    )
    if options.drift not in scenario.drifts:
        raise ConfigError(
            f"--drift {options.drift!r} is not a drift the {scenario.name} scenario knows; "
            f"use one of {', '.join(scenario.drifts)}"
        )
    if options.agents > scenario.max_agents:
        raise ConfigError(
            f"--agents {options.agents}: the {scenario.name} scenario has sites for at most "
            f"{scenario.max_agents} agents; use --agents {scenario.max_agents} or fewer"
        )
    if options.chaos and not scenario.chaos:
        raise ConfigError(
            f"--chaos runs on the digits scenario only; drop --chaos or use --scenario digits, "
            f"got --scenario {scenario.name}"
        )
    if options.drift_at_s >= options.duration_s - 20:
        raise ConfigError(
            f"--drift-at {options.drift_at_s:g} leaves too little of --duration "
            f"{options.duration_s:g} to recover; make --duration at least --drift-at + 90"
        )
    if options.chaos and options.duration_s < options.drift_at_s + MIN_TAIL_S:
        raise ConfigError(
            f"--chaos needs --duration of at least --drift-at + {MIN_TAIL_S:g} "
            f"({options.drift_at_s + MIN_TAIL_S:g} s) for every fault to land and be recovered "
            f"from, got {options.duration_s:g}"
        )
    return options


def run(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; 0 when it completed and met its targets."""
    report = run_demo(options_from(args))
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
    from pipelines.demo._scenarios import scenario_named
    from pipelines.demo._tenants import (
        CLOUD_LABELS,
        EDGE_NODE_LABELS,
        FIRST_TENANT,
        SECOND_TENANT,
        create_tenants,
        nodes_to_enrol,
    )

    if scenario_named(options.scenario).federated:  # sites of their own: its own loop
        from pipelines.demo._hospitals import run_hospitals

        return run_hospitals(options)
    # A terminal gets the live table; a log file gets wide, plain progress lines.
    console = Console() if options.live else Console(width=150, force_terminal=False)
    workdir = prepare_workdir(options.workdir)
    console.print(
        f"[bold]continuum demo[/] ({options.scenario} scenario) working directory: {workdir}"
    )
    # Tenants and their nodes first: the registry writes the broker's password and ACL files.
    factory = [node for node, _, _ in scenario_named(options.scenario).sites(options.agents)]
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
