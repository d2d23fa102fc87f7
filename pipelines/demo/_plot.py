"""The demo's ``report.png``: the live metric per agent over time (accuracy for digits, the
scenario's task metric otherwise), with drift, models and faults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_plot"]


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Draw the live metric over time per agent beside its reserved-split score, with drift
    onset and model versions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    for node, info in report["agents"].items():
        points = [(p["t"], p["accuracy"]) for p in info["live"] if p["accuracy"] is not None]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        (line,) = ax.plot(xs, ys, label=f"{node} ({info['site']}) live", linewidth=1.6)
        # The same model's accuracy on the reserved split under the camera's condition: a live
        # line far above it means the model remembers frames rather than having learnt.
        reserved = [
            (p["t"], p["reserved_accuracy"])
            for p in info["live"]
            if p.get("reserved_accuracy") is not None
        ]
        if reserved:
            rx, ry = zip(*reserved, strict=True)
            ax.plot(
                rx,
                ry,
                color=line.get_color(),
                linestyle="--",
                linewidth=1.2,
                alpha=0.8,
                label=f"{node} reserved split",
            )
        previous = None
        for p in info["live"]:
            if p["model_version"] != previous:
                if previous is not None:
                    ax.axvline(p["t"], color=line.get_color(), linestyle=":", alpha=0.6)
                    ax.annotate(
                        p["model_version"],
                        (p["t"], 0.05 + 0.05 * list(report["agents"]).index(node)),
                        color=line.get_color(),
                        fontsize=8,
                    )
                previous = p["model_version"]
    _mark_faults(ax, report)
    drift = report["drift"]["at_s"]
    ax.axvline(drift, color="red", linewidth=2, alpha=0.7)
    ax.annotate(
        f"drift: {report['drift']['kind']} at {report['drift']['site']}",
        (drift, 1.01),
        color="red",
        fontsize=9,
    )
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("seconds since the cameras started")
    metric = report.get("metric") or {"reserved": "accuracy", "live": "accuracy"}
    ax.set_ylabel(f"live {metric['live']} solid, reserved-split {metric['reserved']} dashed")
    share = report.get("uplink_share")
    ax.set_title(
        f"continuum demo — {report['pipeline']}: uplinked "
        + ("n/a" if share is None else f"{share:.1%}")
        + f" of {report.get('records', 'frames')}"
    )
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run where no agent reported accuracy has none
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _mark_faults(ax: Any, report: dict[str, Any]) -> None:
    """Shade each chaos fault on the timeline (a cut link for its length) and tick restarts."""
    for index, fault in enumerate(report.get("faults", [])):
        start = fault["t"]
        length = float(fault.get("seconds", 0.0)) if fault["kind"] == "link_cut" else 0.0
        if length:
            ax.axvspan(start, start + length, color="grey", alpha=0.15)
        ax.axvline(start, color="black", linewidth=1, linestyle="--", alpha=0.6)
        ax.annotate(
            f"{fault['kind'].replace('_', ' ')}: {fault['target']}",
            (start, 0.30 - 0.045 * (index % 5)),
            fontsize=7,
            rotation=0,
            color="black",
            backgroundcolor=(1, 1, 1, 0.6),
        )
    for restart in report.get("restarts", []):
        ax.plot([restart["t"]], [0.02], marker="^", color="green", markersize=7)
        ax.annotate("restart", (restart["t"], 0.035), fontsize=6, color="green")
