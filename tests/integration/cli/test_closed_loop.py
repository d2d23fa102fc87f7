"""The closed loop end to end, shortened: real mosquitto, real Ray, edge-agent processes.

One run of ``continuum demo``'s loop on the session's broker and cluster; the tests read
the report it writes. It proves the whole chain moves: a drifted camera's samples are
uplinked and stored, a new model is trained on Ray Train, gated, registered, canaried and
rolled out, and accuracy at the drifted site rises after the rollout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from continuum.cli.demo import DemoOptions, prepare_workdir, run_loop
from continuum.embedded.broker import EmbeddedBroker
from continuum.wire.mqtt import BrokerSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def loop_report(
    tmp_path_factory: pytest.TempPathFactory, mqtt_broker: EmbeddedBroker, ray_cluster: Any
) -> dict[str, Any]:
    workdir = prepare_workdir(tmp_path_factory.mktemp("loop") / "demo")
    options = DemoOptions(duration_s=140, drift_at_s=20, fps=25, workdir=workdir, live=False)
    return run_loop(
        options,
        workdir,
        BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port),
        console=Console(width=120, force_terminal=False),
        dashboard=None,
    )


def _retrained(report: dict[str, Any]) -> str:
    """Return the first version after v1 that was promoted."""
    for entry in report["rollout"]["history"]:
        version = entry.split()[1].rstrip(":")
        if entry.startswith("promoted") and version != "v1":
            return version
    raise AssertionError(f"no retrained version was promoted: {report['rollout']['history']}")


def _drifted(report: dict[str, Any]) -> dict[str, Any]:
    (agent,) = [a for a in report["agents"].values() if a["drifted_camera"]]
    return agent


class TestClosedLoop:
    def test_a_new_model_was_trained_gated_and_registered(
        self, loop_report: dict[str, Any]
    ) -> None:
        registered = [t for t in loop_report["trainings"] if t["outcome"] == "registered"]
        assert len(registered) >= 2, loop_report["trainings"]
        retrain = registered[1]
        assert retrain["parent"] == "v1"
        assert retrain["gate"]["passed"] is True
        assert retrain["gate"]["candidate_score"] >= retrain["gate"]["current_score"]
        assert retrain["gate"]["holdout_size"] > 0
        assert retrain["edge_samples"] > 0
        assert len(loop_report["versions"]) >= 2

    def test_the_new_model_was_canaried_then_rolled_out(self, loop_report: dict[str, Any]) -> None:
        history = loop_report["rollout"]["history"]
        version = _retrained(loop_report)
        assert any(h.startswith(f"canary {version} ") for h in history), history
        served = {p["model_version"] for p in _drifted(loop_report)["live"]}
        assert version in served

    def test_accuracy_at_the_drifted_site_rose_after_the_rollout(
        self, loop_report: dict[str, Any]
    ) -> None:
        agent = _drifted(loop_report)
        drift_at = loop_report["drift"]["at_s"]

        # Live accuracy on the frames the camera saw: after the drift under v1, then under v2.
        def live_accuracy(version: str) -> float:
            points = [
                p for p in agent["live"] if p["t"] > drift_at + 4 and p["model_version"] == version
            ]
            frames = sum(p["frames"] for p in points)
            assert frames > 0, f"no drifted frames served by {version}"
            return (
                sum(p["accuracy"] * p["frames"] for p in points if p["accuracy"] is not None)
                / frames
            )

        assert live_accuracy(_retrained(loop_report)) > live_accuracy("v1") + 0.15
        # And on the reserved split, under the same fault, which nothing uplinked.
        assert agent["accuracy_after_recovery"] > agent["accuracy_after_drift"] + 0.15

    def test_the_report_files_were_written(self, loop_report: dict[str, Any]) -> None:
        workdir = Path(loop_report["options"]["workdir"])
        assert (workdir / "report.json").stat().st_size > 0
        assert (workdir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
