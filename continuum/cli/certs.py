"""``continuum certs ca|node``: a tenant CA and node client certificates, for development.

``ca`` writes ``ca.key`` (0600) and ``ca.crt``: a self-signed CA whose subject carries the
tenant as O.  ``node`` writes ``{node}.key`` (0600) and ``{node}.crt``: a client-auth
certificate with CN = node, O = tenant and the subjectAltName
``urn:continuum:{tenant}:node:{node}``, signed by that CA.  Keys are ECDSA P-256, which
every TLS stack (mosquitto's OpenSSL, paho's ssl module) accepts.  Production keeps CA keys
in an HSM or a real PKI; this helper is for laptops, CI and pilots.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from continuum._fs import OWNER_ONLY, atomic_write
from continuum.errors import ConfigError, ProtocolError, SpecError
from continuum.wire import topics

#: A tenant CA lives long enough for a pilot; node certificates are renewed yearly.
CA_VALIDITY_DAYS = 5 * 365
NODE_VALIDITY_DAYS = 365
#: Tolerate clocks a little behind the one that issued the certificate.
_BACKDATE = dt.timedelta(minutes=5)
CA_KEY, CA_CERT = "ca.key", "ca.crt"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``certs`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "certs",
        help="make a tenant CA and node client certificates (development)",
        description="Make a tenant CA and node client certificates for mutual TLS with the "
        "broker, for development and pilots (keys unencrypted, 0600).",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    ca = actions.add_parser("ca", help="make a tenant CA (ca.key, ca.crt)")
    ca.add_argument("--tenant", required=True, help="tenant name (the CA subject's O)")
    ca.add_argument("--out", required=True, type=Path, help="directory to write into")
    ca.add_argument("--days", type=int, default=CA_VALIDITY_DAYS, help="validity in days")
    ca.set_defaults(run=run_ca)
    node = actions.add_parser("node", help="make a node client certificate (NODE.key, NODE.crt)")
    node.add_argument("--tenant", required=True, help="tenant name (O); must match the CA's")
    node.add_argument("--node", required=True, help="node name (CN)")
    node.add_argument("--ca", required=True, type=Path, help="directory with ca.key and ca.crt")
    node.add_argument("--out", required=True, type=Path, help="directory to write into")
    node.add_argument("--days", type=int, default=NODE_VALIDITY_DAYS, help="validity in days")
    node.set_defaults(run=run_node)


def run_ca(args: argparse.Namespace) -> int:
    """Write a new tenant CA into ``--out``; refuse to overwrite one."""
    key_path, cert_path = make_ca(_name(args.tenant, "tenant"), args.out, days=args.days)
    print(f"tenant CA for {args.tenant}: {cert_path} (key {key_path}, 0600)")
    return 0


def run_node(args: argparse.Namespace) -> int:
    """Write a node client certificate signed by the tenant CA in ``--ca``."""
    key_path, cert_path = make_node_certificate(
        _name(args.tenant, "tenant"), _name(args.node, "node"), args.ca, args.out, days=args.days
    )
    print(f"node {args.node} of {args.tenant}: {cert_path} (key {key_path}, 0600)")
    return 0


def make_ca(tenant: str, out: Path, *, days: int = CA_VALIDITY_DAYS) -> tuple[Path, Path]:
    """Create a self-signed tenant CA in ``out``; return (key path, certificate path).

    Raises:
        ConfigError: ``out`` already holds a CA key, or ``days`` is not positive.
    """
    _check_days(days)
    key_path, cert_path = out / CA_KEY, out / CA_CERT
    _refuse_overwrite(key_path, cert_path)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant),
            x509.NameAttribute(NameOID.COMMON_NAME, f"continuum {tenant} CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_pair(key, cert, key_path, cert_path)
    return key_path, cert_path


def make_node_certificate(
    tenant: str, node: str, ca_dir: Path, out: Path, *, days: int = NODE_VALIDITY_DAYS
) -> tuple[Path, Path]:
    """Create a client certificate CN=node, O=tenant signed by the CA in ``ca_dir``.

    Returns (key path, certificate path).

    Raises:
        ConfigError: the CA is missing or unreadable, belongs to another tenant, or
            ``out`` already holds this node's key.
    """
    _check_days(days)
    ca_key, ca_cert = _load_ca(ca_dir)
    ca_tenants = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if [a.value for a in ca_tenants] != [tenant]:
        shown = ", ".join(str(a.value) for a in ca_tenants) or "none"
        raise ConfigError(
            f"the CA in {ca_dir} belongs to tenant {shown}, not {tenant!r}: a node gets its "
            "certificate from its own tenant's CA (`continuum certs ca --tenant "
            f"{tenant} --out DIR`)"
        )
    key_path, cert_path = out / f"{node}.key", out / f"{node}.crt"
    _refuse_overwrite(key_path, cert_path)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant),
                    x509.NameAttribute(NameOID.COMMON_NAME, node),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(node_uri(tenant, node))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(key, cert, key_path, cert_path)
    return key_path, cert_path


def node_uri(tenant: str, node: str) -> str:
    """Return the URI a node certificate carries as its subjectAltName (RFC 5280 verifiers
    require one): tenant and node, machine-readable, independent of the DN."""
    return f"urn:continuum:{tenant}:node:{node}"


def _name(value: str, what: str) -> str:
    try:
        return topics.check_name(value, what)
    except ProtocolError as error:
        raise SpecError(str(error), field=what) from error


def _check_days(days: int) -> None:
    if days < 1:
        raise ConfigError(f"--days must be >= 1, got {days}")


def _refuse_overwrite(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise ConfigError(f"{path} exists; remove it or choose another --out directory")


def _load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    except FileNotFoundError as error:
        raise ConfigError(
            f"no tenant CA in {ca_dir} ({error.filename} missing); make one with "
            "`continuum certs ca --tenant TENANT --out DIR`"
        ) from error
    except ValueError as error:
        raise ConfigError(f"cannot read the CA in {ca_dir}: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca_dir / CA_KEY} is not an ECDSA key made by `continuum certs ca`")
    return key, cert


def _write_pair(
    key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, key_path: Path, cert_path: Path
) -> None:
    key_path.parent.mkdir(parents=True, exist_ok=True)
    # Created owner-only: a key is never readable by others, even briefly.
    atomic_write(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=OWNER_ONLY,
    )
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
