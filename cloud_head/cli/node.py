"""``continuum node enroll|revoke|list``: each edge node of a tenant gets its own broker identity.

The unit of trust is the device (DESIGN.md §6): ``enroll`` gives node NODE of tenant TENANT
the identity ``edge.NODE@TENANT`` and a password, shown once (a certificate made from a CSR
on the box is ``continuum certs sign``), and the broker ACL lets that identity act only as
that node; ``revoke`` takes it away, and a broker reload cuts the node off while the rest of
the fleet keeps working.  Every verb is the tenant's own business, so each one authorises
the tenant's operator credential (``--password-file`` or ``CONTINUUM_TENANT_PASSWORD``) and
records the change in the tenant's audit log as that checked identity.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_head.cli._common import (
    add_credential,
    add_json,
    add_root,
    authorize,
    operator_command,
    print_json,
    state_dir,
    wants_json,
)
from cloud_head.cli.tenant import AUDIT_DIR, TENANTS_DIR, add_broker, apply_to_broker
from continuum._fs import OWNER_ONLY, atomic_write
from continuum.errors import ConfigError

if TYPE_CHECKING:
    from cloud_head.tenants import NodeRecord


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``node`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "node",
        help="enrol, revoke or list a tenant's edge nodes (one broker identity each)",
        description="Give each edge node its own broker identity, edge.NODE@TENANT, which may "
        "write only that node's data topics and read only its own desired state, receipts and "
        "its tenant's models. Each verb needs the tenant's operator credential.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    enroll = actions.add_parser(
        "enroll",
        help="enrol a node with a generated password (printed once)",
        description="Enrol NODE of TENANT: its identity edge.NODE@TENANT gets a password, "
        "shown once (or written owner-only to --password-out), and its ACL block. Within the "
        "tenant's edge_nodes quota. For a certificate whose key never leaves the box, use "
        "`continuum certs request` on the box and `continuum certs sign` here.",
    )
    _add_node(enroll)
    enroll.add_argument(
        "--password-out",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the node's password to FILE (0600) instead of printing it",
    )
    enroll.add_argument(
        "--replace",
        action="store_true",
        help="enrol a node that is enrolled already (a lost password): its old credential "
        "is revoked",
    )
    enroll.set_defaults(run=run_enroll)

    revoke = actions.add_parser(
        "revoke",
        help="revoke a node: its credential and ACL block go, the broker reload cuts it off",
    )
    _add_node(revoke)
    revoke.set_defaults(run=run_revoke)

    listing = actions.add_parser(
        "list",
        help="list a tenant's enrolments, revoked ones too",
        description='List every enrolment of TENANT. --json prints {"tenant", "nodes": '
        '[{"node", "identity", "method", "enrolled_at", "revoked_at", "cert_serial", '
        '"not_after"}]}.',
    )
    listing.add_argument("tenant", metavar="TENANT", help="tenant name")
    add_credential(listing)
    add_root(listing)
    add_json(listing)
    listing.set_defaults(run=run_list)


def _add_node(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tenant", metavar="TENANT", help="tenant name")
    parser.add_argument("node", metavar="NODE", help="node name (the agent's node_id)")
    add_credential(parser)
    add_root(parser)
    add_broker(parser)


def _registry_root(args: argparse.Namespace) -> Path:
    """Return the tenant registry under ``--root``, or raise naming how to find it."""
    return state_dir(Path(args.root), TENANTS_DIR)


@operator_command
def run_enroll(args: argparse.Namespace) -> int:
    """Enrol a node, print its identity and (once) its password, and reload the broker."""
    from cloud_head.audit import AuditLog
    from cloud_head.tenants import TenantRegistry

    root = _registry_root(args)
    actor = authorize(args)
    out: Path | None = args.password_out
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--password-out {out}: folder {out.parent} does not exist")
    with AuditLog(Path(args.root) / AUDIT_DIR) as audit:
        registry = TenantRegistry(root, audit=audit, actor=actor)
        credentials = registry.enroll_node(args.tenant, args.node, replace=args.replace)
    assert credentials.password is not None  # the password method always makes one
    print(f"enrolled node {args.node} of tenant {args.tenant}")
    print(
        f"  identity  {credentials.username}  (the agent's broker.username, "
        "CONTINUUM_EDGE_BROKER__USERNAME)"
    )
    if out is None:
        print(f"  password  {credentials.password}  (shown once; only its hash is kept)")
    else:
        atomic_write(out, credentials.password + "\n", mode=OWNER_ONLY)
        print(f"  password  written to {out} (0600); only its hash is kept")
    apply_to_broker(registry, args)
    return 0


@operator_command
def run_revoke(args: argparse.Namespace) -> int:
    """Revoke a node and reload the broker (or say how to)."""
    from cloud_head.audit import AuditLog
    from cloud_head.tenants import TenantRegistry

    root = _registry_root(args)
    actor = authorize(args)
    with AuditLog(Path(args.root) / AUDIT_DIR) as audit:
        registry = TenantRegistry(root, audit=audit, actor=actor)
        registry.revoke_node(args.tenant, args.node)
    print(
        f"revoked node {args.node} of tenant {args.tenant}: its credential and ACL block are gone"
    )
    revoked = [n for n in registry.nodes(args.tenant) if n.node == args.node][-1]
    if revoked.cert_serial is not None:
        print(
            f"  certificate serial {revoked.cert_serial} is now on the revocation list: "
            "regenerate the broker's CRL (`continuum certs crl`) so it cannot connect again"
        )
    apply_to_broker(registry, args)
    return 0


@operator_command
def run_list(args: argparse.Namespace) -> int:
    """Print the tenant's enrolments (``--json``: one document)."""
    from cloud_head.tenants import TenantRegistry

    root = _registry_root(args)
    authorize(args)
    nodes = TenantRegistry(root).nodes(args.tenant)
    if wants_json(args):
        print_json({"tenant": args.tenant, "nodes": [_node_document(n) for n in nodes]})
        return 0
    if not nodes:
        print(f"no nodes enrolled for tenant {args.tenant} (`continuum node enroll`)")
        return 0
    print(f"{'identity':40} {'method':12} {'enrolled':20} {'revoked':20} expires")
    for n in nodes:
        print(
            f"{n.identity:40} {n.method:12} {_when(n.enrolled_at):20} "
            f"{_when(n.revoked_at) or '-':20} {_when(n.not_after) or '-'}"
        )
    return 0


def _when(seconds: float | None) -> str:
    return "" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _node_document(record: NodeRecord) -> dict[str, Any]:
    """Return one enrolment as ``node list --json`` prints it (no secret)."""
    return {
        "node": record.node,
        "identity": record.identity,
        "method": record.method,
        "enrolled_at": record.enrolled_at,
        "revoked_at": record.revoked_at,
        "cert_serial": record.cert_serial,
        "not_after": record.not_after,
    }
