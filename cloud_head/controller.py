"""The cloud side of one pipeline's loop: trigger, retrain, gate, register, roll out.

``PipelineController`` is protocol logic driven by ``tick()``; the Ray actor in
``cloud_head.services`` calls it on a timer. Training runs in a background thread so a tick
never blocks; every step leaves a record in ``status()`` and in the tenant's audit log, and a
failed step registers nothing. The trigger bookkeeping, the training records and the GPU-hours
used are kept in the desired-state book's file with the rollout state, so a controller built
again on the same workdir carries on where the last one stopped.

Audit records are written *before* the step they record takes effect (the run starts, the
model is registered, desired state is published): when a record cannot be written
(``AuditWriteError``) the step does not happen and the run is recorded as failed.  A run's
records before registration name it ``<pipeline>/run-<ms>``; from registration on they name
the version (``model_subject``), and the version's lineage names the run so ``continuum audit
export`` finds both.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cloud_head.artifacts import DEFAULT_CHUNK_BYTES, publish_artifact
from cloud_head.audit import AuditAction, AuditTrail, model_subject
from cloud_head.gate import GateResult, evaluate, gate
from cloud_head.labelling import LabelStore, labelled, to_xy
from cloud_head.rollout import DesiredStateBook, RolloutController, RolloutState
from cloud_head.tenants import QuotaExceededError, Quotas
from cloud_head.training import run_training
from continuum.errors import ContinuumError
from continuum.labels import LabelSelector
from continuum.signing import key_fingerprint, public_pem_of, sign_artifact
from continuum.spec import resolve_ref

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from cloud_head.fleet import FleetRegistry
    from cloud_head.registry import ModelRegistry, ModelVersion
    from cloud_head.store import SampleStore
    from continuum.spec import PipelineSpec

log = logging.getLogger(__name__)

TrainingStage = Literal["idle", "training", "gating", "registering", "failed"]

#: One labelled edge sample in this many is held out of training for the gate.
HOLDOUT_EVERY = 5

#: The ``DesiredStateBook`` record kind that holds the trigger bookkeeping and training records.
TRAINING_RECORD = "training"

#: The run length assumed for a GPU-hours quota check before the pipeline's first timed run.
DEFAULT_RUN_ESTIMATE_S = 60.0


@dataclass(frozen=True)
class TrainingRecord:
    """One retraining attempt and how it ended."""

    started_at: float
    reason: str
    parent: str | None
    edge_samples: int
    finished_at: float | None = None
    outcome: str = "running"
    version: str | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    run: str | None = None
    requested_by: str | None = None
    run_s: float | None = None
    gpu_hours: float = 0.0


def _usable_labels(
    x: np.ndarray, y: np.ndarray, ids: list[str], current: ModelVersion | None
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Leave out samples whose label is not a class of the pipeline's model; count them.

    Labels arrive from edge feedback and stored samples, where a faulty or hostile node can
    put any integer: one such label would fail every retraining from then on. The model's
    output width bounds the classes (without a model yet, only negatives are left out).
    """
    classes = None if current is None else current.classes()
    ok = (y >= 0) & (y < classes) if classes is not None else y >= 0
    dropped = int((~ok).sum())
    if dropped:
        log.warning(
            "left %d sample(s) out of training: their label is not a class of the model (0..%s)",
            dropped,
            "?" if classes is None else classes - 1,
        )
        x, y = x[ok], y[ok]
        ids = [i for i, keep in zip(ids, ok.tolist(), strict=True) if keep]
    return x, y, ids, dropped


