"""The cloud head's services as named Ray actors in the tenant's namespace.

Each service wraps protocol logic that lives in its own module (ingest, fleet, controller)
and adds what running on Ray means: a name the dashboard shows, placement on the cloud
tier by label selector, a lifetime independent of the driver, and metrics exported with
``ray.util.metrics`` so they appear in Ray's Prometheus/Grafana integration.

``CloudHead.deploy`` is where the residency policy refuses a pipeline (DESIGN.md §6): it
checks every stage against the nodes it knows (the fleet's and the Ray cluster's) and the
store's labels, records the decisions (or the refusal, first) in the tenant's audit log and
starts nothing that was refused; the training job's selector is the one the policy derives.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from cloud_head.audit import (
    AuditAction,
    AuditLog,
    AuditTrail,
    canonical_json,
    default_actor,
    service_actor,
)
from cloud_head.metrics import (
    BrokerConnectionMetrics,
    ControllerMetrics,
    FleetMetrics,
    IngestMetrics,
    MetricsExporter,
)
from cloud_head.paths import HeadPaths as HeadPaths  # its home is paths.py; re-exported
from continuum.errors import NotReadyError, OperationTimeoutError, PlacementError
from continuum.labels import TIER
from continuum.residency import (
    Decision,
    ResidencyPolicy,
    derive_training_selector,
    load_policy,
    pipeline_decisions,
)
from continuum.spec import PipelineSpec
from continuum.wire.mqtt import BrokerSettings, connect, make_client

log = logging.getLogger(__name__)

#: Cloud services run on the cloud tier only (DESIGN §6).
CLOUD_SELECTOR = {TIER: "cloud"}


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class IngestActor:
    """One ingest replica: shared subscription, de-duplication, durable store writes.

    ``policy`` (the residency policy as YAML text or its dict; it crosses Ray) makes the
    replica enforce it on every batch, with ``store_labels`` saying where the store is and
    the fleet registry saying where each node is; ``audit_dir`` receives its refusals and
    a periodic summary of what it stored, under the head signed with
    ``audit_signing_key`` like the controller's records; ``tenants_root`` (the tenant
    registry) makes it enforce the tenant's ``samples_per_day`` quota.
    """

    def __init__(
        self,
        tenant: str,
        specs: list[dict[str, Any]],
        paths: HeadPaths,
        broker: dict[str, Any],
        replica: int,
        policy: str | dict[str, Any] | None = None,
        store_labels: dict[str, str] | None = None,
        audit_dir: str | Path | None = None,
        audit_signing_key: bytes | None = None,
        tenants_root: Path | None = None,
    ) -> None:
        from cloud_head.fleet import FleetRegistry
        from cloud_head.ingest import IngestService, IngestWorker
        from cloud_head.labelling import LabelStore
        from cloud_head.store import Compactor, SampleStore
        from cloud_head.tenants import read_quotas

        logging.basicConfig(level=logging.INFO)
        pipelines = [PipelineSpec.model_validate(s) for s in specs]
        paths.state.mkdir(parents=True, exist_ok=True)
        residency = (
            None
            if policy is None
            else ResidencyPolicy.from_yaml(policy)
            if isinstance(policy, str)
            else ResidencyPolicy.from_dict(policy)
        )
        store = SampleStore(paths.store)
        self._service = IngestService(
            tenant,
            pipelines,
            store,
            LabelStore(paths.labels_db),
            paths.seen_db,
            policy=residency,
            store_labels=store_labels,
            fleet=FleetRegistry(tenant, paths.fleet_db(tenant)) if residency is not None else None,
            audit_dir=audit_dir,
            audit_signing_key=audit_signing_key,
            quotas=None if tenants_root is None else read_quotas(tenants_root, tenant),
        )
        self._worker = IngestWorker(
            self._service,
            BrokerSettings.model_validate(broker),
            client_id=f"ctm-ingest-{tenant}-{replica}",
        )
        self._worker.start()
        # One compactor per store: replica 0's. Small files from slow uplinks get merged.
        partitions = [(tenant, p.name) for p in pipelines]
        self._compactor = (
            Compactor(store, partitions, on_compacted=self._service.note_compaction).start()
            if replica == 0
            else None
        )
        metrics = IngestMetrics(tenant, replica)
        connection = BrokerConnectionMetrics(tenant, f"ingest-{replica}")

        def export() -> None:
            stats = self._worker.stats()
            metrics.update(stats)
            connection.update(stats)

        self._pump = MetricsExporter(f"ingest-{replica}", export)

    def stats(self) -> dict[str, Any]:
        """Return the replica's counters."""
        return self._worker.stats()

    def stop(self) -> None:
        """Acknowledge what was written and disconnect; the broker keeps the session."""
        self._pump.stop()
        if self._compactor is not None:
            self._compactor.stop()
        self._worker.stop()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class FleetActor:
    """The fleet registry: every node's status, reported models and telemetry.

    ``remove`` is the one way a node leaves the fleet (``continuum fleet remove``): recorded
    in the tenant's audit log, under the head signed with ``audit_signing_key`` like the
    controller's records, before anything is deleted.
    """

    def __init__(
        self,
        tenant: str,
        paths: HeadPaths,
        broker: dict[str, Any],
        tenants_root: Path | None = None,
        audit_signing_key: bytes | None = None,
    ) -> None:
        from cloud_head.fleet import FleetRegistry, FleetWorker

        logging.basicConfig(level=logging.INFO)
        self._registry = FleetRegistry(
            tenant, paths.fleet_db(tenant), quotas=_quota_reader(tenants_root, tenant)
        )
        self._worker = FleetWorker(self._registry, BrokerSettings.model_validate(broker))
        self._worker.start()
        keys = {tenant: audit_signing_key} if audit_signing_key is not None else {}
        self._audit = AuditTrail(
            AuditLog(paths.audit, signing_keys=keys), tenant, service_actor("fleet")
        )
        metrics = FleetMetrics(tenant)
        connection = BrokerConnectionMetrics(tenant, "fleet")

        def export() -> None:
            stats = self._stats()
            metrics.update(stats["nodes"], stats["online"])
            connection.update(stats)

        self._pump = MetricsExporter("fleet", export)

    def _stats(self) -> dict[str, Any]:
        # The registry counts nodes and online ones in SQL: parsing every node's status
        # every export would cost ~15 ms per 1000 nodes.
        return self._worker.stats()

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
                    "refused": n.refused,
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

    def remove(self, node: str, actor: str, reason: str) -> dict[str, Any]:
        """Decommission ``node``: record it, delete it and its telemetry, clear its retained topics.

        ``actor`` (``user@host``) is recorded as who asked.  A removed node that sends a
        status again is admitted again as a new node.

        Raises:
            NotFoundError: the fleet has no such node.
            AuditWriteError: the removal could not be recorded; nothing was removed.
        """
        from cloud_head.fleet import removal_record
        from continuum.errors import NotFoundError

        info = self._registry.get(node)
        if info is None:
            raise NotFoundError(
                f"the fleet of tenant {self._audit.tenant!r} has no node {node!r}; "
                "`continuum fleet` lists its nodes"
            )
        self._audit.record(
            AuditAction.NODE_REMOVED, f"node/{node}", removal_record(info, reason), actor=actor
        )
        windows = self._registry.remove(node)
        try:
            cleared, note = self._worker.clear_retained(node), ""
        except (NotReadyError, OperationTimeoutError) as error:
            cleared, note = [], str(error)
        return {"node": node, "telemetry_windows": windows, "cleared": cleared, "note": note}

    def stop(self) -> None:
        """Disconnect (the session persists)."""
        self._pump.stop()
        self._worker.stop()
        self._audit.log.close()


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
        training_selector: dict[str, str] | None = None,
        tenants_root: Path | None = None,
    ) -> None:
        from cloud_head.controller import PipelineController
        from cloud_head.fleet import FleetRegistry
        from cloud_head.labelling import LabelStore
        from cloud_head.store import SampleStore

        logging.basicConfig(level=logging.INFO)
        pipeline = PipelineSpec.model_validate(spec)
        settings = BrokerSettings.model_validate(broker)
        workdir = paths.controller(pipeline.tenant, pipeline.name)
        workdir.mkdir(parents=True, exist_ok=True)
        self._client = make_client(f"ctm-controller-{pipeline.tenant}-{pipeline.name}", settings)
        connect(self._client, settings)
        self._audit = AuditLog(paths.audit, signing_keys={pipeline.tenant: private_key_pem})
        self._controller = PipelineController(
            pipeline,
            workdir=workdir,
            registry=paths.open_registry(),
            store=SampleStore(paths.store),
            labels=LabelStore(paths.labels_db),
            fleet=FleetRegistry(pipeline.tenant, paths.fleet_db(pipeline.tenant)),
            client=self._client,
            private_key_pem=private_key_pem,
            code_version=code_version,
            audit=AuditTrail(
                self._audit, pipeline.tenant, service_actor(f"controller-{pipeline.name}")
            ),
            quotas=_quota_reader(tenants_root, pipeline.tenant),
            training_selector=training_selector,
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

    def set_version(
        self, version: str, reason: str, actor: str | None = None, action: str = "promote"
    ) -> dict[str, Any]:
        """Make ``version`` current everywhere (operator promote or rollback); ``actor`` asked."""
        from dataclasses import asdict

        if action not in ("promote", "rollback"):
            raise ValueError(f"action must be 'promote' or 'rollback', got {action!r}")
        return asdict(
            self._controller.set_version(
                version,
                reason,
                actor=actor,
                action="rollback" if action == "rollback" else "promote",
            )
        )

    def request_retrain(self, reason: str, actor: str | None = None) -> None:
        """Retrain at the next tick; ``actor`` (``user@host``) is recorded as who asked."""
        self._controller.request_retrain(reason, actor)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop ticking and wait for a running training to end, within a bound."""
        self._stop.set()
        self._pump.stop()
        self._controller.wait_idle(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        self._audit.close()


def _quota_reader(tenants_root: Path | None, tenant: str) -> Any:
    """Return a function reading ``tenant``'s quotas now, or None (unlimited) without a registry."""
    if tenants_root is None:
        return None
    from cloud_head.tenants import read_quotas

    return functools.partial(read_quotas, tenants_root, tenant)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class TeacherActor:
    """A pipeline's cloud teacher (label source ``teacher``): labels new samples every
    ``interval_s`` with the current version of the registered teacher model.

    Until the teacher model is registered it waits and says so in ``status()``; a newer
    current version is picked up at the next pass.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        paths: HeadPaths,
        interval_s: float = 10.0,
        accept_confidence: float = 0.95,
    ) -> None:
        from cloud_head.labelling import LabelStore
        from cloud_head.store import SampleStore

        logging.basicConfig(level=logging.INFO)
        self._spec = PipelineSpec.model_validate(spec)
        self._registry = paths.open_registry()
        self._samples = SampleStore(paths.store)
        self._labels = LabelStore(paths.labels_db)
        self._interval_s = interval_s
        self._accept = accept_confidence
        self._teacher: Any = None
        self._version: str | None = None
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {
            "model": self._spec.label.teacher_model,
            "version": None,
            "passes": 0,
            "labelled": 0,
            "proposed": 0,
            "state": "starting",
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="teacher", daemon=True)
        self._thread.start()

    def run_once(self) -> dict[str, Any]:
        """Label what is new now (a pass also runs every ``interval_s``); return the status."""
        from cloud_head.teacher import Teacher, teacher_artifact
        from continuum.errors import NotFoundError

        name = self._spec.label.teacher_model
        assert name is not None  # the spec requires it for a teacher source
        with self._lock:
            try:
                path, version = teacher_artifact(self._registry, self._spec.tenant, name)
            except NotFoundError as missing:
                self._status["state"] = f"waiting: {missing}"
                return dict(self._status)
            if version != self._version:
                self._teacher = Teacher(
                    self._spec,
                    self._samples,
                    self._labels,
                    path,
                    model_name=f"{name}:{version}",
                    accept_confidence=self._accept,
                )
                self._version = version
            done = self._teacher.run_once()
            self._status.update(
                version=version,
                passes=self._status["passes"] + 1,
                labelled=self._status["labelled"] + done.labelled,
                proposed=self._status["proposed"] + done.proposed,
                state="labelling",
            )
            return dict(self._status)

    def status(self) -> dict[str, Any]:
        """Return what the teacher has done so far."""
        return dict(self._status)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the pass in progress."""
        self._stop.set()
        self._thread.join(timeout_s)
        self._labels.close()
        self._registry.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.run_once()
            except Exception as error:  # a bad pass must not end the teacher
                log.exception("teacher pass failed")
                self._status["state"] = f"failed: {error!r}"


@dataclass
class CloudHead:
    """Handles to one tenant's cloud services on Ray."""

    tenant: str
    ingest: list[Any]
    fleet: Any
    controllers: dict[str, Any]
    teachers: dict[str, Any] = field(default_factory=dict)

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
        policy: str | Path | ResidencyPolicy | None = None,
        store_labels: Mapping[str, str] | None = None,
        tenants_root: Path | None = None,
        actor: str | None = None,
    ) -> CloudHead:
        """Check, record and start the services as named, detached actors in namespace ``tenant``.

        Args:
            policy: the residency policy (a YAML file or a parsed one); every pipeline is
                checked against it and the known nodes, and its training job gets the
                selector the policy derives. None: no residency check (recorded as such).
            store_labels: the labels of where the sample store lives, for the store, uplink
                and training decisions (None: unknown, decided per node at ingest).
            tenants_root: the tenant registry whose quotas apply (edge nodes, training
                GPU-hours); default ``paths.tenants`` when it holds one, else unlimited.
            actor: who deploys, for the audit log (default ``user@host``).

        Raises:
            PlacementError: the policy refuses a stage or the training job; the refusal is
                in the audit log first, and no service was started.
            NotFoundError: the tenant registry does not know ``tenant``.
            AuditWriteError: the deploy could not be recorded; no service was started.
        """
        residency = _load_policy(policy)
        from cloud_head.tenants import read_quotas, registry_exists

        tenants = tenants_root
        if tenants is None and registry_exists(paths.tenants):
            tenants = paths.tenants
        if tenants is not None:
            read_quotas(tenants, tenant)  # a registry that does not know the tenant is an error
        with AuditLog(paths.audit, signing_keys={tenant: private_key_pem}) as log:
            selectors = check_deploy(
                AuditTrail(log, tenant, actor or default_actor()),
                specs,
                residency,
                None if residency is None else known_nodes(tenant, paths),
                store_labels=store_labels,
                details={
                    "code_version": code_version,
                    "namespace": tenant,
                    "services_selector": CLOUD_SELECTOR,
                    "ingest_replicas": ingest_replicas,
                    "quotas": "tenant registry" if tenants is not None else "unlimited",
                },
            )
        dumped = [s.model_dump(mode="json") for s in specs]
        broker_dict = broker.model_dump(mode="json")
        common: dict[str, Any] = {
            "namespace": tenant,
            "lifetime": "detached",
            "label_selector": CLOUD_SELECTOR,
            "get_if_exists": True,
        }
        ingest_options: dict[str, Any] = {
            "policy": None if residency is None else _policy_yaml(residency),
            "store_labels": None if store_labels is None else dict(store_labels),
            "audit_dir": paths.audit,
            "audit_signing_key": private_key_pem,
            "tenants_root": tenants,
        }
        ingest = [
            IngestActor.options(name=f"ingest-{i}", **common).remote(  # type: ignore[attr-defined]
                tenant, dumped, paths, broker_dict, i, **ingest_options
            )
            for i in range(ingest_replicas)
        ]
        fleet = FleetActor.options(name="fleet", **common).remote(  # type: ignore[attr-defined]
            tenant, paths, broker_dict, tenants, private_key_pem
        )
        controllers = {
            # Threaded (max_concurrency): status() answers while bootstrap() trains.
            s.name: ControllerActor.options(  # type: ignore[attr-defined]
                name=f"controller-{s.name}", max_concurrency=4, **common
            ).remote(
                s.model_dump(mode="json"),
                paths,
                broker_dict,
                private_key_pem,
                code_version,
                training_selector=selectors[s.name],
                tenants_root=tenants,
            )
            for s in specs
            if s.retrain is not None
        }
        teachers = {
            # The teacher reads the samples: it runs where training may (the policy's selector).
            s.name: TeacherActor.options(  # type: ignore[attr-defined]
                name=f"teacher-{s.name}",
                **(common | {"label_selector": selectors[s.name] or CLOUD_SELECTOR}),
            ).remote(s.model_dump(mode="json"), paths)
            for s in specs
            if s.label.source == "teacher"
        }
        head = cls(tenant, ingest, fleet, controllers, teachers)
        head.wait_ready(ready_timeout_s)
        return head

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every service answers; an unschedulable one is reported, not waited on."""
        refs = [a.stats.remote() for a in self.ingest] + [self.fleet.stats.remote()]
        refs += [c.status.remote() for c in self.controllers.values()]
        refs += [t.status.remote() for t in self.teachers.values()]
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
        calls += [t.stop.remote() for t in self.teachers.values()]
        calls += [a.stop.remote() for a in self.ingest] + [self.fleet.stop.remote()]
        ray.wait(calls, num_returns=len(calls), timeout=timeout_s + 10)
        for actor in [
            *self.controllers.values(),
            *self.teachers.values(),
            *self.ingest,
            self.fleet,
        ]:
            ray.kill(actor, no_restart=True)


def _load_policy(policy: str | Path | ResidencyPolicy | None) -> ResidencyPolicy | None:
    if policy is None or isinstance(policy, ResidencyPolicy):
        return policy
    return load_policy(policy)


def _policy_yaml(policy: ResidencyPolicy) -> str:
    """Return the policy as YAML text, the form the ingest replicas take it in."""
    import yaml

    return str(yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False))


def spec_digest(spec: PipelineSpec) -> str:
    """Return the sha256 of the spec's canonical JSON: which pipeline, exactly, was deployed."""
    return hashlib.sha256(canonical_json(spec.model_dump(mode="json")).encode()).hexdigest()


