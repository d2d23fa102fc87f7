"""``continuum demo --scenario hospitals``: three hospitals whose data never leaves them (issue 17).

The hospitals' tenant ``medica`` runs ``pipelines/hospital_screening.py`` (restricted data:
``same_site``).  Each hospital has its own on-site Ray worker (labels site, country and
jurisdiction; ``CONTINUUM_SITE_DATA`` pointing at that site's own folder, its seed rows in
it), its own broker bridged to the central one (``cloud_head._site_plane``) and its own
ingest placed on its node (``SiteIngestActor``); its imaging station is an edge agent on the
site broker.  The cloud head in Frankfurt deploys the pipeline, the residency policy plans
its retraining federated, and the controller trains, gates, signs and rolls out as always,
each round's local training running on the sites' nodes.  One hospital's device is
recalibrated mid-run; its mistakes and near-threshold cases come back with their pathology
labels into its own store, and the next federated rounds take the model back.

The run's steps live in ``HospitalsRun``; its report (``_hospitals_report``) holds the
models on the reserved per-site tests against the two baselines (``pipelines.hospitals.
baselines``), the bytes that crossed the sites' borders and the evidence that no restricted
sample left its site (``_hospitals_evidence``).
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER
from pipelines.demo._options import DemoOptions, Timeline

__all__ = ["NODES", "HospitalsRun", "run_hospitals", "site_labels"]

TENANT = "medica"
PIPELINE_MODULE = "pipelines.hospital_screening"
#: One imaging station (edge agent) per hospital.
NODES = {
    "hosp-lux": "scan-lux-a",
    "hosp-metz": "scan-metz-a",
    "hosp-trier": "scan-trier-a",
}


def site_labels(site: str) -> dict[str, str]:
    """Return the labels of ``site``'s on-site server and imaging station."""
    from pipelines.hospitals.data import SITES

    country = SITES[site]
    return {TIER: "edge", SITE: site, COUNTRY: country, JURISDICTION: country}


def run_hospitals(options: DemoOptions) -> dict[str, Any]:
    """Run the hospitals scenario on embedded defaults; return the report."""
    from rich.console import Console

    from pipelines.demo._loop import run_until_interrupted
    from pipelines.demo.demo import prepare_workdir

    console = Console() if options.live else Console(width=150, force_terminal=False)
    run = HospitalsRun(options=options, workdir=prepare_workdir(options.workdir), console=console)
    console.print(f"[bold]continuum demo[/] (hospitals scenario) working directory: {run.workdir}")
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)  # a clean shutdown
    try:
        steps = [run.start_infrastructure, run.deploy, run.first_model, run.start_stations]
        interrupted = run_until_interrupted([*steps, run.watch], run.shut_down, console)
        return run.report(interrupted=interrupted)
    finally:  # whatever failed: no broker or Ray node outlives the run
        signal.signal(signal.SIGTERM, previous_sigterm)
        run.stop_infrastructure()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@dataclass(kw_only=True)
