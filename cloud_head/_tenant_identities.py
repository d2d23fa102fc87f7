"""A tenant's identities below the tenant: its enrolled edge nodes and its services' secrets.

Part of ``cloud_head.tenants``.  Each edge node is enrolled as ``edge.{node}@{tenant}``
(``continuum.wire.identities``) with a password or a client certificate; the ``nodes`` table
keeps every enrolment, revoked ones too, because an auditor asks what existed and when, and
the CRL lists every certificate serial that was revoked.  The cloud services' passwords are
kept in owner-only files under the tenant's directory, so a cloud head can be started later
without anyone handing passwords around; so are their client certificates and keys, where
the broker takes certificates (``continuum certs service``), whose serials the
``service_certs`` table keeps so that replacing them, rotating the tenant's credentials or
deleting the tenant puts the old ones on the CRL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from cloud_head.audit import AuditAction
from continuum._fs import OWNER_ONLY, atomic_write, private_dir
from continuum.errors import ConfigError, NotFoundError, ProtocolError, SpecError
from continuum.wire import identities, topics

if TYPE_CHECKING:
    from cloud_head._tenant_broker import BrokerFiles
    from cloud_head.tenants import TenantRecord

#: How an edge node proves its identity to the broker.
EnrolMethod = Literal["password", "certificate"]
ENROL_METHODS: tuple[str, ...] = get_args(EnrolMethod)

#: The files of ``service_credentials_dir``: the control plane's and the ingest replicas'.
CONTROL_PASSWORD_FILE = "control.password"
INGEST_PASSWORD_FILE = "ingest.password"
_PASSWORD_BYTES = 32

NODES_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    node TEXT NOT NULL,
    method TEXT NOT NULL,
    enrolled_at REAL NOT NULL,
    revoked_at REAL,
    cert_serial TEXT,
    not_after REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS nodes_enrolled ON nodes (tenant, node)
    WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS service_certs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    identity TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    not_after REAL NOT NULL,
    issued_at REAL NOT NULL,
    revoked_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS service_certs_active ON service_certs (tenant, identity)
    WHERE revoked_at IS NULL;
"""


@dataclass(frozen=True, slots=True)
class NodeCredentials:
    """What enrolling a node hands out, once: its broker username and, if any, its password.

    ``password`` is None for a certificate: the broker takes the certificate's CN as the
    username (``use_identity_as_username``) and the node's ACL block grants the access.
    """

    username: str
    password: str | None = field(repr=False)
    method: EnrolMethod


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One enrolment of an edge node; ``revoked_at`` is set once it was revoked or replaced."""

    tenant: str
    node: str
    method: EnrolMethod
    enrolled_at: float
    revoked_at: float | None = None
    cert_serial: str | None = None
    not_after: float | None = None

    @property
    def identity(self) -> str:
        """The node's broker identity (MQTT username, certificate CN)."""
        return identities.node_identity(self.tenant, self.node)

    @property
    def active(self) -> bool:
        """Whether the broker grants this enrolment anything (it is not revoked)."""
        return self.revoked_at is None


def check_node_name(node: str) -> str:
    """Return ``node`` if it is a valid node name (a topic level), else raise SpecError."""
    try:
        return topics.check_name(node, "node")
    except ProtocolError as error:
        raise SpecError(str(error), field="node") from error


def check_enrolment(method: str, cert_serial: str | None, not_after: float | None) -> EnrolMethod:
    """Return ``method`` if it and the certificate fields fit together, else raise SpecError."""
    if method not in ENROL_METHODS:
        raise SpecError(
            f"unknown enrolment method {method!r}: use one of {', '.join(ENROL_METHODS)}",
            field="method",
        )
    if method == "certificate":
        if not isinstance(cert_serial, str) or not cert_serial.strip():
            raise SpecError(
                "a certificate enrolment needs the certificate's serial (cert_serial, hex), "
                "so that revoking the node can put it on the CRL",
                field="cert_serial",
            )
        if not isinstance(not_after, int | float) or not_after <= 0:
            raise SpecError(
                "a certificate enrolment needs the certificate's expiry (not_after, Unix "
                "seconds), so renewal can be planned",
                field="not_after",
            )
    elif cert_serial is not None or not_after is not None:
        raise SpecError(
            "cert_serial and not_after belong to method='certificate'; a password enrolment "
            "takes neither",
            field="method",
        )
    return method  # type: ignore[return-value]


