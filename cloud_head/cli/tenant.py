"""``continuum tenant create|list|quota|rotate|delete``: the tenant registry of the cloud head.

The registry lives in ``<root>/tenants`` (``cloud_head.tenants``).  Commands that change
credentials rewrite the broker's password and ACL files there; with ``--broker-pid`` or
``--broker-pid-file`` they also make the running mosquitto reload them.  Every change is
recorded, as ``user@host``, in the tenant's audit log under ``<root>/audit`` (where
``continuum audit`` reads it); a change that cannot be recorded is not made.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_head.cli._common import (
    add_json,
    add_root,
    operator_command,
    print_json,
    state_dir,
    wants_json,
)
from continuum.errors import ConfigError

if TYPE_CHECKING:
    from cloud_head.audit import AuditLog
    from cloud_head.tenants import Quotas, TenantCredentials, TenantRecord, TenantRegistry

#: The registry's directory under the cloud head's state directory.
TENANTS_DIR = "tenants"
#: The audit logs' directory under the cloud head's state directory (``HeadPaths.audit``).
AUDIT_DIR = "audit"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``tenant`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "tenant",
        help="create, list or delete tenants (MQTT credential, signing key, quotas)",
        description="Manage tenants: each gets an operator credential (read-only on "
        "ctm/TENANT/#), credentials for its control plane and ingest replicas (written "
        "owner-only under the registry for the cloud head), an Ed25519 signing key, a Ray "
        "namespace, a store partition and quotas; its edge nodes are enrolled one by one "
        "(`continuum node enroll`). These are the head administrator's commands, not a "
        "tenant's: they take no tenant credential (a lost or leaked one must be replaceable "
        "with `rotate`) and are open to whoever can write the owner-only registry under "
        "--root; each change is recorded in the tenant's audit log as user@host.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="create a tenant and print its credentials once")
    create.add_argument("name", help="tenant name: lowercase letters, digits, '.', '_', '-'")
    _add_quota_flags(create, defaults=True)
    add_root(create)
    add_broker(create)
    create.set_defaults(run=run_create)

    listing = actions.add_parser(
        "list",
        help="list tenants and their quotas",
        description="List every tenant with its quotas. --json prints one document: "
        '{"tenants": [{"name", "created_at", "quotas": {"edge_nodes", "samples_per_day", '
        '"training_gpu_hours"}, "key_fingerprint", "public_key_path"}]}.',
    )
    add_root(listing)
    add_json(listing)
    listing.set_defaults(run=run_list)

    quota = actions.add_parser("quota", help="change a tenant's quotas")
    quota.add_argument("name", help="tenant name")
    _add_quota_flags(quota, defaults=False)
    add_root(quota)
    quota.set_defaults(run=run_quota)

    rotate = actions.add_parser(
        "rotate", help="give a tenant's operator and services new passwords (printed once)"
    )
    rotate.add_argument("name", help="tenant name")
    add_root(rotate)
    add_broker(rotate)
    rotate.set_defaults(run=run_rotate)

    delete = actions.add_parser(
        "delete",
        help="revoke a tenant's credentials and archive its keys (its data is kept)",
    )
    delete.add_argument("name", help="tenant name")
    delete.add_argument("--yes", action="store_true", help="confirm: the credentials stop working")
    add_root(delete)
    add_broker(delete)
    delete.set_defaults(run=run_delete)


def _add_quota_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # cloud_head is imported only when a command runs (the CLI starts fast, and edge-only
    # installs still parse); the defaults shown are those of cloud_head.tenants.Quotas.
    for flag, kind, type_, text, default in (
        ("--edge-nodes", "edge_nodes", int, "edge nodes the tenant may enrol", "10"),
        ("--samples-per-day", "samples_per_day", int, "samples stored per UTC day", "1000000"),
        ("--gpu-hours", "training_gpu_hours", float, "training GPU-hours", "100"),
    ):
        shown = f" (default {default})" if defaults else " (unchanged if not given)"
        parser.add_argument(flag, dest=kind, type=type_, default=None, help=text + shown)


def _quotas(args: argparse.Namespace, base: Quotas) -> Quotas:
    """Return ``base`` with the quotas given on the command line."""
    from cloud_head.tenants import Quotas

    return Quotas(
        edge_nodes=base.edge_nodes if args.edge_nodes is None else args.edge_nodes,
        samples_per_day=(
            base.samples_per_day if args.samples_per_day is None else args.samples_per_day
        ),
        training_gpu_hours=(
            base.training_gpu_hours if args.training_gpu_hours is None else args.training_gpu_hours
        ),
    )


def add_broker(parser: argparse.ArgumentParser) -> None:
    """Add ``--broker-pid`` / ``--broker-pid-file``: the running mosquitto to reload."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--broker-pid", type=int, help="pid of the running mosquitto to reload (SIGHUP)"
    )
    group.add_argument(
        "--broker-pid-file", type=Path, help="mosquitto's pid_file, to reload it (SIGHUP)"
    )


def _registry(root: Path, *, create: bool = False, audit: AuditLog | None = None) -> TenantRegistry:
    from cloud_head.tenants import TenantRegistry

    path = root / TENANTS_DIR if create else state_dir(root, TENANTS_DIR)
    return TenantRegistry(path, audit=audit)


@contextmanager
def _audited(root: Path, *, create: bool = False) -> Iterator[TenantRegistry]:
    """Yield the registry with the audit log that records its changes, closed afterwards."""
    from cloud_head.audit import AuditLog

    with AuditLog(root / AUDIT_DIR) as audit:  # creates nothing until a record is appended
        yield _registry(root, create=create, audit=audit)


