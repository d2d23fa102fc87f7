"""``continuum rollout status`` and ``continuum retrain``: the running controller of a pipeline."""

from __future__ import annotations

import argparse

from continuum.cli._cloud import add_cluster, add_tenant, controller


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``rollout`` and ``retrain`` subcommands."""
    parser = subparsers.add_parser(
        "rollout",
        help="show where a pipeline's rollout stands",
        description="Ask the pipeline's running controller for its rollout: stage, candidate, "
        "canary nodes, accuracies, and every step so far.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="print the rollout's stage and history")
    add_tenant(status)
    add_cluster(status)
    status.set_defaults(run=run_status)

    retrain = subparsers.add_parser(
        "retrain",
        help="retrain a pipeline now",
        description="Ask the pipeline's controller to retrain at its next tick, whatever the "
        "trigger says; the candidate still has to pass the gate.",
    )
    add_tenant(retrain)
    add_cluster(retrain)
    retrain.add_argument("--reason", default="requested by operator", help="why, for the record")
    retrain.set_defaults(run=run_retrain)


def run_status(args: argparse.Namespace) -> int:
    """Print the rollout of one pipeline."""
    import ray

    status = ray.get(controller(args).status.remote(), timeout=60)
    rollout = status["rollout"]
    print(f"pipeline {args.pipeline}: current {status['current']}, training {status['training']}")
    print(f"rollout: {rollout['stage']} {rollout.get('candidate') or ''} — {rollout['reason']}")
    if rollout.get("canary_nodes"):
        print(f"canary nodes: {', '.join(rollout['canary_nodes'])}")
    for label in ("canary_accuracy", "baseline_accuracy"):
        if rollout.get(label) is not None:
            print(f"{label.replace('_', ' ')}: {rollout[label]:.3f}")
    for step in rollout.get("history", []):
        print(f"  {step}")
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    """Request a retraining; the run's audit records name ``user@host`` as who asked."""
    import ray

    from cloud_head.audit import default_actor

    ray.get(controller(args).request_retrain.remote(args.reason, default_actor()), timeout=60)
    print(f"retraining of {args.pipeline} requested: it starts at the controller's next tick")
    return 0
