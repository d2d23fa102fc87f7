"""The shared benchmark harness: alternated rounds, spreads, computed verdicts, the JSON schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[3] / "benchmarks"))

import _harness as harness


class TestAlternate:
    def test_cases_interleave_within_each_round(self) -> None:
        order: list[str] = []
        values = harness.alternate(
            {"a": lambda: order.append("a") or 1.0, "b": lambda: order.append("b") or 2.0},
            3,
        )
        assert order == ["a", "b", "a", "b", "a", "b"]
        assert values == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}

    def test_zero_rounds_is_refused(self) -> None:
        with pytest.raises(ValueError, match="rounds must be >= 1"):
            harness.alternate({"a": lambda: 1.0}, 0)


class TestVerdicts:
    def test_ratio_is_paired_per_round_and_judged_on_its_median(self) -> None:
        spread = harness.ratios([8.0, 9.0, 4.0], [10.0, 10.0, 10.0])
        assert (spread.median, spread.low, spread.high) == (0.8, 0.4, 0.9)
        assert harness.at_least("r", spread, 0.8).met
        assert not harness.at_least("r", spread, 0.81).met
        assert harness.at_most("r", spread, 0.8).met
        assert not harness.at_most("r", 0.9, 0.8).met

    def test_unpaired_rounds_are_refused(self) -> None:
        with pytest.raises(ValueError, match="pair rounds"):
            harness.ratios([1.0], [1.0, 2.0])


class TestReport:
    def test_json_has_the_shared_schema(self, tmp_path: Path) -> None:
        report = harness.Report("unit", paths=[tmp_path])
        spread = report.case("a", [3.0, 1.0, 2.0], "items/s", note="x")
        report.verdict(harness.at_least("a fast", spread, 2.5, " items/s"))
        out = tmp_path / "r" / "result.json"
        report.finish(out)
        data = json.loads(out.read_text())
        assert set(data) == {"benchmark", "date", "environment", "cases", "verdicts"}
        assert data["cases"]["a"] == {
            "unit": "items/s",
            "median": 2.0,
            "min": 1.0,
            "max": 3.0,
            "values": [3.0, 1.0, 2.0],
            "note": "x",
        }
        assert data["verdicts"] == [
            {
                "name": "a fast",
                "target": ">= 2.5 items/s",
                "measured": "2 items/s (1-3 items/s)",
                "met": False,
            }
        ]
        env = data["environment"]
        assert env["cpu_count"] >= 1 and env["affinity"]
        assert len(env["load_average_end"]) == 3
        assert env["filesystems"][0]["path"] == str(tmp_path)
        assert env["filesystems"][0]["type"]


class TestEnvironment:
    def test_libraries_a_child_process_imports_can_be_named(self) -> None:
        env = harness.environment(uses=("paho",))
        assert env["libraries"]["paho-mqtt"]
        assert "paho-mqtt" not in harness.environment()["libraries"] or "paho" in sys.modules
