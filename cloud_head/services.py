"""One tenant's cloud head on Ray: check, record and start its services, and stop them.

``CloudHead.start`` is where the residency policy refuses a pipeline (DESIGN.md §6): it
checks every stage against the nodes it knows (the fleet's and the Ray cluster's) and the
store's labels, records the decisions (or the refusal, first) in the tenant's audit log and
starts nothing that was refused; the training job's selector is the one the policy derives.
The services are named, detached Ray actors in the tenant's namespace on the cloud tier
(``cloud_head._service_actors``), configured by the head's ``CloudSettings``.  The signer
starts first and stops last: it alone gets the tenant's signing key, signs for the
controllers and seals the audit log that every other service appends to unsigned.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from cloud_head._deploy_check import (
    check_deploy,
    check_deploy_plans,
    known_nodes,
    load_residency,
    policy_yaml,
    registered_models,
    spec_digest,
)
from cloud_head._service_actors import (
    ControllerActor,
    FleetActor,
    IngestActor,
    SignerActor,
    TeacherActor,
)
from cloud_head.audit import AuditLog, AuditTrail, default_actor
from cloud_head.paths import HeadPaths
from cloud_head.settings import CloudSettings
from continuum.errors import NotReadyError, OperationTimeoutError
from continuum.labels import TIER
from continuum.residency import ResidencyPolicy, TrainingPlan
from continuum.spec import PipelineSpec
from continuum.wire.mqtt import BrokerSettings

__all__ = [
    "CLOUD_SELECTOR",
    "CloudHead",
    "ControllerActor",
    "FleetActor",
    "HeadPaths",
    "IngestActor",
    "SignerActor",
    "TeacherActor",
    "check_deploy",
    "known_nodes",
    "spec_digest",
]

#: Cloud services run on the cloud tier only (DESIGN §6).
CLOUD_SELECTOR = {TIER: "cloud"}


@dataclass
class CloudHead:
    """Handles to one tenant's cloud services on Ray."""

    tenant: str
    ingest: list[Any]
    fleet: Any
    controllers: dict[str, Any]
    teachers: dict[str, Any] = field(default_factory=dict)
    #: The tenant's signer (``SignerActor``): the one holder of its signing key.
    signer: Any = None

    @classmethod
    def start(
        cls,
        settings: CloudSettings,
        specs: Sequence[PipelineSpec],
        *,
        signing_key_pem: bytes | None = None,
        policy: ResidencyPolicy | None = None,
        actor: str | None = None,
    ) -> CloudHead:
        """Check, record and start ``settings.tenant``'s services as named, detached actors.

        Args:
            settings: the head's settings: tenant, state root, broker, residency policy file,
                store labels, quotas, replicas and each service's pacing.
            signing_key_pem: the tenant's private key; None: ``settings.signing_key_file``.
                Only the signer service gets it (and this driver, which seals its deploy
                records with it).
            policy: a parsed residency policy, instead of ``settings.policy_file``. Every
                pipeline is checked against it and the known nodes, and its training job gets
                the selector the policy derives. Neither: no residency check (recorded).
            actor: who deploys, for the audit log (default ``user@host``).

        Raises:
            ConfigError: no tenant, root or signing key in the settings, a signing key
                other than the one the tenant registry pins for the tenant, or a service's
                password file in the registry cannot be read.
            SpecError: two pipelines name the same model (a model name is unique per
                tenant: artifact topics and signatures do not name the pipeline); nothing
                was recorded or started.
            PlacementError: the policy refuses a stage or the training job; the refusal is
                in the audit log first, and no service was started.
            NotFoundError: the tenant registry does not know the tenant.
            AuditWriteError: the deploy could not be recorded; no service was started.
        """
        from cloud_head.tenants import TenantRegistry, read_quotas
        from continuum.signing import public_pem_of

        tenant = settings.require_tenant()
        key = settings.signing_key() if signing_key_pem is None else signing_key_pem
        residency = load_residency(settings.policy_file) if policy is None else policy
        quota_root = settings.quota_root()
        if quota_root is not None:
            read_quotas(quota_root, tenant)  # a registry that does not know the tenant is an error
            # `audit verify` checks the heads these services sign against the registry's pin.
            TenantRegistry(quota_root).pin_public_key(tenant, public_pem_of(key))
        settings.paths().create_private()  # owner-only folders before any service writes
        # The actors read the registry the deploy resolved, whatever their own file system shows.
        settings = settings.model_copy(update={"tenants_root": quota_root})
        _check_service_credentials(settings)  # before anything is recorded or started
        plans = _record_deploy(settings, specs, key, residency, actor)
        head = cls._launch(settings, specs, key, residency, plans)
        head.wait_ready(settings.ready_timeout_s)
        return head

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
        """Start the services as ``start`` does, with settings made of these arguments.

        The spelling from before ``CloudSettings``, kept for its callers (the demo): the other
        settings come from ``CONTINUUM_CLOUD_*``. ``policy`` may be a YAML file or a parsed
        one; ``tenants_root`` None: ``paths.tenants`` when it holds a registry, else none.

        Raises:
            ConfigError: an argument is not a valid setting.
            SpecError, PlacementError, NotFoundError, AuditWriteError: as ``start``.
        """
        settings = CloudSettings.load(
            tenant=tenant,
            root=paths.root,
            registry_url=paths.registry_url,
            broker=broker,
            code_version=code_version,
            ingest_replicas=ingest_replicas,
            ready_timeout_s=ready_timeout_s,
            store_labels=None if store_labels is None else dict(store_labels),
            tenants_root=tenants_root,
        )
        return cls.start(
            settings,
            specs,
            signing_key_pem=private_key_pem,
            policy=load_residency(policy),
            actor=actor,
        )

    @classmethod
    def _launch(
        cls,
        settings: CloudSettings,
        specs: Sequence[PipelineSpec],
        key: bytes,
        residency: ResidencyPolicy | None,
        plans: Mapping[str, TrainingPlan | None],
    ) -> CloudHead:
        """Start (or find, when already running) every service's actor; do not wait for them."""
        tenant = settings.require_tenant()
        common: dict[str, Any] = {
            "namespace": tenant,
            "lifetime": "detached",
            "label_selector": CLOUD_SELECTOR,
            "get_if_exists": True,
        }
        dumped = [s.model_dump(mode="json") for s in specs]
        text = None if residency is None else policy_yaml(residency)
        # First: the controllers ask it for the key's fingerprint as they start.
        signer = SignerActor.options(name="signer", **common).remote(  # type: ignore[attr-defined]
            settings, signing_key=key
        )
        _wait_for(tenant, "signer", signer, settings.ready_timeout_s)
        ingest = [
            IngestActor.options(name=f"ingest-{i}", **common).remote(  # type: ignore[attr-defined]
                settings, dumped, i, policy_yaml=text
            )
            for i in range(settings.ingest_replicas)
        ]
        # The fleet holds the tenant's control identity; the controllers publish through it.
        fleet = FleetActor.options(name="fleet", **common).remote(settings)  # type: ignore[attr-defined]
        _wait_for(tenant, "fleet", fleet, settings.ready_timeout_s)
        controllers = {
            # Threaded (max_concurrency): status() answers while bootstrap() trains.
            s.name: ControllerActor.options(  # type: ignore[attr-defined]
                name=f"controller-{s.name}", max_concurrency=4, **common
            ).remote(
                settings,
                s.model_dump(mode="json"),
                signer=signer,
                fleet=fleet,
                training_selector=_selector(plans[s.name]),
                # Federated: rounds at the data's sites instead of one central job.
                training_plan=_plan_record(plans[s.name]),
                policy_yaml=text,
            )
            for s in specs
            if s.retrain is not None
        }
        teachers = {
            # The teacher reads the samples: it runs where training may (the policy's selector).
            s.name: TeacherActor.options(  # type: ignore[attr-defined]
                name=f"teacher-{s.name}",
                **(common | {"label_selector": _selector(plans[s.name]) or CLOUD_SELECTOR}),
            ).remote(settings, s.model_dump(mode="json"))
            for s in specs
            if s.label.source == "teacher"
        }
        return cls(tenant, ingest, fleet, controllers, teachers, signer)

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every service answers; an unschedulable one is reported, not waited on."""
        refs = [a.stats.remote() for a in self.ingest] + [self.fleet.stats.remote()]
        refs += [] if self.signer is None else [self.signer.stats.remote()]
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
        if self.signer is not None:  # last: its final seal covers what the others appended
            ray.wait([self.signer.stop.remote()], timeout=timeout_s)
        for actor in [
            *self.controllers.values(),
            *self.teachers.values(),
            *self.ingest,
            self.fleet,
            *([] if self.signer is None else [self.signer]),
        ]:
            ray.kill(actor, no_restart=True)


def _wait_for(tenant: str, name: str, service: Any, timeout_s: float) -> None:
    """Wait until the ``name`` service answers: the controllers need the signer and the fleet
    (whose connection they publish through) as they start."""
    try:
        ray.get(service.stats.remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as error:
        raise OperationTimeoutError(
            f"the {name} service of tenant {tenant!r} did not start within {timeout_s:g} s; "
            f"check that a node labelled {TIER}=cloud has room (`ray status`)"
        ) from error
    except ray.exceptions.RayError as error:
        raise NotReadyError(
            f"the {name} service of tenant {tenant!r} failed to start: {error}"
        ) from error


def _check_service_credentials(settings: CloudSettings) -> None:
    """Read every service identity's password now, so a missing one fails the deploy here
    (``ConfigError`` naming the file) rather than inside an actor."""
    settings.service_broker("control")
    for replica in range(settings.ingest_replicas):
        settings.service_broker("ingest", replica)


def _plan_record(plan: TrainingPlan | None) -> dict[str, Any] | None:
    """Return the plan as the controller actor takes it (it crosses Ray as data)."""
    return None if plan is None else plan.to_record()


def _selector(plan: TrainingPlan | None) -> dict[str, str] | None:
    """Return a central plan's training selector (None: no policy, or federated)."""
    return None if plan is None or plan.selector is None else dict(plan.selector.root)


def _record_deploy(
    settings: CloudSettings,
    specs: Sequence[PipelineSpec],
    key: bytes,
    residency: ResidencyPolicy | None,
    actor: str | None,
) -> dict[str, TrainingPlan | None]:
    """Check the pipelines and record the deploy (or the refusal) in the tenant's audit log."""
    tenant, paths = settings.require_tenant(), settings.paths()
    with AuditLog(paths.audit, signing_keys={tenant: key}) as log:
        return check_deploy_plans(
            AuditTrail(log, tenant, actor or default_actor()),
            specs,
            residency,
            None if residency is None else known_nodes(tenant, paths),
            store_labels=settings.store_labels,
            registered=registered_models(tenant, paths),
            details={
                "code_version": settings.code_version,
                "namespace": tenant,
                "services_selector": CLOUD_SELECTOR,
                "ingest_replicas": settings.ingest_replicas,
                "quotas": "tenant registry" if settings.tenants_root is not None else "unlimited",
            },
        )
