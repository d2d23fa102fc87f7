"""``continuum fleet [remove NODE]``: every edge node of a tenant, and decommissioning one.

Listing reads the fleet registry's file under ``--root`` directly.  Removing changes it, so it
goes through the running fleet service (a named Ray actor in the tenant's namespace), which
owns the registry: it records the removal in the tenant's audit log first, then deletes the
node and its telemetry history and clears its retained topics on the broker.  Nothing else
removes a node: an empty or cleared status message does not.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from cloud_head.audit import default_actor
from cloud_head.cli._common import (
    add_cluster,
    add_json,
    add_root,
    add_tenant,
    authorize,
    named_actor,
    operator_command,
    operator_credential,
    print_json,
    state_dir,
    wants_json,
)
from continuum.errors import ConfigError, ContinuumError, SpecError

if TYPE_CHECKING:
    from cloud_head.fleet import NodeInfo

#: ``cloud_head.fleet.TELEMETRY_RETENTION_S`` in words (the CLI parses without cloud_head).
_RETENTION = "7 days"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``fleet`` subcommand and its ``remove`` action."""
    parser = subparsers.add_parser(
        "fleet",
        help="list edge nodes: labels, online state, models; remove a decommissioned one",
        description="List the nodes the fleet registry knows from their retained status, last "
        "will and telemetry. Filter with a label selector, e.g. "
        "--where continuum.io/site=lux-*. A node is online while it is heard from: after two "
        "of its heartbeat periods without a message (or while the cloud head's broker "
        f"connection is down) it shows offline. Telemetry history is kept {_RETENTION}. A "
        "node stays listed, offline, until `continuum fleet remove NODE` removes it; an "
        "empty or cleared status message does not. --json prints one document: "
        '{"tenant", "nodes": [{"node", "online", "last_seen", "labels", "pipelines", '
        '"models": {PIPELINE: {"model", "version", "state"}}, "refused"}]}.',
    )
    _add_list_options(parser)
    parser.set_defaults(run=run)
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    remove = actions.add_parser(
        "remove",
        help="decommission a node: delete it and its telemetry history (audited)",
        description="Ask the running fleet service to remove NODE: the removal is recorded "
        "in the tenant's audit log as asked by the authenticated identity ('tenant:TENANT "
        "via user@host' once the tenant's credential is checked, on a head shared by "
        "tenants), with --reason beside it, then the node and its telemetry "
        "history are deleted, its edge_nodes quota place is freed and its retained status "
        "and reported state are cleared on the broker. A removed node that sends a status "
        "again is admitted again as a new node.",
    )
    remove.add_argument("node", help="node name as `continuum fleet` lists it")
    _add_list_options(remove, listing=False)
    add_cluster(remove)
    remove.add_argument("--reason", default="decommissioned by operator", help="why, recorded")
    remove.add_argument("--yes", action="store_true", help="confirm: its history is deleted")
    _inherit(remove, parser)
    remove.set_defaults(run=run_remove)


def _add_list_options(parser: argparse.ArgumentParser, *, listing: bool = True) -> None:
    add_tenant(parser, pipeline=False)
    add_root(parser)
    if listing:
        parser.add_argument(
            "--where",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="label selector term (repeatable): exact, glob (lux-*), in(a,b), !x",
        )
        add_json(parser)


def _inherit(action: argparse.ArgumentParser, parent: argparse.ArgumentParser) -> None:
    """Let options given before the action (``fleet --tenant t remove n``) stand.

    argparse copies an action's defaults over what the parent parsed; an option the action
    shares with its parent therefore takes no default there, and the parent's applies.
    """
    shared = {a.dest for a in parent._actions}
    for option in action._actions:
        if option.dest in shared and option.option_strings and option.dest != "help":
            option.default = argparse.SUPPRESS


@operator_command
def run(args: argparse.Namespace) -> int:
    """Print the matching nodes, as a table or (``--json``) one document."""
    from cloud_head.fleet import FleetRegistry
    from continuum.labels import LabelSelector

    authorize(args)
    terms: dict[str, str] = {}
    for term in args.where:
        key, sep, value = term.partition("=")
        if not sep:
            raise SpecError(
                f"--where {term!r} is not KEY=VALUE",
                field="where",
                fix="write e.g. --where continuum.io/site=lux-1",
            )
        terms[key] = value
    selector = LabelSelector.parse(terms, field="--where") if terms else None
    registry = FleetRegistry(
        args.tenant, state_dir(args.root, "state") / f"fleet-{args.tenant}.sqlite3"
    )
    try:
        nodes = registry.nodes(selector)
    finally:
        registry.close()
    if wants_json(args):
        print_json({"tenant": args.tenant, "nodes": [_node_document(n) for n in nodes]})
        return 0
    if not nodes:
        print("no matching nodes")
        return 0
    now = time.time()
    for node in nodes:
        models = ", ".join(
            f"{p}={m.version}({m.state})"
            for p, m in ((p, node.model(p)) for p in node.pipelines)
            if m is not None
        )
        labels = ",".join(f"{k}={v}" for k, v in sorted(node.labels.items()))
        print(
            f"{node.node:16} {'online ' if node.online else 'offline'} "
            f"seen {now - node.last_seen:5.0f} s ago  {models or '-'}  {labels}"
        )
        if node.refused is not None:
            print(f"{'':16} REFUSED, gets no model: {node.refused}")
    return 0


def _node_document(node: NodeInfo) -> dict[str, Any]:
    """Return one node as ``fleet --json`` prints it."""
    models = {
        pipeline: {"model": model.model, "version": model.version, "state": model.state}
        for pipeline in node.pipelines
        if (model := node.model(pipeline)) is not None
    }
    return {
        "node": node.node,
        "online": node.online,
        "last_seen": node.last_seen,
        "labels": node.labels,
        "pipelines": node.pipelines,
        "models": models,
        "refused": node.refused,
    }


@operator_command
def run_remove(args: argparse.Namespace) -> int:
    """Remove one node through the running fleet service; refuses without ``--yes``."""
    if not args.yes:
        raise ConfigError(
            f"removing node {args.node!r} of tenant {args.tenant!r} deletes it and its "
            "telemetry history; pass --yes to confirm"
        )
    authorize(args)
    done = _call_fleet(
        args, "remove", args.node, args.reason, operator_credential(args), default_actor()
    )
    print(
        f"removed node {done['node']} of tenant {args.tenant} and "
        f"{done['telemetry_windows']} telemetry window(s); recorded in its audit log"
    )
    if done["cleared"]:
        print(f"  cleared retained {', '.join(done['cleared'])}")
    else:
        print(f"  its retained status was NOT cleared: {done['note']}")
    return 0


def _call_fleet(args: argparse.Namespace, method: str, *params: Any) -> Any:
    """Call ``method`` of the tenant's running fleet service; its own errors come through."""
    fleet = named_actor(args, "fleet", what="fleet service")
    import ray

    try:
        return ray.get(getattr(fleet, method).remote(*params), timeout=60)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, ContinuumError):
            raise error.cause from None
        raise
