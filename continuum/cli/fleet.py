"""``continuum fleet``: every edge node of a tenant, filtered by label selector."""

from __future__ import annotations

import argparse
import time

from continuum.cli._cloud import add_root, add_tenant, authorize, state_dir
from continuum.errors import SpecError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``fleet`` subcommand."""
    parser = subparsers.add_parser(
        "fleet",
        help="list edge nodes: labels, online state, models",
        description="List the nodes the fleet registry knows from their retained status, last "
        "will and telemetry. Filter with a label selector, e.g. "
        "--where continuum.io/site=lux-*",
    )
    add_tenant(parser, pipeline=False)
    add_root(parser)
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="label selector term (repeatable): exact, glob (lux-*), in(a,b), !x",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the matching nodes."""
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
