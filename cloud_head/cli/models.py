"""``continuum models list|show|promote|rollback``: the registry, and moving a pipeline's model."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from cloud_head.audit import default_actor
from cloud_head.cli._common import (
    add_cluster,
    add_json,
    add_root,
    add_tenant,
    authorize,
    controller,
    open_registry,
    operator_command,
    operator_credential,
    print_json,
    wants_json,
)

if TYPE_CHECKING:
    from cloud_head.registry import ModelVersion


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``models`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "models",
        help="list, show, promote or roll back model versions",
        description="Read the model registry (versions, digests, signatures, lineage, gate "
        "results) or make a version current through the running controller.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="list a tenant's model versions",
        description="List a pipeline's model versions, oldest first. --json prints one "
        'document: {"tenant", "pipeline", "versions": [{"version", "model", "status", '
        '"parent", "sha256", "size_bytes", "code_version", "created_at", "gate"}]}.',
    )
    add_tenant(listing)
    add_root(listing, registry=True)
    add_json(listing)
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
        action = actions.add_parser(
            name,
            help=verb,
            description=f"Ask the pipeline's running controller to {verb}. On a cloud head "
            "shared by tenants the tenant's credential is checked first (--password-file or "
            "$CONTINUUM_TENANT_PASSWORD, against the tenant registry under --root); the "
            "tenant's audit log records the step as done by 'tenant:TENANT via user@host', "
            "with --reason beside it.",
        )
        add_tenant(action)
        add_root(action)
        add_cluster(action)
        action.add_argument("version", help="version, e.g. v2")
        action.add_argument(
            "--reason",
            default=f"{name} by operator",
            help="why, a note the audit record keeps beside the authenticated identity",
        )
        action.set_defaults(run=run_set_version, action=name)


@operator_command
def run_list(args: argparse.Namespace) -> int:
    """Print the versions of a tenant's pipeline, oldest first (``--json``: one document)."""
    authorize(args)
    registry = open_registry(args)
    try:
        versions = registry.list(args.tenant, args.pipeline)
    finally:
        registry.close()
    if wants_json(args):
        print_json(
            {
                "tenant": args.tenant,
                "pipeline": args.pipeline,
                "versions": [_version_document(v) for v in versions],
            }
        )
        return 0
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


def _version_document(version: ModelVersion) -> dict[str, Any]:
    """Return one version as ``models list --json`` prints it (``models show`` has it all)."""
    return {
        "version": version.version,
        "model": version.model,
        "status": version.status,
        "parent": version.parent,
        "sha256": version.sha256,
        "size_bytes": version.size_bytes,
        "code_version": version.code_version,
        "created_at": version.created_at,
        "gate": version.gate,
    }


def _gate_text(gate: dict[str, object]) -> str:
    if not gate:
        return "-"
    candidate, current = gate.get("candidate_score"), gate.get("current_score")
    verdict = "passed" if gate.get("passed") else "failed"
    cand = f"{candidate:.3f}" if isinstance(candidate, float) else "-"
    cur = f"{current:.3f}" if isinstance(current, float) else "none"
    return f"{verdict}: {cand} vs current {cur}"


@operator_command
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


@operator_command
def run_set_version(args: argparse.Namespace) -> int:
    """Ask the pipeline's controller to make a version current everywhere, once authorised.

    The controller records the step in the tenant's audit log, as asked by the identity the
    credential check established (``authorize``), before it publishes anything.
    """
    import ray

    authorize(args)
    state = ray.get(
        controller(args).set_version.remote(
            args.version, args.reason, operator_credential(args), default_actor(), args.action
        ),
        timeout=60,
    )
    print(f"{args.action}: {args.pipeline} now serves {args.version} ({state['reason']})")
    return 0
