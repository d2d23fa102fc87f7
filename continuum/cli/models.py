"""``continuum models list|show|promote|rollback``: the registry, and moving a pipeline's model."""

from __future__ import annotations

import argparse
import json
import time

from continuum.cli._cloud import (
    add_cluster,
    add_root,
    add_tenant,
    authorize,
    controller,
    open_registry,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``models`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "models",
        help="list, show, promote or roll back model versions",
        description="Read the model registry (versions, digests, signatures, lineage, gate "
        "results) or make a version current through the running controller.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list a tenant's model versions")
    add_tenant(listing)
    add_root(listing, registry=True)
    listing.set_defaults(run=run_list)
    show = actions.add_parser("show", help="print one version's record and lineage as JSON")
    add_tenant(show)
    add_root(show, registry=True)
    show.add_argument("version", help="version, e.g. v3")
    show.set_defaults(run=run_show)
    for name, verb in (
        ("promote", "make VERSION current on every node"),
        ("rollback", "go back to an older VERSION on every node"),
    ):
        action = actions.add_parser(name, help=verb)
        add_tenant(action)
        add_cluster(action)
        action.add_argument("version", help="version, e.g. v2")
        action.add_argument("--reason", default=f"{name} by operator", help="why, for the record")
        action.set_defaults(run=run_set_version, action=name)


def run_list(args: argparse.Namespace) -> int:
    """Print the versions of a tenant's pipeline, oldest first."""
    authorize(args)
    registry = open_registry(args)
    try:
        versions = registry.list(args.tenant, args.pipeline)
    finally:
        registry.close()
    if not versions:
        print(f"no model versions for pipeline {args.pipeline!r} of tenant {args.tenant!r}")
        return 0
    print(f"{'version':8} {'status':12} {'parent':7} {'sha256':14} {'created':20} gate")
    for v in versions:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.created_at))
        print(
            f"{v.version:8} {v.status:12} {v.parent or '-':7} {v.sha256[:12]:14} {created:20} "
            f"{_gate_text(v.gate)}"
        )
    return 0


def _gate_text(gate: dict[str, object]) -> str:
    if not gate:
        return "-"
    candidate, current = gate.get("candidate_score"), gate.get("current_score")
    verdict = "passed" if gate.get("passed") else "failed"
    cand = f"{candidate:.3f}" if isinstance(candidate, float) else "-"
    cur = f"{current:.3f}" if isinstance(current, float) else "none"
    return f"{verdict}: {cand} vs current {cur}"


def run_show(args: argparse.Namespace) -> int:
    """Print one version as JSON."""
    from dataclasses import asdict

    authorize(args)
    registry = open_registry(args)
    try:
        version = registry.get(args.tenant, args.pipeline, args.version)
    finally:
        registry.close()
    print(json.dumps(asdict(version), indent=2, default=str))
    return 0


def run_set_version(args: argparse.Namespace) -> int:
    """Ask the pipeline's controller to make a version current everywhere.

    The controller records the step in the tenant's audit log as asked by ``user@host``
    before it publishes anything.
    """
    import ray

    from cloud_head.audit import default_actor

    actor = controller(args)
    state = ray.get(
        actor.set_version.remote(args.version, args.reason, default_actor(), args.action),
        timeout=60,
    )
    print(f"{args.action}: {args.pipeline} now serves {args.version} ({state['reason']})")
    return 0
