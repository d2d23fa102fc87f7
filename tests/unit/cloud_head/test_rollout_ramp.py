"""The rollout's ramp schedule, how a step is judged, and the stored state a restart reads.

The ramp and the judgement are pure functions of the spec and the figures; the stored-state
tests build a controller on real SQLite stores (no broker: desired states are collected).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cloud_head._pipeline_state import PipelineStateStore
from cloud_head.rollout import (
    MIN_LABELLED_FOR_DECISION,
    MIN_LATENCY_WINDOWS,
    ROLLOUT_RECORD,
    RampStep,
    RolloutState,
    StepFigures,
    judge,
    ramp_schedule,
)
from continuum.spec import RollbackRules, RolloutSpec
from tests.rollout_kit import PIPELINE, Clock, CloudRig, pipeline_spec

TENANT = "acme"
BOTH = RollbackRules(accuracy_drop=0.05, latency_rise=0.2)


def figures(
    *,
    labelled: int = MIN_LABELLED_FOR_DECISION,
    accuracy: float | None = 0.95,
    baseline_accuracy: float | None = 0.95,
    windows: int = MIN_LATENCY_WINDOWS,
    p95_ms: float | None = 2.0,
    baseline_p95_ms: float | None = 2.0,
) -> StepFigures:
    return StepFigures(
        labelled=labelled,
        candidate_accuracy=accuracy,
        baseline_accuracy=baseline_accuracy,
        latency_windows=windows,
        candidate_p95_ms=p95_ms,
        baseline_p95_ms=baseline_p95_ms,
        latency_baseline="v1 on cam-3, cam-4",
    )


class TestRampSchedule:
    @pytest.mark.parametrize(
        ("rollout", "nodes", "expected"),
        [
            (RolloutSpec(canary=0.1), 10, [(0.1, 1), (0.2, 2), (0.4, 4), (0.8, 8), (1.0, 10)]),
            (
                RolloutSpec(canary=0.1),
                100,
                [(0.1, 10), (0.2, 20), (0.4, 40), (0.8, 80), (1.0, 100)],
            ),
            (RolloutSpec(canary=0.25), 3, [(0.25, 1), (0.5, 2), (1.0, 3)]),
            (RolloutSpec(canary=0.25), 2, [(0.25, 1), (1.0, 2)]),  # 50% adds no node: skipped
            (RolloutSpec(canary=0.1), 1, [(0.1, 1)]),  # the canary is already everyone
            (RolloutSpec(canary=0.25, ramp_factor=4), 8, [(0.25, 2), (1.0, 8)]),
            (
                RolloutSpec(canary=0.1, ramp_factor=3),
                20,
                [(0.1, 2), (0.3, 6), (0.9, 18), (1.0, 20)],
            ),
            (RolloutSpec(canary=0.7), 10, [(0.7, 7), (1.0, 10)]),  # not 8: 0.7 * 10 is 7
        ],
    )
    def test_steps_multiply_the_share_up_to_every_node(
        self, rollout: RolloutSpec, nodes: int, expected: list[tuple[float, int]]
    ) -> None:
        assert ramp_schedule(rollout, nodes) == expected

    @pytest.mark.parametrize("nodes", [1, 2, 3, 7, 16, 33, 1000])
    @pytest.mark.parametrize("canary", [0.01, 0.1, 0.25, 0.5, 1.0])
    def test_every_step_adds_nodes_and_the_last_is_the_whole_fleet(
        self, nodes: int, canary: float
    ) -> None:
        plan = ramp_schedule(RolloutSpec(canary=canary, ramp_factor=2.0), nodes)
        counts = [count for _, count in plan]
        assert counts[0] >= 1 and counts[-1] == nodes
        assert counts == sorted(set(counts))


class TestJudge:
    def test_a_step_within_both_thresholds_advances_with_its_figures(self) -> None:
        decision, text = judge(BOTH, figures(accuracy=0.93, p95_ms=2.3))
        assert decision == "advance"
        assert text == (
            "accuracy 0.930 vs baseline 0.950 over 40 labelled frames; "
            "p95 latency 2.3 ms vs 2 ms (v1 on cam-3, cam-4)"
        )

    def test_an_accuracy_drop_past_the_threshold_rolls_back_naming_it(self) -> None:
        decision, text = judge(BOTH, figures(accuracy=0.85))
        assert decision == "roll back"
        assert text == (
            "accuracy 0.850 fell more than 0.05 below the baseline's 0.950 "
            "(over 40 labelled frames)"
        )

    def test_a_latency_rise_past_the_threshold_rolls_back_naming_it(self) -> None:
        decision, text = judge(BOTH, figures(p95_ms=2.5))
        assert decision == "roll back"
        assert text == (
            "p95 latency 2.5 ms rose more than 20% above v1 on cam-3, cam-4's 2 ms "
            "(+25%, over 3 windows)"
        )

    def test_latency_rolls_back_even_while_accuracy_waits_for_labels(self) -> None:
        decision, text = judge(BOTH, figures(labelled=3, p95_ms=4.0))
        assert decision == "roll back" and text.startswith("p95 latency 4 ms")

    @pytest.mark.parametrize(
        ("measured", "missing"),
        [
            (figures(labelled=12), "12 of 40 labelled frames"),
            (figures(windows=1), "1 of 3 windows with latency"),
            (figures(labelled=0, windows=0), "0 of 40 labelled frames, 0 of 3 windows"),
        ],
    )
    def test_a_step_without_enough_data_waits_and_says_for_what(
        self, measured: StepFigures, missing: str
    ) -> None:
        decision, text = judge(BOTH, measured)
        assert decision == "wait"
        assert text.startswith(f"not enough data yet: {missing}")

    def test_a_rule_that_is_off_needs_no_data_and_never_fires(self) -> None:
        accuracy_only = RollbackRules(accuracy_drop=0.05)
        assert judge(accuracy_only, figures(windows=0, p95_ms=50.0))[0] == "advance"
        latency_only = RollbackRules(latency_rise=0.2)
        assert judge(latency_only, figures(labelled=0, accuracy=0.1))[0] == "advance"

    def test_without_a_baseline_figure_a_rule_cannot_fire(self) -> None:
        measured = figures(accuracy=0.5, baseline_accuracy=None, p95_ms=9.0, baseline_p95_ms=None)
        decision, text = judge(BOTH, measured)
        assert decision == "advance"
        assert "vs baseline n/a" in text and "vs n/a ms" in text


# -- stored state --------------------------------------------------------------------------


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CloudRig]:
    built = CloudRig(tmp_path, TENANT, Clock(900.0))
    for node in ("cam-1", "cam-2", "cam-3", "cam-4"):
        built.node_joins(node)
    try:
        yield built
    finally:
        built.close()


class TestStoredState:
    def test_a_state_with_steps_survives_its_json_record(self) -> None:
        state = RolloutState(
            pipeline=PIPELINE,
            stage="canary",
            candidate="v2",
            baseline="v1",
            canary_nodes=("cam-3", "cam-1"),
            started_at=1000.0,
            steps=(
                RampStep(0, 0.25, ("cam-3",), 1000.0, "canary on cam-3"),
                RampStep(1, 0.5, ("cam-3", "cam-1"), 1100.0, "canary held for 60 s (...)"),
            ),
            order=("cam-3", "cam-1", "cam-2", "cam-4"),
            canary_latency_p95_ms=2.1,
            baseline_latency_p95_ms=2.0,
            verdict="holding 60 s without regression",
            decide_at=1170.0,
        )
        record = json.loads(json.dumps(state.to_record()))
        assert RolloutState.from_record(record) == state

    def test_a_canary_stored_before_ramps_resumes_as_step_zero(self, rig: CloudRig) -> None:
        old = RolloutState(
            pipeline=PIPELINE,
            stage="canary",
            candidate="v2",
            baseline="v1",
            canary_nodes=("cam-2",),
            started_at=1000.0,
            reason="canary on cam-2",
        ).to_record()
        for key in ("steps", "order", "verdict", "decide_at"):
            del old[key]
        states = PipelineStateStore(rig.book.path, TENANT, PIPELINE)
        states.save(ROLLOUT_RECORD, old)
        states.close()

        controller = rig.rollout(pipeline_spec(TENANT, rollout=RolloutSpec(canary=0.25)))

        state = controller.state
        assert state.steps == (RampStep(0, 0.25, ("cam-2",), 1000.0, "canary on cam-2"),)
        assert state.order == ("cam-2",)
        assert replace(state, steps=(), order=()) == RolloutState.from_record(old)
        assert controller.plan() == [
            {"share": 0.25, "nodes": 1},
            {"share": 0.5, "nodes": 2},
            {"share": 1.0, "nodes": 4},
        ]
