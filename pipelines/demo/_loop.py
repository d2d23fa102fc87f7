"""The demo's closed loop on a broker and a Ray cluster: deploy, train, stream, watch, report.

``run_loop`` walks a ``LoopRun`` through its steps in order: the tenants' signing keys, both
cloud heads deployed under the residency policy (and one deploy the policy must refuse),
the first models, the edge agents streaming with drift at one site (under chaos if asked),
the live watch, then a shutdown that always runs, and the report.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from continuum.embedded.site_link import SiteLink
from continuum.embedded.supervisor import Supervisor
from pipelines.demo import _tenants as world
from pipelines.demo._agents import (
    AgentProcess,
    Camera,
    collect_telemetry,
    start_agent,
    stop_agents,
    supervise,
)
from pipelines.demo._chaos import CHAOS_NODE, CUT_SITE, Chaos, start_chaos
from pipelines.demo._options import LAB_FPS_SHARE, DemoOptions, Timeline
from pipelines.demo._plant import Plant
from pipelines.demo._scenarios import Scenario, SourceContext, scenario_named

__all__ = ["LoopRun", "run_loop"]


def run_loop(
    options: DemoOptions,
    workdir: Path,
    broker: Any,
    *,
    console: Any,
    dashboard: str | None,
    tenancy: world.Tenancy | None = None,
    embedded_broker: Any = None,
) -> dict[str, Any]:
    """Run the loop on a broker and a Ray cluster this process is connected to.

    Deploys both tenants' cloud heads under the residency policy (and tries one deploy the
    policy must refuse), trains their first models, streams from edge-agent processes with
    drift at one of the factory's sites, watches, then stops agents and services and writes
    the report. ``tenancy`` (``_tenants.Tenancy``) carries the nodes' broker identities;
    without one (an anonymous broker) each tenant gets fresh keys and salts. A supervisor
    restarts a crashed edge agent, and the broker when ``embedded_broker`` (the
    ``EmbeddedBroker`` behind ``broker``) is given, as systemd and the broker's service would;
    ``options.chaos`` faults the run on a schedule (``_chaos``).
    """
    run = LoopRun.prepare(
        options,
        workdir,
        broker,
        console=console,
        dashboard=dashboard,
        tenancy=tenancy,
        embedded_broker=embedded_broker,
    )
    steps = (run.make_signing_keys, run.deploy, run.train_first_models, run.start_edge, run.watch)
    interrupted = run_until_interrupted(steps, run.shut_down, console)
    return run.report(interrupted=interrupted)


def run_until_interrupted(
    steps: Sequence[Callable[[], object]], shut_down: Callable[[], object], console: Any
) -> bool:
    """Run a demo's ``steps`` in order and always ``shut_down``; return whether Ctrl-C
    (or SIGTERM raised as one) stopped them, so the report can still be written."""
    try:
        for step in steps:
            step()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: shutting down cleanly[/]")
        return True
    finally:
        shut_down()
    return False


@dataclass(kw_only=True)
class LoopRun:
    """One run of the loop: what it was given, and what it started and saw so far."""

    options: DemoOptions
    workdir: Path
    broker: Any
    console: Any
    dashboard: str | None
    tenancy: world.Tenancy
    embedded_broker: Any
    #: Each tenant's pipeline by its file: the factory's (digits inspection), the lab's (forms).
    specs: dict[Path, Any]
    spec_path: Path
    lab_path: Path
    timeline: Timeline = field(default_factory=Timeline)
    agents: list[AgentProcess] = field(default_factory=list)
    heads: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    controller_status: dict[str, Any] = field(default_factory=dict)
    lab_status: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    links: dict[str, SiteLink] = field(default_factory=dict)
    supervisor: Supervisor | None = None
    chaos: Chaos | None = None
    #: The maintenance scenario's plant broker and line gateways (None elsewhere).
    plant: Plant | None = None
    public_keys: dict[str, Path] = field(default_factory=dict)
    private_keys: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def prepare(
        cls,
        options: DemoOptions,
        workdir: Path,
        broker: Any,
        *,
        console: Any,
        dashboard: str | None,
        tenancy: world.Tenancy | None,
        embedded_broker: Any,
    ) -> LoopRun:
        """Load both tenants' pipelines; without a tenancy, make salts for an open broker."""
        from continuum.spec import load_pipeline

        if tenancy is None:
            tenancy = world.Tenancy(
                policy=world.policy_path(),
                store_labels=dict(world.STORE_LABELS),
                salts=world.write_salts(workdir / "cloud" / "tenants" / "salts", world.TENANTS),
            )
        paths = [
            Path(importlib.import_module(name).__file__ or "")
            for name in (
                scenario_named(options.scenario).pipeline_module,
                world.SECOND_PIPELINE_MODULE,
            )
        ]
        specs = {path: load_pipeline(path) for path in paths}
        run = cls(
            options=options,
            workdir=workdir,
            broker=broker,
            console=console,
            dashboard=dashboard,
            tenancy=tenancy,
            embedded_broker=embedded_broker,
            specs=specs,
            spec_path=paths[0],
            lab_path=paths[1],
            policy={"file": str(tenancy.policy), "store_labels": tenancy.store_labels},
        )
        run.timeline.event("infrastructure up", dashboard=dashboard)
        return run

    @property
    def scenario(self) -> Scenario:
        """What this run's loop is (``_scenarios``): its pipeline, sources, drift and targets."""
        return scenario_named(self.options.scenario)

    @property
    def spec(self) -> Any:
        """The factory's pipeline, whose loop the demo drifts and watches."""
        return self.specs[self.spec_path]

    @property
    def lab(self) -> Any:
        """The lab's pipeline, which runs beside it under the residency policy."""
        return self.specs[self.lab_path]

    @property
    def paths(self) -> Any:
        """One cloud head state for both tenants: stores, registry and audit logs keep them
        apart."""
        from cloud_head.paths import HeadPaths

        return HeadPaths(self.workdir / "cloud")

    def make_signing_keys(self) -> None:
        """Take each tenant's signing key from the tenancy, or make one under ``keys/``."""
        from continuum.signing import generate_keypair

        keys = self.workdir / "keys"
        keys.mkdir(exist_ok=True)
        for tenant in world.TENANTS:
            if tenant in self.tenancy.signing_keys:
                key_path, public_path = self.tenancy.signing_keys[tenant]
                self.private_keys[tenant] = key_path.read_bytes()
                self.public_keys[tenant] = public_path
                continue
            private_pem, public_pem = generate_keypair()
            (keys / f"{tenant}.key").write_bytes(private_pem)
            os.chmod(keys / f"{tenant}.key", 0o600)
            (keys / f"{tenant}.pub").write_bytes(public_pem)
            self.private_keys[tenant] = private_pem
            self.public_keys[tenant] = keys / f"{tenant}.pub"

    def deploy(self) -> None:
        """Deploy both tenants' cloud heads, then try the deploy the policy must refuse."""
        from cloud_head.services import CloudHead

        spec, lab, tenancy, paths = self.spec, self.lab, self.tenancy, self.paths
        with self.console.status("deploying both tenants' cloud heads on Ray under the policy"):
            for tenant, pipeline in ((spec.tenant, spec), (lab.tenant, lab)):
                # Each service connects as its own identity, read from the tenant registry.
                self.heads[tenant] = CloudHead.deploy(
                    tenant,
                    [pipeline],
                    paths,
                    self.broker,
                    self.private_keys[tenant],
                    code_version=_code_version(),
                    policy=tenancy.policy,
                    store_labels=tenancy.store_labels,
                    tenants_root=paths.tenants if tenancy.secured else None,
                    actor="continuum-demo",
                )
            refused = world.try_refused_deploy(
                lab,
                CloudHead,
                paths,
                self.broker,
                self.private_keys[lab.tenant],
                tenancy,
            )
        self.policy["refused_deploy"] = refused
        self.console.print(
            f"  cloud heads of {', '.join(world.TENANTS)} deployed; "
            + (
                f"{refused['tenant']}/{refused['pipeline']} ({refused['data_class']}) refused "
                "at deploy by the residency policy"
                if refused.get("refused")
                else "[red]the confidential variant was NOT refused[/]"
            )
        )
        self.timeline.event("policy refusal", **refused)

    def train_first_models(self) -> None:
        """Train both first models on Ray Train, then probe the tenants' isolation."""
        import ray

        spec, lab = self.spec, self.lab
        with self.console.status(
            "training the first models on Ray Train (placed on the cloud node)"
        ):
            firsts = [
                self.heads[spec.tenant].controllers[spec.name].bootstrap.remote(),
                self.heads[lab.tenant].controllers[lab.name].bootstrap.remote(),
            ]
            first, lab_first = ray.get(firsts, timeout=600)
        self.console.print(
            f"  first models {spec.tenant}/{first} and {lab.tenant}/{lab_first} registered, "
            "signed and published"
        )
        self.timeline.event("first model", version=first)
        self.policy["isolation"] = world.isolation_probe(self.broker, self.tenancy)

    def start_edge(self) -> None:
        """Start the cameras (the factory's, then the lab's), the supervisor and any chaos."""
        self.timeline.stream_start = time.time()
        self.timeline.drift_at = self.timeline.stream_start + self.options.drift_at_s
        if self.options.chaos:  # the cut site's boxes reach the broker over a link that can fail
            self.links[CUT_SITE] = SiteLink(
                self.broker.host, self.broker.port, name=CUT_SITE
            ).start()
        if self.scenario.gateway:  # the plant's broker first: the agents' sources read it
            self.plant = Plant(
                self.workdir,
                self.scenario.sites(self.options.agents),
                drift=self.options.drift,
            ).start_broker()
        self._start_factory_agents()
        self._start_lab_agent()
        if self.plant is not None:
            self.plant.start_gateways(
                rate=self.options.fps,
                drift_at=self.timeline.drift_at,
                label_delay_s=self.options.label_delay_s,
            )
        self.policy["uplink_plans"] = world.uplink_plans(self.tenancy, self.agents, self.specs)
        self._announce_agents()
        self.supervisor = supervise(self.agents, self.embedded_broker, self.timeline, self.console)
        if self.options.chaos:
            self.chaos = start_chaos(
                self.options,
                self.timeline,
                self.console,
                heads=self.heads,
                spec=self.spec,
                agents=[a for a in self.agents if a.tenant == self.spec.tenant],
                attacker=self.tenancy.broker_for_node(self.spec.tenant, CHAOS_NODE, self.broker),
                embedded_broker=self.embedded_broker,
                links=self.links,
            )

    def _start_factory_agents(self) -> None:
        spec, options = self.spec, self.options
        for node, site, drifted in self.scenario.sites(options.agents):
            site_broker = self.broker
            if site in self.links:
                link = self.links[site]
                site_broker = self.broker.model_copy(update={"host": link.host, "port": link.port})
            source = self.scenario.source(
                SourceContext(
                    node=node,
                    site=site,
                    drifted=drifted,
                    rate=options.fps,
                    label_delay_s=options.label_delay_s,
                    drift=options.drift,
                    drift_at=self.timeline.drift_at,
                    gateway=None if self.plant is None else self.plant.address,
                )
            )
            camera = Camera(
                node=node,
                site=site,
                drifted=drifted,
                tenant=spec.tenant,
                pipeline=spec.name,
                spec_path=self.spec_path,
                source=source,
            )
            self._start_agent(camera, broker=site_broker, options=self.options)

    def _start_lab_agent(self) -> None:
        lab = self.lab
        camera = Camera(
            node=world.LAB_NODE,
            site=world.LAB_SITE,
            drifted=False,
            tenant=lab.tenant,
            pipeline=lab.name,
            spec_path=self.lab_path,
            fields=world.LAB_FIELDS,
        )
        slower = replace(self.options, fps=max(1.0, self.options.fps * LAB_FPS_SHARE))
        self._start_agent(camera, broker=self.broker, options=slower)

    def _start_agent(self, camera: Camera, *, broker: Any, options: DemoOptions) -> None:
        """Start ``camera``'s agent on ``broker`` as its own node identity, with its tenant's
        key."""
        self.agents.append(
            start_agent(
                self.workdir,
                camera,
                broker=self.tenancy.broker_for_node(camera.tenant, camera.node, broker),
                options=options,
                public_key=self.public_keys[camera.tenant],
                drift_at=self.timeline.drift_at,
                tenancy=self.tenancy,
            )
        )

    def _announce_agents(self) -> None:
        options, console, scenario = self.options, self.console, self.scenario
        console.print(
            f"  {len(self.agents)} edge agents streaming at {options.fps:g} "
            f"{scenario.records}/s; drift ({options.drift}) at site {scenario.drift_site} in "
            f"{options.drift_at_s:g} s"
        )
        if self.plant is not None:
            host, port = self.plant.address
            console.print(
                f"  plant broker (the line gateways', not continuum's) on {host}:{port}; "
                f"gateways at {', '.join(self.plant.gateways)}"
            )
        for node, plan in self.policy["uplink_plans"].items():
            console.print(f"  uplink plan of {node}: {plan}")
        console.print(
            "  agent metrics (Prometheus): "
            + ", ".join(f"{a.node} {a.metrics_url}" for a in self.agents)
        )
        self.timeline.event(
            "agents started",
            nodes=[a.node for a in self.agents],
            metrics={a.node: a.metrics_url for a in self.agents},
        )

    def watch(self) -> None:
        """Show live progress until the cameras' time is over, then probe the isolation of
        the nodes within the first tenant (every node has its desired state by then)."""
        from pipelines.demo._live import watch
        from pipelines.demo._reserved import ReservedScores

        reserved = ReservedScores(
            self.workdir, self.spec.tenant, self.spec.name, self.options.drift, self.scenario
        )
        self.controller_status = watch(
            self.console,
            self.heads,
            self.spec.name,
            self.agents,
            self.timeline,
            self.options,
            reserved,
            self.scenario,
        )
        factory = [a.node for a in self.agents if a.tenant == self.spec.tenant]
        if factory:
            self.policy["node_isolation"] = world.node_isolation_probe(
                self.broker, self.tenancy, target=factory[0], pipeline=self.spec.name
            )

    def shut_down(self) -> None:
        """Stop chaos, supervisor, agents and services; keep their last telemetry and status."""
        with self.console.status("stopping the edge agents and the cloud services"):
            if self.chaos is not None:
                self.chaos.stop()
            if self.supervisor is not None:
                self.supervisor.stop()
            broker = self.embedded_broker
            if broker is not None and not broker.running:
                with contextlib.suppress(Exception):
                    broker.start()  # the agents' last receipts need it
            for link in self.links.values():
                link.restore()
            stop_agents(self.agents)
            if self.plant is not None:
                self.plant.stop()
            for link in self.links.values():
                link.stop()
            self._collect_last_words()
            for head in self.heads.values():
                with contextlib.suppress(Exception):
                    head.stop(timeout_s=30)

    def _collect_last_words(self) -> None:
        """Read the telemetry, the controller's status and the lab's ingest stats at the end."""
        import ray

        spec, lab = self.spec, self.lab
        for tenant, head in self.heads.items():
            mine = [a for a in self.agents if a.tenant == tenant]
            self.telemetry |= collect_telemetry(head, mine)
        if spec.tenant in self.heads:
            controller = self.heads[spec.tenant].controllers[spec.name]
            with contextlib.suppress(Exception):
                self.controller_status = ray.get(controller.status.remote(), timeout=10)
        if lab.tenant in self.heads:
            with contextlib.suppress(Exception):
                ingest = self.heads[lab.tenant].ingest[0]
                self.lab_status = ray.get(ingest.stats.remote(), timeout=10)

    def report(self, *, interrupted: bool) -> dict[str, Any]:
        """Account for the samples, gather the evidence, write ``report.json`` and the plot."""
        from pipelines.demo._account import sample_account
        from pipelines.demo._plot import write_plot
        from pipelines.demo._report import build_report
        from pipelines.demo._summary import print_summary

        spec, lab, paths = self.spec, self.lab, self.paths
        account = None
        if self.heads:
            account = sample_account(
                paths.store,
                [(a.node, a.tenant, a.pipeline, a.outbox) for a in self.agents],
            )
            self.policy["store"] = {
                lab.name: world.store_evidence(paths.store, lab.tenant, lab.name)
            }
            if self.scenario.name == "fraud":  # the customers' identifiers stayed in LU
                from pipelines.demo._bank import bank_store_evidence

                self.policy["store"][spec.name] = bank_store_evidence(
                    paths.store, spec.tenant, spec.name
                )
            self.policy["lab_ingest"] = self.lab_status
            evidence = world.audit_evidence(paths.audit, list(self.heads), self.public_keys)
            self.policy["audit"] = {tenant: evidence[tenant] for tenant in self.heads}
        report = build_report(
            workdir=self.workdir,
            tenant=spec.tenant,
            pipeline=spec.name,
            options=asdict(self.options) | {"workdir": str(self.workdir)},
            agents=[(a.node, a.site, a.drifted) for a in self.agents if a.tenant == spec.tenant],
            telemetry=self.telemetry,
            controller=self.controller_status,
            timeline=asdict(self.timeline),
            drift_kind=self.options.drift,
            scenario=self.scenario,
            dashboard=self.dashboard,
            interrupted=interrupted,
            second_tenant={
                "tenant": lab.tenant,
                "pipeline": lab.name,
                "agents": [(a.node, a.site) for a in self.agents if a.tenant == lab.tenant],
            },
            policy=self.policy,
            account=account,
            chaos=self.options.chaos,
        )
        (self.workdir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        write_plot(report, self.workdir / "report.png")
        print_summary(self.console, report)
        return report


def _code_version() -> str:
    """Return the package version, with the git commit when run from a checkout."""
    import subprocess
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
