"""``continuum certs sign|service|crl|node``: the certificate actions that need the tenant
registry.

They join the core's ``continuum certs`` (``continuum.cli.certs``, which makes the clients
CA and, on the box, a node's key and request) through the entry-point group
``continuum.commands.certs``.

``sign`` is the operator's half of enrolment: it authorises the tenant's operator credential
like every verb that changes a tenant's state, refuses a request for any identity but
``edge.NODE@TENANT``, records the node and the certificate's serial in the tenant registry
(``enroll_node``: the node's ACL block is written then, so a certificate of a node the
registry does not know reaches nothing) and writes ``NODE.crt``. ``--renew`` issues a new
certificate for an enrolled node in place of the old file, and its old serial joins the
revoked ones; agents load it at their next reconnect (``continuum.wire.mqtt.ClientTls``).

``service`` issues the cloud services' certificates: ``control@TENANT`` and every
``ingest.N@TENANT``, a key and a certificate each, made on the head where the services run
and written owner-only to the tenant's credentials folder
(``cloud_head.tenants.service_credentials_dir``), from which ``CloudSettings.service_broker``
connects with them.  It authorises the operator as ``sign`` does and records the serials in
the registry; running it again replaces them and revokes the old ones, as do ``continuum
tenant rotate`` and deleting the tenant (make the CRL again, then reload the broker).

Revocation (``continuum node revoke``) removes the node's ACL block, which cuts it off at the
broker's reload. ``crl`` writes the CRL of every revoked serial for mosquitto's ``crlfile``,
so the certificate cannot even complete a TLS handshake. Measured on mosquitto 2.0.11: it
reads the CRL at start and again on SIGHUP (the reload that applies the ACL), not at each
connection, and a connection already open is not checked again: the ACL reload is what cuts
a connected node off at once. With ``crlfile`` set, the CRL must exist (mosquitto does not
start without it) and be within its ``nextUpdate`` (``--days``; past it, OpenSSL refuses
every client): make it again from cron.

``node`` is a development shortcut: key and certificate in one step on the operator's
machine, from where the key is carried to the box; production keeps the CA key offline or
in an HSM.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud_head.cli._common import add_credential, authorize, operator_command
from continuum import pki
from continuum._fs import atomic_write
from continuum.cli.certs import check_name
from continuum.errors import ConfigError
from continuum.wire import identities

if TYPE_CHECKING:
    from cloud_head.tenants import TenantRegistry

#: The tenant registry and the audit logs under the cloud head's state directory.
TENANTS_DIR, AUDIT_DIR = "tenants", "audit"


def register(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sign``, ``crl`` and ``node`` to ``continuum certs``."""
    sign = actions.add_parser(
        "sign", help="sign a node's request and enrol the node in the tenant registry"
    )
    sign.add_argument("--ca", required=True, type=Path, help="directory with ca.key and ca.crt")
    sign.add_argument("--csr", required=True, type=Path, help="the request the box made")
    _add_identity(sign)
    _add_registry(sign, required=True)
    sign.add_argument(
        "--out", type=Path, default=None, help="directory for NODE.crt (default: the CSR's)"
    )
    sign.add_argument("--days", type=int, default=pki.NODE_VALIDITY_DAYS, help="validity in days")
    sign.add_argument(
        "--renew",
        action="store_true",
        help="the node is enrolled: issue it a new certificate in place of NODE.crt",
    )
    sign.set_defaults(run=run_sign)

    service = actions.add_parser(
        "service",
        help="issue the tenant's cloud services (control, ingest.0-7) their certificates",
    )
    service.add_argument("--tenant", required=True, help="tenant name")
    service.add_argument("--ca", required=True, type=Path, help="directory with ca.key and ca.crt")
    _add_registry(service, required=True)
    service.add_argument(
        "--days", type=int, default=pki.SERVICE_VALIDITY_DAYS, help="validity in days"
    )
    service.set_defaults(run=run_service)

    crl = actions.add_parser("crl", help="write the CRL of revoked nodes (mosquitto crlfile)")
    crl.add_argument("--ca", required=True, type=Path, help="directory with ca.key and ca.crt")
    crl.add_argument("--root", required=True, type=Path, help="the cloud head's state directory")
    crl.add_argument("--out", required=True, type=Path, help="the CRL file to (re)write")
    crl.add_argument(
        "--days",
        type=int,
        default=pki.CRL_VALIDITY_DAYS,
        help=f"days until nextUpdate; make a new CRL before then (default {pki.CRL_VALIDITY_DAYS})",
    )
    crl.set_defaults(run=run_crl)

    node = actions.add_parser(
        "node", help="development: make NODE.key and NODE.crt in one step (the key leaves you)"
    )
    _add_identity(node)
    node.add_argument("--ca", required=True, type=Path, help="directory with ca.key and ca.crt")
    node.add_argument("--out", required=True, type=Path, help="directory to write into")
    node.add_argument("--days", type=int, default=pki.NODE_VALIDITY_DAYS, help="validity in days")
    _add_registry(node, required=False)
    node.set_defaults(run=run_node)


