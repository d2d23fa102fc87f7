"""A candidate with no node that can take its canary waits; only the registry says "first model".

The controller runs on real SQLite stores (registry, fleet, desired-state book, audit log) with
one hand-moved clock; no broker: desired states are collected as they would be published.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_head.audit import AuditAction
from cloud_head.registry import ModelVersion
from cloud_head.rollout import RolloutController
from continuum.errors import ContinuumError
from tests.rollout_kit import NODES, PIPELINE, Clock, CloudRig, pipeline_spec

TENANT = "acme"
SPEC = pipeline_spec(TENANT, retrain=False)
WAITING_FOR_ALL = (
    "waiting for an eligible canary node: 0 of 4 nodes matching continuum.io/tier=edge are online"
)


@pytest.fixture
def head(tmp_path: Path) -> Iterator[CloudRig]:
    built = CloudRig(tmp_path, TENANT, Clock(1_800_000_000.0))
    try:
        yield built
    finally:
        built.close()


def serving_v1_then_dark(head: CloudRig, rollout: RolloutController) -> ModelVersion:
    """v1 serves on four nodes; then every node's last will says it went offline."""
    for node in NODES:
        head.node_joins(node)
    v1 = head.register("v1")
    assert rollout.begin(v1).stage == "promoted"
    head.clock.advance(10)
    for node in NODES:
        head.node_joins(node, online=False)
    assert rollout.eligible_nodes() == []
    return v1


class TestFirstModel:
    def test_the_pipelines_first_model_is_promoted_even_with_no_node(self, head: CloudRig) -> None:
        rollout = head.rollout(SPEC)
        v1 = head.register("v1")

        state = rollout.begin(v1)

        assert (state.stage, state.reason) == (
            "promoted",
            "first model of the pipeline: no canary needed",
        )
        current = head.registry.current(TENANT, PIPELINE)
        assert current is not None and current.version == "v1"

    def test_a_pipeline_whose_current_version_was_rolled_back_is_not_first(
        self, head: CloudRig
    ) -> None:
        rollout = head.rollout(SPEC)
        serving_v1_then_dark(head, rollout)
        head.register("v2")
        rollout.rollback_to(head.registry.get(TENANT, PIPELINE, "v2"), "try it", action="promote")
        rollout.rollback_to(head.registry.get(TENANT, PIPELINE, "v1"), "bad", action="rollback")
        v3 = head.register("v3")

        assert not rollout.is_first_model(v3)
        state = rollout.begin(v3)

        assert (state.stage, state.candidate, state.baseline) == ("waiting", "v3", "v1")
        assert head.sent("v3") == []

    def test_a_registry_that_lost_its_current_version_refuses_instead_of_promoting(
        self, head: CloudRig
    ) -> None:
        rollout = head.rollout(SPEC)
        serving_v1_then_dark(head, rollout)
        with sqlite3.connect(head.root / "registry" / "registry.sqlite3") as db:
            db.execute("DELETE FROM current_versions")  # a restore that missed one table
        v2 = head.register("v2")

        assert not rollout.is_first_model(v2)
        with pytest.raises(ContinuumError, match="v2 has no baseline to canary against"):
            rollout.begin(v2)

        assert head.registry.current(TENANT, PIPELINE) is None
        assert head.registry.get(TENANT, PIPELINE, "v2").status == "registered"
        assert head.sent("v2") == []


