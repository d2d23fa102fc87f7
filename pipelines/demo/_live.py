"""The demo's live view: one row per edge agent, then the cloud's state, until time is up.

A terminal gets a live table refreshed twice a second; a log gets the same view printed every
ten seconds. Each poll also notes on the timeline when a training starts and when the rollout
changes stage, which the report shows.
"""

from __future__ import annotations

import time
from typing import Any

from pipelines.demo._options import TENANT, DemoOptions, Timeline
from pipelines.demo._reserved import ReservedScores
from pipelines.demo._scenarios import Scenario, scenario_named, window_metric

__all__ = ["live_view", "watch"]


def watch(
    console: Any,
    heads: dict[str, Any],
    pipeline: str,
    agents: list[Any],
    timeline: Timeline,
    options: DemoOptions,
    reserved: ReservedScores | None = None,
    scenario: Scenario | None = None,
) -> dict[str, Any]:
    """Show live progress until the duration is over; return the last controller status.

    ``reserved`` scores each new model version on the reserved split, shown beside the live
    metric of ``scenario`` (digits: accuracy; a failed scoring is said once and the column
    stays empty).
    """
    scenario = scenario or scenario_named("digits")
    from rich.live import Live

    controller = heads[TENANT].controllers[pipeline]
    status: dict[str, Any] = {}
    end = timeline.stream_start + options.duration_s
    noted = _Noted()
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        if not options.live:
            live.stop()
        last_print = 0.0
        while time.time() < end:
            time.sleep(1.0)
            try:
                status, nodes, ingest = _poll(controller, heads)
            except Exception as error:  # a slow poll must not end the demo
                console.print(f"[yellow]progress poll failed: {error}[/]")
                continue
            noted.note(status, timeline)
            if reserved is not None:
                try:
                    reserved.refresh()
                except Exception as error:  # the live view goes on without the column
                    console.print(f"[yellow]reserved-split scoring failed: {error}[/]")
                    reserved = None
            view = live_view(agents, nodes, ingest, status, timeline, pipeline, reserved, scenario)
            if options.live:
                live.update(view)
            elif time.time() - last_print > 10:
                console.print(view)
                last_print = time.time()
    return status


