"""What a rollout reads from the fleet: which nodes may take the candidate, and what they measure.

``RolloutFleetView`` only reads the fleet registry (status, telemetry): which nodes are
eligible, which of them can take a canary now (``CanaryPool``), how to rank them for the
ramp, and a step's figures against the current version (``StepFigures``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloud_head._ramp import StepFigures, node_names, p95_of, quality_of
from cloud_head._training_cut import began_after_cut

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cloud_head._rollout_state import RolloutState
    from cloud_head._training_cut import TrainingCut
    from cloud_head.fleet import FleetRegistry, NodeInfo
    from continuum.spec import PipelineSpec
    from continuum.wire.messages import Telemetry

__all__ = [
    "MAX_LATENCY_BASELINE_NODES",
    "STALE_AFTER_PERIODS",
    "CanaryPool",
    "RolloutFleetView",
]

#: A node silent for more than this many of its heartbeat periods takes no canary, whatever
#: its last status said (the fleet registry marks it offline after as many).
STALE_AFTER_PERIODS = 2

#: The latency baseline reads at most this many nodes that still run the current version.
MAX_LATENCY_BASELINE_NODES = 100


@dataclass(frozen=True, kw_only=True)
class CanaryPool:
    """The nodes that can take a canary now, and the fleet they were picked from.

    ``ready`` are the eligible nodes heard from within ``STALE_AFTER_PERIODS`` heartbeat
    periods, by name; ``matching`` counts the admitted nodes that run the pipeline and match
    its placement (``selector``); ``stale`` are those whose last status said online but that
    have been silent longer than that (a fleet view nobody has refreshed).
    """

    ready: tuple[str, ...]
    matching: int
    stale: tuple[str, ...]
    selector: str

    def wait_reason(self) -> str:
        """Say what a rollout with no canary node waits for, with the fleet's figures."""
        reason = (
            f"waiting for an eligible canary node: {len(self.ready)} of {self.matching} "
            f"nodes matching {self.selector} are online"
        )
        if self.stale:
            were = "was" if len(self.stale) == 1 else "were"
            reason += (
                f" ({node_names(self.stale)} said so but {were} last heard from more than "
                f"{STALE_AFTER_PERIODS} heartbeat periods ago)"
            )
        return reason


