"""The learning-loop benchmark's arms: the demo's pipeline with only the uplink policy changed,
and its verdicts computed from the runs' figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[3] / "benchmarks"))

import _harness as harness
import learning_loop

from continuum.spec import load_pipeline


def _row(end: float, uplinked: int, after: float = 0.04) -> dict[str, Any]:
    return {"reserved_after_drift": after, "reserved_end": end, "uplinked": uplinked}


class TestArmModule:
    def test_only_the_policy_changes(self, tmp_path: Path) -> None:
        import pipelines.digits_inspection as demo

        path = tmp_path / "learning_loop_arm_random.py"
        path.write_text(learning_loop._ARM_MODULE.format(arm="random", rate=0.1875))
        arm, original = load_pipeline(path), demo.pipe.spec
        assert arm.uplink.policy.describe() == "random(0.1875)"
        assert arm.uplink.detectors == original.uplink.detectors
        assert arm.uplink.budget_kbps == original.uplink.budget_kbps
        assert arm.model_dump(exclude={"uplink"}) == original.model_dump(exclude={"uplink"})


class TestVerdicts:
    def _verdicts(self, rows: dict[str, dict[str, Any]]) -> dict[str, bool]:
        report = harness.Report("learning_loop")
        learning_loop.judge(report, "inversion", rows)
        return {v.name.split(": ", 1)[1]: v.met for v in report.verdicts}

    def test_goal_met_at_a_tenth_of_the_bytes(self) -> None:
        rows = {"ours": _row(0.90, 99), "random": _row(0.80, 99), "all": _row(0.94, 1000)}
        assert self._verdicts(rows) == {
            "ours' share of the all arm's accuracy gain": True,  # 0.86 / 0.90
            "ours' uplink bytes / the all arm's": True,
            "ours' end accuracy minus random's at the same budget": True,
        }

    def test_goal_missed_on_gain_and_bytes(self) -> None:
        rows = {"ours": _row(0.50, 300), "random": _row(0.60, 300), "all": _row(0.94, 1000)}
        assert set(self._verdicts(rows).values()) == {False}

    def test_a_failed_run_is_a_missed_verdict(self) -> None:
        rows = {"ours": {"error": "no report"}, "all": _row(0.94, 1000)}
        assert list(self._verdicts(rows).values()) == [False]