def node_from_row(row: sqlite3.Row) -> NodeRecord:
    """Return the record of one ``nodes`` row."""
    return NodeRecord(
        tenant=row["tenant"],
        node=row["node"],
        method=row["method"],
        enrolled_at=row["enrolled_at"],
        revoked_at=row["revoked_at"],
        cert_serial=row["cert_serial"],
        not_after=row["not_after"],
    )


def select_nodes(
    db: sqlite3.Connection, tenant: str | None = None, *, active_only: bool = False
) -> list[NodeRecord]:
    """Return the enrolments of ``tenant`` (None: every tenant), oldest first."""
    where, values = [], []
    if tenant is not None:
        where.append("tenant = ?")
        values.append(tenant)
    if active_only:
        where.append("revoked_at IS NULL")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = db.execute(f"SELECT * FROM nodes{clause} ORDER BY tenant, node, id", values)
    return [node_from_row(row) for row in rows]


def active_node(db: sqlite3.Connection, tenant: str, node: str) -> NodeRecord | None:
    """Return the enrolment of ``node`` that is in force, or None."""
    row = db.execute(
        "SELECT * FROM nodes WHERE tenant = ? AND node = ? AND revoked_at IS NULL",
        (tenant, node),
    ).fetchone()
    return None if row is None else node_from_row(row)


def refuse_enrolled(existing: NodeRecord) -> ConfigError:
    """Return the error for enrolling a node that is enrolled already."""
    since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(existing.enrolled_at))
    return ConfigError(
        f"node {existing.node!r} of tenant {existing.tenant!r} is already enrolled as "
        f"{existing.identity} ({existing.method}, since {since}); revoke it first "
        f"(`continuum node revoke {existing.tenant} {existing.node}`) or enrol it again with "
        "--replace (replace=True), which revokes the old credential"
    )


def not_enrolled(tenant: str, node: str, enrolled: list[NodeRecord]) -> NotFoundError:
    """Return the error for a node that has no enrolment in force."""
    names = ", ".join(r.node for r in enrolled) or "none"
    return NotFoundError(
        f"node {node!r} of tenant {tenant!r} is not enrolled (enrolled nodes: {names}); "
        "see `continuum node list`"
    )


def insert_node(db: sqlite3.Connection, record: NodeRecord) -> None:
    """Add one enrolment (inside the caller's transaction)."""
    db.execute(
        "INSERT INTO nodes (tenant, node, method, enrolled_at, revoked_at, cert_serial, "
        "not_after) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            record.tenant,
            record.node,
            record.method,
            record.enrolled_at,
            record.revoked_at,
            record.cert_serial,
            record.not_after,
        ),
    )


def revoke_rows(db: sqlite3.Connection, tenant: str, node: str | None, when: float) -> None:
    """Mark the enrolment of ``node`` (None: every node of ``tenant``) revoked at ``when``."""
    if node is None:
        db.execute(
            "UPDATE nodes SET revoked_at = ? WHERE tenant = ? AND revoked_at IS NULL",
            (when, tenant),
        )
    else:
        db.execute(
            "UPDATE nodes SET revoked_at = ? WHERE tenant = ? AND node = ? AND revoked_at IS NULL",
            (when, tenant, node),
        )


def revoked_serials(db: sqlite3.Connection) -> list[str]:
    """Return the serials of every revoked certificate, node's or service's, of every tenant."""
    rows = db.execute(
        "SELECT cert_serial FROM nodes WHERE revoked_at IS NOT NULL "
        "AND cert_serial IS NOT NULL UNION "
        "SELECT cert_serial FROM service_certs WHERE revoked_at IS NOT NULL ORDER BY cert_serial"
    )
    return [row["cert_serial"] for row in rows]


@dataclass(frozen=True, slots=True)
class ServiceCertificate:
    """One client certificate issued to a cloud service identity (``control@T``, ``ingest.N@T``)."""

    tenant: str
    identity: str
    cert_serial: str
    not_after: float
    issued_at: float
    revoked_at: float | None = None


