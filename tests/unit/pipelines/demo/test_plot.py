"""The demo's ``report.png`` is drawn whatever the run reached, even with no accuracy to plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.demo._plot import write_plot

PNG = b"\x89PNG\r\n\x1a\n"


def report(live: list[dict[str, Any]]) -> dict[str, Any]:
    """A report of one agent with ``live`` windows, one fault and one restart."""
    return {
        "pipeline": "digits-inspection",
        "agents": {"cam-1": {"site": "lux-1", "live": live}},
        "drift": {"kind": "blur", "site": "lux-2", "at_s": 20.0},
        "uplink_share": None,
        "faults": [{"t": 10.0, "kind": "link_cut", "target": "lux-1", "seconds": 30.0}],
        "restarts": [{"t": 12.0}],
    }


class TestWritePlot:
    def test_a_run_with_accuracy_plots_it(self, tmp_path: Path) -> None:
        live = [
            {"t": float(t), "accuracy": 0.9, "model_version": "v1" if t < 30 else "v2"}
            for t in range(0, 60, 2)
        ]
        write_plot(report(live), tmp_path / "report.png")
        assert (tmp_path / "report.png").read_bytes().startswith(PNG)

    def test_a_run_where_no_agent_reported_accuracy_still_plots(self, tmp_path: Path) -> None:
        # No line to label: the legend is left out instead of warning (an error under pytest).
        live = [{"t": 2.0, "accuracy": None, "model_version": None}]
        write_plot(report(live), tmp_path / "report.png")
        assert (tmp_path / "report.png").read_bytes().startswith(PNG)
