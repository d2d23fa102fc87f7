"""When a pipeline retrains: an operator's request, new labelled samples, drift, a schedule.

``RetrainTrigger.take`` answers at each tick whether a run is due and why (the spec's
retrain trigger, or an operator's request), and holds back the spec's trigger for
``quota_retry_s`` after a run was refused for the tenant's GPU-hours quota, so the refusal
is not recorded every tick.  A federated pipeline's samples stay at their sites, so its
labelled samples are counted there (``site_counts``), at most every ``SITE_COUNT_EVERY_S``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloud_head.labelling import labelled

if TYPE_CHECKING:
    from cloud_head._controller_context import ControllerContext

__all__ = ["SITE_COUNT_EVERY_S", "RetrainRequest", "RetrainTrigger"]

#: How often the sites are asked for their labelled-sample counts (a Ray task at each).
SITE_COUNT_EVERY_S = 15.0


@dataclass(frozen=True, kw_only=True)
class RetrainRequest:
    """A run that is due: why, and who asked (None: the spec's trigger)."""

    reason: str
    actor: str | None = None


class RetrainTrigger:
    """Decide when one pipeline retrains; thread-safe."""

    def __init__(
        self,
        context: ControllerContext,
        eligible_nodes: Callable[[], list[str]],
        *,
        site_counts: Callable[[], int] | None = None,
    ) -> None:
        """Watch ``context``'s pipeline; ``eligible_nodes`` lists the nodes whose drift counts.

        ``site_counts``: the labelled samples held at the sites (a federated pipeline's);
        None: count the central store.
        """
        if context.spec.retrain is None:
            raise ValueError(f"pipeline {context.spec.name!r} declares no retrain stage")
        self._context = context
        self._site_counts = site_counts
        self._counted_at: float | None = None
        self._when = context.spec.retrain.trigger
        self._eligible_nodes = eligible_nodes
        self._lock = threading.Lock()
        self._requested: RetrainRequest | None = None
        self.labelled = 0

    def request(self, reason: str, actor: str | None = None) -> None:
        """Ask for a run at the next tick (``continuum retrain``, a rerun after a restart)."""
        with self._lock:
            self._requested = RetrainRequest(reason=reason, actor=actor)

    def take(
        self, *, trained_on: int, last_trained_at: float, quota_refused_at: float | None
    ) -> RetrainRequest | None:
        """Return the run that is due now, if any; a request is answered once.

        Args:
            trained_on: how many labelled samples the last run began with.
            last_trained_at: when the last run began.
            quota_refused_at: when a run was last refused for the GPU-hours quota, if ever.
        """
        with self._lock:
            requested, self._requested = self._requested, None
        if requested is not None:
            return requested  # an operator's request is checked against the quota at once
        reason = self._due(trained_on, last_trained_at)
        if reason is None:
            return None
        retry_s = self._context.settings.quota_retry_s
        if quota_refused_at is not None and self._context.clock() - quota_refused_at < retry_s:
            return None  # refused for its quota a moment ago: do not record it every tick
        return RetrainRequest(reason=reason)

    def _labelled_count(self) -> int:
        """Count the pipeline's labelled samples (reads the store, or asks the sites at most
        every ``SITE_COUNT_EVERY_S``; ``labelled`` caches it)."""
        spec, stores = self._context.spec, self._context.stores
        if self._site_counts is None:
            self.labelled = int(
                labelled(stores.store, stores.labels, spec.tenant, spec.name).num_rows
            )
            return self.labelled
        now = self._context.clock()
        if self._counted_at is None or now - self._counted_at >= SITE_COUNT_EVERY_S:
            self.labelled = self._site_counts()
            self._counted_at = now
        return self.labelled

    def _due(self, trained_on: int, last_trained_at: float) -> str | None:
        """Return why the spec's trigger fires now, or None."""
        when = self._when
        if when.new_samples is not None:
            new = self._labelled_count() - trained_on
            if new >= when.new_samples:
                return f"{new} new labelled samples (trigger: {when.new_samples})"
        if when.drift_score is not None:
            fleet, pipeline = self._context.stores.fleet, self._context.spec.name
            for node in self._eligible_nodes():
                last = fleet.last_telemetry(node, pipeline)
                if (
                    last is not None
                    and last.ts > last_trained_at
                    and last.drift_score > when.drift_score
                ):
                    return f"drift {last.drift_score:.2f} on {node} > {when.drift_score:g}"
        if when.every_s is not None and self._context.clock() - last_trained_at >= when.every_s:
            return f"schedule: every {when.every_s:g} s"
        return None
