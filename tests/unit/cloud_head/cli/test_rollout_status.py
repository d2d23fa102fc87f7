"""``continuum rollout status``'s lines for a rollout snapshot, as the controller returns it."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Any

from cloud_head.cli.rollout import federated_lines, rollout_lines
from cloud_head.rollout import RampStep, RolloutState

T0 = 1_790_000_000.0


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def snapshot(state: RolloutState, plan: list[tuple[float, int]]) -> dict[str, Any]:
    """What ``PipelineController.status()["rollout"]`` holds for ``state``."""
    rollout = asdict(state)
    rollout["plan"] = [{"share": share, "nodes": count} for share, count in plan]
    return rollout


CANARY = RampStep(0, 0.25, ("cam-3",), T0, "canary on cam-3")
STEP_1 = RampStep(
    1,
    0.5,
    ("cam-3", "cam-1"),
    T0 + 75,
    "canary held for 60 s (accuracy 0.950 vs baseline 0.950 over 120 labelled frames)",
)
RAMPING = RolloutState(
    pipeline="digits",
    stage="canary",
    candidate="v2",
    baseline="v1",
    canary_nodes=STEP_1.nodes,
    started_at=T0,
    canary_accuracy=0.95,
    baseline_accuracy=0.95,
    reason=STEP_1.reason,
    history=("canary v2 on cam-3", f"step 1 v2 at 50% (+cam-1): {STEP_1.reason}"),
    steps=(CANARY, STEP_1),
    order=("cam-3", "cam-1", "cam-2", "cam-4"),
    canary_latency_p95_ms=2.1,
    baseline_latency_p95_ms=2.0,
    verdict="holding 60 s without regression",
    decide_at=T0 + 140,
)
PLAN = [(0.25, 1), (0.5, 2), (1.0, 4)]


class TestRolloutStatus:
    def test_a_ramp_shows_its_current_step_what_it_waits_for_and_every_step(self) -> None:
        lines = rollout_lines(snapshot(RAMPING, PLAN), now=T0 + 100)

        assert lines[0] == f"rollout: canary v2 — {STEP_1.reason}"
        assert lines[1] == (
            f"current step: step 1, 50% of the nodes on v2 (cam-3, cam-1) since {when(T0 + 75)}"
            "; next: 100%, 4 nodes (promotion)"
        )
        assert lines[2] == "  now: holding 60 s without regression; decides in 40 s"
        assert "canary latency p95: 2.1 ms" in lines
        assert "baseline latency p95: 2 ms" in lines
        assert "ramp over today's nodes: 25% (1) -> 50% (2) -> 100% (4)" in lines
        steps = lines.index("steps:")
        assert lines[steps + 1 : steps + 5] == [
            f"  canary     25%  {when(T0)}  1 node(s): cam-3",
            "           why: canary on cam-3",
            f"  step 1     50%  {when(T0 + 75)}  2 node(s): cam-3, cam-1",
            f"           why: {STEP_1.reason}",
        ]
        assert lines[-2:] == [f"  {entry}" for entry in RAMPING.history]

    def test_the_accuracies_say_how_many_unseen_frames_and_left_out_windows(self) -> None:
        judged = replace(
            RAMPING,
            canary_labelled_frames=812,
            baseline_labelled_frames=400,
            windows_before_cut=1,
            baseline_windows_before_cut=3,
        )

        lines = rollout_lines(snapshot(judged, PLAN), now=T0 + 100)

        assert (
            "canary accuracy: 0.950 on 812 unseen frames; 1 window before the training cut left out"
        ) in lines
        assert (
            "baseline accuracy: 0.950 on 400 unseen frames; 3 windows before the training cut "
            "left out"
        ) in lines

    def test_a_snapshot_from_before_training_cuts_shows_the_accuracy_alone(self) -> None:
        older = snapshot(RAMPING, PLAN)
        for key in ("canary_labelled_frames", "baseline_labelled_frames"):
            del older[key]

        lines = rollout_lines(older, now=T0 + 100)

        assert "canary accuracy: 0.950" in lines and "baseline accuracy: 0.950" in lines

    def test_a_waiting_step_says_what_data_it_lacks(self) -> None:
        waiting = RolloutState(
            **{
                **asdict(RAMPING),
                "steps": (CANARY,),
                "canary_nodes": ("cam-3",),
                "verdict": "not enough data yet: 12 of 40 labelled frames",
                "decide_at": T0 + 60,
            }
        )
        lines = rollout_lines(snapshot(waiting, PLAN), now=T0 + 100)
        assert lines[1].startswith("current step: canary, 25% of the nodes on v2 (cam-3)")
        assert lines[1].endswith("; next: 50%, 2 nodes")
        assert lines[2] == "  now: not enough data yet: 12 of 40 labelled frames"

    def test_a_promoted_rollout_lists_its_steps_up_to_all_nodes(self) -> None:
        final = RampStep(2, 1.0, ("cam-1", "cam-2", "cam-3", "cam-4"), T0 + 150, "step 1 held")
        promoted = RolloutState(
            **{
                **asdict(RAMPING),
                "stage": "promoted",
                "steps": (CANARY, STEP_1, final),
                "reason": "step 1 held",
                "verdict": "",
                "decide_at": None,
            }
        )
        lines = rollout_lines(snapshot(promoted, PLAN), now=T0 + 200)
        assert lines[0] == "rollout: promoted v2 — step 1 held"
        assert not any(line.startswith(("current step", "  now:", "ramp over")) for line in lines)
        assert f"  all       100%  {when(T0 + 150)}  4 node(s): cam-1, cam-2, cam-3, cam-4" in lines

    def test_a_candidate_waiting_for_a_canary_node_says_so_and_what_serves_meanwhile(
        self,
    ) -> None:
        reason = (
            "waiting for an eligible canary node: 0 of 4 nodes matching continuum.io/tier=edge "
            "are online"
        )
        waiting = RolloutState(
            pipeline="digits",
            stage="waiting",
            candidate="v2",
            baseline="v1",
            started_at=T0,
            reason=reason,
            history=("promoted v1: first model of the pipeline", f"v2 waits: {reason}"),
        )
        lines = rollout_lines(snapshot(waiting, [(0.25, 0)]), now=T0 + 42)
        assert lines[:2] == [
            f"rollout: waiting v2 — {reason}",
            "  now: v1 serves on; the canary of v2 starts on the first eligible node "
            f"(waiting since {when(T0)}, 42 s)",
        ]
        assert not any(line.startswith(("current step", "ramp over", "steps:")) for line in lines)
        assert lines[-1] == f"  v2 waits: {reason}"


class TestFederatedLines:
    def test_a_federated_pipeline_shows_its_rounds_and_what_it_waits_for(self) -> None:
        # The keys of PipelineController._federated_status: sites, quorum, status, counters.
        federated = {
            "sites": ["hosp-lux", "hosp-metz", "hosp-trier"],
            "quorum": 2,
            "status": "waiting for quorum: 1 of 3 sites answered train (needs 2; "
            "hosp-metz: timed out after 60 s, hosp-trier: node gone)",
            "rounds": 4,
            "clipped": 1,
            "excluded": 0,
            "skipped": 3,
            "quorum_waits": 2,
        }
        assert federated_lines(federated) == [
            "federated: 3 sites (hosp-lux, hosp-metz, hosp-trier), quorum 2; 4 rounds, "
            "3 sites skipped, updates clipped 1, excluded 0",
            "  waiting for quorum: 1 of 3 sites answered train (needs 2; "
            "hosp-metz: timed out after 60 s, hosp-trier: node gone)",
        ]

    def test_a_central_pipeline_has_no_federated_line(self) -> None:
        assert federated_lines(None) == []
