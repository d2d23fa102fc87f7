"""The canary judges a candidate only on frames it never trained on.

A window that began before its node's training cut of the candidate may hold frames the
candidate was trained on (a camera looping over its images, a node whose recent frames were
uplinked and labelled): it is left out, counted, and shown. The rollout runs on the real
SQLite stores of the rollout kit with one hand-moved clock; no broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_head.audit import AuditAction
from cloud_head.cli.rollout import rollout_lines
from cloud_head.registry import ModelVersion
from cloud_head.rollout import RolloutController
from tests.rollout_kit import NODES, Clock, CloudRig, pipeline_spec, serve_v1

TENANT = "acme"
#: Canary on one of four nodes for 60 s; an accuracy drop of 0.05 rolls back.
SPEC = pipeline_spec(TENANT, retrain=False)
T0 = 1_800_000_000.0


@pytest.fixture
def head(tmp_path: Path) -> Iterator[CloudRig]:
    built = CloudRig(tmp_path, TENANT, Clock(T0))
    try:
        yield built
    finally:
        built.close()


def cut_at(at_s: float) -> dict[str, Any]:
    """A lineage whose training cut is ``at_s`` (edge clock) on every node."""
    cut = {"captured_at_ns": int(at_s * 1e9), "seq": 500}
    return {"training_cut": dict.fromkeys(NODES, cut)}


def windows(head: CloudRig, node: str, version: ModelVersion, count: int, correct: int) -> None:
    """``count`` 10 s windows of 40 labelled frames, ``correct`` of them right, 10 s apart."""
    for _ in range(count):
        head.clock.advance(10)
        head.telemetry(node, version.version, labelled=40, correct=correct)


def canary_of(head: CloudRig, rollout: RolloutController, v2: ModelVersion) -> str:
    (canary,) = rollout.begin(v2).canary_nodes
    head.node_serves(canary, v2)
    return canary


class TestCandidateWindows:
    def test_windows_before_the_cut_are_left_out_and_the_drop_shows(self, head: CloudRig) -> None:
        rollout = head.rollout(SPEC)
        serve_v1(head, rollout)  # every node 95% on v1
        switch = head.clock()
        v2 = head.register("v2", lineage=cut_at(switch + 45))
        canary = canary_of(head, rollout, v2)
        windows(head, canary, v2, 5, correct=40)  # began before the cut: memory, 100%
        windows(head, canary, v2, 3, correct=34)  # unseen frames: 85%

        state = rollout.tick()

        assert state.stage == "rolled_back", state
        assert (state.canary_accuracy, state.canary_labelled_frames) == (0.85, 120)
        assert state.windows_before_cut == 5
        assert state.reason.endswith("; 5 window(s) before the training cut left out")
        (record,) = head.records(AuditAction.ROLLBACK)
        assert record.details["canary_labelled_frames"] == 120
        assert record.details["windows_before_training_cut"] == 5
        lines = rollout_lines(state.to_record(), now=head.clock())
        assert (
            "canary accuracy: 0.850 on 120 unseen frames; 5 windows before the training cut "
            "left out"
        ) in lines

    def test_a_step_whose_windows_all_began_before_the_cut_waits_and_says_why(
        self, head: CloudRig
    ) -> None:
        rollout = head.rollout(SPEC)
        serve_v1(head, rollout)
        v2 = head.register("v2", lineage=cut_at(head.clock() + 1000))
        canary = canary_of(head, rollout, v2)
        windows(head, canary, v2, 8, correct=40)

        state = rollout.tick()

        assert state.stage == "canary", state
        assert state.verdict == (
            "not enough data yet: 0 of 40 labelled frames; "
            "8 window(s) before the training cut left out"
        )

    def test_without_a_cut_every_window_counts_and_memory_hides_the_drop(
        self, head: CloudRig
    ) -> None:
        rollout = head.rollout(SPEC)
        serve_v1(head, rollout)
        v2 = head.register("v2")  # registered by hand: no training cut in its lineage
        canary = canary_of(head, rollout, v2)
        windows(head, canary, v2, 5, correct=40)
        windows(head, canary, v2, 3, correct=34)

        state = rollout.tick()

        assert len(state.steps) == 2 and state.stage == "canary", state  # ramped up
        assert (state.canary_labelled_frames, state.windows_before_cut) == (320, 0)
        assert state.canary_accuracy == pytest.approx(302 / 320)


class TestBaselineWindows:
    def test_the_baseline_counts_only_windows_after_the_cut_too(self, head: CloudRig) -> None:
        rollout = head.rollout(SPEC)
        v1 = serve_v1(head, rollout)  # a v1 window at T0 on every node, 95%
        head.telemetry("cam-1", "v1", labelled=100, correct=60)  # began T0: before the cut
        head.clock.advance(30)
        head.telemetry("cam-1", "v1", labelled=100, correct=95)  # began T0 + 30: after it
        head.clock.advance(10)
        v2 = head.register("v2", lineage=cut_at(T0 + 25))
        canary = canary_of(head, rollout, v2)
        assert canary == "cam-1" and v1.version == "v1"
        windows(head, canary, v2, 7, correct=34)  # 85%: more than 0.05 below 95%

        state = rollout.tick()

        # Over every window before the switch the baseline would be 83%, and v2 would pass.
        assert state.stage == "rolled_back", state
        assert (state.baseline_accuracy, state.baseline_labelled_frames) == (0.95, 100)
        assert state.baseline_windows_before_cut == 2
        assert "(2 of the baseline)" in state.reason
        (record,) = head.records(AuditAction.ROLLBACK)
        assert record.details["baseline_windows_before_training_cut"] == 2

    def test_with_no_baseline_window_after_the_cut_the_baseline_uses_its_own_unseen_frames(
        self, head: CloudRig
    ) -> None:
        rollout = head.rollout(SPEC)
        serve_v1(head, rollout)  # v1 has no cut of its own: all its windows are unseen to it
        switch = head.clock()
        v2 = head.register("v2", lineage=cut_at(switch - 1))
        canary = canary_of(head, rollout, v2)
        windows(head, canary, v2, 7, correct=34)

        state = rollout.tick()

        assert state.stage == "rolled_back", state
        assert (state.baseline_accuracy, state.baseline_labelled_frames) == (0.95, 100)
        assert state.windows_before_cut == 0
