"""``continuum certs``: client certificates whose CN is the broker identity.

One clients CA per broker, held by the platform operator (``ca``): it is the broker's
``cafile``, and every client certificate it signs carries ``CN = identity``
(``edge.NODE@TENANT``, ``continuum.wire.identities``), which mosquitto's
``use_identity_as_username`` turns into the MQTT username the generated ACL grants to.
Enrolment keeps the key on the box: the box runs ``request`` (``NODE.key`` 0600 and
``NODE.csr``), the operator signs it.

The actions that need the cloud head's tenant registry (``sign``, ``crl``, ``node``) are
the cloud side's (``cloud_head.cli.certs``): they join this command through the entry-point
group ``ACTIONS_GROUP``, as the sides' commands join ``continuum``, so an edge box lists
only what it can run. The X.509 objects themselves live in ``continuum.pki``.
"""

from __future__ import annotations

import argparse
from importlib import metadata
from pathlib import Path

from continuum._fs import atomic_write
from continuum.cli import _register_entry_point
from continuum.errors import ConfigError, ProtocolError, SpecError
from continuum.pki import CA_VALIDITY_DAYS, make_ca, make_request, write_key
from continuum.wire import identities, topics

__all__ = ["ACTIONS_GROUP", "DEFAULT_DEPLOYMENT", "check_name", "register", "run_ca", "run_request"]

#: The entry-point group through which a side adds actions to ``continuum certs``.
ACTIONS_GROUP = "continuum.commands.certs"
#: The clients CA's subject names the deployment (one CA per broker), not a tenant.
DEFAULT_DEPLOYMENT = "continuum"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``certs`` subcommand, its actions and those the installed sides declare."""
    parser = subparsers.add_parser(
        "certs",
        help="the broker's clients CA, node keys and requests (and, on the cloud head, "
        "signing and the CRL)",
        description="Client certificates for mutual TLS with the broker: one clients CA per "
        "broker (the operator's), CN = the broker identity edge.NODE@TENANT, keys made on "
        "the box.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    ca = actions.add_parser("ca", help="make the broker's clients CA (ca.key, ca.crt)")
    ca.add_argument("--out", required=True, type=Path, help="directory to write into")
    ca.add_argument(
        "--deployment",
        default=DEFAULT_DEPLOYMENT,
        help=f"name of this broker's deployment, the CA subject's O (default {DEFAULT_DEPLOYMENT})",
    )
    ca.add_argument("--days", type=int, default=CA_VALIDITY_DAYS, help="validity in days")
    ca.set_defaults(run=run_ca)

    request = actions.add_parser(
        "request", help="on the box: make NODE.key (0600) and NODE.csr for the operator to sign"
    )
    request.add_argument("--tenant", required=True, help="tenant name")
    request.add_argument("--node", required=True, help="node name (identity edge.NODE@TENANT)")
    request.add_argument("--out", required=True, type=Path, help="directory to write into")
    request.set_defaults(run=run_request)

    left_out = [
        missing
        for entry in metadata.entry_points(group=ACTIONS_GROUP)
        if (missing := _register_entry_point(entry, actions)) is not None
    ]
    if left_out:
        parser.epilog = "left out here:\n" + "\n".join(
            f"  the actions of {m.target}: {m.reason}" for m in left_out
        )


def run_ca(args: argparse.Namespace) -> int:
    """Write the broker's clients CA into ``--out``; refuse to overwrite one."""
    key_path, cert_path = make_ca(
        args.out, deployment=check_name(args.deployment, "deployment"), days=args.days
    )
    print(f"clients CA of {args.deployment}: {cert_path} (key {key_path}, 0600)")
    print("  the broker's cafile; keep the key with the operator, offline if you can")
    return 0


def run_request(args: argparse.Namespace) -> int:
    """Write a new key (0600) and a request for the node's identity; the key stays here."""
    tenant, node = check_name(args.tenant, "tenant"), check_name(args.node, "node")
    key_path, csr_path = args.out / f"{node}.key", args.out / f"{node}.csr"
    if csr_path.exists():
        raise ConfigError(f"{csr_path} exists; remove it or choose another --out directory")
    key, pem = make_request(tenant, node)
    write_key(key, key_path)
    atomic_write(csr_path, pem, mode=0o644)
    print(f"request for {identities.node_identity(tenant, node)}: {csr_path} (key {key_path})")
    print(f"  send {csr_path.name} to the operator, who runs `continuum certs sign`")
    return 0


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid ``what`` name, else raise ``SpecError`` (exit 2)."""
    try:
        return topics.check_name(value, what)
    except ProtocolError as error:
        raise SpecError(str(error), field=what) from error
