"""The cloud head's services as Ray actors: the signer, ingest, fleet, a controller and a
teacher per pipeline.

Each actor wraps protocol logic that lives in its own module (signer, ingest, fleet,
controller, teacher) and adds what running on Ray means: a lifetime independent of the
driver, a thread that ticks it, and metrics exported with ``ray.util.metrics``. Every actor
takes the head's ``CloudSettings`` (they cross Ray pickled, with the values the driver read)
and the few things that are not settings: the pipeline specs, the residency policy as text.
Only the signer gets the tenant's signing key; the controllers get a handle to it
(``RemoteSigner``), ingest and the fleet nothing.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from cloud_head._actor_calls import call_actor
from cloud_head.audit import AuditAction, AuditLog, AuditTrail, service_actor
from cloud_head.metrics import (
    BrokerConnectionMetrics,
    ControllerMetrics,
    FleetMetrics,
    IngestMetrics,
    MetricsExporter,
)
from continuum._retry import FailureLog
from continuum.errors import NotFoundError, NotReadyError, OperationTimeoutError
from continuum.residency import ResidencyPolicy
from continuum.spec import PipelineSpec

if TYPE_CHECKING:
    from cloud_head.artifacts import RetainedPublish
    from cloud_head.settings import CloudSettings
    from cloud_head.tenants import Quotas
    from continuum.wire.messages import DesiredState

__all__ = [
    "ControllerActor",
    "FleetActor",
    "IngestActor",
    "SignerActor",
    "TeacherActor",
    "relayed_publisher",
]

log = logging.getLogger("cloud_head.services")


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SignerActor:
    """The tenant's signer (``cloud_head.signer.TenantSigner``): the one service holding its
    release key.  It signs artifacts and desired states for the controllers, and seals the
    tenant's audit log every ``settings.seal_interval_s`` and once more on ``stop``.
    """

    def __init__(self, settings: CloudSettings, *, signing_key: bytes) -> None:
        from cloud_head.signer import TenantSigner

        logging.basicConfig(level=logging.INFO)
        tenant = settings.require_tenant()
        self._signer = TenantSigner(tenant, signing_key)
        self._log = AuditLog(settings.paths().audit)
        self._interval_s = settings.seal_interval_s
        self._sealed_seq: int | None = None
        self._last_error: str | None = None
        self._failures = FailureLog(f"sealing the audit log of tenant {tenant!r}", log)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="signer-seal", daemon=True)
        self._thread.start()

    def sign_artifact(self, model: str, version: str, sha256: str) -> str:
        """Return the release key's signature of one model artifact (``TenantSigner``)."""
        return self._signer.sign_artifact(model, version, sha256)

    def sign_desired_state(self, state: DesiredState) -> str:
        """Return the release key's signature of one of the tenant's desired states."""
        return self._signer.sign_desired_state(state)

    def key_fingerprint(self) -> str:
        """Return the release key's fingerprint."""
        return self._signer.key_fingerprint()

    def seal(self) -> int | None:
        """Seal the audit log now; return the last record sealed (None: nothing yet)."""
        from cloud_head.audit import AuditTamperedError, AuditWriteError

        try:
            seal = self._signer.seal(self._log)
        except (AuditTamperedError, AuditWriteError, NotFoundError) as error:
            self._last_error = str(error)
            self._failures.failed(self._last_error)
            return self._sealed_seq
        self._failures.recovered()
        self._last_error = None
        if seal is not None:
            self._sealed_seq = seal.seq
        return self._sealed_seq

    def stats(self) -> dict[str, Any]:
        """Return the last record sealed and why the last seal failed, if it did."""
        return {"sealed_seq": self._sealed_seq, "last_error": self._last_error}

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the timer and seal once more: the other services have stopped appending."""
        self._stop.set()
        self._thread.join(timeout_s)
        self.seal()
        self._log.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.seal()


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class IngestActor:
    """One ingest replica: shared subscription, de-duplication, durable store writes.

    ``policy_yaml`` (the residency policy; it crosses Ray as text) makes the replica enforce
    it on every batch, with ``settings.store_labels`` saying where the store is and the fleet
    registry saying where each node is; the tenant's audit log receives its refusals and a
    periodic summary of what it stored, unsigned (it parses untrusted payloads, so it holds
    no key: the signer seals them); ``settings.tenants_root`` (the tenant registry) makes it enforce
    the tenant's ``samples_per_day`` quota.
    """

    def __init__(
        self,
        settings: CloudSettings,
        specs: list[dict[str, Any]],
        replica: int,
        *,
        policy_yaml: str | None = None,
    ) -> None:
        from cloud_head.fleet import FleetRegistry
        from cloud_head.ingest import IngestService, IngestWorker
        from cloud_head.labelling import LabelStore
        from cloud_head.store import Compactor, SampleStore
        from cloud_head.tenants import read_quotas

        logging.basicConfig(level=logging.INFO)
        tenant, paths = settings.require_tenant(), settings.paths()
        pipelines = [PipelineSpec.model_validate(s) for s in specs]
        paths.state.mkdir(parents=True, exist_ok=True)
        residency = None if policy_yaml is None else ResidencyPolicy.from_yaml(policy_yaml)
        quota_root = settings.tenants_root
        store = SampleStore(paths.store)
        self._service = IngestService(
            tenant,
            pipelines,
            store,
            LabelStore(paths.labels_db),
            paths.seen_db,
            policy=residency,
            store_labels=settings.store_labels,
            fleet=FleetRegistry(tenant, paths.fleet_db(tenant)) if residency is not None else None,
            audit_dir=paths.audit,
            quotas=None if quota_root is None else read_quotas(quota_root, tenant),
        )
        # Its own identity (ingest.REPLICA@TENANT): reads samples and feedback, writes receipts.
        # Its share group is named by its secret (IngestWorker): no other identity joins it.
        broker, identity = settings.service_broker("ingest", replica)
        self._worker = IngestWorker(self._service, broker, client_id=identity)
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
    in the tenant's audit log (unsigned: the fleet parses untrusted payloads and holds no
    key; the signer seals it) before anything is deleted.
    """

    def __init__(self, settings: CloudSettings) -> None:
        from cloud_head.fleet import FleetRegistry, FleetWorker

        logging.basicConfig(level=logging.INFO)
        tenant, paths = settings.require_tenant(), settings.paths()
        self._tenants_root = settings.tenants_root
        self._registry = FleetRegistry(
            tenant, paths.fleet_db(tenant), quotas=quota_reader(settings.tenants_root, tenant)
        )
        # The tenant's control identity (control@TENANT): the one connection that reads the
        # fleet's topics and writes desired state and artifacts, for the controllers too.
        broker, identity = settings.service_broker("control")
        self._worker = FleetWorker(self._registry, broker, client_id=identity)
        self._worker.start()
        self._audit = AuditTrail(AuditLog(paths.audit), tenant, service_actor("fleet"))
        metrics = FleetMetrics(tenant)
        connection = BrokerConnectionMetrics(tenant, "fleet")

        def export() -> None:
            stats = self._stats()
            metrics.update(
                stats["nodes"], stats["online"], behind=stats["behind"], lag_s=stats["lag_s"]
            )
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

    def publish(self, topic: str, payload: bytes, timeout_s: float = 30.0) -> None:
        """Publish ``payload`` retained on ``topic`` (QoS 1) and return once the broker has it.

        The controllers publish desired state and artifacts through here: a broker identity
        is one connection (the broker binds the client id to it), so the tenant's control
        identity is held by this actor alone.

        Raises:
            ProtocolError: ``topic`` is not a desired-state or artifact topic of the tenant.
            NotReadyError: not connected to the broker.
            OperationTimeoutError: the broker did not acknowledge within ``timeout_s``.
        """
        self._worker.publish(topic, payload, timeout_s=timeout_s)

    def remove(
        self, node: str, reason: str, credential: str | None = None, origin: str | None = None
    ) -> dict[str, Any]:
        """Decommission ``node``: record it, delete it and its telemetry, clear its retained topics.

        ``credential`` is the tenant's operator credential, checked here
        (``authorize_operator``); the tenant it proves, as seen from ``origin``
        (``user@host``), is recorded as who asked.  A removed node that sends a status again
        is admitted again as a new node.

        Raises:
            AccessDeniedError: the head has a tenant registry and the credential is not the
                tenant's.
            NotFoundError: the fleet has no such node.
            AuditWriteError: the removal could not be recorded; nothing was removed.
        """
        from cloud_head._tenant_auth import authorize_operator
        from cloud_head.fleet import removal_record
        from continuum.errors import NotFoundError

        actor = authorize_operator(self._tenants_root, self._audit.tenant, credential, origin)

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
    """One pipeline's loop on the cloud: trigger, retrain on Ray Train, gate, register, roll out.

    It ticks every ``settings.controller.tick_interval_s`` once ``bootstrap`` has returned;
    ``training_selector`` is the one the residency policy derived at deploy (``training_plan``
    its whole plan: federated rounds at the data's sites, or central); ``policy_yaml``
    the policy itself, which names the rule when it refuses a Slurm allocation.
    """

    def __init__(
        self,
        settings: CloudSettings,
        spec: dict[str, Any],
        *,
        signer: Any,
        fleet: Any,
        training_selector: dict[str, str] | None = None,
        policy_yaml: str | None = None,
        training_plan: dict[str, Any] | None = None,
    ) -> None:
        from cloud_head.controller import ControllerStores, PipelineController
        from cloud_head.fleet import FleetRegistry
        from cloud_head.labelling import LabelStore
        from cloud_head.signer import RemoteSigner
        from cloud_head.store import SampleStore

        logging.basicConfig(level=logging.INFO)
        pipeline = PipelineSpec.model_validate(spec)
        paths = settings.paths()
        workdir = paths.controller(pipeline.tenant, pipeline.name)
        workdir.mkdir(parents=True, exist_ok=True)
        name = f"controller-{pipeline.name}"
        self._audit = AuditLog(paths.audit)  # unsigned: the signer seals what it appends
        stores = ControllerStores(
            registry=paths.open_registry(),
            store=SampleStore(paths.store),
            labels=LabelStore(paths.labels_db),
            fleet=FleetRegistry(pipeline.tenant, paths.fleet_db(pipeline.tenant)),
            audit=AuditTrail(self._audit, pipeline.tenant, service_actor(name)),
        )
        self._controller = PipelineController(
            pipeline,
            stores,
            publish=relayed_publisher(fleet),
            signer=RemoteSigner(signer),
            workdir=workdir,
            code_version=settings.code_version,
            settings=settings.controller,
            quotas=quota_reader(settings.tenants_root, pipeline.tenant),
            training_selector=training_selector,
            # Names the residency rule when it refuses an HPC allocation (retrain.pool).
            residency=None if policy_yaml is None else ResidencyPolicy.from_yaml(policy_yaml),
            training_plan=training_plan,
        )
        self._tick_s = settings.controller.tick_interval_s
        self._tenants_root = settings.tenants_root
        self._tenant = pipeline.tenant
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._failures = FailureLog(f"the {name} tick", log)
        self._last_error: str | None = None
        metrics = ControllerMetrics(pipeline.tenant, pipeline.name)
        self._pump = MetricsExporter(name, lambda: metrics.update(self._controller.status()))

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
            except Exception as error:  # logged once when it starts failing; keeps ticking
                self._last_error = f"{type(error).__name__}: {error}"
                self._failures.failed(self._last_error)
                log.debug("the controller tick failed", exc_info=True)
            else:
                self._failures.recovered()
                self._last_error = None

    def status(self) -> dict[str, Any]:
        """Return the controller's snapshot (training, rollout, versions)."""
        return self._controller.status() | {"last_error": self._last_error}

    def set_version(
        self,
        version: str,
        reason: str,
        credential: str | None = None,
        origin: str | None = None,
        action: str = "promote",
    ) -> dict[str, Any]:
        """Make ``version`` current everywhere (operator promote or rollback).

        ``credential``: the tenant's operator credential, checked here, not only by the CLI
        (``authorize_operator``); ``origin``: the caller's ``user@host``, for the record.

        Raises:
            AccessDeniedError: the head has a tenant registry and the credential is not the
                tenant's.
        """
        from dataclasses import asdict

        from cloud_head._tenant_auth import authorize_operator

        actor = authorize_operator(self._tenants_root, self._tenant, credential, origin)
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

    def request_retrain(
        self, reason: str, credential: str | None = None, origin: str | None = None
    ) -> None:
        """Retrain at the next tick, once ``credential`` proved the tenant (as ``set_version``)."""
        from cloud_head._tenant_auth import authorize_operator

        actor = authorize_operator(self._tenants_root, self._tenant, credential, origin)
        self._controller.request_retrain(reason, actor)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop ticking and wait for a running training to end, within a bound."""
        self._stop.set()
        self._pump.stop()
        self._controller.wait_idle(timeout_s)
        self._controller.close()
        self._audit.close()


def relayed_publisher(fleet: Any, *, timeout_s: float = 30.0) -> RetainedPublish:
    """Return a ``RetainedPublish`` that sends through the tenant's fleet actor ``fleet``.

    A controller has no broker connection of its own: two connections of the control
    identity would take each other's session over (the broker binds client ids to
    identities), so the fleet actor holds it and relays (``FleetActor.publish``).
    """

    def publish(topic: str, payload: bytes) -> None:
        call_actor(
            fleet,
            "publish",
            topic,
            payload,
            timeout_s,
            timeout_s=timeout_s + 10,
            who="the fleet actor",
            role=f"publishes {topic} for the controller",
        )

    return publish


def quota_reader(tenants_root: Path | None, tenant: str) -> Callable[[], Quotas] | None:
    """Return a function reading ``tenant``'s quotas now, or None (unlimited) without a registry."""
    if tenants_root is None:
        return None
    from cloud_head.tenants import read_quotas

    return functools.partial(read_quotas, tenants_root, tenant)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class TeacherActor:
    """A pipeline's cloud teacher (label source ``teacher``): labels new samples every
    ``settings.teacher.interval_s`` with the current version of the registered teacher model.

    Until the teacher model is registered it waits and says so in ``status()``; a newer
    current version is picked up at the next pass.
    """

    def __init__(self, settings: CloudSettings, spec: dict[str, Any]) -> None:
        from cloud_head.labelling import LabelStore
        from cloud_head.store import SampleStore

        logging.basicConfig(level=logging.INFO)
        paths = settings.paths()
        self._spec = PipelineSpec.model_validate(spec)
        self._registry = paths.open_registry()
        self._samples = SampleStore(paths.store)
        self._labels = LabelStore(paths.labels_db)
        self._interval_s = settings.teacher.interval_s
        self._accept = settings.teacher.accept_confidence
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
        self._failures = FailureLog(f"the teacher pass of {self._spec.name}", log)
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
                self._status["state"] = f"failed: {error!r}"
                self._failures.failed(repr(error))
                log.debug("the teacher pass failed", exc_info=True)
            else:
                self._failures.recovered()
