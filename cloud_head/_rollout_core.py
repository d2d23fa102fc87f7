"""The rollout's core: its stored state, its audit records, what it tells a node to serve.

``RolloutCore`` is the base of ``cloud_head.rollout.RolloutController``: it owns the state
(``save_state`` stores it before it is kept), writes each step to the audit log first, and
assigns a version to a node through the desired-state book.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cloud_head._pipeline_state import ROLLOUT_RECORD, PipelineStateStore
from cloud_head._ramp import ramp_schedule
from cloud_head._rollout_fleet import CanaryPool, RolloutFleetView
from cloud_head._rollout_state import RampStep, RolloutState
from cloud_head.audit import AuditAction, AuditTrail, model_subject
from cloud_head.desired_state import desired_model

if TYPE_CHECKING:
    from cloud_head.desired_state import DesiredStateBook
    from cloud_head.fleet import FleetRegistry
    from cloud_head.registry import ModelRegistry, ModelVersion
    from continuum.spec import PipelineSpec

__all__ = ["RolloutCore"]


class RolloutCore:
    """One pipeline's rollout state, records and assignments (see ``RolloutController``)."""

    def __init__(
        self,
        spec: PipelineSpec,
        registry: ModelRegistry,
        fleet: FleetRegistry,
        book: DesiredStateBook,
        *,
        chunk_size: int,
        clock: Callable[[], float] = time.time,
        serve_timeout_s: float = 120.0,
        audit: AuditTrail | None = None,
        states: PipelineStateStore | None = None,
    ) -> None:
        """Build the rollout of ``spec`` and resume the state stored last, if any.

        Args:
            book: where each node's desired state is kept and published.
            chunk_size: the artifact chunk size ``publish_artifact`` was given.
            serve_timeout_s: a step whose new nodes serve none of the candidate within this
                long is rolled back.
            audit: the tenant's audit trail; every step is recorded there first.
            states: where the rollout's state is stored; None: a store of its own in the
                book's file, closed by ``close()``.
        """
        self.spec = spec
        self.audit = audit
        self.tenant = spec.tenant
        self.registry = registry
        self.fleet = fleet
        self.book = book
        self.chunk_size = chunk_size
        self.clock = clock
        self.serve_timeout_s = serve_timeout_s
        self.view = RolloutFleetView(spec, fleet, clock)
        self._owns_states = states is None
        self.states = (
            PipelineStateStore(book.path, spec.tenant, spec.name) if states is None else states
        )
        self._state = self._stored_state()

    def _stored_state(self) -> RolloutState:
        """Return the state stored last, or an idle one; a canary from before ramps is step 0."""
        saved = self.states.load(ROLLOUT_RECORD)
        if saved is None:
            return RolloutState(pipeline=self.spec.name)
        state = RolloutState.from_record(saved)
        if state.stage == "canary" and not state.steps:
            canary = RampStep(
                index=0,
                share=self.spec.rollout.canary,
                nodes=state.canary_nodes,
                started_at=state.started_at,
                reason=state.reason,
            )
            state = replace(state, steps=(canary,), order=state.canary_nodes)
        return state

    def close(self) -> None:
        """Close the state store if this rollout opened it (the book is its owner's)."""
        if self._owns_states:
            self.states.close()

    @property
    def state(self) -> RolloutState:
        """Where the rollout stands (``save_state`` changes it)."""
        return self._state

    def save_state(self, state: RolloutState) -> RolloutState:
        """Store ``state`` if it changed, then make it the rollout's; return it.

        Every step stores its state before it is carried out, so a restart resumes it.
        """
        if state != self._state:
            self.states.save(ROLLOUT_RECORD, state.to_record())
        self._state = state
        return state

    # -- fleet view ----------------------------------------------------------------------

    def eligible_nodes(self) -> list[str]:
        """Online nodes that run this pipeline and match its edge placement, sorted by name."""
        return self.view.eligible_nodes()

    def canary_pool(self) -> CanaryPool:
        """Return the nodes that can take a canary now: eligible and heard from recently."""
        return self.view.canary_pool()

    def plan(self) -> list[dict[str, float | int]]:
        """Return the ramp over today's eligible nodes: share and node count of every step."""
        schedule = ramp_schedule(self.spec.rollout, len(self.eligible_nodes()))
        return [{"share": share, "nodes": count} for share, count in schedule]

    # -- actions -------------------------------------------------------------------------

    def _record(
        self,
        action: AuditAction,
        version: str,
        details: dict[str, Any],
        *,
        actor: str | None = None,
    ) -> None:
        """Append the step to the audit log before it is carried out (raises if it cannot)."""
        if self.audit is not None:
            self.audit.record(
                action,
                model_subject(self.spec.name, version),
                {"pipeline": self.spec.name, "version": version} | details,
                actor=actor,
            )

    def _assign(self, node: str, version: ModelVersion) -> None:
        self.book.assign(node, self.spec.name, desired_model(version, self.chunk_size))