class TestWaitingForACanaryNode:
    def test_with_every_node_offline_a_candidate_waits_and_says_why(
        self, head: CloudRig, caplog: pytest.LogCaptureFixture
    ) -> None:
        rollout = head.rollout(SPEC)
        serving_v1_then_dark(head, rollout)
        v2 = head.register("v2")

        with caplog.at_level(logging.INFO, logger="cloud_head.rollout"):
            state = rollout.begin(v2)
            for _ in range(3):
                head.clock.advance(5)
                assert rollout.tick() == state

        assert (state.stage, state.candidate, state.baseline) == ("waiting", "v2", "v1")
        assert state.reason == WAITING_FOR_ALL
        assert state.canary_nodes == () and state.steps == ()
        assert state.history[-1] == f"v2 waits: {WAITING_FOR_ALL}"
        assert head.sent("v2") == []
        assert head.registry.get(TENANT, PIPELINE, "v2").status == "registered"
        current = head.registry.current(TENANT, PIPELINE)
        assert current is not None and current.version == "v1"
        assert head.rollout_events("v2") == ["waiting"]
        (logged,) = [r for r in caplog.records if r.name == "cloud_head.rollout"]
        assert logged.levelno == logging.WARNING
        assert WAITING_FOR_ALL in logged.getMessage() and "v1 keeps serving" in logged.getMessage()

    def test_the_canary_starts_on_the_first_node_that_comes_online(self, head: CloudRig) -> None:
        rollout = head.rollout(SPEC)
        serving_v1_then_dark(head, rollout)
        v2 = head.register("v2")
        rollout.begin(v2)
        head.clock.advance(30)
        head.node_joins("cam-3")

        state = rollout.tick()

        assert (state.stage, state.canary_nodes) == ("canary", ("cam-3",)), state
        assert state.reason == "canary on cam-3 after waiting 30 s for an eligible node"
        assert state.steps[0].nodes == ("cam-3",) and state.started_at == head.clock()
        assert head.sent("v2") == ["cam-3"]
        assert head.registry.get(TENANT, PIPELINE, "v2").status == "canary"
        assert head.rollout_events("v2") == ["waiting", "canary"]
        canary = head.log.records(TENANT, action=AuditAction.ROLLOUT)[-1].details
        assert (canary["nodes"], canary["waited_s"], canary["baseline"]) == (["cam-3"], 30, "v1")

    def test_a_node_silent_for_over_two_heartbeat_periods_takes_no_canary(
        self, head: CloudRig
    ) -> None:
        rollout = head.rollout(SPEC)
        for node in NODES:
            head.node_joins(node, heartbeat_s=10)
        v1 = head.register("v1")
        rollout.begin(v1)
        head.clock.advance(25)  # nobody marked them offline: the fleet service is down
        v2 = head.register("v2")

        state = rollout.begin(v2)

        assert state.stage == "waiting", state
        assert state.reason == (
            f"{WAITING_FOR_ALL} (cam-1, cam-2, cam-3 and 1 more said so but were last heard "
            "from more than 2 heartbeat periods ago)"
        )
        assert rollout.eligible_nodes() == list(NODES)
        head.node_joins("cam-2", heartbeat_s=10)
        assert rollout.tick().canary_nodes == ("cam-2",)
        assert head.sent("v2") == ["cam-2"]

    def test_a_waiting_rollout_resumes_after_a_restart(self, head: CloudRig) -> None:
        first = head.rollout(SPEC)
        serving_v1_then_dark(head, first)
        waiting = first.begin(head.register("v2"))
        head.restart_book()  # the cloud head dies while the candidate waits

        second = head.rollout(SPEC)
        assert second.state == waiting
        head.node_joins("cam-1")
        state = second.tick()

        assert (state.stage, state.candidate, state.canary_nodes) == ("canary", "v2", ("cam-1",))
        assert head.sent("v2") == ["cam-1"]

    def test_a_newer_candidate_replaces_the_waiting_one(self, head: CloudRig) -> None:
        rollout = head.rollout(SPEC)
        serving_v1_then_dark(head, rollout)
        rollout.begin(head.register("v2"))
        v3 = head.register("v3")

        state = rollout.begin(v3)

        assert (state.stage, state.candidate) == ("waiting", "v3")
        assert state.history[-2] == ("v2 superseded: v3 arrived while v2 waited for a canary node")
        assert head.rollout_events("v2") == ["waiting", "superseded"]
        head.node_joins("cam-4")
        assert rollout.tick().candidate == "v3"
        assert (head.sent("v2"), head.sent("v3")) == ([], ["cam-4"])
        assert head.registry.get(TENANT, PIPELINE, "v2").status == "registered"

    def test_an_operators_promotion_ends_the_wait(self, head: CloudRig) -> None:
        rollout = head.rollout(SPEC)
        serving_v1_then_dark(head, rollout)
        rollout.begin(head.register("v2"))
        v3 = head.register("v3")

        state = rollout.rollback_to(v3, "hotfix", actor="alice@ops")

        assert (state.stage, state.candidate) == ("promoted", "v3")
        assert state.history[-2] == "v2 no longer waits: v3 was promoted"
        head.node_joins("cam-1")
        assert rollout.tick().stage == "promoted"
        assert (head.sent("v2"), head.sent("v3")) == ([], ["cam-1"])