def apply_to_broker(registry: TenantRegistry, args: argparse.Namespace) -> None:
    """Bring the broker files in line; reload the broker given by ``--broker-pid[-file]``.

    Without a pid the files are written and the message says how to reload: until then
    the running broker still grants what it granted before.
    """
    pid = registry.apply_to_broker(pid=args.broker_pid, pid_file=args.broker_pid_file)
    if pid is None:
        print(
            f"written: {registry.password_file} and {registry.acl_file}; reload the broker for "
            "the change to take effect: `systemctl reload mosquitto` or `kill -HUP PID` (or "
            "pass --broker-pid / --broker-pid-file)"
        )
    else:
        print(f"broker (pid {pid}) reloaded {registry.password_file} and {registry.acl_file}")


def _print_credentials(registry: TenantRegistry, credentials: TenantCredentials) -> None:
    """Print the operator's password once; say where the services' passwords are."""
    print("MQTT credentials (the broker keeps only their hashes; this password is shown once):")
    print(f"  tenant  {credentials.username}  password {credentials.password}")
    folder = registry.service_credentials_dir(credentials.username)
    ingest = credentials.ingest_usernames
    print(f"  control {credentials.control_username}  password in {folder}/control.password")
    print(f"  ingest  {ingest[0]} .. {ingest[-1]}  password in {folder}/ingest.password")
    print(
        f"  edge nodes: enrol each with `continuum node enroll {credentials.username} NODE` "
        "(its own identity and password)"
    )
    print(
        "  on a broker that takes only certificates: `continuum certs service --tenant "
        f"{credentials.username}` issues the services theirs (a rotate revoked the old ones: "
        "issue new ones, then `continuum certs crl`)"
    )


@operator_command
def run_create(args: argparse.Namespace) -> int:
    """Create a tenant, print what it owns and its credentials, once."""
    from cloud_head.tenants import Quotas

    with _audited(args.root, create=True) as registry:
        record = registry.create(args.name, _quotas(args, Quotas()))
    assert record.credentials is not None  # create always hands them out
    print(f"created tenant {record.name}")
    print(f"  topics          {record.topic_filter}")
    print(f"  ray namespace   {record.ray_namespace}")
    print(f"  store partition {record.store_partition}")
    print(f"  signing key     {record.signing_key_path} (fingerprint {record.key_fingerprint})")
    print(
        f"  quotas          edge_nodes={record.quotas.edge_nodes} "
        f"samples_per_day={record.quotas.samples_per_day} "
        f"training_gpu_hours={record.quotas.training_gpu_hours:g}"
    )
    _print_credentials(registry, record.credentials)
    apply_to_broker(registry, args)
    return 0


@operator_command
def run_list(args: argparse.Namespace) -> int:
    """Print every tenant with its quotas (``--json``: one document)."""
    tenants = _registry(args.root).list()
    if wants_json(args):
        print_json({"tenants": [_tenant_document(t) for t in tenants]})
        return 0
    if not tenants:
        print("no tenants")
        return 0
    print(f"{'tenant':24} {'created':20} {'edge_nodes':>10} {'samples/day':>12} {'gpu_h':>8} key")
    for t in tenants:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t.created_at))
        q = t.quotas
        print(
            f"{t.name:24} {created:20} {q.edge_nodes:>10} {q.samples_per_day:>12} "
            f"{q.training_gpu_hours:>8g} {t.key_fingerprint[:16]}"
        )
    return 0


def _tenant_document(record: TenantRecord) -> dict[str, Any]:
    """Return one tenant as ``tenant list --json`` prints it (no secret: those are shown once)."""
    return {
        "name": record.name,
        "created_at": record.created_at,
        "quotas": asdict(record.quotas),
        "key_fingerprint": record.key_fingerprint,
        "public_key_path": str(record.public_key_path),
    }


@operator_command
def run_quota(args: argparse.Namespace) -> int:
    """Change the quotas given on the command line; keep the others."""
    if all(
        getattr(args, kind) is None
        for kind in ("edge_nodes", "samples_per_day", "training_gpu_hours")
    ):
        raise ConfigError("give at least one of --edge-nodes, --samples-per-day, --gpu-hours")
    with _audited(args.root) as registry:
        record = registry.set_quotas(args.name, _quotas(args, registry.get(args.name).quotas))
    print(f"tenant {record.name} quotas: {record.quotas}")
    return 0


@operator_command
def run_rotate(args: argparse.Namespace) -> int:
    """Give a tenant new passwords, print them once, and reload the broker if asked."""
    with _audited(args.root) as registry:
        credentials = registry.rotate_credentials(args.name)
    _print_credentials(registry, credentials)
    apply_to_broker(registry, args)
    return 0


@operator_command
def run_delete(args: argparse.Namespace) -> int:
    """Revoke a tenant and archive its identity; refuses without ``--yes``."""
    if not args.yes:
        raise ConfigError(
            f"deleting tenant {args.name!r} revokes its credentials and its signing key; "
            "pass --yes to confirm"
        )
    with _audited(args.root) as registry:
        archive = registry.delete(args.name)
    print(f"deleted tenant {args.name}: credentials revoked, private signing key destroyed")
    print(f"  archived public key and record in {archive}")
    print("  its samples, models and audit records are kept; the name will not be reused")
    apply_to_broker(registry, args)
    return 0