def is_holdout(sample_id: str) -> bool:
    """Return whether a labelled edge sample belongs to the gate's holdout, never to training.

    A stable hash keeps the split the same across retrainings, so no sample moves from
    the holdout into training later.
    """
    digest = hashlib.blake2b(sample_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HOLDOUT_EVERY == 0


class PipelineController:
    """Drive retraining and rollout of one pipeline from its spec."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        workdir: Path,
        registry: ModelRegistry,
        store: SampleStore,
        labels: LabelStore,
        fleet: FleetRegistry,
        client: mqtt.Client,
        private_key_pem: bytes,
        code_version: str,
        clock: Callable[[], float] = time.time,
        chunk_size: int = DEFAULT_CHUNK_BYTES,
        audit: AuditTrail | None = None,
        quotas: Callable[[], Quotas | None] | None = None,
        training_selector: LabelSelector | Mapping[str, str] | None = None,
        quota_retry_s: float = 300.0,
    ) -> None:
        """Build the controller of ``spec``'s loop.

        Args:
            audit: the tenant's audit trail; every training, gate, registration, signature
                and rollout step is recorded there first (None: nothing is recorded).
            quotas: returns the tenant's quotas now (a registry read); None or a None
                result: unlimited.
            training_selector: where the Ray Train job may run, as derived from the
                residency policy at deploy; None: the spec's ``retrain.where``.
            quota_retry_s: after a retrain is refused for its GPU-hours quota, the trigger
                is not tried again for this long (a ``continuum retrain`` still is).
        """
        if spec.retrain is None:
            raise ContinuumError(
                f"pipeline {spec.name!r} declares no retrain stage; nothing to control"
            )
        self.spec = spec
        self.workdir = workdir
        self.registry = registry
        self.store = store
        self.labels = labels
        self.fleet = fleet
        self.client = client
        self.code_version = code_version
        self.clock = clock
        self.audit = audit
        self._quotas = quotas
        self._quota_retry_s = quota_retry_s
        self._quota_refused_at: float | None = None
        self.training_selector = LabelSelector.parse(
            spec.retrain.where if training_selector is None else training_selector,
            field="retrain.where",
        )
        self._private_key = private_key_pem
        self._key_fingerprint = key_fingerprint(public_pem_of(private_key_pem))
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stage: TrainingStage = "idle"
        self._records: list[TrainingRecord] = []
        self._trained_on = 0
        self._last_trained_at = clock()
        self._manual_reason: str | None = None
        self._manual_actor: str | None = None
        self._gpu_hours_used = 0.0
        self._labelled = 0
        self.book = DesiredStateBook(
            workdir / "desired.sqlite3", spec.tenant, self._publish_retained
        )
        self._restore()
        self.rollout = RolloutController(
            spec, registry, fleet, self.book, chunk_size=chunk_size, clock=clock, audit=audit
        )
        self.chunk_size = chunk_size

    # -- persistence -----------------------------------------------------------------------

    def _restore(self) -> None:
        """Load the bookkeeping the last controller of this workdir stored, if any.

        A training that was running when that controller died registered nothing; it is
        recorded as interrupted and asked for again at the next tick.
        """
        saved = self.book.load_record(self.spec.name, TRAINING_RECORD)
        if saved is None:
            return
        self._trained_on = int(saved["trained_on"])
        self._last_trained_at = float(saved["last_trained_at"])
        self._gpu_hours_used = float(saved.get("gpu_hours_used", 0.0))
        self._records = [TrainingRecord(**r) for r in saved.get("records", [])]
        for i, record in enumerate(self._records):
            if record.outcome == "running":
                self._records[i] = replace(
                    record,
                    finished_at=self.clock(),
                    outcome="interrupted: the cloud head restarted during the run",
                )
                self._manual_reason = f"rerun after a restart interrupted: {record.reason}"
        self._save()

    def _save(self) -> None:
        """Store the trigger bookkeeping and training records (call with changes made)."""
        with self._lock:
            body = {
                "trained_on": self._trained_on,
                "last_trained_at": self._last_trained_at,
                "gpu_hours_used": self._gpu_hours_used,
                "records": [asdict(r) for r in self._records],
            }
        self.book.save_record(self.spec.name, TRAINING_RECORD, body)

    # -- public ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Return a JSON-able snapshot: training stage, records, rollout, versions."""
        with self._lock:
            records = [asdict(r) for r in self._records]
            stage = self._stage
            gpu_hours = self._gpu_hours_used
        current = self.registry.current(self.spec.tenant, self.spec.name)
        rollout = asdict(self.rollout.state)
        rollout["plan"] = self.rollout.plan()
        return {
            "pipeline": self.spec.name,
            "training": stage,
            "trainings": records,
            "current": None if current is None else current.version,
            "rollout": rollout,
            "labelled_samples": self._labelled,
            "trained_on": self._trained_on,
            "gpu_hours_used": gpu_hours,
            "training_selector": str(self.training_selector),
        }

    def request_retrain(self, reason: str = "requested by hand", actor: str | None = None) -> None:
        """Ask for a retraining at the next tick (``continuum retrain``); ``actor`` asked."""
        with self._lock:
            self._manual_reason = reason
            self._manual_actor = actor

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
        """
        current = self.registry.current(self.spec.tenant, self.spec.name)
        if current is not None:
            self.rollout.ensure_current_everywhere()
            return current
        self._retrain("first model of the pipeline")
        current = self.registry.current(self.spec.tenant, self.spec.name)
        if current is None:
            last = self._records[-1] if self._records else None
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
        state = self.rollout.tick()
        with self._lock:
            busy = self._thread is not None and self._thread.is_alive()
        if busy or state.stage in ("canary", "waiting"):
            return state
        reason = self._trigger_reason()
        if reason is not None:
            with self._lock:
                actor = self._manual_actor
                manual = self._manual_reason is not None
            refused_at = self._quota_refused_at
            if (
                not manual
                and refused_at is not None
                and self.clock() - refused_at < self._quota_retry_s
            ):
                return state  # refused for its quota a moment ago: do not record it every tick
            thread = threading.Thread(
                target=self._retrain,
                args=(reason, actor),
                name=f"retrain-{self.spec.name}",
                daemon=True,
            )
            with self._lock:
                self._thread = thread
                self._manual_reason = None
                self._manual_actor = None
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

    # -- triggers ----------------------------------------------------------------------------

    def _labelled_count(self) -> int:
        """Count the pipeline's labelled samples (reads the store; ticks cache it)."""
        count = int(labelled(self.store, self.labels, self.spec.tenant, self.spec.name).num_rows)
        self._labelled = count
        return count

    def _trigger_reason(self) -> str | None:
        assert self.spec.retrain is not None
        trigger = self.spec.retrain.trigger
        with self._lock:
            if self._manual_reason is not None:
                return self._manual_reason
        if trigger.new_samples is not None:
            new = self._labelled_count() - self._trained_on
            if new >= trigger.new_samples:
                return f"{new} new labelled samples (trigger: {trigger.new_samples})"
        if trigger.drift_score is not None:
            for node in self.rollout.eligible_nodes():
                last = self.fleet.last_telemetry(node, self.spec.name)
                if (
                    last is not None
                    and last.ts > self._last_trained_at
                    and last.drift_score > trigger.drift_score
                ):
                    return f"drift {last.drift_score:.2f} on {node} > {trigger.drift_score:g}"
        if trigger.every_s is not None and self.clock() - self._last_trained_at >= trigger.every_s:
            return f"schedule: every {trigger.every_s:g} s"
        return None

    # -- the retraining step ---------------------------------------------------------------

    def _set_stage(self, stage: TrainingStage) -> None:
        with self._lock:
            self._stage = stage

    def _record(
        self,
        action: AuditAction,
        subject: str,
        details: Mapping[str, Any],
        *,
        actor: str | None = None,
    ) -> None:
        """Append to the tenant's audit log first; raises ``AuditWriteError`` if it cannot."""
        if self.audit is not None:
            self.audit.record(action, subject, details, actor=actor)

    def _gpu_estimate_h(self) -> float:
        """Return the GPU-hours the next run is expected to take: the last run's length."""
        assert self.spec.retrain is not None
        with self._lock:
            lengths = [r.run_s for r in self._records if r.run_s is not None]
        seconds = lengths[-1] if lengths else DEFAULT_RUN_ESTIMATE_S
        return self.spec.retrain.gpus * seconds / 3600.0

    def _check_quota(self) -> None:
        """Refuse a run that would take the tenant over its training GPU-hours quota.

        A CPU-only run requests 0 GPU-hours, so it always fits (and is still tracked).
        """
        quotas = None if self._quotas is None else self._quotas()
        if quotas is None:
            return
        with self._lock:
            used = self._gpu_hours_used
        quotas.check(self.spec.tenant, "training_gpu_hours", used, self._gpu_estimate_h())

    def _retrain(self, reason: str, requested_by: str | None = None) -> None:
        spec = self.spec
        retrain = spec.retrain
        assert retrain is not None
        tenant = spec.tenant
        current = self.registry.current(tenant, spec.name)
        table = labelled(self.store, self.labels, tenant, spec.name)
        shape = tuple(spec.edge.input.shape)
        x, y, ids = to_xy(table, shape=shape, dtype=spec.edge.input.dtype)
        x, y, ids, unusable = _usable_labels(x, y, ids, current)
        held = np.array([is_holdout(i) for i in ids], dtype=bool)
        train_x, train_y = x[~held], y[~held]
        started = self.clock()
        run = f"run-{int(started * 1000)}"
        run_subject = model_subject(spec.name, run)
        record = TrainingRecord(
            started_at=started,
            reason=reason,
            parent=None if current is None else current.version,
            edge_samples=len(train_x),
            run=run,
            requested_by=requested_by,
        )
        with self._lock:
            self._records.append(record)
            index = len(self._records) - 1
            self._trained_on = int(table.num_rows)
            self._last_trained_at = self.clock()
        self._save()
        snapshot = {
            "store_partitions": self.store.dates(tenant, spec.name),
            "store_rows": int(table.num_rows),
            "trained_on_edge_samples": len(train_x),
            "holdout_edge_samples": int(held.sum()),
            "labels_out_of_range": unusable,
        }
        try:
            self._check_quota()
        except QuotaExceededError as error:
            self._refuse(index, run_subject, error, requested_by)
            return
        except Exception as error:  # the quota source failed: no run without a quota check
            self._fail(index, run_subject, error)
            return
        self._set_stage("training")
        log.info("retraining %s: %s (%d edge samples)", spec.name, reason, len(train_x))
        try:
            self._record(
                AuditAction.TRAINING_RUN,
                run_subject,
                {
                    "event": "started",
                    "run": run,
                    "reason": reason,
                    "parent": record.parent,
                    "data": snapshot,
                    "label_selector": dict(self.training_selector.root),
                    "gpus": retrain.gpus,
                    "cpus": retrain.cpus,
                    "requested_by": requested_by,
                },
                actor=requested_by,
            )
            run_dir = self.workdir / "training" / run
            base_pt = None if current is None else current.lineage.get("checkpoint")
            timer = time.monotonic()
            try:
                result = run_training(
                    retrain.trainer,
                    train_x,
                    train_y,
                    base_model=Path(base_pt) if base_pt else None,
                    workdir=run_dir,
                    label_selector=self.training_selector,
                    gpus=retrain.gpus,
                    cpus=retrain.cpus,
                )
            finally:
                self._charge(index, time.monotonic() - timer)
            self._set_stage("gating")
            hold_x, hold_y = self._holdout(x[held], y[held])
            if current is None:
                score = evaluate(result.onnx_path, hold_x, hold_y, spec.gate.metric)
                verdict = GateResult(
                    passed=True,
                    candidate_score=score,
                    current_score=None,
                    margin=spec.gate.min_gain,
                    reason="no current model: the first model passes",
                )
            else:
                verdict = gate(result.onnx_path, current.artifact_path, (hold_x, hold_y), spec.gate)
            gate_record = asdict(verdict) | {"holdout_size": len(hold_y)}
            self._record(
                AuditAction.GATE,
                run_subject,
                gate_record
                | {
                    "run": run,
                    "metric": spec.gate.metric,
                    "current_version": record.parent,
                    "verdict": "passed" if verdict.passed else "rejected",
                },
            )
            if not verdict.passed:
                outcome = "rejected by the gate: " + verdict.reason
                self._record(
                    AuditAction.TRAINING_RUN,
                    run_subject,
                    {"event": "finished", "run": run, "outcome": outcome} | self._usage(index),
                )
                self._finish(index, outcome, gate=gate_record, metrics=dict(result.metrics))
                self._set_stage("idle")
                return
            self._set_stage("registering")
            version = self.registry.register(
                tenant,
                spec.name,
                spec.edge.model,
                result.onnx_path,
                sign=lambda model, ver, digest: self._sign_recorded(
                    model, ver, digest, run=run, parent=record.parent, artifact=result.onnx_path
                ),
                parent=record.parent,
                code_version=self.code_version,
                metrics=dict(result.metrics),
                gate=gate_record,
                lineage=snapshot
                | {
                    "checkpoint": str(result.pt_path),
                    "reason": reason,
                    "ray": result.ray_info,
                    "run": run,
                    "label_selector": dict(self.training_selector.root),
                },
            )
            publish_artifact(self.client, version, chunk_size=self.chunk_size)
            self.rollout.begin(version)
            self._record(
                AuditAction.TRAINING_RUN,
                model_subject(spec.name, version.version),
                {"event": "finished", "run": run, "outcome": "registered"}
                | {"version": version.version}
                | self._usage(index),
            )
            self._finish(
                index,
                "registered",
                version=version.version,
                gate=gate_record,
                metrics=dict(result.metrics),
            )
            self._set_stage("idle")
        except Exception as error:  # a failed run is reported, never half-registered
            log.error("retraining %s failed: %s\n%s", spec.name, error, traceback.format_exc())
            self._fail(index, run_subject, error)

    def _sign_recorded(
        self,
        model: str,
        version: str,
        digest: str,
        *,
        run: str,
        parent: str | None,
        artifact: Path,
    ) -> str:
        """Sign the artifact and record registration and signature before the registry commits.

        The registry calls this inside its transaction: if either record cannot be written,
        the version is not registered.
        """
        signature = sign_artifact(self._private_key, model, version, digest)
        subject = model_subject(self.spec.name, version)
        self._record(
            AuditAction.REGISTER,
            subject,
            {
                "version": version,
                "model": model,
                "parent": parent,
                "sha256": digest,
                "size_bytes": artifact.stat().st_size,
                "run": run,
                "code_version": self.code_version,
            },
        )
        self._record(
            AuditAction.SIGN,
            subject,
            {
                "version": version,
                "sha256": digest,
                "key_fingerprint": self._key_fingerprint,
                "signature": signature,
                "algorithm": "ed25519",
            },
        )
        return signature

    def _charge(self, index: int, seconds: float) -> None:
        """Add one run's wall time x GPUs requested to the tenant's GPU-hours used."""
        assert self.spec.retrain is not None
        hours = self.spec.retrain.gpus * seconds / 3600.0
        with self._lock:
            self._gpu_hours_used += hours
            self._records[index] = replace(self._records[index], run_s=seconds, gpu_hours=hours)
        self._save()

    def _usage(self, index: int) -> dict[str, Any]:
        with self._lock:
            record = self._records[index]
            used = self._gpu_hours_used
        return {"run_s": record.run_s, "gpu_hours": record.gpu_hours, "gpu_hours_used": used}

    def _refuse(
        self, index: int, subject: str, error: QuotaExceededError, requested_by: str | None
    ) -> None:
        """Record a run refused for its quota, in the audit log first, then in ``status()``."""
        self._quota_refused_at = self.clock()
        outcome = f"refused: {error}"
        log.warning("retraining %s refused: %s", self.spec.name, error)
        try:
            self._record(
                AuditAction.TRAINING_RUN,
                subject,
                {
                    "event": "refused",
                    "run": self._records[index].run,
                    "error": str(error),
                    "quota": error.kind,
                    "limit": error.limit,
                    "current": error.current,
                    "requested": error.requested,
                },
                actor=requested_by,
            )
        except Exception as audit_error:
            outcome += f" (not recorded in the audit log: {audit_error})"
        self._finish(index, outcome)
        self._set_stage("idle")

    def _fail(self, index: int, subject: str, error: BaseException) -> None:
        """Record a failed run; an audit failure on top is logged and kept in ``status()``."""
        outcome = f"failed: {type(error).__name__}: {error}"
        try:
            self._record(
                AuditAction.TRAINING_RUN,
                subject,
                {"event": "failed", "run": self._records[index].run, "error": outcome}
                | self._usage(index),
            )
        except Exception as audit_error:
            log.error("could not record the failed run of %s: %s", self.spec.name, audit_error)
            outcome += f" (not recorded in the audit log: {audit_error})"
        self._finish(index, outcome)
        self._set_stage("failed")

    def _holdout(self, edge_x: np.ndarray, edge_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mix the pipeline's reference holdout with the held-out recent edge samples."""
        ref = self.spec.gate.holdout
        if ref is None:
            return edge_x, edge_y
        ref_x, ref_y = resolve_ref(ref, field="gate.holdout")()
        return (
            np.concatenate(
                [np.asarray(ref_x, dtype=edge_x.dtype).reshape(-1, *edge_x.shape[1:]), edge_x]
            ),
            np.concatenate([np.asarray(ref_y, dtype=np.int64), edge_y]),
        )

    def _finish(self, index: int, outcome: str, **changes: Any) -> None:
        with self._lock:
            self._records[index] = replace(
                self._records[index], finished_at=self.clock(), outcome=outcome, **changes
            )
        self._save()

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        from continuum.wire.mqtt import publish_and_wait

        publish_and_wait(self.client, topic, payload, retain=True)
