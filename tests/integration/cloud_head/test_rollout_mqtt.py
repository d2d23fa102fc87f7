"""Rollout over a real mosquitto: regressing canaries roll back, a ramp runs, restarts resume.

The controllers run on real stores (SQLite registry, fleet and desired-state book, Parquet
samples) and publish desired state retained through a real MQTT client; the fleet is fed
the same status, reported and telemetry payloads an edge agent sends, and a plain paho
subscriber reads back what the nodes would be told.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_head.controller import PipelineController
from cloud_head.registry import ModelVersion
from cloud_head.rollout import MIN_LABELLED_FOR_DECISION, RolloutController, RolloutState
from continuum.embedded import EmbeddedBroker
from continuum.signing import verify_desired
from continuum.spec import RolloutSpec
from tests.rollout_kit import (
    NODES,
    PIPELINE,
    TRIGGER_SAMPLES,
    CloudRig,
    DesiredWatcher,
    canary_reports,
    connected_client,
    pipeline_spec,
)
from tests.rollout_kit import serve_v1 as fleet_on_v1

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: A fleet where canary 0.125 and factor 2 take 1, 2, 4, then all 8 nodes.
EIGHT_NODES = tuple(f"cam-{i}" for i in range(1, 9))
#: Canary, then every node at once (0.25 x 4 = 1): the rollout before ramps.
CANARY_THEN_ALL = RolloutSpec(canary=0.25, promote_after_s=60, ramp_factor=4, rollback_on_drop=0.05)
#: Canary 1 of 8 nodes, then 2, 4 and all, holding 60 s at each step; accuracy or latency.
RAMP = RolloutSpec.model_validate(
    {
        "canary": 0.125,
        "promote_after_s": "60 s",
        "ramp_factor": 2.0,
        "rollback_on": "accuracy drop 0.05 or p95 latency +20%",
    }
)


class Head(CloudRig):
    """The rig with the pipeline it runs (``use`` changes its rollout spec from now on)."""

    def use(self, rollout: RolloutSpec) -> None:
        """Run the pipeline with another rollout spec from now on."""
        self.spec = pipeline_spec(self.tenant, rollout=rollout)

    def rollout_controller(self) -> RolloutController:
        return self.rollout(self.spec, audited=False)

    def pipeline_controller(self) -> PipelineController:
        return self.controller(self.spec, audited=False)


@pytest.fixture
def head(tmp_path: Path, private_mqtt_broker: EmbeddedBroker) -> Iterator[Head]:
    tenant = f"ro-{uuid.uuid4().hex[:8]}"
    client = connected_client(private_mqtt_broker, f"controller-{tenant}")
    built = Head(tmp_path, tenant, client=client)
    built.use(CANARY_THEN_ALL)
    try:
        yield built
    finally:
        built.close()
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def watcher(head: Head, private_mqtt_broker: EmbeddedBroker) -> Iterator[DesiredWatcher]:
    watching = DesiredWatcher(private_mqtt_broker, head.tenant)
    try:
        yield watching
    finally:
        watching.close()


class TestRegressingCanary:
    def test_canary_whose_accuracy_drops_is_rolled_back(
        self, head: Head, watcher: DesiredWatcher
    ) -> None:
        controller = head.rollout_controller()
        v1 = fleet_on_v1(head, controller)
        watcher.wait_for(dict.fromkeys(NODES, "v1"))
        v2 = head.register("v2")

        state = controller.begin(v2)
        assert state.stage == "canary"
        (canary,) = state.canary_nodes
        watcher.wait_for({canary: "v2"} | {n: "v1" for n in NODES if n != canary})
        assert head.registry.get(head.tenant, PIPELINE, "v2").status == "canary"

        canary_reports(head, canary, v2, accuracy=0.80)  # 15 points below v1's 0.95
        state = controller.tick()

        assert state.stage == "rolled_back", state
        assert "fell more than 0.05" in state.reason
        assert state.canary_accuracy == pytest.approx(0.80, abs=0.01)
        assert state.baseline_accuracy == pytest.approx(0.95)
        assert head.registry.get(head.tenant, PIPELINE, "v2").status == "rolled_back"
        current = head.registry.current(head.tenant, PIPELINE)
        assert current is not None and current.version == v1.version
        watcher.wait_for(dict.fromkeys(NODES, "v1"))
        # The canary goes back to v1 on a signed order marked rollback (agents refuse an
        # unmarked downgrade); the nodes that never left v1 get no such mark.
        for node in NODES:
            state = watcher.latest(node)
            assert state is not None and state.signature is not None
            verify_desired(head.public_key, state.model_dump(mode="json"), state.signature)
            assert state.pipelines[PIPELINE].rollback is (node == canary)

    def test_canary_within_the_threshold_is_promoted(
        self, head: Head, watcher: DesiredWatcher
    ) -> None:
        controller = head.rollout_controller()
        fleet_on_v1(head, controller)
        v2 = head.register("v2")
        (canary,) = controller.begin(v2).canary_nodes

        canary_reports(head, canary, v2, accuracy=0.93)  # 2 points down, threshold 5
        state = controller.tick()

        assert state.stage == "promoted", state
        assert head.registry.get(head.tenant, PIPELINE, "v2").status == "current"
        watcher.wait_for(dict.fromkeys(NODES, "v2"))


class TestHeadRestart:
    def test_a_new_controller_resumes_the_canary_and_promotes_it(
        self, head: Head, watcher: DesiredWatcher
    ) -> None:
        first = head.pipeline_controller()
        fleet_on_v1(head, first)
        v2 = head.register("v2")
        started = first.rollout.begin(v2)
        (canary,) = started.canary_nodes
        head.node_serves(canary, v2)
        head.telemetry(canary, "v2", labelled=10, correct=10)
        assert first.tick().stage == "canary"  # too early to decide
        first.close()  # the cloud head dies mid-canary
        del first

        second = head.pipeline_controller()
        resumed = second.rollout.state
        assert resumed.stage == "canary"
        assert resumed.candidate == "v2" and resumed.baseline == "v1"
        assert resumed.canary_nodes == (canary,)
        assert resumed.started_at == started.started_at
        assert resumed.history == started.history
        assert second.status()["rollout"]["stage"] == "canary"

        canary_reports(head, canary, v2, accuracy=0.96)
        state = second.tick()

        assert state.stage == "promoted", state
        assert state.history[-2].startswith("canary v2 on ")
        assert head.registry.get(head.tenant, PIPELINE, "v2").status == "current"
        watcher.wait_for(dict.fromkeys(NODES, "v2"))
        # A third incarnation finds the promotion, not the canary.
        third = head.pipeline_controller()
        assert third.rollout.state.stage == "promoted"
        assert third.rollout.state.candidate == "v2"

    def test_a_new_controller_does_not_retrain_on_samples_already_trained_on(
        self, head: Head
    ) -> None:
        head.labelled_samples(TRIGGER_SAMPLES)

        first = head.pipeline_controller()
        first.tick()  # the trigger fires; training fails fast (no Ray here) but counts
        assert first.wait_idle(60)
        (record,) = first.status()["trainings"]
        assert record["reason"].startswith(f"{TRIGGER_SAMPLES} new labelled samples")
        assert first.status()["trained_on"] == TRIGGER_SAMPLES
        first.close()
        del first

        second = head.pipeline_controller()
        assert second.status()["trained_on"] == TRIGGER_SAMPLES
        assert second.status()["trainings"] == [record]
        second.tick()
        assert second.wait_idle(60)
        assert len(second.status()["trainings"]) == 1  # nothing new to train on


class TestMomentarilyEmptyFleet:
    def test_a_better_candidate_waits_for_a_canary_node_instead_of_going_everywhere(
        self, head: Head, watcher: DesiredWatcher
    ) -> None:
        controller = head.pipeline_controller()
        fleet_on_v1(head, controller)
        watcher.wait_for(dict.fromkeys(NODES, "v1"))
        for node in NODES:  # the fleet view is empty for a moment: every node is offline
            head.node_leaves(node)
        v2 = head.register("v2")

        state = controller.rollout.begin(v2)  # what a retraining that passed the gate calls

        assert (state.stage, state.candidate, state.baseline) == ("waiting", "v2", "v1"), state
        assert state.reason == (
            "waiting for an eligible canary node: 0 of 4 nodes matching continuum.io/tier=edge "
            "are online"
        )
        controller.request_retrain("asked while the candidate waits")
        head.clock.advance(20)
        assert controller.tick() == state
        assert controller.wait_idle(60)
        status = controller.status()
        assert (status["current"], status["rollout"]["stage"]) == ("v1", "waiting")
        assert status["trainings"] == []  # a rollout in progress holds retraining
        assert head.registry.get(head.tenant, PIPELINE, "v2").status == "registered"
        time.sleep(0.5)  # anything published would have reached the watcher by now
        assert [watcher.version(n) for n in NODES] == ["v1"] * len(NODES)

        head.node_joins("cam-2")  # one node comes back
        state = controller.tick()

        assert (state.stage, state.canary_nodes) == ("canary", ("cam-2",)), state
        assert state.reason == "canary on cam-2 after waiting 20 s for an eligible node"
        watcher.wait_for({"cam-2": "v2"})
        assert [watcher.version(n) for n in NODES if n != "cam-2"] == ["v1"] * 3
        assert head.registry.get(head.tenant, PIPELINE, "v2").status == "canary"
        current = head.registry.current(head.tenant, PIPELINE)
        assert current is not None and current.version == "v1"


def fleet_reports(
    head: Head,
    state: RolloutState,
    candidate: ModelVersion,
    *,
    accuracy: float,
    p95_ms: float,
    nodes: tuple[str, ...] = EIGHT_NODES,
) -> None:
    """Three 30 s rounds of windows: the step's nodes on the candidate, the others on v1.

    v1 keeps its 95% accuracy and 2 ms p95; the candidate has ``accuracy`` and ``p95_ms``.
    """
    for node in state.canary_nodes:
        head.node_serves(node, candidate)
    per_window = MIN_LABELLED_FOR_DECISION
    for _ in range(3):
        for node in nodes:
            if node in state.canary_nodes:
                head.telemetry(
                    node,
                    candidate.version,
                    labelled=per_window,
                    correct=round(per_window * accuracy),
                    p95_ms=p95_ms,
                )
            else:
                head.telemetry(node, "v1", labelled=per_window, correct=round(per_window * 0.95))
        head.clock.advance(30)


class TestRamp:
    def test_a_good_candidate_ramps_through_every_step_to_all_nodes(
        self, head: Head, watcher: DesiredWatcher
    ) -> None:
        head.use(RAMP)
        controller = head.rollout_controller()
        fleet_on_v1(head, controller, EIGHT_NODES)
        v2 = head.register("v2")

        state = controller.begin(v2)
        seen = [state.canary_nodes]
        for _ in range(3):
            watcher.wait_for({n: "v2" if n in state.canary_nodes else "v1" for n in EIGHT_NODES})
            fleet_reports(head, state, v2, accuracy=0.95, p95_ms=2.1)  # +5% p95: within 20%
            state = controller.tick()
            seen.append(state.canary_nodes)

        assert state.stage == "promoted", state
        assert [len(nodes) for nodes in seen[:3]] == [1, 2, 4]
        assert all(set(a) < set(b) for a, b in itertools.pairwise(seen[:3]))
        assert [(s.index, s.share, len(s.nodes)) for s in state.steps] == [
            (0, 0.125, 1),
            (1, 0.25, 2),
            (2, 0.5, 4),
            (3, 1.0, 8),
        ]
        assert state.steps[1].reason.startswith("canary held for ")
        assert "p95 latency 2.1 ms vs 2 ms (v1 on cam-" in state.steps[1].reason
        assert state.steps[3].reason.startswith("step 2 (50%) held for ")
        assert head.registry.get(head.tenant, PIPELINE, "v2").status == "current"
        watcher.wait_for(dict.fromkeys(EIGHT_NODES, "v2"))

    def test_a_slower_candidate_is_rolled_back_naming_latency(
        self, head: Head, watcher: DesiredWatcher
    ) -> None:
        head.use(RAMP)
        controller = head.rollout_controller()
        v1 = fleet_on_v1(head, controller, EIGHT_NODES)
        v2 = head.register("v2")
        state = controller.begin(v2)
        fleet_reports(head, state, v2, accuracy=0.95, p95_ms=2.2)  # +10%: the canary holds
        state = controller.tick()
        assert (state.stage, len(state.canary_nodes)) == ("canary", 2), state
        watcher.wait_for({n: "v2" for n in state.canary_nodes})

        fleet_reports(head, state, v2, accuracy=0.96, p95_ms=3.0)  # +50% on two nodes
        state = controller.tick()

        assert state.stage == "rolled_back", state
        assert state.reason.startswith("step 1 (25%): p95 latency 3 ms rose more than 20% above")
        assert "v1 on cam-" in state.reason and "2 ms (+50%" in state.reason
        assert (state.canary_latency_p95_ms, state.baseline_latency_p95_ms) == (3.0, 2.0)
        assert head.registry.get(head.tenant, PIPELINE, "v2").status == "rolled_back"
        current = head.registry.current(head.tenant, PIPELINE)
        assert current is not None and current.version == v1.version
        watcher.wait_for(dict.fromkeys(EIGHT_NODES, "v1"))

    def test_a_step_waits_for_latency_windows_before_it_advances(
        self, head: Head, watcher: DesiredWatcher
    ) -> None:
        head.use(RAMP)
        controller = head.rollout_controller()
        fleet_on_v1(head, controller, EIGHT_NODES)
        v2 = head.register("v2")
        (canary,) = controller.begin(v2).canary_nodes
        head.node_serves(canary, v2)
        for _ in range(2):  # enough labelled frames, one latency window short
            head.telemetry(canary, "v2", labelled=MIN_LABELLED_FOR_DECISION, correct=38)
            head.clock.advance(60)

        state = controller.tick()

        assert (state.stage, state.canary_nodes) == ("canary", (canary,)), state
        assert state.verdict == "not enough data yet: 2 of 3 windows with latency"
        watcher.wait_for({canary: "v2"} | {n: "v1" for n in EIGHT_NODES if n != canary})


class TestHeadRestartMidRamp:
    def test_a_new_controller_resumes_the_same_step_and_takes_the_same_nodes_next(
        self, head: Head, watcher: DesiredWatcher
    ) -> None:
        head.use(RAMP)
        first = head.pipeline_controller()
        fleet_on_v1(head, first, EIGHT_NODES)
        # The ramp takes the most drifted nodes first; this drift is gone by the next step,
        # so only the ranking stored at the canary gives the same nodes after a restart.
        drifted = ("cam-7", "cam-5", "cam-3", "cam-8")
        for rank, node in enumerate(drifted):
            head.telemetry(node, "v1", labelled=0, correct=0, drift=0.9 - rank / 10)
        v2 = head.register("v2")
        state = first.rollout.begin(v2)
        assert state.canary_nodes == ("cam-7",)
        fleet_reports(head, state, v2, accuracy=0.95, p95_ms=2.0)
        mid_ramp = first.tick()
        assert (mid_ramp.stage, mid_ramp.canary_nodes) == ("canary", ("cam-7", "cam-5"))
        first.close()  # the cloud head dies at step 1, before the step is judged
        del first

        second = head.pipeline_controller()
        resumed = second.rollout.state
        assert resumed == mid_ramp
        snapshot = second.status()["rollout"]
        assert [s["nodes"] for s in snapshot["steps"]] == [s.nodes for s in mid_ramp.steps]
        assert [p["nodes"] for p in snapshot["plan"]] == [1, 2, 4, 8]
        watcher.wait_for({n: "v2" if n in resumed.canary_nodes else "v1" for n in EIGHT_NODES})

        fleet_reports(head, resumed, v2, accuracy=0.95, p95_ms=2.0)
        step_2 = second.tick()
        assert (step_2.steps[-1].index, step_2.canary_nodes) == (2, drifted)
        watcher.wait_for({n: "v2" if n in drifted else "v1" for n in EIGHT_NODES})
        second.close()  # and dies again at step 2
        del second

        third = head.pipeline_controller()
        assert third.rollout.state == step_2
        fleet_reports(head, step_2, v2, accuracy=0.95, p95_ms=2.0)
        state = third.tick()
        assert state.stage == "promoted", state
        assert [len(s.nodes) for s in state.steps] == [1, 2, 4, 8]
        assert head.registry.get(head.tenant, PIPELINE, "v2").status == "current"
        watcher.wait_for(dict.fromkeys(EIGHT_NODES, "v2"))