class HospitalsRun:
    """One run of the hospitals scenario: what it started and what it saw."""

    options: DemoOptions
    workdir: Path
    console: Any
    timeline: Timeline = field(default_factory=Timeline)
    tenancy: Any = None
    central: Any = None
    central_settings: Any = None
    site_brokers: dict[str, Any] = field(default_factory=dict)
    cluster: Any = None
    head: Any = None
    site_ingest: dict[str, Any] = field(default_factory=dict)
    agents: list[Any] = field(default_factory=list)
    spec: Any = None
    spec_path: Path = Path()
    status: dict[str, Any] = field(default_factory=dict)
    ingest_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    telemetry: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    node_ids: dict[str, str] = field(default_factory=dict)

    def site_dir(self, site: str) -> Path:
        """The site's own data folder (its node's ``CONTINUUM_SITE_DATA``)."""
        return self.workdir / "sites" / site / "data"

    # -- infrastructure ----------------------------------------------------------------

    def start_infrastructure(self) -> None:
        """Enrol the stations, write the brokers' files, start the central broker, the Ray
        cluster (a cloud head, one worker per hospital) and the three site brokers."""
        from cloud_head._site_plane import SiteBridge, enrol_bridges
        from continuum.embedded.broker import EmbeddedBroker
        from continuum.embedded.ray_cluster import LocalRayCluster
        from continuum.wire.mqtt import BrokerSettings
        from pipelines.demo._tenants import CLOUD_LABELS, create_tenants
        from pipelines.hospitals.data import SITES

        registry, self.tenancy = create_tenants(
            self.workdir / "cloud", {TENANT: list(NODES.values())}
        )
        bridges = [SiteBridge(TENANT, site, (node,)) for site, node in NODES.items()]
        passwd, acl, secrets = enrol_bridges(
            registry.password_file, registry.acl_file, bridges, self.workdir / "broker-files"
        )
        self.central = EmbeddedBroker(self.workdir / "broker", password_file=passwd, acl_file=acl)
        for site in SITES:
            _write_site_reference(self.site_dir(site), site)
        self.cluster = LocalRayCluster(
            self.workdir / "ray",
            head_labels=CLOUD_LABELS,
            edge_nodes=[site_labels(site) for site in SITES],
            edge_env=[{"CONTINUUM_SITE_DATA": str(self.site_dir(site))} for site in SITES],
            dashboard=True,  # the state API: where each task that read site data ran
            head_cpus=2,
            edge_cpus=1,
            # Four Ray nodes start on one machine: on a loaded one a raylet needs longer.
            start_timeout_s=180.0,
        )
        with self.console.status("starting mosquitto, the Ray cluster and the sites' brokers"):
            self.central.start()
            self.cluster.start()
            self.cluster.connect(namespace=TENANT, log_to_driver=False)
            self.central_settings = BrokerSettings(host=self.central.host, port=self.central.port)
            for bridge in bridges:
                self.site_brokers[bridge.site] = _start_site_broker(
                    self.workdir, registry.password_file, bridge, self.central_settings, secrets
                )
        self.node_ids = _site_node_ids()
        self.console.print(
            f"  central mosquitto on {self.central.address}; Ray at {self.cluster.address}; "
            + ", ".join(f"{s} broker {b.address}" for s, b in self.site_brokers.items())
        )
        self.timeline.event("infrastructure up", sites=list(self.site_brokers))

    def deploy(self) -> None:
        """Deploy the cloud head under the policy (which plans federated retraining) and
        place each site's ingest on its own node."""
        import importlib

        from cloud_head.ingest import SiteIngestActor
        from cloud_head.paths import HeadPaths
        from cloud_head.services import CloudHead
        from continuum.spec import load_pipeline
        from pipelines.demo._loop import _code_version
        from pipelines.demo._tenants import STORE_LABELS

        self.spec_path = Path(importlib.import_module(PIPELINE_MODULE).__file__ or "")
        self.spec = load_pipeline(self.spec_path)
        key_path, _ = self.tenancy.signing_keys[TENANT]
        paths = HeadPaths(self.workdir / "cloud")
        with self.console.status("deploying the cloud head; placing each site's ingest"):
            self.head = CloudHead.deploy(
                TENANT,
                [self.spec],
                paths,
                self.central_settings,
                key_path.read_bytes(),
                code_version=_code_version(),
                policy=self.tenancy.policy,
                store_labels=STORE_LABELS,
                tenants_root=paths.tenants,
                actor="continuum-demo",
            )
            for site, broker in self.site_brokers.items():
                settings, identity = _site_ingest_identity(self.workdir, broker)
                self.site_ingest[site] = SiteIngestActor.options(  # type: ignore[attr-defined]
                    name=f"site-ingest-{site}",
                    namespace=TENANT,
                    label_selector={SITE: site},
                ).remote(TENANT, [self.spec.model_dump(mode="json")], settings, identity)
            import ray

            placed = ray.get([a.node_id.remote() for a in self.site_ingest.values()], timeout=60)
        self.timeline.event(
            "deployed", site_ingest=dict(zip(self.site_ingest, placed, strict=True))
        )
        self.console.print("  cloud head deployed; each site's ingest runs on its own node")

    def first_model(self) -> None:
        """Train the first model in federated rounds on the sites' seed rows."""
        import ray

        controller = self.head.controllers[self.spec.name]
        with self.console.status("training the first model in federated rounds at the sites"):
            first = ray.get(controller.bootstrap.remote(), timeout=900)
        self.console.print(f"  first model {TENANT}/{first} registered and published")
        self.timeline.event("first model", version=first)

    def start_stations(self) -> None:
        """Start one imaging station (edge agent) per hospital on its site's broker."""
        from pipelines.demo._hospital_agents import start_station

        self.timeline.stream_start = time.time()
        self.timeline.drift_at = self.timeline.stream_start + self.options.drift_at_s
        for site, node in NODES.items():
            self.agents.append(
                start_station(
                    self.workdir,
                    node=node,
                    site=site,
                    labels=site_labels(site),
                    broker=self.tenancy.broker_for_node(
                        TENANT, node, _settings(self.site_brokers[site])
                    ),
                    spec_path=self.spec_path,
                    options=self.options,
                    drift_at=self.timeline.drift_at,
                    tenancy=self.tenancy,
                )
            )
        self.console.print(
            f"  {len(self.agents)} imaging stations streaming at {self.options.fps:g} rows/s; "
            f"hosp-trier's device is recalibrated in {self.options.drift_at_s:g} s"
        )
        self.timeline.event("stations started", nodes=[a.node for a in self.agents])

    # -- the loop ----------------------------------------------------------------------

    def watch(self) -> None:
        """Print progress until the stations' time is over. The controller retrains by
        itself: its sample-count trigger counts the labelled samples held at the sites."""
        import ray

        controller = self.head.controllers[self.spec.name]
        end = self.timeline.stream_start + self.options.duration_s
        last_print = 0.0
        while time.time() < end:
            time.sleep(2.0)
            with contextlib.suppress(Exception):
                self.status = ray.get(controller.status.remote(), timeout=10)
            self._site_samples()
            if time.time() - last_print >= 10:
                last_print = time.time()
                self.console.print(
                    f"  t={time.time() - self.timeline.stream_start:5.0f} s  "
                    f"current {self.status.get('current')}  stage "
                    f"{self.status.get('rollout', {}).get('stage')}  samples at the sites "
                    + ", ".join(f"{s} {st.get('stored', 0)}" for s, st in self.ingest_stats.items())
                )
        # let a retraining asked for at the end finish and its canary be judged
        deadline = time.time() + 240
        while self._busy() and time.time() < deadline:
            time.sleep(2.0)
            with contextlib.suppress(Exception):
                self.status = ray.get(controller.status.remote(), timeout=10)

    def _site_samples(self) -> int:
        import ray

        for site, actor in self.site_ingest.items():
            with contextlib.suppress(Exception):
                self.ingest_stats[site] = ray.get(actor.stats.remote(), timeout=10)
        return int(sum(s.get("stored", 0) for s in self.ingest_stats.values()))

    def _busy(self) -> bool:
        rollout = self.status.get("rollout") or {}
        training = self.status.get("training", "idle") not in ("idle", None)
        return training or rollout.get("stage") in ("canary", "waiting")

    # -- the end -----------------------------------------------------------------------

    def shut_down(self) -> None:
        """Stop the stations, the site ingests, the head, the brokers and the cluster."""
        from pipelines.demo._agents import collect_telemetry, stop_agents

        with self.console.status("stopping the stations, the services, brokers and Ray"):
            stop_agents(self.agents)
            if self.head is not None:
                with contextlib.suppress(Exception):
                    self.telemetry = collect_telemetry(self.head, self.agents)
                self._site_samples()
                import ray

                for actor in self.site_ingest.values():
                    with contextlib.suppress(Exception):
                        ray.get(actor.stop.remote(), timeout=30)
                with contextlib.suppress(Exception):
                    self.head.stop(timeout_s=30)

    def stop_infrastructure(self) -> None:
        """Stop Ray and every broker (after the report has read what it needs); again: no-op."""
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                import ray

                ray.shutdown()
            self.cluster.stop()
            self.cluster = None
        for broker in self.site_brokers.values():
            broker.stop()
        if self.central is not None:
            self.central.stop()

    def report(self, *, interrupted: bool) -> dict[str, Any]:
        """Gather the figures and the evidence, write ``report.json``; stop the rest."""
        import json

        from pipelines.demo._hospitals_report import build_hospitals_report

        report = build_hospitals_report(self, interrupted=interrupted)
        report["options"] = asdict(self.options) | {"workdir": str(self.workdir)}
        (self.workdir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        _print_summary(self.console, report)
        return report


def _write_site_reference(root: Path, site: str) -> None:
    """Put ``site``'s own seed rows where its node finds them (they were always there: the
    demo plays the hospital that owns them)."""
    from pipelines.hospitals.data import load_splits

    ref = load_splits().reference[site]
    target = root / "reference" / TENANT / "hospital-screening.npz"
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, x=ref.x, y=ref.y)


