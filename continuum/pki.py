"""Broker identities in X.509: the clients CA, requests, client certificates and CRLs.

One home for what a broker identity looks like in a certificate (DESIGN.md §6): the subject
is ``O = tenant, CN = identity`` (``continuum.wire.identities``; mosquitto's
``use_identity_as_username`` makes the CN the MQTT username, so the CN is what the ACL
grants to) and the subjectAltName is the URN ``urn:continuum:{tenant}:node:{node}`` (RFC
5280 verifiers want one); a cloud service's (``control@{tenant}``, ``ingest.{N}@{tenant}``)
carries ``urn:continuum:{tenant}:service:{role}``. The signer builds the certificate from
the identity it was asked for, never from what the request claims, and refuses a request
that claims anything else.
Keys are ECDSA P-256, which mosquitto's OpenSSL and Python's ssl module both take.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from continuum._fs import OWNER_ONLY, atomic_write
from continuum.errors import AccessDeniedError, ConfigError, ProtocolError
from continuum.wire.identities import Identity, node_identity, parse_identity

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CA_VALIDITY_DAYS",
    "CRL_VALIDITY_DAYS",
    "NODE_VALIDITY_DAYS",
    "SERVICE_VALIDITY_DAYS",
    "ClientsCa",
    "check_request",
    "load_ca",
    "make_ca",
    "make_crl",
    "make_request",
    "node_uri",
    "serial_hex",
    "service_uri",
    "sign_request",
    "sign_service",
    "write_certificate",
    "write_key",
]

#: The clients CA outlives many node certificates; node certificates are renewed yearly.
CA_VALIDITY_DAYS = 5 * 365
NODE_VALIDITY_DAYS = 365
#: Service certificates live on the head and are reissued by ``continuum certs service``.
SERVICE_VALIDITY_DAYS = 365
#: A CRL past its nextUpdate makes OpenSSL refuse every client: make a new one well before.
CRL_VALIDITY_DAYS = 30
#: Tolerate clocks a little behind the one that issued the certificate.
BACKDATE = dt.timedelta(minutes=5)
CA_KEY, CA_CERT = "ca.key", "ca.crt"
#: RSA keys shorter than this are refused in requests (NIST SP 800-57).
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class ClientsCa:
    """The clients CA loaded from its folder: the key that signs and its certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    folder: Path


def node_uri(tenant: str, node: str) -> str:
    """Return the URI a node certificate carries as its subjectAltName: tenant and node."""
    node_identity(tenant, node)  # checks both names
    return f"urn:continuum:{tenant}:node:{node}"


def service_uri(identity: str) -> str:
    """Return the URI a cloud service's certificate carries: its tenant and role.

    Raises:
        AccessDeniedError: ``identity`` is not a cloud service's (``control@T``,
            ``ingest.N@T``): node certificates are signed from the box's request only.
    """
    parsed = _service_identity(identity)
    role = identity.split("@", 1)[0]
    return f"urn:continuum:{parsed.tenant}:service:{role}"


def serial_hex(cert: x509.Certificate) -> str:
    """Return ``cert``'s serial number as the registry records it: lowercase hex."""
    return f"{cert.serial_number:x}"


def make_ca(out: Path, *, deployment: str, days: int = CA_VALIDITY_DAYS) -> tuple[Path, Path]:
    """Create the broker's self-signed clients CA in ``out``; return (key path, cert path).

    Raises:
        ConfigError: ``out`` already holds a CA, or ``days`` is not positive.
    """
    _check_days(days)
    key_path, cert_path = out / CA_KEY, out / CA_CERT
    _refuse_overwrite(key_path, cert_path)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, deployment),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{deployment} clients CA"),
        ]
    )
    now = dt.datetime.now(dt.timezone.utc)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_key(key, key_path)
    write_certificate(cert, cert_path, replace=False)
    return key_path, cert_path


def load_ca(folder: Path) -> ClientsCa:
    """Return the clients CA in ``folder``.

    Raises:
        ConfigError: it is missing, unreadable, or not one ``continuum certs ca`` made.
    """
    try:
        key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
    except FileNotFoundError as error:
        raise ConfigError(
            f"no clients CA in {folder} ({error.filename} missing); make one with "
            "`continuum certs ca --out DIR`"
        ) from error
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ConfigError(f"cannot read the clients CA in {folder}: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(
            f"{folder / CA_KEY} is not the ECDSA key of {folder / CA_CERT}: give the folder "
            "`continuum certs ca` wrote"
        )
    return ClientsCa(key=key, cert=cert, folder=folder)


def make_request(tenant: str, node: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """Return a new key and a PEM request for node ``node`` of ``tenant`` signed with it."""
    identity = node_identity(tenant, node)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(tenant, identity))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(node_uri(tenant, node))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM)


def check_request(pem: bytes, tenant: str, node: str) -> x509.CertificateSigningRequest:
    """Return the request in ``pem`` if it asks for exactly node ``node`` of ``tenant``.

    Raises:
        ConfigError: it is not a PEM request, its signature does not verify (altered, or
            not made with the key it carries), or its key is of a kind brokers refuse.
        AccessDeniedError: its CN, O or subjectAltName is not this node's identity.
    """
    identity = node_identity(tenant, node)
    try:
        csr = x509.load_pem_x509_csr(pem)
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ConfigError(
            f"not a certificate request: {error}; give the .csr `continuum certs request` wrote"
        ) from error
    if not valid:
        raise ConfigError(
            "the request's signature does not verify: it was altered after the box made it; "
            "make a new one on the box with `continuum certs request`"
        )
    _check_request_key(csr)
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    claimed = [str(a.value) for a in names]
    if claimed != [identity] or [str(a.value) for a in orgs] not in ([], [tenant]):
        raise AccessDeniedError(
            f"the request names {csr.subject.rfc4514_string()!r}, not {identity!r}: a "
            f"certificate for node {node!r} of tenant {tenant!r} carries CN={identity}; make "
            f"the request on that box with `continuum certs request --tenant {tenant} --node "
            f"{node}`"
        )
    try:
        alt = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return csr
    uris = alt.get_values_for_type(x509.UniformResourceIdentifier)
    if len(alt) != len(uris) or uris != [node_uri(tenant, node)]:
        raise AccessDeniedError(
            f"the request's subjectAltName {[str(n.value) for n in alt]} is not "
            f"[{node_uri(tenant, node)!r}]: it asks for more than node {node!r} of tenant "
            f"{tenant!r}; make the request with `continuum certs request`"
        )
    return csr