def _add_identity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", required=True, help="tenant name")
    parser.add_argument("--node", required=True, help="node name (identity edge.NODE@TENANT)")


def _add_registry(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        required=required,
        default=None,
        help="the cloud head's state directory, whose tenant registry records the node"
        + ("" if required else " (without it the node is not enrolled)"),
    )
    add_credential(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--broker-pid", type=int, help="pid of mosquitto to reload (SIGHUP)")
    group.add_argument("--broker-pid-file", type=Path, help="mosquitto's pid_file (SIGHUP)")


@operator_command  # a full edge_nodes quota is refused (exit 3), as for `node enroll`
def run_sign(args: argparse.Namespace) -> int:
    """Sign a node's request after checking it names that node; enrol the node."""
    tenant, node = check_name(args.tenant, "tenant"), check_name(args.node, "node")
    try:
        pem = Path(args.csr).read_bytes()
    except OSError as error:
        raise ConfigError(f"--csr {args.csr}: {error.strerror}") from None
    csr = pki.check_request(pem, tenant, node)
    ca = pki.load_ca(args.ca)
    out = args.out if args.out is not None else Path(args.csr).parent
    cert_path = out / f"{node}.crt"
    if cert_path.exists() and not args.renew:
        raise ConfigError(
            f"{cert_path} exists; renew it with --renew, or choose another --out directory"
        )
    cert = pki.sign_request(csr, ca, tenant, node, days=args.days)
    with _registry(args) as registry:
        _enroll(registry, tenant, node, cert, renew=args.renew)
        pki.write_certificate(cert, cert_path, replace=args.renew)
        _print_issued(cert, cert_path, renewed=args.renew)
        _reload(registry, args)
    return 0


@operator_command
def run_service(args: argparse.Namespace) -> int:
    """Issue the tenant's service identities a key and certificate each; revoke the old ones."""
    from cloud_head._tenant_identities import service_certificate_files
    from cloud_head.tenants import ingest_usernames, service_credentials_dir

    tenant = check_name(args.tenant, "tenant")
    ca = pki.load_ca(args.ca)
    wanted = [identities.control_identity(tenant), *ingest_usernames(tenant)]
    issued = {identity: pki.sign_service(ca, identity, days=args.days) for identity in wanted}
    with _registry(args) as registry:
        folder = service_credentials_dir(registry.root, tenant)
        if not folder.is_dir():
            raise ConfigError(
                f"tenant {tenant!r} has no credentials folder {folder}; `continuum tenant "
                f"rotate {tenant}` makes it"
            )
        replaced = registry.record_service_certificates(
            tenant,
            {
                identity: (pki.serial_hex(cert), cert.not_valid_after_utc.timestamp())
                for identity, (_, cert) in issued.items()
            },
        )
        for identity, (key, cert) in issued.items():
            cert_path, key_path = service_certificate_files(folder, identity)
            try:
                # Key first: a certificate never sits beside a key of another pair for long.
                key_path.unlink(missing_ok=True)
                pki.write_key(key, key_path)
                pki.write_certificate(cert, cert_path, replace=True)
            except OSError as error:
                raise ConfigError(
                    f"cannot write {identity}'s key or certificate in {folder}: "
                    f"{error.strerror}; fix the folder and run `continuum certs service` again "
                    "(the registry already revoked the old ones)"
                ) from error
            _print_issued(cert, cert_path, renewed=False)
        if replaced:
            print(
                f"  {len(replaced)} old service certificates revoked: make the CRL again "
                "(`continuum certs crl`) before reloading the broker"
            )
        _reload(registry, args, "once the CRL is made again")
    return 0


def run_crl(args: argparse.Namespace) -> int:
    """Write a CRL of every revoked node certificate the tenant registry knows."""
    from cloud_head.tenants import TenantRegistry

    ca = pki.load_ca(args.ca)
    serials = TenantRegistry(_tenants_dir(args.root)).revoked_serials()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, pki.make_crl(ca, serials, days=args.days), mode=0o644)
    print(f"CRL of {ca.cert.subject.rfc4514_string()}: {args.out} ({len(serials)} revoked)")
    print(
        f"  valid {args.days} days: make it again before then; mosquitto reads it at start "
        "and on SIGHUP"
    )
    return 0


