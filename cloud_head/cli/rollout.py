"""``continuum rollout status`` and ``continuum retrain``: the running controller of a pipeline."""

from __future__ import annotations

import argparse
import time
from typing import Any

from cloud_head.audit import default_actor
from cloud_head.cli._common import (
    add_cluster,
    add_json,
    add_root,
    add_tenant,
    authorize,
    controller,
    operator_command,
    operator_credential,
    print_json,
    wants_json,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``rollout`` subcommand (``retrain`` is ``register_retrain``)."""
    parser = subparsers.add_parser(
        "rollout",
        help="show where a pipeline's rollout stands",
        description="Ask the pipeline's running controller for its rollout: stage, candidate, "
        "the current ramp step and what it waits for, accuracies and latencies, and every "
        "step so far (share, nodes, when, why). A candidate with no node that can take its "
        "canary shows as 'waiting', with the reason, while the current version serves on. "
        "On a cloud head shared by tenants it asks for the tenant's credential first.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status",
        help="print the rollout's stage and history",
        description="Print the last training run (how it ended, which pool and Slurm "
        "allocation trained it, GPU-hours) and the rollout's stage and history. --json prints "
        'one document: {"tenant", "pipeline", "current", "training", "rollout": the '
        "controller's rollout snapshot (stage, candidate, baseline, reason, steps, plan, "
        'verdict, accuracies, latencies, history), "last_training": the last run\'s record '
        '(outcome, placement: pool, allocation, attempts; gpu_hours), "gpu_hours_used"}.',
    )
    add_tenant(status)
    add_root(status)
    add_cluster(status)
    add_json(status)
    status.set_defaults(run=run_status)


def register_retrain(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``retrain`` subcommand."""
    retrain = subparsers.add_parser(
        "retrain",
        help="retrain a pipeline now",
        description="Ask the pipeline's controller to retrain at its next tick, whatever the "
        "trigger says; the candidate still has to pass the gate. On a cloud head shared by "
        "tenants the tenant's credential is checked first (--password-file or "
        "$CONTINUUM_TENANT_PASSWORD, against the tenant registry under --root); the training "
        "run's audit records name 'tenant:TENANT via user@host' as who asked, with --reason "
        "beside it.",
    )
    add_tenant(retrain)
    add_root(retrain)
    add_cluster(retrain)
    retrain.add_argument(
        "--reason",
        default="requested by operator",
        help="why, a note the audit records keep beside the authenticated identity",
    )
    retrain.set_defaults(run=run_retrain)


@operator_command
def run_status(args: argparse.Namespace) -> int:
    """Print the rollout of one pipeline (``--json``: one document), once authorised."""
    import ray

    authorize(args)
    print_status(args, ray.get(controller(args).status.remote(), timeout=60))
    return 0


def print_status(args: argparse.Namespace, status: dict[str, Any]) -> None:
    """Print a controller's ``status()`` as ``rollout status`` shows it, or (``--json``) as one
    document with stable keys."""
    if wants_json(args):
        print_json(
            {
                "tenant": args.tenant,
                "pipeline": args.pipeline,
                "current": status["current"],
                "training": status["training"],
                "rollout": status["rollout"],
                "last_training": (status.get("trainings") or [None])[-1],
                "gpu_hours_used": status.get("gpu_hours_used"),
                "federated": status.get("federated"),
            }
        )
        return
    print(f"pipeline {args.pipeline}: current {status['current']}, training {status['training']}")
    for line in training_lines(status):
        print(line)
    for line in federated_lines(status.get("federated")):
        print(line)
    for line in rollout_lines(status["rollout"], now=time.time()):
        print(line)


def federated_lines(federated: dict[str, Any] | None) -> list[str]:
    """Return a federated pipeline's lines: its sites and quorum, what the rounds counted,
    and what a run waits for ("waiting for quorum: 1 of 3 sites answered ..."); none for a
    pipeline trained centrally."""
    if not federated:
        return []
    sites = federated.get("sites") or []
    lines = [
        f"federated: {len(sites)} sites ({', '.join(sites)}), quorum {federated.get('quorum')};"
        f" {federated.get('rounds', 0)} rounds, {federated.get('skipped', 0)} sites skipped,"
        f" updates clipped {federated.get('clipped', 0)}, excluded {federated.get('excluded', 0)}"
    ]
    if federated.get("status"):
        lines.append(f"  {federated['status']}")
    return lines


def training_lines(status: dict[str, Any]) -> list[str]:
    """Return the last training run's lines: how it ended, where it trained, GPU-hours.

    "last training: run-1 registered v3; pool hpc, Slurm allocation 4711 (...)"; a run moved
    after its allocation ended lists each attempt and how it ended.
    """
    trainings = status.get("trainings") or []
    if not trainings:
        return []
    last = trainings[-1]
    line = f"last training: {last.get('run') or '-'} {last['outcome']}"
    placement = last.get("placement") or {}
    if placement.get("pool"):
        line += f"; pool {placement['pool']}"
        if placement.get("allocation"):
            line += f", Slurm allocation {placement['allocation']}"
        if placement.get("why"):
            line += f" ({placement['why']})"
    lines = [line]
    if placement.get("resumed_run"):
        lines.append(f"  resumed the checkpoint of {placement['resumed_run']}")
    attempts = placement.get("attempts") or []
    for number, attempt in enumerate(attempts if len(attempts) > 1 else [], start=1):
        where = attempt["pool"] + (
            f", Slurm allocation {attempt['allocation']}" if attempt.get("allocation") else ""
        )
        lines.append(f"  attempt {number}: {where}: {attempt['outcome']}")
    used = status.get("gpu_hours_used")
    lines.append(
        f"  GPU-hours: {float(last.get('gpu_hours') or 0.0):.4g} this run"
        + ("" if used is None else f", {float(used):.4g} in all (training_gpu_hours quota)")
    )
    return lines


def rollout_lines(rollout: dict[str, Any], *, now: float) -> list[str]:
    """Return ``continuum rollout status``'s lines for a controller's rollout snapshot.

    The stage and why, the current step and what it waits for, the figures it is judged
    on, the ramp planned over today's nodes, every step so far (share, nodes, when, why),
    and the history.
    """
    lines = [f"rollout: {rollout['stage']} {rollout.get('candidate') or ''} — {rollout['reason']}"]
    steps: list[dict[str, Any]] = list(rollout.get("steps") or [])
    if rollout["stage"] == "waiting":
        since = rollout["started_at"]
        lines.append(
            f"  now: {rollout.get('baseline')} serves on; the canary of "
            f"{rollout.get('candidate')} starts on the first eligible node (waiting since "
            f"{_when(since)}, {max(0.0, now - since):.0f} s)"
        )
    if rollout["stage"] == "canary" and steps:
        step = steps[-1]
        following = [p for p in rollout.get("plan") or [] if p["share"] > step["share"]]
        line = (
            f"current step: {_step_name(step, rollout)}, {step['share']:.0%} of the nodes on "
            f"{rollout.get('candidate')} ({_nodes(step['nodes'])}) since "
            f"{_when(step['started_at'])}"
        )
        if following:
            upcoming = following[0]
            last = " (promotion)" if len(following) == 1 else ""
            line += f"; next: {upcoming['share']:.0%}, {upcoming['nodes']} nodes{last}"
        lines.append(line)
        verdict = rollout.get("verdict") or "not judged yet"
        decide_at = rollout.get("decide_at")
        if decide_at is not None and decide_at > now and verdict.startswith("holding"):
            verdict += f"; decides in {decide_at - now:.0f} s"
        lines.append(f"  now: {verdict}")
    if rollout.get("canary_nodes") and rollout["stage"] == "canary" and not steps:
        lines.append(f"canary nodes: {', '.join(rollout['canary_nodes'])}")
    lines.extend(_accuracy_lines(rollout))
    for label in ("canary_latency_p95_ms", "baseline_latency_p95_ms"):
        if rollout.get(label) is not None:
            name = label.removesuffix("_p95_ms").replace("_", " ")
            lines.append(f"{name} p95: {rollout[label]:.3g} ms")
    plan = rollout.get("plan") or []
    if plan and rollout["stage"] == "canary":
        ramp = " -> ".join(f"{p['share']:.0%} ({p['nodes']})" for p in plan)
        lines.append(f"ramp over today's nodes: {ramp}")
    if steps:
        lines.append("steps:")
        for step in steps:
            lines.append(
                f"  {_step_name(step, rollout):<8} {step['share']:>5.0%}  "
                f"{_when(step['started_at'])}  {len(step['nodes'])} node(s): "
                f"{_nodes(step['nodes'])}"
            )
            if step.get("reason"):
                lines.append(f"           why: {step['reason']}")
    if rollout.get("history"):
        lines.append("history:")
        lines.extend(f"  {entry}" for entry in rollout["history"])
    return lines


def _accuracy_lines(rollout: dict[str, Any]) -> list[str]:
    """The canary's and the baseline's task metric, and the unseen frames each is over.

    "canary accuracy: 0.960 on 812 unseen frames; 0 windows before the training cut left
    out": a window that began before the node's training cut of the candidate may hold
    frames it trained on, so it is not counted (snapshots from before cuts show the figure
    alone).
    """
    lines = []
    metric = rollout.get("metric") or "accuracy"
    sides = (
        ("canary", "canary_labelled_frames", "windows_before_cut"),
        ("baseline", "baseline_labelled_frames", "baseline_windows_before_cut"),
    )
    for side, frames_key, left_out_key in sides:
        accuracy = rollout.get(f"{side}_accuracy")
        if accuracy is None:
            continue
        line = f"{side} {metric}: {accuracy:.3f}"
        if frames_key in rollout:
            left_out = int(rollout.get(left_out_key) or 0)
            line += (
                f" on {rollout[frames_key]} unseen frames; {left_out} "
                f"window{'' if left_out == 1 else 's'} before the training cut left out"
            )
        lines.append(line)
    return lines


def _step_name(step: dict[str, Any], rollout: dict[str, Any]) -> str:
    if step["share"] >= 1.0 and rollout["stage"] == "promoted":
        return "all"
    return "canary" if step["index"] == 0 else f"step {step['index']}"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _nodes(nodes: list[str], most: int = 8) -> str:
    shown = ", ".join(nodes[:most])
    return shown if len(nodes) <= most else f"{shown} and {len(nodes) - most} more"


@operator_command
def run_retrain(args: argparse.Namespace) -> int:
    """Request a retraining, once authorised; the run's audit records name who asked."""
    import ray

    authorize(args)
    ray.get(
        controller(args).request_retrain.remote(
            args.reason, operator_credential(args), default_actor()
        ),
        timeout=60,
    )
    print(f"retraining of {args.pipeline} requested: it starts at the controller's next tick")
    return 0