def service_certificate_files(folder: Path, identity: str) -> tuple[Path, Path]:
    """Return (certificate, key) of service ``identity`` in credentials ``folder``.

    ``control.crt``/``control.key`` and ``ingest.N.crt``/``ingest.N.key``: the identity
    without its ``@TENANT``, which the folder already names.
    """
    parsed = identities.parse_identity(identity)
    if parsed.role not in ("control", "ingest"):
        raise ConfigError(f"{identity!r} is not a cloud service identity (control@T, ingest.N@T)")
    stem = identity.split("@", 1)[0]
    return folder / f"{stem}.crt", folder / f"{stem}.key"


def revoke_service_certs(db: sqlite3.Connection, tenant: str, when: float) -> list[str]:
    """Mark ``tenant``'s service certificates in force revoked at ``when``; return their serials."""
    serials = [
        row["cert_serial"]
        for row in db.execute(
            "SELECT cert_serial FROM service_certs WHERE tenant = ? AND revoked_at IS NULL "
            "ORDER BY identity",
            (tenant,),
        )
    ]
    db.execute(
        "UPDATE service_certs SET revoked_at = ? WHERE tenant = ? AND revoked_at IS NULL",
        (when, tenant),
    )
    return serials


def remove_service_certificate_files(folder: Path) -> None:
    """Delete every service certificate and key in ``folder`` (they were revoked)."""
    if folder.is_dir():
        for path in [*folder.glob("*.crt"), *folder.glob("*.key")]:
            path.unlink(missing_ok=True)


def service_credentials_dir(root: Path, tenant: str) -> Path:
    """Return the owner-only folder of ``tenant``'s service passwords under registry ``root``."""
    return Path(root) / topics.check_name(tenant, "tenant") / "credentials"


def write_service_passwords(folder: Path, *, control: str, ingest: str) -> None:
    """Write the control plane's and the ingest replicas' passwords, owner-only."""
    private_dir(folder)
    atomic_write(folder / CONTROL_PASSWORD_FILE, control + "\n", mode=OWNER_ONLY)
    atomic_write(folder / INGEST_PASSWORD_FILE, ingest + "\n", mode=OWNER_ONLY)


def ingest_share_group(ingest_password: str) -> str:
    """Return the MQTT 5 shared-subscription group of a tenant's ingest replicas.

    mosquitto's ``acl_file`` accepts every SUBSCRIBE and checks only ``read`` on delivery,
    so any identity may join a share group: a node that joined ``$share/ingest/...`` would
    be handed its share of the tenant's samples, which the read check then drops (measured
    on mosquitto 2.0.11: half of them).  The group is therefore named by a secret only the
    ingest replicas hold, derived from their shared password: a node cannot name it, and
    whatever group it joins gets nothing and takes nothing from ingest's.  A rotation of
    the ingest password moves the replicas to a new group (ingest is idempotent by sample
    id, so the overlap during a rolling restart only duplicates deliveries).
    """
    if not isinstance(ingest_password, str) or not ingest_password:
        raise ConfigError("the ingest password is empty; `continuum tenant rotate` writes one")
    digest = hmac.new(
        ingest_password.encode(), b"continuum ingest share group", hashlib.sha256
    ).hexdigest()
    return f"ingest-{digest[:32]}"


def read_service_password(folder: Path, role: Literal["control", "ingest"]) -> str:
    """Return the password of ``role`` from ``folder``.

    Raises:
        ConfigError: the file is missing, unreadable or empty; the message names the fix.
    """
    path = folder / (CONTROL_PASSWORD_FILE if role == "control" else INGEST_PASSWORD_FILE)
    try:
        password = path.read_text().strip()
    except OSError as error:
        raise ConfigError(
            f"cannot read the {role} password {path} ({error.strerror}); "
            f"`continuum tenant rotate {folder.parent.name}` writes it again"
        ) from error
    if not password:
        raise ConfigError(
            f"{path} is empty; `continuum tenant rotate {folder.parent.name}` writes it again"
        )
    return password


