"""The cloud head's services as named Ray actors in the tenant's namespace.

Each service wraps protocol logic that lives in its own module (ingest, fleet, controller)
and adds what running on Ray means: a name the dashboard shows, placement on the cloud
tier by label selector, a lifetime independent of the driver, and metrics exported with
``ray.util.metrics`` so they appear in Ray's Prometheus/Grafana integration.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from cloud_head.metrics import ControllerMetrics, FleetMetrics, IngestMetrics, MetricsExporter
from continuum.errors import NotReadyError, OperationTimeoutError
from continuum.labels import TIER
from continuum.spec import PipelineSpec
from continuum.wire.mqtt import BrokerSettings, connect, make_client

log = logging.getLogger(__name__)

#: Cloud services run on the cloud tier only (DESIGN §6).
CLOUD_SELECTOR = {TIER: "cloud"}


@dataclass(frozen=True)
class HeadPaths:
    """Where one tenant's cloud state lives (local paths; S3/PostgreSQL in production)."""

    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def seen_db(self) -> Path:
        return self.state / "ingest-seen.sqlite3"

    @property
    def labels_db(self) -> Path:
        return self.state / "labels.sqlite3"

    @property
    def fleet_db(self) -> Path:
        return self.state / "fleet.sqlite3"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    def controller(self, pipeline: str) -> Path:
        return self.root / "controllers" / pipeline


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class IngestActor:
    """One ingest replica: shared subscription, de-duplication, durable store writes."""

    def __init__(
        self,
        tenant: str,
        specs: list[dict[str, Any]],
        paths: HeadPaths,
        broker: dict[str, Any],
        replica: int,
    ) -> None:
        from cloud_head.ingest import IngestService, IngestWorker
        from cloud_head.labelling import LabelStore
        from cloud_head.store import SampleStore

        logging.basicConfig(level=logging.INFO)
        pipelines = [PipelineSpec.model_validate(s) for s in specs]
        paths.state.mkdir(parents=True, exist_ok=True)
        self._service = IngestService(
            tenant,
            pipelines,
            SampleStore(paths.store),
            LabelStore(paths.labels_db),
            paths.seen_db,
        )
        self._worker = IngestWorker(
            self._service,
            BrokerSettings.model_validate(broker),
            client_id=f"ctm-ingest-{tenant}-{replica}",
        )
        self._worker.start()
        metrics = IngestMetrics(tenant, replica)
        self._pump = MetricsExporter(
            f"ingest-{replica}", lambda: metrics.update(self._worker.stats())
        )

    def stats(self) -> dict[str, Any]:
        """Return the replica's counters."""
        return self._worker.stats()

    def stop(self) -> None:
        """Acknowledge what was written and disconnect; the broker keeps the session."""
        self._pump.stop()
        self._worker.stop()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class FleetActor:
    """The fleet registry: every node's status, reported models and telemetry."""

    def __init__(self, tenant: str, paths: HeadPaths, broker: dict[str, Any]) -> None:
        from cloud_head.fleet import FleetRegistry, FleetWorker

        logging.basicConfig(level=logging.INFO)
        self._registry = FleetRegistry(tenant, paths.fleet_db)
        self._worker = FleetWorker(self._registry, BrokerSettings.model_validate(broker))
        self._worker.start()
        metrics = FleetMetrics(tenant)

        def export() -> None:
            stats = self._stats()
            metrics.update(stats["nodes"], stats["online"])

        self._pump = MetricsExporter("fleet", export)

    def _stats(self) -> dict[str, Any]:
        snapshot = self._worker.stats()
        nodes = self._registry.nodes()
        snapshot["nodes"] = len(nodes)
        snapshot["online"] = sum(1 for n in nodes if n.online)
        return snapshot

    def stats(self) -> dict[str, Any]:
        """Return the registry's counters and node counts."""
        return self._stats()

    def nodes(self) -> list[dict[str, Any]]:
        """Return every node with labels, online state and last telemetry per pipeline."""
        out = []
        for n in self._registry.nodes():
            out.append(
                {
                    "node": n.node,
                    "online": n.online,
                    "labels": n.labels,
                    "pipelines": n.pipelines,
                    "last_seen": n.last_seen,
                    "telemetry": {p: t.model_dump(mode="json") for p, t in n.telemetry.items()},
                    "reported": None if n.reported is None else n.reported.model_dump(mode="json"),
                }
            )
        return out

    def telemetry(self, node: str, pipeline: str, since_ts: float = 0.0) -> list[dict[str, Any]]:
        """Return one node's telemetry windows of one pipeline since ``since_ts``."""
        return [
            t.model_dump(mode="json") for t in self._registry.telemetry(node, pipeline, since_ts)
        ]

    def stop(self) -> None:
        """Disconnect (the session persists)."""
        self._pump.stop()
        self._worker.stop()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class ControllerActor:
    """One pipeline's loop on the cloud: trigger, retrain on Ray Train, gate, register, roll out."""

    def __init__(
        self,
        spec: dict[str, Any],
        paths: HeadPaths,
        broker: dict[str, Any],
        private_key_pem: bytes,
        code_version: str,
        tick_s: float = 1.0,
    ) -> None:
        from cloud_head.controller import PipelineController
        from cloud_head.fleet import FleetRegistry
        from cloud_head.labelling import LabelStore
        from cloud_head.registry import ModelRegistry
        from cloud_head.store import SampleStore

        logging.basicConfig(level=logging.INFO)
        pipeline = PipelineSpec.model_validate(spec)
        settings = BrokerSettings.model_validate(broker)
        workdir = paths.controller(pipeline.name)
        workdir.mkdir(parents=True, exist_ok=True)
        self._client = make_client(f"ctm-controller-{pipeline.tenant}-{pipeline.name}", settings)
        connect(self._client, settings)
        self._controller = PipelineController(
            pipeline,
            workdir=workdir,
            registry=ModelRegistry(paths.registry),
            store=SampleStore(paths.store),
            labels=LabelStore(paths.labels_db),
            fleet=FleetRegistry(pipeline.tenant, paths.fleet_db),
            client=self._client,
            private_key_pem=private_key_pem,
            code_version=code_version,
        )
        self._tick_s = tick_s
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._last_error: str | None = None
        metrics = ControllerMetrics(pipeline.tenant, pipeline.name)
        self._pump = MetricsExporter(
            f"controller-{pipeline.name}", lambda: metrics.update(self._controller.status())
        )

    def bootstrap(self) -> str:
        """Train and roll out the first model if there is none; start ticking; return it."""
        version = self._controller.bootstrap()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._run, name="controller-tick", daemon=True)
            self._ticker.start()
        return version.version

    def _run(self) -> None:
        while not self._stop.wait(self._tick_s):
            try:
                self._controller.tick()
                if self._last_error is not None:
                    log.info("controller recovered")
                    self._last_error = None
            except Exception as error:  # log once when it starts failing, keep ticking
                text = f"{type(error).__name__}: {error}"
                if text != self._last_error:
                    log.exception("controller tick failed")
                    self._last_error = text

    def status(self) -> dict[str, Any]:
        """Return the controller's snapshot (training, rollout, versions)."""
        return self._controller.status() | {"last_error": self._last_error}

    def set_version(self, version: str, reason: str) -> dict[str, Any]:
        """Make ``version`` current everywhere (operator promote or rollback)."""
        from dataclasses import asdict

        return asdict(self._controller.set_version(version, reason))

    def request_retrain(self, reason: str) -> None:
        """Retrain at the next tick."""
        self._controller.request_retrain(reason)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop ticking and wait for a running training to end, within a bound."""
        self._stop.set()
        self._pump.stop()
        self._controller.wait_idle(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class CloudHead:
    """Handles to one tenant's cloud services on Ray."""

    tenant: str
    ingest: list[Any]
    fleet: Any
    controllers: dict[str, Any]

    @classmethod
    def deploy(
        cls,
        tenant: str,
        specs: list[PipelineSpec],
        paths: HeadPaths,
        broker: BrokerSettings,
        private_key_pem: bytes,
        *,
        code_version: str,
        ingest_replicas: int = 1,
        ready_timeout_s: float = 60.0,
    ) -> CloudHead:
        """Start the services as named, detached actors in namespace ``tenant`` (cloud tier)."""
        dumped = [s.model_dump(mode="json") for s in specs]
        broker_dict = broker.model_dump(mode="json")
        common: dict[str, Any] = {
            "namespace": tenant,
            "lifetime": "detached",
            "label_selector": CLOUD_SELECTOR,
            "get_if_exists": True,
        }
        ingest = [
            IngestActor.options(name=f"ingest-{i}", **common).remote(  # type: ignore[attr-defined]
                tenant, dumped, paths, broker_dict, i
            )
            for i in range(ingest_replicas)
        ]
        fleet = FleetActor.options(name="fleet", **common).remote(  # type: ignore[attr-defined]
            tenant, paths, broker_dict
        )
        controllers = {
            # Threaded (max_concurrency): status() answers while bootstrap() trains.
            s.name: ControllerActor.options(  # type: ignore[attr-defined]
                name=f"controller-{s.name}", max_concurrency=4, **common
            ).remote(s.model_dump(mode="json"), paths, broker_dict, private_key_pem, code_version)
            for s in specs
            if s.retrain is not None
        }
        head = cls(tenant, ingest, fleet, controllers)
        head.wait_ready(ready_timeout_s)
        return head

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every service answers; an unschedulable one is reported, not waited on."""
        refs = [a.stats.remote() for a in self.ingest] + [self.fleet.stats.remote()]
        refs += [c.status.remote() for c in self.controllers.values()]
        deadline = time.monotonic() + timeout_s
        pending = refs
        while pending and time.monotonic() < deadline:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        if pending:
            raise OperationTimeoutError(
                f"{len(pending)} cloud service(s) of tenant {self.tenant!r} did not start within "
                f"{timeout_s:g} s; check that a node labelled {TIER}=cloud has room "
                "(`ray status`) and the actor logs in the Ray dashboard"
            )
        try:
            ray.get(refs)
        except ray.exceptions.RayActorError as error:
            raise NotReadyError(f"a cloud service failed to start: {error}") from error

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop every service cleanly, then remove the actors."""
        calls = [c.stop.remote(timeout_s) for c in self.controllers.values()]
        calls += [a.stop.remote() for a in self.ingest] + [self.fleet.stop.remote()]
        ray.wait(calls, num_returns=len(calls), timeout=timeout_s + 10)
        for actor in [*self.controllers.values(), *self.ingest, self.fleet]:
            ray.kill(actor, no_restart=True)