def run_node(args: argparse.Namespace) -> int:
    """Development: write a node key and certificate signed by the clients CA in one step."""
    if args.root is not None:
        return _run_node_enrolled(args)
    key, cert, key_path, cert_path = _make_node(args)
    pki.write_key(key, key_path)
    pki.write_certificate(cert, cert_path, replace=False)
    _print_issued(cert, cert_path, renewed=False)
    print(
        f"  NOT enrolled: the broker grants {identities.node_identity(args.tenant, args.node)} "
        "nothing until the tenant registry knows it; run this again with --root, or enrol a "
        "real box with `continuum certs request` on it and `continuum certs sign`"
    )
    return 0


@operator_command  # with --root given it settles nothing; it refuses a full quota (exit 3)
def _run_node_enrolled(args: argparse.Namespace) -> int:
    key, cert, key_path, cert_path = _make_node(args)
    with _registry(args) as registry:
        _enroll(registry, args.tenant, args.node, cert, renew=False)
        pki.write_key(key, key_path)
        pki.write_certificate(cert, cert_path, replace=False)
        _print_issued(cert, cert_path, renewed=False)
        _reload(registry, args)
    return 0


def _make_node(
    args: argparse.Namespace,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path, Path]:
    """Return a new key, its certificate for the node, and where they go (not written)."""
    tenant, node = check_name(args.tenant, "tenant"), check_name(args.node, "node")
    ca = pki.load_ca(args.ca)
    key_path, cert_path = args.out / f"{node}.key", args.out / f"{node}.crt"
    for path in (key_path, cert_path):
        if path.exists():
            raise ConfigError(f"{path} exists; remove it or choose another --out directory")
    key, pem = pki.make_request(tenant, node)
    cert = pki.sign_request(x509.load_pem_x509_csr(pem), ca, tenant, node, days=args.days)
    return key, cert, key_path, cert_path


@contextmanager
def _registry(args: argparse.Namespace) -> Iterator[TenantRegistry]:
    """Authorise the tenant's operator; yield its registry, recording changes in its audit."""
    from cloud_head.audit import AuditLog
    from cloud_head.tenants import TenantRegistry

    tenants = _tenants_dir(args.root)
    # Refuses (exit 3) without the tenant's credential; NotFoundError for an unknown tenant.
    actor = authorize(args)
    with AuditLog(Path(args.root) / AUDIT_DIR) as audit:
        yield TenantRegistry(tenants, audit=audit, actor=actor)


def _enroll(
    registry: TenantRegistry, tenant: str, node: str, cert: x509.Certificate, *, renew: bool
) -> None:
    registry.enroll_node(
        tenant,
        node,
        method="certificate",
        cert_serial=pki.serial_hex(cert),
        not_after=cert.not_valid_after_utc.timestamp(),
        replace=renew,
    )


def _reload(
    registry: TenantRegistry,
    args: argparse.Namespace,
    why: str = "for the node to reach its topics",
) -> None:
    pid = registry.apply_to_broker(pid=args.broker_pid, pid_file=args.broker_pid_file)
    if pid is None:
        print(f"  ACL written to {registry.acl_file}; reload the broker (SIGHUP) {why}")
    else:
        print(f"  broker (pid {pid}) reloaded {registry.acl_file}")


def _print_issued(cert: x509.Certificate, path: Path, *, renewed: bool) -> None:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    print(
        f"{'renewed' if renewed else 'issued'} {cn!s}: {path} (serial {pki.serial_hex(cert)}, "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
    )


def _tenants_dir(root: Path) -> Path:
    tenants = Path(root) / TENANTS_DIR
    if not tenants.is_dir():
        raise ConfigError(
            f"no tenant registry at {tenants}; pass --root with the cloud head's state "
            "directory (the one `continuum tenant create --root` was given)"
        )
    return tenants
