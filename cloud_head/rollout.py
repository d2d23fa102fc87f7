"""Rollout of a gated model: desired state per node, a canary, an exponential ramp, rollback.

The controller is protocol logic only: it reads the fleet (who runs the pipeline, what
they report, their telemetry) and writes desired state through ``DesiredStateBook``; a
service calls ``tick()`` periodically. Every decision is returned as a ``RolloutState``
with its reason so the CLI, the demo and the audit log can show it.

A rollout goes in steps (``RampStep``): the candidate goes to the spec's canary share of the
target nodes, then to ``canary * ramp_factor``, ``canary * ramp_factor**2``... of them, and is
promoted when the next step would reach every node. Each step holds (``promote_after_s`` for
the canary, ``step_after_s`` after) and is then judged on the telemetry of the nodes that run
the candidate, by the spec's rules (``judge``): accuracy from labelled feedback windows
against the same nodes' accuracy on the current version before they switched (the canaries
are the most drifted nodes, so the other nodes would be an unfair baseline), p95 latency
against the current version on the nodes that do not run the candidate over the same time
(or, when they report none, the same nodes before they switched). It advances, rolls back
naming the rule and the figures, or waits for enough data. The nodes of every step come
from one ranking made at the canary and stored with the state, so a restart resumes the same
step on the same nodes and the next step adds the same ones.

A rollout never skips its canary because of what the fleet looks like at one moment: only
the registry says that a candidate is the pipeline's first model (no current version, and
none ever promoted), which is promoted at once. Any other candidate, when no eligible node
can take its canary (online, admitted, running the pipeline, matching its placement, and
heard from within two of its heartbeat periods), waits in stage "waiting" with the reason,
logged and audited once, while the current version keeps serving; ``tick()`` starts the
canary on the first eligible node that appears. A newer candidate given to ``begin()``
replaces a waiting one, which never ran anywhere (``PipelineController`` holds retraining
while a rollout waits or runs, so in practice it does not happen).

Each pipeline's rollout state is stored (``save_state``, in the controller's
``PipelineStateStore`` beside the book) before the step it announces is carried out, so a
controller built again on the same file resumes a rollout in progress and ``tick()``
finishes a step a crash interrupted.

The rooms: ``_rollout_state`` (the stored state), ``_ramp`` (the schedule and the judgement,
pure), ``_rollout_fleet`` (what the rollout reads from the fleet), ``desired_state`` (what
each node is told); this module holds the decisions and their order.

Each step (canary start, every ramp step, promotion, rollback, an operator's promote or
rollback, the current version sent to nodes that joined) is appended to the tenant's audit
log before its state is stored and its desired state published: if the record cannot be
written (``AuditWriteError``) nothing is published and the step is tried again at the next
tick, or the operator's command fails.  Nodes the fleet refused (over the tenant's
``edge_nodes`` quota) get no desired state.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from cloud_head._pipeline_state import ROLLOUT_RECORD
from cloud_head._ramp import (
    MIN_LABELLED_FOR_DECISION,
    MIN_LATENCY_WINDOWS,
    Judgement,
    StepAction,
    StepFigures,
    judge,
    node_names,
    ramp_schedule,
)
from cloud_head._rollout_fleet import (
    MAX_LATENCY_BASELINE_NODES,
    STALE_AFTER_PERIODS,
    CanaryPool,
)
from cloud_head._rollout_state import RampStep, RolloutState, Stage
from cloud_head._rollout_steps import RolloutSteps
from cloud_head._training_cut import TrainingCut, cuts_from_lineage
from cloud_head.audit import AuditAction
from cloud_head.desired_state import DesiredStateBook, desired_model
from continuum.errors import ContinuumError, NotFoundError

if TYPE_CHECKING:
    from cloud_head.registry import ModelStatus, ModelVersion
    from continuum.wire.messages import Telemetry

__all__ = [
    "MAX_LATENCY_BASELINE_NODES",
    "MIN_LABELLED_FOR_DECISION",
    "MIN_LATENCY_WINDOWS",
    "ROLLOUT_RECORD",
    "STALE_AFTER_PERIODS",
    "CanaryPool",
    "DesiredStateBook",
    "Judgement",
    "RampStep",
    "RolloutController",
    "RolloutState",
    "Stage",
    "StepAction",
    "StepFigures",
    "desired_model",
    "judge",
    "ramp_schedule",
]

log = logging.getLogger(__name__)

#: Registry statuses of a version that was never promoted nor tried on any node.
_NEVER_RAN: frozenset[str] = frozenset({"registered", "rejected"})


class RolloutController(RolloutSteps):
    """Canary a candidate, ramp it up step by step to every node, or roll it back."""

    def ensure_current_everywhere(self) -> list[str]:
        """Tell every eligible node that is not a running canary to serve the current version.

        Returns the nodes that were assigned: new nodes joining the fleet, and nodes whose
        assignment a crash left behind (a promotion or a rollback cut short).
        """
        current = self.registry.current(self.tenant, self.spec.name)
        if current is None:
            return []
        canaries = set(self.state.canary_nodes) if self.state.stage == "canary" else set()
        assigned = [
            node
            for node in self.eligible_nodes()
            if node not in canaries
            and self.book.serving_target(node, self.spec.name) != current.version
        ]
        if assigned:
            self._record(
                AuditAction.ROLLOUT,
                current.version,
                {
                    "event": "assign",
                    "nodes": assigned,
                    "reason": "the current version, to nodes that do not serve it yet",
                },
            )
        for node in assigned:
            self._assign(node, current)
        return assigned

    def _finish_interrupted_step(self) -> None:
        """Carry out the registry side of the stored state, in case a crash cut it short.

        The state is stored before its step runs, so after a restart the registry may lag
        behind it; each call here is a no-op when it does not.
        """
        state = self.state
        if state.candidate is None:
            return
        current = self.registry.current(self.tenant, self.spec.name)
        current_version = None if current is None else current.version
        if state.stage == "promoted" and current_version != state.candidate:
            self.registry.set_current(self.tenant, self.spec.name, state.candidate, state.reason)
            return
        wanted: ModelStatus
        if state.stage == "canary":
            wanted = "canary"
        elif state.stage == "rolled_back":
            wanted = "rolled_back"
        else:
            return
        candidate = self.registry.get(self.tenant, self.spec.name, state.candidate)
        if candidate.status != wanted:
            self.registry.set_status(self.tenant, self.spec.name, state.candidate, wanted)
        if state.stage == "canary":
            for node in state.canary_nodes:
                if self.book.serving_target(node, self.spec.name) != state.candidate:
                    self._assign(node, candidate)

    def begin(self, candidate: ModelVersion) -> RolloutState:
        """Start the rollout of ``candidate``: a canary, or a wait for a node that can take it.

        Only the pipeline's first model (``is_first_model``: a fact of the registry, never of
        the fleet view) is promoted at once. A newer candidate replaces one that is waiting.

        Raises:
            ContinuumError: the registry has no current version although one was promoted
                before (its record was lost): there is no baseline to canary against.
            AuditWriteError: the step could not be recorded, so it was not carried out.
        """
        now = self.clock()
        current = self.registry.current(self.tenant, self.spec.name)
        if current is None:
            if self.is_first_model(candidate):
                return self._promote(
                    candidate, now, "first model of the pipeline: no canary needed"
                )
            raise ContinuumError(
                f"pipeline {self.spec.name!r} of tenant {self.tenant!r} has no current model "
                f"version in the registry, yet versions were promoted or tried before: "
                f"{candidate.version} has no baseline to canary against; make a version "
                f"current with `continuum models promote VERSION --pipeline {self.spec.name}`"
            )
        state = self.state
        if state.stage == "waiting" and state.candidate == candidate.version:
            return state
        if state.stage == "waiting" and state.candidate is not None:
            self._supersede(state.candidate, candidate.version)
        pool = self.canary_pool()
        if not pool.ready:
            return self._wait(candidate, current, now, pool)
        return self._start_canary(candidate, current, now, list(pool.ready))

    def is_first_model(self, candidate: ModelVersion) -> bool:
        """Return whether ``candidate`` is its pipeline's first model, by the registry alone.

        It is when the pipeline has no current version and no other version was ever
        promoted or tried on nodes (all are "registered" or "rejected"): a pipeline whose
        current version was rolled back, or whose fleet looks empty, still has a model.
        """
        if self.registry.current(self.tenant, self.spec.name) is not None:
            return False
        return all(
            v.status in _NEVER_RAN
            for v in self.registry.list(self.tenant, self.spec.name)
            if v.version != candidate.version
        )

    def _supersede(self, waiting: str, newer: str) -> None:
        """Drop the waiting candidate for a newer one (it never ran on any node)."""
        reason = f"{newer} arrived while {waiting} waited for a canary node"
        self._record(AuditAction.ROLLOUT, waiting, {"event": "superseded", "by": newer})
        log.info("rollout of %s: %s replaces %s: %s", self.spec.name, newer, waiting, reason)
        self.save_state(
            replace(self.state, history=(*self.state.history, f"{waiting} superseded: {reason}"))
        )

    def _wait(
        self, candidate: ModelVersion, current: ModelVersion, now: float, pool: CanaryPool
    ) -> RolloutState:
        """Hold ``candidate`` until a node can take its canary; the current version serves on."""
        reason = pool.wait_reason()
        self._record(
            AuditAction.ROLLOUT,
            candidate.version,
            {
                "event": "waiting",
                "reason": reason,
                "baseline": current.version,
                "sha256": candidate.sha256,
                "selector": dict(self.spec.edge.where.root),
                "matching_nodes": pool.matching,
                "stale_nodes": list(pool.stale),
            },
        )
        log.warning(
            "rollout of %s %s does not start: %s; %s keeps serving and the canary starts on "
            "the first eligible node",
            self.spec.name,
            candidate.version,
            reason,
            current.version,
        )
        self.save_state(
            RolloutState(
                pipeline=self.spec.name,
                stage="waiting",
                candidate=candidate.version,
                baseline=current.version,
                started_at=now,
                reason=reason,
                history=(*self.state.history, f"{candidate.version} waits: {reason}"),
            )
        )
        return self.state

    def _end_wait(self) -> RolloutState:
        """Start the waiting candidate's canary if a node can take it now; else keep waiting.

        The reason follows the fleet (how many nodes match, which are stale) without a log
        line each tick: the wait was logged when it began and its end is logged once.
        """
        state = self.state
        assert state.candidate is not None
        current = self.registry.current(self.tenant, self.spec.name)
        if current is None:  # the registry lost it since: nothing to canary against
            return state
        pool = self.canary_pool()
        if not pool.ready:
            reason = pool.wait_reason()
            if reason != state.reason:
                self.save_state(replace(state, reason=reason))
            return self.state
        now = self.clock()
        candidate = self.registry.get(self.tenant, self.spec.name, state.candidate)
        log.info(
            "rollout of %s %s: %s can take the canary after %.0f s of waiting",
            self.spec.name,
            candidate.version,
            node_names(pool.ready),
            now - state.started_at,
        )
        return self._start_canary(
            candidate, current, now, list(pool.ready), waited_s=now - state.started_at
        )

    def tick(self) -> RolloutState:
        """Advance a running rollout by its current step: next step, promotion, rollback or wait.

        A waiting rollout starts its canary as soon as a node can take it.
        """
        self._finish_interrupted_step()
        if self.state.stage == "waiting":
            self._end_wait()
            self.ensure_current_everywhere()
            return self.state
        self.ensure_current_everywhere()
        state = self.state
        if (
            state.stage != "canary"
            or state.candidate is None
            or state.baseline is None
            or not state.steps
        ):
            return state
        return self._judge_step(state, state.candidate, state.baseline)

    def _judge_step(self, state: RolloutState, candidate_name: str, baseline: str) -> RolloutState:
        """Judge the current step: a node that refused the candidate rolls it back at once;
        then the step waits for its new nodes to serve it (within ``serve_timeout_s``), holds,
        and is judged on its figures by the spec's rules."""
        now = self.clock()
        rollout = self.spec.rollout
        step = state.steps[-1]
        label = "canary" if step.index == 0 else f"step {step.index} ({step.share:.0%})"
        candidate = self.registry.get(self.tenant, self.spec.name, candidate_name)
        refusal = self._refusal(step, candidate_name)
        if refusal is not None:
            return self._rollback(candidate, now, refusal)
        earlier = set(state.steps[-2].nodes) if len(state.steps) > 1 else set()
        added = [n for n in step.nodes if n not in earlier]
        windows, first_served = self._served(step, candidate_name, added)
        if first_served is None:
            if now - step.started_at > self.serve_timeout_s:
                return self._rollback(
                    candidate,
                    now,
                    f"{label}: no node of it served {candidate_name} within "
                    f"{self.serve_timeout_s:g} s",
                )
            verdict = f"waiting for {node_names(added)} to serve {candidate_name}"
            return self.save_state(replace(state, verdict=verdict, decide_at=None))
        figures = self.view.figures(
            state,
            candidate_name,
            baseline,
            windows,
            cuts_from_lineage(candidate.lineage),
            self._baseline_cuts(baseline),
        )
        hold = rollout.promote_after_s if step.index == 0 else rollout.step_after_s
        state = self.save_state(
            replace(
                state,
                metric=rollout.rollback_metric,
                canary_accuracy=figures.candidate_accuracy,
                baseline_accuracy=figures.baseline_accuracy,
                canary_latency_p95_ms=figures.candidate_p95_ms,
                baseline_latency_p95_ms=figures.baseline_p95_ms,
                canary_labelled_frames=figures.labelled,
                baseline_labelled_frames=figures.baseline_labelled,
                windows_before_cut=figures.windows_before_cut,
                baseline_windows_before_cut=figures.baseline_windows_before_cut,
                decide_at=first_served + hold,
            )
        )
        if now - first_served < hold:
            return self.save_state(replace(state, verdict=f"holding {hold:g} s without regression"))
        judgement = judge(rollout.rules, figures)
        # The accuracy is over unseen frames only: say how many windows that left out.
        unseen = "" if rollout.rules.accuracy_drop is None else f"; {figures.left_out_text()}"
        if judgement.action == "roll back":
            return self._rollback(candidate, now, f"{label}: {judgement.reason}{unseen}")
        if judgement.action == "wait":  # say so only where windows were left out
            left_out = figures.windows_before_cut + figures.baseline_windows_before_cut
            verdict = judgement.reason + (unseen if left_out else "")
            return self.save_state(replace(state, verdict=verdict))
        return self._advance(
            candidate,
            now,
            f"{label} held for {now - first_served:.0f} s ({judgement.reason}{unseen})",
        )

    def _baseline_cuts(self, baseline: str) -> dict[str, TrainingCut]:
        """The baseline version's own training cuts (none when the registry lost it)."""
        try:
            return cuts_from_lineage(
                self.registry.get(self.tenant, self.spec.name, baseline).lineage
            )
        except NotFoundError:
            return {}

    def _refusal(self, step: RampStep, candidate: str) -> str | None:
        """Return why a node of the step rejected or failed the candidate, if one did."""
        for node in step.nodes:
            reported = self.fleet.reported_model(node, self.spec.name)
            if (
                reported is not None
                and reported.version == candidate
                and reported.state in ("rejected", "failed")
            ):
                return (
                    f"{node} {reported.state} the candidate: {reported.error or 'no reason given'}"
                )
        return None

    def _served(
        self, step: RampStep, candidate: str, added: list[str]
    ) -> tuple[list[Telemetry], float | None]:
        """Return the step's windows of the candidate, and when the latest of the nodes the step
        ``added`` that serve it began to (None while none of them has served it)."""
        windows: list[Telemetry] = []
        first_served: float | None = None
        for node in step.nodes:
            served = self.view.served(node, step.started_at, candidate)
            if served and node in added:
                start = min(w.ts for w in served)
                first_served = start if first_served is None else max(first_served, start)
            windows.extend(served)
        return windows, first_served

    def rollback_to(
        self,
        version: ModelVersion,
        reason: str,
        *,
        actor: str | None = None,
        action: Literal["promote", "rollback"] = "promote",
    ) -> RolloutState:
        """Make ``version`` current everywhere at once, ending any canary (an operator's call).

        ``actor`` is who asked (``user@host``); ``action`` is what they called it, recorded
        as a rollout or a rollback.
        """
        return self._promote(
            version,
            self.clock(),
            f"set by operator: {reason}",
            actor=actor,
            audit_action=AuditAction.ROLLBACK if action == "rollback" else AuditAction.ROLLOUT,
            event=f"manual {action}",
        )
