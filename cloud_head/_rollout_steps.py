"""The steps that change what nodes run: start a canary, ramp up, promote, roll back.

Each step is written to the audit log, then its state is stored, then the registry and the
nodes' desired state follow; ``cloud_head.rollout.RolloutController`` decides when.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cloud_head._ramp import ramp_schedule
from cloud_head._rollout_core import RolloutCore
from cloud_head._rollout_state import RampStep, RolloutState
from cloud_head.audit import AuditAction

if TYPE_CHECKING:
    from cloud_head.registry import ModelVersion

__all__ = ["RolloutSteps"]


class RolloutSteps(RolloutCore):
    """The rollout's transitions between stages (see ``RolloutController``)."""

    def _start_canary(
        self,
        candidate: ModelVersion,
        current: ModelVersion,
        now: float,
        nodes: list[str],
        *,
        waited_s: float | None = None,
    ) -> RolloutState:
        """Put ``candidate`` on the first step of its ramp over ``nodes``, most drifted first."""
        plan = ramp_schedule(self.spec.rollout, len(nodes))
        share, count = plan[0]
        ranked = self.view.ranked(nodes)
        canaries = tuple(ranked[:count])
        details: dict[str, Any] = {
            "event": "canary",
            "nodes": list(canaries),
            "eligible_nodes": len(nodes),
            "baseline": current.version,
            "sha256": candidate.sha256,
            "canary_fraction": self.spec.rollout.canary,
            "ramp": [{"share": s, "nodes": c} for s, c in plan],
        }
        reason = f"canary on {', '.join(canaries)}"
        if waited_s is not None:
            details["waited_s"] = round(waited_s, 3)
            reason += f" after waiting {waited_s:.0f} s for an eligible node"
        self._record(AuditAction.ROLLOUT, candidate.version, details)
        self.save_state(
            RolloutState(
                pipeline=self.spec.name,
                stage="canary",
                candidate=candidate.version,
                baseline=current.version,
                canary_nodes=canaries,
                started_at=now,
                reason=reason,
                history=(
                    *self.state.history,
                    f"canary {candidate.version} on {', '.join(canaries)}",
                ),
                steps=(
                    RampStep(index=0, share=share, nodes=canaries, started_at=now, reason=reason),
                ),
                order=tuple(ranked),
            )
        )
        self.registry.set_status(self.tenant, self.spec.name, candidate.version, "canary")
        for node in canaries:
            self._assign(node, candidate)
        return self.state

    def _advance(self, candidate: ModelVersion, now: float, reason: str) -> RolloutState:
        """Go to the ramp's next step, or promote when that step would reach every node."""
        state = self.state
        step = state.steps[-1]
        nodes = self.eligible_nodes()
        following = [
            (share, count)
            for share, count in ramp_schedule(self.spec.rollout, len(nodes))
            if share > step.share and count > len(step.nodes)
        ]
        if not following or following[0][1] >= len(nodes):
            return self._promote(candidate, now, reason)
        share, count = following[0]
        eligible = set(nodes)
        order = [n for n in state.order if n in eligible]
        order += sorted(eligible.difference(state.order))  # joined since the canary
        chosen = list(step.nodes)
        for node in order:
            if len(chosen) >= count:
                break
            if node not in chosen:
                chosen.append(node)
        added = chosen[len(step.nodes) :]
        index = step.index + 1
        self._record(
            AuditAction.ROLLOUT,
            candidate.version,
            {
                "event": "ramp",
                "step": index,
                "share": share,
                "nodes": chosen,
                "added": added,
                "eligible_nodes": len(nodes),
                "reason": reason,
                "baseline": state.baseline,
            }
            | state.figures_record(),
        )
        following_step = RampStep(
            index=index, share=share, nodes=tuple(chosen), started_at=now, reason=reason
        )
        entry = f"step {index} {candidate.version} at {share:.0%} (+{', '.join(added)}): {reason}"
        self.save_state(
            replace(
                state,
                canary_nodes=tuple(chosen),
                reason=reason,
                verdict="",
                decide_at=None,
                steps=(*state.steps, following_step),
                history=(*state.history, entry),
            )
        )
        for node in added:
            self._assign(node, candidate)
        return self.state

    def _promote(
        self,
        version: ModelVersion,
        now: float,
        reason: str,
        *,
        actor: str | None = None,
        audit_action: AuditAction = AuditAction.ROLLOUT,
        event: str = "promote",
    ) -> RolloutState:
        previous = self.registry.current(self.tenant, self.spec.name)
        nodes = self.eligible_nodes()
        self._record(
            audit_action,
            version.version,
            {
                "event": event,
                "reason": reason,
                "previous": None if previous is None else previous.version,
                "sha256": version.sha256,
                "nodes": nodes,
            }
            | self.state.figures_record(),
            actor=actor,
        )
        state = self.state
        ramping = state.stage == "canary" and state.candidate == version.version
        final = RampStep(
            index=len(state.steps) if ramping else 0,
            share=1.0,
            nodes=tuple(nodes),
            started_at=now,
            reason=reason,
        )
        history = state.history
        if state.stage == "waiting" and state.candidate != version.version:
            history = (
                *history,
                f"{state.candidate} no longer waits: {version.version} was promoted",
            )
        self.save_state(
            replace(
                state,
                stage="promoted",
                candidate=version.version,
                decided_at=now,
                reason=reason,
                verdict="",
                decide_at=None,
                steps=(*state.steps, final) if ramping else (final,),
                history=(*history, f"promoted {version.version}: {reason}"),
            )
        )
        self.registry.set_current(self.tenant, self.spec.name, version.version, reason)
        for node in nodes:
            self._assign(node, version)
        return self.state

    def _rollback(self, candidate: ModelVersion, now: float, reason: str) -> RolloutState:
        canaries = self.state.canary_nodes
        current = self.registry.current(self.tenant, self.spec.name)
        self._record(
            AuditAction.ROLLBACK,
            candidate.version,
            {
                "event": "automatic rollback",
                "reason": reason,
                "canary_nodes": list(canaries),
                "step": self.state.steps[-1].index if self.state.steps else 0,
                "restored": None if current is None else current.version,
            }
            | self.state.figures_record(),
        )
        self.save_state(
            replace(
                self.state,
                stage="rolled_back",
                decided_at=now,
                reason=reason,
                verdict="",
                decide_at=None,
                history=(*self.state.history, f"rolled back {candidate.version}: {reason}"),
            )
        )
        self.registry.set_status(self.tenant, self.spec.name, candidate.version, "rolled_back")
        if current is not None:
            for node in canaries:
                self._assign(node, current)
        return self.state
