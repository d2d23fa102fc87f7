"""One retraining run of a pipeline: data, quota, Ray Train, gate, signed registration, rollout.

``Retrainer.run`` is the controller's training thread. Every step leaves a record in the
``TrainingLog`` and in the tenant's audit log, written *before* the step takes effect (the
run starts, the model is registered, desired state is published): when a record cannot be
written (``AuditWriteError``) the step does not happen and the run is recorded as failed. A
run's records before registration name it ``<pipeline>/run-<ms>``; from registration on they
name the version (``model_subject``), and the version's lineage names the run. A failed run
registers nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cloud_head._training_data import TrainingData, gate_holdout, load_training_data
from cloud_head._training_log import TrainingLog, TrainingRecord
from cloud_head._training_pool import placement_of
from cloud_head.artifacts import publish_artifact
from cloud_head.audit import AuditAction, model_subject
from cloud_head.gate import GateResult, gate, gate_scores
from cloud_head.tenants import QuotaExceededError
from cloud_head.training import TrainingResult

if TYPE_CHECKING:
    from cloud_head._controller_context import ControllerContext
    from cloud_head.federated import FederatedTrainer
    from cloud_head.registry import ModelVersion
    from cloud_head.rollout import RolloutController
    from continuum.task import Task

__all__ = ["DEFAULT_RUN_ESTIMATE_S", "Retrainer", "TrainingStage"]

log = logging.getLogger("cloud_head.controller")

TrainingStage = Literal["idle", "training", "gating", "registering", "failed"]

#: The run length assumed for a GPU-hours quota check before the pipeline's first timed run.
DEFAULT_RUN_ESTIMATE_S = 60.0


@dataclass(frozen=True, kw_only=True)
class _Run:
    """One run under way: its number in the log, its name, the data and the model it replaces."""

    index: int
    name: str
    subject: str
    reason: str
    requested_by: str | None
    parent: ModelVersion | None
    data: TrainingData
    snapshot: dict[str, Any]


class Retrainer:
    """Run a pipeline's retrainings, one at a time, recording each step first."""

    def __init__(
        self, context: ControllerContext, log: TrainingLog, rollout: RolloutController
    ) -> None:
        """Retrain the pipeline; record runs in ``log``; give candidates to ``rollout``."""
        if context.spec.retrain is None:
            raise ValueError(f"pipeline {context.spec.name!r} declares no retrain stage")
        self._context = context
        self._log = log
        self._rollout = rollout
        self._retrain = context.spec.retrain
        self._key_fingerprint = context.signer.key_fingerprint()
        self._lock = threading.Lock()
        self._stage: TrainingStage = "idle"
        self.quota_refused_at: float | None = None
        self.federated = self._federated_trainer()

    def _federated_trainer(self) -> FederatedTrainer | None:
        """Return the rounds driver when deploy planned federated training (else None)."""
        plan = self._context.training_plan
        if plan is None or plan.mode != "federated":
            return None
        from cloud_head.federated import FederatedTrainer

        spec = self._context.spec
        return FederatedTrainer(
            spec,
            plan,
            self._context.workdir / "federated.sqlite3",
            record=lambda details: self._record(
                AuditAction.TRAINING_RUN, model_subject(spec.name, str(details["run"])), details
            ),
            clock=self._context.clock,
        )

    def close(self) -> None:
        """Close the federated rounds' database, if any."""
        if self.federated is not None:
            self.federated.close()

    @property
    def stage(self) -> TrainingStage:
        """Where the current run stands ("idle" between runs, "failed" after a failed one)."""
        with self._lock:
            return self._stage

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
        audit = self._context.stores.audit
        if audit is not None:
            audit.record(action, subject, details, actor=actor)

    def run(self, reason: str, requested_by: str | None = None) -> None:
        """Run one retraining to its end: registered and rolled out, rejected, refused or failed.

        Never raises: how the run ended is in the training log and the audit log.
        """
        run = self._start(reason, requested_by)
        try:
            self._check_quota()
        except QuotaExceededError as error:
            self._refuse(run, error)
            return
        except Exception as error:  # the quota source failed: no run without a quota check
            self._fail(run, error)
            return
        self._set_stage("training")
        log.info(
            "retraining %s: %s (%d edge samples)",
            self._context.spec.name,
            reason,
            len(run.data.train_x),
        )
        try:
            self._train_gate_register(run)
        except Exception as error:  # a failed run is reported, never half-registered
            log.error(
                "retraining %s failed: %s\n%s",
                self._context.spec.name,
                error,
                traceback.format_exc(),
            )
            self._fail(run, error)

    def _start(self, reason: str, requested_by: str | None) -> _Run:
        """Read the data and add the run to the training log (stored before it starts)."""
        spec, stores = self._context.spec, self._context.stores
        current = stores.registry.current(spec.tenant, spec.name)
        data = load_training_data(spec, stores.store, stores.labels, current)
        started = self._context.clock()
        name = f"run-{int(started * 1000)}"
        record = TrainingRecord(
            started_at=started,
            reason=reason,
            parent=None if current is None else current.version,
            edge_samples=len(data.train_x),
            run=name,
            requested_by=requested_by,
        )
        # A federated run trains on the samples at the sites; the trigger counts them there.
        rows = data.rows if self.federated is None else self._site_rows()
        index = self._log.start(record, labelled_samples=rows)
        return _Run(
            index=index,
            name=name,
            subject=model_subject(spec.name, name),
            reason=reason,
            requested_by=requested_by,
            parent=current,
            data=data,
            snapshot=data.snapshot(stores.store.dates(spec.tenant, spec.name)),
        )

    def _train_gate_register(self, run: _Run) -> None:
        """Train on Ray, gate the candidate, and register and roll out one that passed."""
        parent = None if run.parent is None else run.parent.version
        self._record(
            AuditAction.TRAINING_RUN,
            run.subject,
            {
                "event": "started",
                "run": run.name,
                "reason": run.reason,
                "parent": parent,
                "data": run.snapshot,
                "label_selector": dict(self._context.training_selector.root),
                "training_plan": None
                if self._context.training_plan is None
                else self._context.training_plan.to_record(),
                "gpus": self._retrain.gpus,
                "cpus": self._retrain.cpus,
                "trainer_options": dict(self._retrain.options),
                "requested_by": run.requested_by,
            },
            actor=run.requested_by,
        )
        result = self._train(run)
        self._set_stage("gating")
        verdict, gate_record = self._gate(run, result)
        if not verdict.passed:
            outcome = "rejected by the gate: " + verdict.reason
            self._record(
                AuditAction.TRAINING_RUN,
                run.subject,
                {"event": "finished", "run": run.name, "outcome": outcome}
                | self._log.usage(run.index),
            )
            self._log.finish(run.index, outcome, gate=gate_record, metrics=dict(result.metrics))
            self._set_stage("idle")
            return
        self._set_stage("registering")
        version = self._register(run, result, gate_record)
        self._record(
            AuditAction.TRAINING_RUN,
            model_subject(self._context.spec.name, version.version),
            {"event": "finished", "run": run.name, "outcome": "registered"}
            | {"version": version.version}
            | self._log.usage(run.index),
        )
        self._log.finish(
            run.index,
            "registered",
            version=version.version,
            gate=gate_record,
            metrics=dict(result.metrics),
        )
        self._set_stage("idle")

    def _train(self, run: _Run) -> TrainingResult:
        """Run the pipeline's loop on Ray Train; charge its wall time to the GPU-hours used."""
        if self.federated is not None:
            return self._train_federated(run, self.federated)
        base_pt = None if run.parent is None else run.parent.lineage.get("checkpoint")
        timer = time.monotonic()
        placement = None
        try:
            result = self._context.train(
                self._retrain.trainer,
                run.data.train_x,
                run.data.train_y,
                base_model=Path(base_pt) if base_pt else None,
                workdir=self._context.workdir / "training" / run.name,
                label_selector=self._context.training_selector,
                gpus=self._retrain.gpus,
                cpus=self._retrain.cpus,
                config=dict(self._retrain.options),
            )
            placement = result.ray_info.get("placement")
            return result
        except Exception as error:
            placement = placement_of(error)  # a pooled run: which pool and allocation it had
            raise
        finally:
            self._log.place(run.index, placement)
            self._log.charge(run.index, time.monotonic() - timer, self._retrain.gpus)

    def _site_rows(self) -> int:
        """Return the labelled samples the sites hold now (those that answer)."""
        assert self.federated is not None
        return sum(self.federated.labelled_counts().values())

    def _train_federated(self, run: _Run, federated: FederatedTrainer) -> TrainingResult:
        """Run the federated rounds at the data's sites (the deployed plan); charge their time."""
        base_pt = None if run.parent is None else run.parent.lineage.get("checkpoint")
        timer = time.monotonic()
        try:
            result = federated.train(
                run.name,
                parent=None if run.parent is None else run.parent.version,
                base_model=Path(base_pt) if base_pt else None,
                base_graph=None if run.parent is None else run.parent.artifact_path,
                workdir=self._context.workdir / "training" / run.name,
            )
        finally:
            self._log.charge(run.index, time.monotonic() - timer, self._retrain.gpus)
        return TrainingResult(
            onnx_path=result.onnx_path,
            pt_path=result.pt_path,
            metrics=result.metrics,
            ray_info={"federated": result.lineage},
        )

    def _gate_federated(
        self, run: _Run, result: TrainingResult, federated: FederatedTrainer
    ) -> tuple[GateResult, dict[str, Any]]:
        """Score both models at each site on its own holdout; judge the combined scores."""
        spec = self._context.spec
        current = None if run.parent is None else run.parent.artifact_path
        scores = federated.evaluate(result.onnx_path, current)
        detail = "".join(
            f"; {site} {s['size']}: "
            + ("-" if s["candidate"] is None else f"{s['candidate']:.4f}")
            + ("" if s["current"] is None else f" vs {s['current']:.4f}")
            for site, s in scores.per_site.items()
        )
        verdict = gate_scores(
            scores.candidate,
            scores.current,
            spec.gate,
            metric=spec.gate_metric,
            holdout=f"on {scores.size} holdout samples kept at {len(scores.per_site)} sites",
            detail=detail,
        )
        gate_record = (
            asdict(verdict)
            | {"holdout_size": scores.size}
            | scored_task(spec.gate_metric, spec.edge.task)
            | {
                "federated": {
                    "sites": scores.per_site,
                    "skipped": scores.skipped,
                    "bytes_down": scores.bytes_down,
                    "bytes_up": scores.bytes_up,
                }
            }
        )
        return verdict, gate_record

    def _gate(self, run: _Run, result: TrainingResult) -> tuple[GateResult, dict[str, Any]]:
        """Judge the candidate on the holdout against the current model; record the verdict.

        The record keeps the verdict on the whole holdout and each part's scores apart (the
        reference and the edge slice, with how many samples each node gave it).
        """
        spec = self._context.spec
        if self.federated is not None:
            verdict, gate_record = self._gate_federated(run, result, self.federated)
        else:
            holdout = gate_holdout(spec, run.data)
            current = None if run.parent is None else run.parent.artifact_path
            verdict = gate(result.onnx_path, current, holdout, spec.gate, task=spec.edge.task)
            # The registry's gate record says what was scored, so the model card speaks the
            # task's metric: recall at 1 % FPR for a fraud scorer, MAE for a regression.
            gate_record = (
                asdict(verdict)
                | {"holdout_size": holdout.size()}
                | scored_task(spec.gate_metric, spec.edge.task)
            )
        self._record(
            AuditAction.GATE,
            run.subject,
            gate_record
            | {
                "run": run.name,
                "current_version": None if run.parent is None else run.parent.version,
                "verdict": "passed" if verdict.passed else "rejected",
            },
        )
        return verdict, gate_record

    def _register(
        self, run: _Run, result: TrainingResult, gate_record: dict[str, Any]
    ) -> ModelVersion:
        """Register the signed candidate, publish its artifact and begin its rollout."""
        context = self._context
        spec = context.spec
        parent = None if run.parent is None else run.parent.version
        version = context.stores.registry.register(
            spec.tenant,
            spec.name,
            spec.edge.model,
            result.onnx_path,
            sign=lambda model, ver, digest: self._sign_recorded(
                model, ver, digest, run=run.name, parent=parent, artifact=result.onnx_path
            ),
            parent=parent,
            code_version=context.code_version,
            metrics=dict(result.metrics),
            gate=gate_record,
            lineage=run.snapshot
            | {
                "checkpoint": str(result.pt_path),
                "reason": run.reason,
                # A federated run's lineage has its own key, below, not a second copy here.
                "ray": {k: v for k, v in result.ray_info.items() if k != "federated"},
                "run": run.name,
                "label_selector": dict(context.training_selector.root),
            }
            | (
                {"federated": result.ray_info["federated"]}
                if "federated" in result.ray_info
                else {}
            ),
        )
        publish_artifact(context.publish, version, chunk_size=context.settings.artifact_chunk_bytes)
        self._rollout.begin(version)
        return version

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
        signature = self._context.signer.sign_artifact(model, version, digest)
        subject = model_subject(self._context.spec.name, version)
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
                "code_version": self._context.code_version,
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

    def _gpu_estimate_h(self) -> float:
        """Return the GPU-hours the next run is expected to take: the last run's length."""
        seconds = self._log.last_run_s()
        return self._retrain.gpus * (DEFAULT_RUN_ESTIMATE_S if seconds is None else seconds) / 3600

    def _check_quota(self) -> None:
        """Refuse a run that would take the tenant over its training GPU-hours quota.

        A CPU-only run requests 0 GPU-hours, so it always fits (and is still tracked).
        """
        quotas = None if self._context.quotas is None else self._context.quotas()
        if quotas is None:
            return
        quotas.check(
            self._context.spec.tenant,
            "training_gpu_hours",
            self._log.gpu_hours_used,
            self._gpu_estimate_h(),
        )

    def _refuse(self, run: _Run, error: QuotaExceededError) -> None:
        """Record a run refused for its quota, in the audit log first, then in the log."""
        self.quota_refused_at = self._context.clock()
        outcome = f"refused: {error}"
        log.warning("retraining %s refused: %s", self._context.spec.name, error)
        try:
            self._record(
                AuditAction.TRAINING_RUN,
                run.subject,
                {
                    "event": "refused",
                    "run": run.name,
                    "error": str(error),
                    "quota": error.kind,
                    "limit": error.limit,
                    "current": error.current,
                    "requested": error.requested,
                },
                actor=run.requested_by,
            )
        except Exception as audit_error:
            outcome += f" (not recorded in the audit log: {audit_error})"
        self._log.finish(run.index, outcome)
        self._set_stage("idle")

    def _fail(self, run: _Run, error: BaseException) -> None:
        """Record a failed run; an audit failure on top is logged and kept in the log."""
        outcome = f"failed: {type(error).__name__}: {error}"
        try:
            self._record(
                AuditAction.TRAINING_RUN,
                run.subject,
                {"event": "failed", "run": run.name, "error": outcome} | self._log.usage(run.index),
            )
        except Exception as audit_error:
            log.error(
                "could not record the failed run of %s: %s", self._context.spec.name, audit_error
            )
            outcome += f" (not recorded in the audit log: {audit_error})"
        self._log.finish(run.index, outcome)
        self._set_stage("failed")


def scored_task(metric: str, task: Task) -> dict[str, Any]:
    """What a gate record says of the task it scored.

    ``metric`` and ``task`` (the declaration as text) are for people: the model card speaks
    the task's metric.  ``task_spec`` is the declaration itself, for commands that must act
    by the task (the review queue's order, which labels ``label fix`` takes): the cloud head
    keeps no other copy of the pipeline's spec that such a command could read.
    """
    return {
        "metric": metric,
        "task": task.describe(),
        "task_spec": task.model_dump(mode="json"),
    }