class NodeEnrolment:
    """The node half of ``TenantRegistry``: enrol, revoke and list a tenant's edge nodes.

    Each change is made under the registry's lock, in one SQLite transaction with its
    password-file change and its audit record (a change that cannot be recorded is undone),
    and leaves the ACL matching the enrolments in force.
    """

    if TYPE_CHECKING:
        _broker: BrokerFiles

        def _connect(self) -> sqlite3.Connection: ...
        def _locked(self) -> AbstractContextManager[None]: ...
        def _write_acl(self) -> None: ...
        def get(self, name: str) -> TenantRecord: ...
        def _audit_change(
            self, name: str, action: AuditAction, details: dict[str, object]
        ) -> None: ...

    def enroll_node(
        self,
        tenant: str,
        node: str,
        *,
        method: EnrolMethod = "password",
        cert_serial: str | None = None,
        not_after: float | None = None,
        replace: bool = False,
    ) -> NodeCredentials:
        """Enrol ``node`` of ``tenant`` as ``edge.{node}@{tenant}``; return its credential, once.

        ``method="password"`` makes a password (its hash goes to the password file);
        ``method="certificate"`` records a certificate signed for the identity
        (``cert_serial``, ``not_after``) and writes no password.  Either way the node gets
        its ACL block, effective at the broker's next reload (``apply_to_broker``).

        Args:
            replace: enrol a node that is enrolled already (a lost password, a renewed
                certificate): its old enrolment is revoked in the same step.

        Raises:
            SpecError: a bad node name, method, or certificate fields.
            NotFoundError: no such tenant.
            ConfigError: the node is enrolled already and ``replace`` is false.
            QuotaExceededError: the tenant's ``edge_nodes`` quota is full.
            NotReadyError: mosquitto_passwd is missing or failed.
        """
        check_node_name(node)
        method = check_enrolment(method, cert_serial, not_after)
        identity = identities.node_identity(tenant, node)
        with self._locked(), closing(self._connect()) as db:
            quotas = self.get(tenant).quotas
            existing = active_node(db, tenant, node)
            if existing is not None and not replace:
                raise refuse_enrolled(existing)
            others = [n for n in select_nodes(db, tenant, active_only=True) if n.node != node]
            quotas.check(tenant, "edge_nodes", len(others), 1)
            record = NodeRecord(
                tenant=tenant,
                node=node,
                method=method,
                enrolled_at=time.time(),
                cert_serial=cert_serial.strip().lower() if cert_serial else None,
                not_after=float(not_after) if not_after is not None else None,
            )
            password = secrets.token_urlsafe(_PASSWORD_BYTES) if method == "password" else None
            old_hash = self._broker.hash_of(identity)
            try:
                with db:
                    if existing is not None:
                        revoke_rows(db, tenant, node, record.enrolled_at)
                    insert_node(db, record)
                    if password is not None:
                        self._broker.set_password(identity, password)
                    else:
                        self._broker.remove([identity])
                    self._audit_change(
                        tenant,
                        AuditAction.KEY_CHANGE,
                        {
                            "event": "node enrolled",
                            "node": node,
                            "identity": identity,
                            "method": method,
                            "cert_serial": record.cert_serial,
                            "replaced": existing is not None,
                        },
                    )
            except BaseException:
                if old_hash is None:
                    self._broker.remove([identity])
                else:
                    self._broker.set_hashes({identity: old_hash})
                raise
            self._write_acl()
        return NodeCredentials(username=identity, password=password, method=method)

    def revoke_node(self, tenant: str, node: str) -> None:
        """Revoke ``node`` of ``tenant``: its password entry and ACL block go.

        The broker cuts its connection at its next reload (``apply_to_broker``); a
        certificate's serial joins ``revoked_serials``.  The enrolment stays in the table,
        marked revoked.

        Raises:
            NotFoundError: no such tenant, or the node is not enrolled.
        """
        check_node_name(node)
        with self._locked(), closing(self._connect()) as db:
            self.get(tenant)
            existing = active_node(db, tenant, node)
            if existing is None:
                raise not_enrolled(tenant, node, select_nodes(db, tenant, active_only=True))
            with db:
                revoke_rows(db, tenant, node, time.time())
                self._audit_change(
                    tenant,
                    AuditAction.KEY_CHANGE,
                    {
                        "event": "node revoked",
                        "node": node,
                        "identity": existing.identity,
                        "method": existing.method,
                        "cert_serial": existing.cert_serial,
                    },
                )
            self._broker.remove([existing.identity])
            self._write_acl()

    def nodes(self, tenant: str | None = None) -> list[NodeRecord]:
        """Return every enrolment of ``tenant`` (None: of every tenant), revoked ones too.

        Raises:
            NotFoundError: ``tenant`` is given and the registry does not hold it (a deleted
                tenant's nodes are listed with ``tenant=None``).
        """
        if tenant is not None:
            self.get(tenant)
        with closing(self._connect()) as db:
            return select_nodes(db, tenant)

    def revoked_serials(self) -> list[str]:
        """Return the serial (lowercase hex) of every revoked certificate: the CRL."""
        with closing(self._connect()) as db:
            return revoked_serials(db)