def known_nodes(tenant: str, paths: HeadPaths) -> dict[str, dict[str, str]]:
    """Return every node a placement could reach: the tenant's fleet and the Ray cluster's.

    Fleet nodes keep their names; Ray nodes are named ``ray:<node id prefix>``.
    """
    from cloud_head.fleet import FleetRegistry

    with FleetRegistry(tenant, paths.fleet_db(tenant)) as fleet:
        nodes = {n.node: n.labels for n in fleet.nodes() if n.status is not None}
    if ray.is_initialized():
        for node in ray.nodes():  # type: ignore[no-untyped-call]
            if node.get("Alive"):
                nodes[f"ray:{str(node.get('NodeID', ''))[:12]}"] = dict(node.get("Labels") or {})
    return nodes


def check_deploy(
    audit: AuditTrail,
    specs: list[PipelineSpec],
    policy: ResidencyPolicy | None,
    nodes: Mapping[str, Mapping[str, str]] | None,
    *,
    store_labels: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, str] | None]:
    """Check every pipeline against ``policy``; record the deploy or the refusal; return selectors.

    Each pipeline's decisions (allowed and refused) are recorded: a refusal as a
    ``policy_refusal`` record, written before ``PlacementError`` is raised; when every
    pipeline passes, one ``deploy`` record per pipeline with its spec digest, placement and
    decisions.  Returns, per pipeline, the training selector derived from the policy (None:
    no policy, the spec's ``retrain.where`` applies).

    Raises:
        PlacementError: a stage or the training job would put data where the policy forbids.
        AuditWriteError: a record could not be written.
    """
    planned: list[tuple[PipelineSpec, list[Decision], dict[str, str] | None]] = []
    for spec in specs:
        decisions: list[Decision] = []
        selector: dict[str, str] | None = None
        if policy is not None:
            decisions = pipeline_decisions(policy, spec, nodes, store_labels=store_labels)
            refused = next((d for d in decisions if not d.allowed), None)
            if refused is None and spec.retrain is not None:
                sources = [lb for lb in (nodes or {}).values() if spec.edge.where.matches(lb)]
                try:
                    derived = derive_training_selector(
                        policy, spec, sources, store_labels=store_labels
                    )
                except PlacementError as error:
                    refused = Decision(
                        allowed=False,
                        rule=error.rule or "retrain.where",
                        reason=str(error),
                        stage="training",
                        label=error.label,
                    )
                else:
                    selector = dict(derived.root)
                    decisions.append(
                        Decision(
                            allowed=True,
                            rule="retrain.where",
                            reason=f"the training job runs with selector {derived}",
                            stage="training",
                        )
                    )
            if refused is not None:
                audit.record(
                    AuditAction.POLICY_REFUSAL,
                    spec.name,
                    {
                        "spec_digest": spec_digest(spec),
                        "refused": refused.to_record(),
                        "decisions": [d.to_record() for d in decisions],
                        "known_nodes": sorted(nodes or {}),
                        "store_labels": None if store_labels is None else dict(store_labels),
                    },
                )
                refused.raise_if_refused()
        planned.append((spec, decisions, selector))
    for spec, decisions, selector in planned:
        audit.record(
            AuditAction.DEPLOY,
            spec.name,
            {
                "spec_digest": spec_digest(spec),
                "data_class": spec.data_class.value,
                "placement": {
                    "edge": dict(spec.edge.where.root),
                    "training": selector
                    if selector is not None
                    else (None if spec.retrain is None else dict(spec.retrain.where.root)),
                },
                "policy": "none: no residency check" if policy is None else "checked",
                "decisions": [d.to_record() for d in decisions],
                "known_nodes": sorted(nodes or {}),
                "store_labels": None if store_labels is None else dict(store_labels),
                **dict(details or {}),
            },
        )
    return {spec.name: selector for spec, _, selector in planned}
