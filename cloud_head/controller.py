"""The cloud side of one pipeline's loop: trigger, retrain, gate, register, roll out.

``PipelineController`` is protocol logic driven by ``tick()``; the Ray actor in
``cloud_head.services`` calls it on a timer. Training runs in a background thread so a tick
never blocks; every step leaves a record in ``status()`` and in the tenant's audit log, and a
failed step registers nothing. The trigger bookkeeping, the training records and the GPU-hours
used are kept in the controller's state store beside the desired-state book, with the rollout
state, so a controller built again on the same workdir carries on where the last one stopped.

The rooms: ``_retrain_trigger`` (when to retrain), ``_retrain`` (one run: data, quota, Ray
Train, gate, signed registration, audit records first), ``_training_data`` (the samples and
the gate's holdout, split by time per node), ``_training_cut`` (how far each node's stream a
version trained on, which the canary reads), ``_training_log`` (the runs, stored),
``rollout`` (what nodes run).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cloud_head._controller_context import ControllerContext, ControllerStores
from cloud_head._pipeline_state import TRAINING_RECORD, PipelineStateStore
from cloud_head._retrain import DEFAULT_RUN_ESTIMATE_S, Retrainer, TrainingStage
from cloud_head._retrain_trigger import RetrainTrigger
from cloud_head._training_data import (
    GATE_EDGE_PER_NODE,
    HOLDOUT_BLOCK_S,
    HOLDOUT_EVERY,
    is_holdout,
)
from cloud_head._training_log import TrainingLog, TrainingRecord
from cloud_head.desired_state import DesiredStateBook
from cloud_head.rollout import RolloutController, RolloutState
from cloud_head.settings import ControllerSettings
from cloud_head.signer import release_signer
from cloud_head.training import run_training
from continuum.errors import ContinuumError
from continuum.labels import LabelSelector
from continuum.residency import TrainingPlan

if TYPE_CHECKING:
    from cloud_head._controller_context import TrainFunction
    from cloud_head.artifacts import RetainedPublish
    from cloud_head.registry import ModelVersion
    from cloud_head.signer import ReleaseSigner
    from cloud_head.tenants import Quotas
    from continuum.residency import ResidencyPolicy
    from continuum.spec import PipelineSpec

__all__ = [
    "DEFAULT_RUN_ESTIMATE_S",
    "GATE_EDGE_PER_NODE",
    "HOLDOUT_BLOCK_S",
    "HOLDOUT_EVERY",
    "TRAINING_RECORD",
    "ControllerStores",
    "PipelineController",
    "TrainingRecord",
    "TrainingStage",
    "is_holdout",
]


class PipelineController:
    """Drive retraining and rollout of one pipeline from its spec."""

    def __init__(
        self,
        spec: PipelineSpec,
        stores: ControllerStores,
        *,
        publish: RetainedPublish,
        workdir: Path,
        signer: ReleaseSigner | None = None,
        private_key_pem: bytes | None = None,
        code_version: str,
        settings: ControllerSettings | None = None,
        clock: Callable[[], float] = time.time,
        quotas: Callable[[], Quotas | None] | None = None,
        training_selector: LabelSelector | Mapping[str, str] | None = None,
        train: TrainFunction | None = None,
        training_plan: TrainingPlan | Mapping[str, Any] | None = None,
        residency: ResidencyPolicy | None = None,
    ) -> None:
        """Build the controller of ``spec``'s loop and resume what its workdir holds.

        Args:
            stores: the tenant's registry, sample and label stores, fleet and audit trail.
            publish: sends desired state and artifacts retained at QoS 1 and waits for the
                broker (``cloud_head.artifacts.retained_publisher`` of a connected client).
            signer: the tenant's signer (a client of its ``SignerActor``): signs every
                registered model and desired state; the controller never holds the key.
            private_key_pem: instead of ``signer``, the release key itself (tests, tools): a
                local ``TenantSigner`` is made of it.
            workdir: this pipeline's own state (``HeadPaths.controller``).
            code_version: recorded with every registered model.
            settings: pacing (quota retry, serve timeout, artifact chunks); None: defaults.
            quotas: returns the tenant's quotas now (a registry read); None or a None
                result: unlimited.
            training_selector: where the Ray Train job may run, as derived from the
                residency policy at deploy; None: the spec's ``retrain.where``.
            train: runs one training; None: ``run_training`` on the connected Ray cluster.
                A pipeline that names a ``retrain.pool`` gets it wrapped in
                ``PooledTraining`` (pool choice, allocation time limits, moving a run whose
                Slurm allocation ended); ``train`` must then take ``run_name`` too.
            residency: the residency policy, to name the rule when it refuses an HPC
                allocation (None: the refusal names the training selector's term).
            training_plan: the residency policy's plan from deploy (or its record); a
                federated plan trains in rounds at the data's sites (``cloud_head.
                federated``) instead of ``train``. None: central.

        Raises:
            ContinuumError: the spec declares no retrain stage.
            ConfigError: not exactly one of ``signer`` and ``private_key_pem``.
        """
        if spec.retrain is None:
            raise ContinuumError(
                f"pipeline {spec.name!r} declares no retrain stage; nothing to control"
            )
        self.spec = spec
        self.settings = ControllerSettings() if settings is None else settings
        signer = release_signer(spec.tenant, signer, private_key_pem)
        self.context = ControllerContext(
            spec=spec,
            stores=stores,
            publish=publish,
            train=self._pooled(spec, run_training if train is None else train, residency, clock),
            signer=signer,
            code_version=code_version,
            workdir=workdir,
            training_selector=LabelSelector.parse(
                spec.retrain.where if training_selector is None else training_selector,
                field="retrain.where",
            ),
            settings=self.settings,
            clock=clock,
            quotas=quotas,
            training_plan=None
            if training_plan is None or isinstance(training_plan, TrainingPlan)
            else TrainingPlan.from_record(training_plan),
        )
        self.registry = stores.registry
        self.clock = clock
        self.book = DesiredStateBook(
            workdir / "desired.sqlite3", spec.tenant, publish, signer=signer
        )
        self.states = PipelineStateStore(self.book.path, spec.tenant, spec.name)
        self.rollout = RolloutController(
            spec,
            stores.registry,
            stores.fleet,
            self.book,
            chunk_size=self.settings.artifact_chunk_bytes,
            clock=clock,
            serve_timeout_s=self.settings.serve_timeout_s,
            audit=stores.audit,
            states=self.states,
        )
        self.trainings = TrainingLog(self.states, clock)
        self.retrainer = Retrainer(self.context, self.trainings, self.rollout)
        federated = self.retrainer.federated
        self.trigger = RetrainTrigger(
            self.context,
            self.rollout.eligible_nodes,
            site_counts=None
            if federated is None
            else lambda: sum(federated.labelled_counts().values()),
        )
        rerun = self.trainings.restore()
        if rerun is not None:  # a run the last controller did not finish: ask for it again
            self.trigger.request(rerun)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _pooled(
        self,
        spec: PipelineSpec,
        train: TrainFunction,
        residency: ResidencyPolicy | None,
        clock: Callable[[], float],
    ) -> TrainFunction:
        """Return ``train`` placed by ``retrain.pool`` (as is when the pipeline names none)."""
        from cloud_head._training_pool import PooledTraining, residency_rule

        if spec.retrain is None or spec.retrain.pool is None or isinstance(train, PooledTraining):
            return train  # no pool named, or placed already (a caller's own PooledTraining)

        def estimate_s() -> float:  # as the GPU-hours quota check estimates a run
            last = self.trainings.last_run_s()
            return DEFAULT_RUN_ESTIMATE_S if last is None else last

        return PooledTraining(
            spec,
            train=train,
            estimate_s=estimate_s,
            rule_of=None if residency is None else residency_rule(residency, spec),
            clock=clock,
        )

    @property
    def training_selector(self) -> LabelSelector:
        """Where this pipeline's Ray Train job may run."""
        return self.context.training_selector

    def close(self) -> None:
        """Close the controller's files (a running training is not waited for: ``wait_idle``)."""
        self.retrainer.close()
        self.states.close()
        self.book.close()

    def status(self) -> dict[str, Any]:
        """Return a JSON-able snapshot: training stage, records, rollout, versions."""
        current = self.registry.current(self.spec.tenant, self.spec.name)
        rollout = asdict(self.rollout.state)
        rollout["plan"] = self.rollout.plan()
        return {
            "pipeline": self.spec.name,
            "training": self.retrainer.stage,
            "trainings": self.trainings.records(),
            "current": None if current is None else current.version,
            "rollout": rollout,
            "labelled_samples": self.trigger.labelled,
            "trained_on": self.trainings.trained_on,
            "gpu_hours_used": self.trainings.gpu_hours_used,
            "training_selector": str(self.training_selector),
            "federated": self._federated_status(),
        }

    def _federated_status(self) -> dict[str, Any] | None:
        """Return the federated rounds' state (None: central): what the run waits for, and
        the rounds, clipped and excluded updates and skipped sites counted so far."""
        federated = self.retrainer.federated
        if federated is None:
            return None
        return {
            "sites": federated.sites,
            "quorum": federated.quorum(),
            "status": federated.status,
            **asdict(federated.counters),
        }

    def request_retrain(self, reason: str = "requested by hand", actor: str | None = None) -> None:
        """Ask for a retraining at the next tick (``continuum retrain``); ``actor`` asked."""
        self.trigger.request(reason, actor)

    def set_version(
        self,
        version: str,
        reason: str,
        *,
        actor: str | None = None,
        action: Literal["promote", "rollback"] = "promote",
    ) -> RolloutState:
        """Make a registered ``version`` current on every node (operator promote or rollback).

        Raises:
            NotFoundError: the version is not registered.
            AuditWriteError: the step could not be recorded, so it was not carried out.
        """
        chosen = self.registry.get(self.spec.tenant, self.spec.name, version)
        return self.rollout.rollback_to(chosen, reason, actor=actor, action=action)

    def bootstrap(self) -> ModelVersion:
        """Train, register and roll out the first model when the pipeline has none.

        Blocks until the first model is published; returns the current version.

        Raises:
            ContinuumError: the first run did not register a model (its outcome says why).
        """
        current = self.registry.current(self.spec.tenant, self.spec.name)
        if current is not None:
            self.rollout.ensure_current_everywhere()
            return current
        self.retrainer.run("first model of the pipeline")
        current = self.registry.current(self.spec.tenant, self.spec.name)
        if current is None:
            last = self.trainings.last()
            raise ContinuumError(
                f"the first model of {self.spec.name!r} was not registered: "
                f"{last.outcome if last else 'no training ran'}"
            )
        return current

    def tick(self) -> RolloutState:
        """Advance the rollout and start a retraining when its trigger fires.

        A rollout in progress holds retraining, a requested one too, until it ends: while a
        candidate runs on canary or ramp nodes, or waits for a node that can take its canary
        (a newer candidate would otherwise replace one that was never judged).
        """
        self.book.refresh_expiring()  # agents refuse expired desired states
        state = self.rollout.tick()
        with self._lock:
            busy = self._thread is not None and self._thread.is_alive()
        if busy or state.stage in ("canary", "waiting"):
            return state
        due = self.trigger.take(
            trained_on=self.trainings.trained_on,
            last_trained_at=self.trainings.last_trained_at,
            quota_refused_at=self.retrainer.quota_refused_at,
        )
        if due is not None:
            thread = threading.Thread(
                target=self.retrainer.run,
                args=(due.reason, due.actor),
                name=f"retrain-{self.spec.name}",
                daemon=True,
            )
            with self._lock:
                self._thread = thread
            thread.start()
        return state

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait for a running retraining to end; return whether it did within the bound."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()