def _start_site_broker(
    workdir: Path, password_file: Path, bridge: Any, central: Any, secrets: dict[str, str]
) -> Any:
    """Start ``bridge.site``'s broker, bridged to ``central`` as the bridge's identity."""
    from cloud_head._site_plane import SiteBroker, site_broker_files

    files = site_broker_files(
        password_file, TENANT, bridge.nodes, workdir / "sites" / bridge.site / "broker-files"
    )
    remote = central.model_copy(
        update={"username": bridge.identity, "password": secrets[bridge.identity]}
    )
    return SiteBroker(
        workdir / "sites" / bridge.site / "broker",
        bridge,
        remote,
        password_file=files[0],
        acl_file=files[1],
    ).start()


def _site_ingest_identity(workdir: Path, broker: Any) -> tuple[Any, str]:
    """Return the site broker's settings as the tenant's ingest identity, and the identity."""
    from cloud_head._tenant_identities import read_service_password, service_credentials_dir
    from continuum.wire import identities

    password = read_service_password(
        service_credentials_dir(workdir / "cloud" / "tenants", TENANT), "ingest"
    )
    identity = identities.ingest_identity(TENANT, 0)
    settings = _settings(broker).model_copy(update={"username": identity, "password": password})
    return settings, identity


def _settings(broker: Any) -> Any:
    """Return the anonymous settings of an embedded ``broker`` (add an identity to them)."""
    from continuum.wire.mqtt import BrokerSettings

    return BrokerSettings(host=broker.host, port=broker.port)


def _site_node_ids() -> dict[str, str]:
    """Return each site's Ray node id, by its site label (the head has none of theirs)."""
    import ray

    out: dict[str, str] = {}
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        site = (node.get("Labels") or {}).get(SITE)
        if node.get("Alive") and site in NODES:
            out[site] = node["NodeID"]
    return out


def _print_summary(console: Any, report: dict[str, Any]) -> None:
    """Print the figures a reader looks for first, and the targets."""
    figures = report.get("figures", {})
    console.print("\n[bold]hospitals: reserved per-site tests (accuracy, pooled)[/]")
    for name, value in figures.items():
        console.print(f"  {name}: {value}")
    for name, met in report.get("targets", {}).items():
        console.print(f"  target {name}: {'[green]met[/]' if met else '[red]NOT met[/]'}")
    console.print(f"  report: {report.get('report_path')}")