class ServiceCertificates:
    """The service-certificate half of ``TenantRegistry``: which serials the services hold.

    The certificates and keys themselves are made by ``continuum certs service``
    (``continuum.pki.sign_service``); the registry records their serials, so that the next
    issue, ``rotate_credentials`` and ``delete`` revoke them (``revoked_serials``: the CRL).
    """

    if TYPE_CHECKING:

        def _connect(self) -> sqlite3.Connection: ...
        def _locked(self) -> AbstractContextManager[None]: ...
        def get(self, name: str) -> TenantRecord: ...
        def _audit_change(
            self, name: str, action: AuditAction, details: dict[str, object]
        ) -> None: ...

    def record_service_certificates(
        self, tenant: str, issued: dict[str, tuple[str, float]]
    ) -> list[str]:
        """Record ``tenant``'s new service certificates; return the serials they replace.

        ``issued`` maps each service identity to its certificate's (serial hex, not_after in
        Unix seconds).  The certificates in force before are revoked in the same
        transaction, with one audit record; make the CRL again (``continuum certs crl``)
        for the broker to refuse them.

        Raises:
            NotFoundError: no such tenant.
            SpecError: an identity is not one of the tenant's services, or a serial is empty.
        """
        with self._locked(), closing(self._connect()) as db:
            self.get(tenant)
            for identity, (serial, _) in issued.items():
                parsed = _parse_service(identity)
                if parsed.tenant != tenant:
                    raise SpecError(
                        f"{identity!r} is not a service identity of tenant {tenant!r}",
                        field="identity",
                    )
                if not serial.strip():
                    raise SpecError(f"empty certificate serial for {identity}", field="serial")
            now = time.time()
            with db:
                replaced = revoke_service_certs(db, tenant, now)
                db.executemany(
                    "INSERT INTO service_certs (tenant, identity, cert_serial, not_after, "
                    "issued_at) VALUES (?, ?, ?, ?, ?)",
                    [
                        (tenant, identity, serial.strip().lower(), float(not_after), now)
                        for identity, (serial, not_after) in sorted(issued.items())
                    ],
                )
                self._audit_change(
                    tenant,
                    AuditAction.KEY_CHANGE,
                    {
                        "event": "service certificates issued",
                        "certificates": {i: s.strip().lower() for i, (s, _) in issued.items()},
                        "revoked_serials": replaced,
                    },
                )
        return replaced

    def service_certificates(self, tenant: str) -> list[ServiceCertificate]:
        """Return every service certificate ``tenant`` was issued, revoked ones too."""
        self.get(tenant)
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT * FROM service_certs WHERE tenant = ? ORDER BY id", (tenant,)
            ).fetchall()
        return [
            ServiceCertificate(
                tenant=row["tenant"],
                identity=row["identity"],
                cert_serial=row["cert_serial"],
                not_after=row["not_after"],
                issued_at=row["issued_at"],
                revoked_at=row["revoked_at"],
            )
            for row in rows
        ]


def _parse_service(identity: str) -> identities.Identity:
    try:
        parsed = identities.parse_identity(identity)
    except ProtocolError as error:
        raise SpecError(str(error), field="identity") from error
    if parsed.role not in ("control", "ingest"):
        raise SpecError(
            f"{identity!r} is not a cloud service identity (control@TENANT, ingest.N@TENANT)",
            field="identity",
        )
    return parsed