def _poll(
    controller: Any, heads: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the controller's status, every tenant's nodes and the watched tenant's ingest."""
    import ray

    status = ray.get(controller.status.remote(), timeout=10)
    nodes = [n for h in heads.values() for n in ray.get(h.fleet.nodes.remote(), timeout=10)]
    ingest = [ray.get(a.stats.remote(), timeout=10) for a in heads[TENANT].ingest]
    return status, nodes, ingest


class _Noted:
    """What the timeline already holds: trainings seen, and the rollout's last stage."""

    def __init__(self) -> None:
        self.trainings = 0
        self.stage = ""

    def note(self, status: dict[str, Any], timeline: Timeline) -> None:
        """Note each new training and each change of the rollout's stage on the timeline."""
        trainings = status.get("trainings", [])
        for record in trainings[self.trainings :]:
            timeline.event("training started", reason=record["reason"])
        self.trainings = len(trainings)
        rollout = status.get("rollout", {})
        stage = f"{rollout.get('stage')}:{rollout.get('candidate')}"
        if stage != self.stage:
            timeline.event(
                "rollout",
                stage=rollout.get("stage"),
                version=rollout.get("candidate"),
                reason=rollout.get("reason"),
            )
            self.stage = stage


def live_view(
    agents: list[Any],
    nodes: list[dict[str, Any]],
    ingest: list[dict[str, Any]],
    status: dict[str, Any],
    timeline: Any,
    pipeline: str,
    reserved: ReservedScores | None = None,
    scenario: Scenario | None = None,
) -> Any:
    """Return a rich renderable: one row per agent, then the cloud's state."""
    from rich.console import Group

    return Group(
        _agents_table(
            agents, nodes, timeline, pipeline, reserved, scenario or scenario_named("digits")
        ),
        _cloud_table(ingest, status, timeline),
    )


def _agents_table(
    agents: list[Any],
    nodes: list[dict[str, Any]],
    timeline: Any,
    pipeline: str,
    reserved: ReservedScores | None,
    scenario: Scenario,
) -> Any:
    """One row per agent: where it is, what it serves, how well (live, and on the reserved
    split under its site's condition, in the scenario's metrics), what it uplinks, and what
    each drift signal says."""
    from rich.table import Table

    by_node = {n["node"]: n for n in nodes}
    now = time.time()
    elapsed = now - timeline.stream_start
    until_drift = timeline.drift_at - now
    site = scenario.drift_site
    title = f"t = {elapsed:5.0f} s   " + (
        f"drift at {site} in {until_drift:.0f} s" if until_drift > 0 else f"{site} drifted"
    )
    table = Table(title=title, expand=False)
    for column in (
        "agent",
        "tenant",
        "site",
        "online",
        "model",
        f"{scenario.records}/s",
        f"live {scenario.live_metric}",
        f"reserved {scenario.metric}",
        "uplinked",
        "drift (outputs inputs labels)",
    ):
        table.add_column(
            column, justify="right" if column not in ("agent", "tenant", "site") else "left"
        )
    for agent in agents:
        info = by_node.get(agent.node, {})
        last = (info.get("telemetry") or {}).get(getattr(agent, "pipeline", "") or pipeline) or {}
        rate = last.get("frames", 0) / last["window_s"] if last.get("window_s") else 0.0
        acc = window_metric([last], scenario.live_metric)
        share = last.get("uplinked", 0) / last["frames"] if last.get("frames") else 0.0
        drifting = agent.drifted and until_drift <= 0
        # The reserved split is the factory pipeline's: the lab's forms have none.
        held = (
            reserved.accuracy(last.get("model_version"), drifting)
            if reserved is not None and getattr(agent, "tenant", TENANT) == TENANT
            else None
        )
        table.add_row(
            agent.node,
            getattr(agent, "tenant", ""),
            agent.site + (" (drifting)" if agent.drifted and until_drift <= 0 else ""),
            "yes" if info.get("online") else "no",
            str(last.get("model_version", "-")),
            f"{rate:.1f}",
            "-" if acc is None else f"{acc:.2f}",
            "-" if held is None else f"{held:.2f}",
            f"{share:.0%}",
            _drift_cell(last),
        )
    return table


def _drift_cell(window: dict[str, Any]) -> str:
    """Each drift signal's score, ``!`` where it says drifted; the one score of an older agent."""
    readings = {r["signal"]: r for r in window.get("drift") or []}
    if not readings:
        return f"{window.get('drift_score', 0.0):.2f}" + (" !" if window.get("drifted") else "")
    cells = []
    for signal in ("outputs", "inputs", "labels"):
        reading = readings.get(signal)
        if reading is None:
            cells.append("-")
        elif not reading.get("ready", True):
            cells.append("…")
        else:
            cells.append(f"{reading['score']:.2f}" + ("!" if reading["drifted"] else ""))
    return " ".join(cells)


def _cloud_table(ingest: list[dict[str, Any]], status: dict[str, Any], timeline: Any) -> Any:
    """The cloud's state: broker link, samples, model, training, rollout, recent incidents."""
    from rich.table import Table

    stored = sum(int(s.get("stored", 0)) for s in ingest)
    labels = sum(int(s.get("labels", 0)) for s in ingest)
    rejected = sum(sum((s.get("rejected") or {}).values()) for s in ingest)
    rollout = status.get("rollout", {})
    trainings = status.get("trainings", [])
    last_training = trainings[-1] if trainings else {}
    cloud = Table(show_header=False, box=None)
    cloud.add_row("cloud's broker link", _broker_link(ingest, time.time()))
    cloud.add_row("samples stored", f"{stored} ({labels} labels, {rejected} rejected)")
    cloud.add_row("current model", str(status.get("current", "-")))
    cloud.add_row(
        "training",
        f"{status.get('training', '-')}"
        + (
            f" — last: {last_training.get('outcome')} ({last_training.get('reason')})"
            if last_training
            else ""
        ),
    )
    cloud.add_row(
        "rollout",
        f"{rollout.get('stage', '-')} {rollout.get('candidate') or ''}"
        f" — {rollout.get('reason', '')}",
    )
    incidents = [
        e for e in timeline.events if e["event"] in ("fault", "crashed", "restarted", "failed")
    ]
    for event in incidents[-4:]:
        what = (
            f"{event['kind']} on {event['target']}"
            if event["event"] == "fault"
            else f"{event['service']} {event['event']} {event.get('detail', '')}"
        )
        cloud.add_row(f"t = {event['t'] - timeline.stream_start:4.0f} s", what)
    return cloud


def _broker_link(stats: list[dict[str, Any]], now: float) -> str:
    """Say whether the cloud services are connected to the broker, and since when not."""
    down = [s.get("disconnected_since") for s in stats if s.get("connected") is False]
    if not stats:
        return "-"
    if not down:
        return "connected"
    since = min((d for d in down if d is not None), default=None)
    return "DISCONNECTED" + ("" if since is None else f" for {now - since:.0f} s")