def sign_request(
    csr: x509.CertificateSigningRequest,
    ca: ClientsCa,
    tenant: str,
    node: str,
    *,
    days: int = NODE_VALIDITY_DAYS,
    lifetime: dt.timedelta | None = None,
) -> x509.Certificate:
    """Return a client certificate for node ``node`` of ``tenant`` with the request's key.

    The subject and extensions come from the identity, not from the request (check it with
    ``check_request`` first). The certificate never outlives the CA. ``lifetime``, when
    given, replaces ``days`` (tests make certificates that expire in seconds).
    """
    _check_days(days)
    identity = node_identity(tenant, node)
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)  # check_request
    return _client_certificate(
        public, ca, tenant, identity, node_uri(tenant, node), days=days, lifetime=lifetime
    )


def sign_service(
    ca: ClientsCa,
    identity: str,
    *,
    days: int = SERVICE_VALIDITY_DAYS,
    lifetime: dt.timedelta | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Return a new key and its client certificate for cloud service identity ``identity``.

    The key is made here, not requested: the services run on the head that holds the CA's
    signing step, so the key never travels. Only ``control@T`` and ``ingest.N@T`` are
    signed this way; a node's identity needs its box's request (``sign_request``), so
    nobody on the head can mint a node's key.

    Raises:
        AccessDeniedError: ``identity`` is not a cloud service's.
        ConfigError: ``days`` is not positive.
    """
    _check_days(days)
    parsed = _service_identity(identity)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _client_certificate(
        key.public_key(),
        ca,
        parsed.tenant,
        identity,
        service_uri(identity),
        days=days,
        lifetime=lifetime,
    )
    return key, cert


def _client_certificate(
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    ca: ClientsCa,
    tenant: str,
    identity: str,
    uri: str,
    *,
    days: int,
    lifetime: dt.timedelta | None,
) -> x509.Certificate:
    """Return a client certificate ``O = tenant, CN = identity`` for ``public`` by ``ca``."""
    now = dt.datetime.now(dt.timezone.utc)
    not_after = min(now + (lifetime or dt.timedelta(days=days)), ca.cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_subject(tenant, identity))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def _service_identity(identity: str) -> Identity:
    try:
        parsed = parse_identity(identity)
    except ProtocolError as error:
        raise AccessDeniedError(
            f"{error}; a service certificate is for control@TENANT or ingest.N@TENANT"
        ) from None
    if parsed.role not in ("control", "ingest"):
        raise AccessDeniedError(
            f"{identity!r} is not a cloud service's identity (control@TENANT or "
            "ingest.N@TENANT): a node's certificate is signed from the request its box made "
            "(`continuum certs request`, then `continuum certs sign`)"
        )
    return parsed


def make_crl(ca: ClientsCa, serials: list[str], *, days: int = CRL_VALIDITY_DAYS) -> bytes:
    """Return a PEM CRL of the CA listing ``serials`` (hex), valid for ``days``.

    Raises:
        ConfigError: a serial is not hexadecimal.
    """
    _check_days(days)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + dt.timedelta(days=days))
        # Rising with time, so a verifier can tell the newer of two CRLs.
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for serial in sorted(set(serials)):
        try:
            number = int(serial.replace(":", ""), 16)
        except ValueError:
            raise ConfigError(
                f"the tenant registry lists revoked serial {serial!r}, which is not hex"
            ) from None
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(number).revocation_date(now).build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    """Write ``key`` unencrypted, owner-only from its first byte; refuse to overwrite one."""
    _refuse_overwrite(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, mode=OWNER_ONLY)


def write_certificate(cert: x509.Certificate, path: Path, *, replace: bool) -> None:
    """Write ``cert`` (PEM) in one step; an existing file only where ``replace`` (renewal).

    A renewed certificate takes the old one's place atomically, so an agent reconnecting
    at that moment reads the old file or the new one, never half of one.
    """
    if not replace:
        _refuse_overwrite(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _subject(tenant: str, identity: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, tenant),
            x509.NameAttribute(NameOID.COMMON_NAME, identity),
        ]
    )


def _check_request_key(csr: x509.CertificateSigningRequest) -> None:
    public = csr.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in (
        "secp256r1",
        "secp384r1",
    ):
        return
    if isinstance(public, rsa.RSAPublicKey) and public.key_size >= _MIN_RSA_BITS:
        return
    raise ConfigError(
        f"the request's key ({type(public).__name__}) is not one the broker takes: use ECDSA "
        f"P-256 or P-384, or RSA of at least {_MIN_RSA_BITS} bits (`continuum certs request` "
        "makes P-256)"
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _check_days(days: int) -> None:
    if days < 1:
        raise ConfigError(f"--days must be >= 1, got {days}")


def _refuse_overwrite(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise ConfigError(f"{path} exists; remove it or choose another --out directory")
