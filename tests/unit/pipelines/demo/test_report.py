"""The demo report: when drift was seen, live beside reserved accuracy; the isolation targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.demo._report import DETECTION_WITHIN_S, _agent_figures, _loop_targets

DRIFT_AT = 1000.0
VERSIONS = {
    "v1": {"clean": 0.98, "drifted": 0.40},
    "v2": {"clean": 0.97, "drifted": 0.95},
}


def window(
    ts: float, version: str, *, drifted: bool = False, signals: dict[str, bool] | None = None
) -> dict[str, Any]:
    """One telemetry window as the fleet keeps it: 40 frames, 38 right."""
    return {
        "ts": ts,
        "model_version": version,
        "frames": 40,
        "uplinked": 4,
        "labelled": 40,
        "correct": 38,
        "drift_score": 0.5 if drifted else 0.1,
        "drifted": drifted,
        "drift": [
            {"signal": s, "score": 0.5 if d else 0.1, "drifted": d, "ready": True}
            for s, d in (signals or {}).items()
        ],
    }


def figures(windows: list[dict[str, Any]], *, drifted: bool = True) -> dict[str, Any]:
    return _agent_figures(
        "lux-2", drifted, windows, VERSIONS, start=DRIFT_AT - 40, drift_at=DRIFT_AT
    )


class TestDetection:
    def test_each_signal_is_timed_from_the_onset(self) -> None:
        windows = [
            window(DRIFT_AT - 2, "v1"),
            window(DRIFT_AT + 2, "v1"),
            window(DRIFT_AT + 4, "v1", drifted=True, signals={"inputs": True, "outputs": False}),
            window(DRIFT_AT + 8, "v1", drifted=True, signals={"inputs": True, "labels": True}),
        ]
        detection = figures(windows)["drift_detection"]
        assert detection["first_s"] == 4.0
        assert detection["by_signal"] == {"inputs": 4.0, "labels": 8.0}
        assert detection["false_alarm_windows"] == 0

    def test_alarms_before_the_onset_are_false_alarms(self) -> None:
        windows = [window(DRIFT_AT - 4, "v1", drifted=True), window(DRIFT_AT + 2, "v1")]
        detection = figures(windows)["drift_detection"]
        assert detection["false_alarm_windows"] == 1
        assert detection["first_s"] is None

    def test_a_clean_camera_counts_every_alarm_as_false(self) -> None:
        windows = [window(DRIFT_AT + 2, "v1", drifted=True), window(DRIFT_AT + 4, "v1")]
        detection = figures(windows, drifted=False)["drift_detection"]
        assert detection == {"first_s": None, "by_signal": {}, "false_alarm_windows": 1}

    def test_the_target_needs_detection_within_the_limit(self) -> None:
        seen = figures([window(DRIFT_AT + DETECTION_WITHIN_S - 2, "v1", drifted=True)])
        late = figures([window(DRIFT_AT + DETECTION_WITHIN_S + 2, "v1", drifted=True)])
        assert _loop_targets({"a": seen}, 0.1)["drift_detected"] is True
        assert _loop_targets({"a": late}, 0.1)["drift_detected"] is False


class TestLiveBesideReserved:
    def test_each_window_carries_its_versions_reserved_accuracy_under_the_condition(
        self,
    ) -> None:
        windows = [
            window(DRIFT_AT - 2, "v1"),
            window(DRIFT_AT + 2, "v1"),
            window(DRIFT_AT + 60, "v2"),
        ]
        live = figures(windows)["live"]
        # Before the onset the camera is clean; after it, the fault's score applies.
        assert [p["reserved_accuracy"] for p in live] == [0.98, 0.40, 0.95]
        assert all(p["accuracy"] == 0.95 for p in live)

    def test_the_end_figures_show_the_gap(self) -> None:
        # Live says 0.95 on frames the camera showed; the reserved split says 0.40: memory.
        info = figures([window(DRIFT_AT - 2, "v1"), window(DRIFT_AT + 2, "v1")])
        assert info["live_accuracy_at_end"] == 0.95
        assert info["reserved_accuracy_at_end"] == 0.40
        assert info["uplinked_after_drift"] == 4
        assert info["frames_after_drift"] == 40


class TestIsolationWithinATenant:
    def test_an_attempt_the_broker_let_through_misses_the_target(self) -> None:
        from pipelines.demo._report import _policy_targets

        within = {
            "checked": True,
            "control_delivered": True,
            "attempts": {"publish status": True, "publish desired state": False},
            "held": False,
        }
        assert (
            _policy_targets({"node_isolation": within})["nodes_isolated_within_a_tenant"] is False
        )
        held = within | {"held": True}
        assert _policy_targets({"node_isolation": held})["nodes_isolated_within_a_tenant"] is True

    def test_an_anonymous_broker_is_not_judged(self) -> None:
        from pipelines.demo._report import _policy_targets
        from pipelines.demo._tenants import Tenancy, node_isolation_probe

        tenancy = Tenancy(policy=Path("p.yaml"), store_labels={}, salts={})
        within = node_isolation_probe(None, tenancy, target="cam-1", pipeline="p")
        assert within["checked"] is False and "anonymous" in within["why"]
        assert "nodes_isolated_within_a_tenant" not in _policy_targets({"node_isolation": within})