class RolloutFleetView:
    """The fleet as one pipeline's rollout sees it (read only)."""

    def __init__(
        self, spec: PipelineSpec, fleet: FleetRegistry, clock: Callable[[], float] = time.time
    ) -> None:
        self.spec = spec
        self.fleet = fleet
        self.clock = clock

    def eligible_nodes(self) -> list[str]:
        """Online nodes that run this pipeline and match its edge placement, sorted by name.

        A node the fleet refused (over the tenant's ``edge_nodes`` quota) is never eligible.
        """
        nodes = self.fleet.nodes(self.spec.edge.where)
        return sorted(
            n.node
            for n in nodes
            if n.online and n.refused is None and self.spec.name in n.pipelines
        )

    def canary_pool(self) -> CanaryPool:
        """Return the nodes that can take a canary now: eligible and heard from recently.

        An eligible node silent for more than ``STALE_AFTER_PERIODS`` of its heartbeat periods
        is left out even though its last status said online: this process reads the fleet's
        file, which goes stale when nobody keeps it (the fleet service down or cut off), and
        a canary on a node that cannot hear it would only time out and roll back.
        """
        now = self.clock()
        matching = [
            n
            for n in self.fleet.nodes(self.spec.edge.where)
            if n.refused is None and self.spec.name in n.pipelines
        ]
        ready: list[str] = []
        stale: list[str] = []
        for node in matching:
            if node.online:
                silent = now - node.last_seen > STALE_AFTER_PERIODS * self._period(node)
                (stale if silent else ready).append(node.node)
        return CanaryPool(
            ready=tuple(ready),
            matching=len(matching),
            stale=tuple(stale),
            selector=str(self.spec.edge.where),
        )

    def _period(self, node: NodeInfo) -> float:
        """The node's heartbeat period: as its status states it, else the fleet's default."""
        stated = None if node.status is None else node.status.heartbeat_s
        return self.fleet.heartbeat_interval_s if stated is None else stated

    def ranked(self, nodes: list[str]) -> list[str]:
        """Rank the nodes for the ramp: highest recent drift first (where a fix matters most)."""

        def drift_of(node: str) -> float:
            recent = self.fleet.telemetry(node, self.spec.name, self.clock() - 60.0)
            return max((w.drift_score for w in recent), default=0.0)

        return sorted(nodes, key=lambda n: (-drift_of(n), n))

    def served(self, node: str, since: float, version: str) -> list[Telemetry]:
        """Return ``node``'s telemetry windows of ``version`` since ``since``."""
        return self.fleet.telemetry(node, self.spec.name, since, model_version=version)

    def figures(
        self,
        state: RolloutState,
        candidate: str,
        baseline: str,
        windows: list[Telemetry],
        cuts: Mapping[str, TrainingCut] | None = None,
        baseline_cuts: Mapping[str, TrainingCut] | None = None,
    ) -> StepFigures:
        """Measure a step: the candidate's windows against the current version's.

        Accuracy is compared with the same nodes on the current version before each switched
        (the canaries are the most drifted nodes; the others would flatter the baseline);
        latency with the nodes still on the current version over the step, or, when they
        report no latency, with the same nodes before they switched.  With the candidate's
        training ``cuts`` (``cloud_head._training_cut``), both accuracies count only windows
        that began after the node's cut: the candidate is judged on frames it never trained
        on, and the baseline over the same stretch of time; the windows left out are counted.
        When no baseline window with labels began after the candidate's cut (the cut lies
        within a window of the switch), the baseline counts the windows that began after its
        own cut (``baseline_cuts``) instead: frames it never trained on either, rather than no
        baseline at all (a rule without one cannot fire).
        """
        cuts = cuts or {}
        step = state.steps[-1]
        lookback = max(self.spec.rollout.promote_after_s, 30.0)
        switched: dict[str, float] = {}
        for earlier in state.steps:
            for node in earlier.nodes:
                switched.setdefault(node, earlier.started_at)
        before: list[Telemetry] = []
        for node in step.nodes:
            before.extend(
                self.served(node, switched.get(node, step.started_at) - lookback, baseline)
            )
        alongside: list[Telemetry] = []
        if self.spec.rollout.rollback_on_latency_rise is not None:
            running = set(step.nodes)
            others = [n for n in self.eligible_nodes() if n not in running]
        else:
            others = []  # no latency rule: the fleet need not be read for it
        for node in others[:MAX_LATENCY_BASELINE_NODES]:
            alongside.extend(self.served(node, step.started_at, baseline))
        unseen = [w for w in windows if began_after_cut(w, cuts)]
        baseline_unseen = [w for w in before if began_after_cut(w, cuts)]
        metric = self.spec.rollout.rollback_metric
        baseline_acc, baseline_labelled = quality_of(baseline_unseen, baseline, metric)
        if baseline_acc is None:
            baseline_unseen = [w for w in before if began_after_cut(w, baseline_cuts or {})]
            baseline_acc, baseline_labelled = quality_of(baseline_unseen, baseline, metric)
        candidate_acc, labelled = quality_of(unseen, candidate, metric)
        candidate_p95, latency_windows = p95_of(windows)
        baseline_p95, _ = p95_of(alongside)
        reporting = sorted({w.node for w in alongside if w.latency_p95_ms is not None})
        source = f"{baseline} on {node_names(reporting)}"
        if baseline_p95 is None:
            baseline_p95, _ = p95_of(before)
            source = f"{baseline} on the same nodes before they switched"
        return StepFigures(
            labelled=labelled,
            candidate_accuracy=candidate_acc,
            baseline_accuracy=baseline_acc,
            latency_windows=latency_windows,
            candidate_p95_ms=candidate_p95,
            baseline_p95_ms=baseline_p95,
            latency_baseline=source,
            windows_before_cut=len(windows) - len(unseen),
            baseline_windows_before_cut=len(before) - len(baseline_unseen),
            baseline_labelled=baseline_labelled,
        )
