"""The tenant registry: who may use the continuum, with which credential, key and quotas.

A tenant (DESIGN.md §6) owns broker identities (``continuum.wire.identities``): its
operator's credential (the tenant's name, read-only on ``ctm/{tenant}/#``), its control
plane's (``control@{tenant}``), one per ingest replica (``ingest.{N}@{tenant}``, one shared
secret) and one per enrolled edge node (``edge.{node}@{tenant}``, a password or a client
certificate); the broker ACL gives each only what its role needs.  It also owns an Ed25519
signing key pair, a Ray namespace, a store partition and resource quotas.  The registry
keeps them under one root directory::

    {root}/_tenants.sqlite        tenants, deleted tenants and node enrolments (SQLite, WAL)
    {root}/_broker/passwd         mosquitto password file: hashes only, never a password
    {root}/_broker/acl            mosquitto ACL file, regenerated from the registry
    {root}/{tenant}/keys/         signing.key and signing.pub
    {root}/{tenant}/credentials/  control.password, ingest.password: the cloud services';
                                  control.crt|key, ingest.N.crt|key (``certs service``)
    {root}/_archive/{tenant}-{UTC time}/   what a deleted tenant left behind

Everything here is owner-only (files 0600, folders 0700) except ``_broker``, which
mosquitto must read (0750, files 0640: share the group with the broker's user).

The tenant's public key is pinned in ``_tenants.sqlite`` when its key pair is made, and a
deploy must sign with the matching private key (``pin_public_key``): ``continuum audit
verify`` checks each log's signed head against the pinned key (``public_key``) by default.

Names starting with ``_`` are not valid tenant names, so a tenant can never collide
with the registry's own files.

Passwords are generated here and kept only as mosquitto's PBKDF2 hash in the password file;
the operator's and a node's are handed out once (``create``, ``rotate_credentials``,
``enroll_node``), the services' are also written to ``service_credentials_dir`` (owner-only),
from which the cloud head reads them at start.

The services' client certificates (``continuum certs service``) are recorded by serial
(``record_service_certificates``); the next issue, ``rotate_credentials`` and ``delete``
revoke them.

A node is enrolled (``enroll_node``) within the tenant's ``edge_nodes`` quota and revoked
(``revoke_node``): its password entry and ACL block go, the next ``apply_to_broker`` cuts its
connection, and a certificate's serial joins ``revoked_serials`` (the CRL).

Deleting a tenant revokes it and archives its identity, and keeps its data:

- its identities leave the password file and the ACL, and its nodes are revoked;
  ``apply_to_broker`` makes the running broker reload, which also disconnects sessions that
  are already open;
- ``{root}/{tenant}`` moves to ``{root}/_archive/``; the private signing key and the
  services' passwords are destroyed (nothing new can be signed as the tenant) and the
  public key is kept, so old artifacts and audit records still verify;
- samples in the store partition, models in the registry and audit records stay where
  they are: regulated users must keep them for a retention period, and erasing them is
  a separate, audited decision;
- the name is never reused, so a new tenant cannot inherit the old one's topics,
  partition, namespace or records.

Given an ``AuditLog``, every change (create, quota change, credential rotation, node
enrolment and revocation, delete) is
appended to the tenant's own audit log inside the change: when the record cannot be written
the change is undone (create, quota) or not made (rotate, delete), and the error says so.

The quotas live in ``_tenant_quotas``, the broker's files in ``_tenant_broker``, the
nodes and service passwords in ``_tenant_identities`` and the operator's login and pinned
keys in ``_tenant_auth``; all are public through this module.
"""

from __future__ import annotations

import fcntl
import json
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_head._tenant_auth import TenantAuthentication, add_public_key_column
from cloud_head._tenant_broker import DEFAULT_MOSQUITTO_PASSWD as DEFAULT_MOSQUITTO_PASSWD
from cloud_head._tenant_broker import BrokerFiles, acl_text, reload_broker
from cloud_head._tenant_identities import (
    NODES_SCHEMA,
    NodeCredentials,
    NodeEnrolment,
    NodeRecord,
    ServiceCertificates,
    remove_service_certificate_files,
    revoke_rows,
    revoke_service_certs,
    write_service_passwords,
)
from cloud_head._tenant_identities import ingest_share_group as ingest_share_group
from cloud_head._tenant_identities import service_credentials_dir as service_credentials_dir
from cloud_head._tenant_quotas import QUOTA_KINDS as QUOTA_KINDS
from cloud_head._tenant_quotas import QuotaExceededError, QuotaKind, Quotas
from cloud_head.audit import AuditAction
from continuum._fs import OWNER_ONLY, atomic_write, private_dir, private_file
from continuum.errors import (
    ConfigError,
    NotFoundError,
    ProtocolError,
    SpecError,
)
from continuum.signing import generate_keypair, key_fingerprint
from continuum.wire import identities, topics

if TYPE_CHECKING:
    from cloud_head.audit import AuditLog

__all__ = [
    "NodeCredentials",
    "NodeRecord",
    "QuotaExceededError",
    "QuotaKind",
    "Quotas",
    "TenantCredentials",
    "TenantRecord",
    "TenantRegistry",
    "check_tenant_name",
    "ingest_share_group",
    "ingest_usernames",
    "read_quotas",
    "service_credentials_dir",
]

_PASSWORD_BYTES = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    edge_nodes INTEGER NOT NULL,
    samples_per_day INTEGER NOT NULL,
    training_gpu_hours REAL NOT NULL,
    key_fingerprint TEXT NOT NULL,
    public_key_pem TEXT
);
CREATE TABLE IF NOT EXISTS deleted_tenants (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    deleted_at REAL NOT NULL,
    archive_path TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class TenantCredentials:
    """The broker passwords of a tenant's operator and services, handed out once.

    The password file keeps only their hashes; the services' passwords are also written,
    owner-only, to ``service_credentials_dir`` for the cloud head.  Every ingest replica
    identity (``ingest_usernames``) shares ``ingest_password``: one role, one secret.
    """

    username: str
    password: str = field(repr=False)
    control_username: str
    control_password: str = field(repr=False)
    ingest_password: str = field(repr=False)

    @property
    def ingest_usernames(self) -> list[str]:
        """The identities of the tenant's ingest replicas, replica 0 first."""
        return ingest_usernames(self.username)


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """One tenant and what it owns.  ``credentials`` is set only on what ``create`` returns."""

    name: str
    created_at: float
    quotas: Quotas
    key_fingerprint: str
    signing_key_path: Path
    public_key_path: Path
    credentials: TenantCredentials | None = field(default=None, repr=False, compare=False)

    @property
    def mqtt_username(self) -> str:
        """The tenant's operator identity: read-only on ``ctm/{tenant}/#``."""
        return identities.operator_identity(self.name)

    @property
    def control_username(self) -> str:
        """The identity of the tenant's control plane (fleet and rollout)."""
        return identities.control_identity(self.name)

    @property
    def ingest_usernames(self) -> list[str]:
        """The identities of the tenant's ingest replicas, replica 0 first."""
        return ingest_usernames(self.name)

    @property
    def service_usernames(self) -> list[str]:
        """The operator's and the services' identities: every user the tenant itself has."""
        return _service_usernames(self.name)

    @property
    def ray_namespace(self) -> str:
        """The Ray namespace the tenant's services run in."""
        return self.name

    @property
    def store_partition(self) -> str:
        """The tenant's partition, relative to the sample store root (``cloud_head.store``)."""
        return f"tenant={self.name}"

    @property
    def topic_filter(self) -> str:
        """The topic tree the ACL limits the tenant to."""
        return topics.tenant_filter(self.name)


_REGISTRY_DB = "_tenants.sqlite"
_LOCK_FILE = "_tenants.lock"


def registry_exists(root: Path | str) -> bool:
    """Return whether ``root`` holds a tenant registry (without creating one, as opening does)."""
    return (Path(root) / _REGISTRY_DB).is_file()


def check_tenant_name(name: str) -> str:
    """Return ``name`` if it is a valid tenant name (a topic level), else raise SpecError."""
    try:
        return topics.check_name(name, "tenant")
    except ProtocolError as error:
        raise SpecError(str(error), field="tenant") from error


def read_quotas(root: Path | str, tenant: str) -> Quotas:
    """Return ``tenant``'s quotas as the registry at ``root`` holds them now.

    Services call this at each check, not once at start, so ``continuum tenant quota`` takes
    effect on a running cloud head.

    Raises:
        NotFoundError: the registry does not know the tenant.
    """
    return TenantRegistry(root).get(tenant).quotas


def ingest_usernames(tenant: str) -> list[str]:
    """Return the identities of ``tenant``'s ingest replicas, replica 0 first."""
    return [
        identities.ingest_identity(tenant, replica)
        for replica in range(identities.MAX_INGEST_REPLICAS)
    ]


class TenantRegistry(NodeEnrolment, ServiceCertificates, TenantAuthentication):
    """Create, list and delete tenants under ``root``, enrol and revoke their nodes, and apply
    them to the MQTT broker.

    Changes are serialised across processes with a lock file; each one leaves the
    password and ACL files matching the registry.  The running broker sees them after
    ``apply_to_broker`` (a SIGHUP).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        mosquitto_passwd: str | None = None,
        audit: AuditLog | None = None,
        actor: str | None = None,
    ) -> None:
        """Open (or create) the registry at ``root``.

        ``audit``: where each change is recorded (the tenant's log), as ``actor`` (default
        ``user@host``); None records nothing.
        """
        self.root = Path(root)
        self._audit = audit
        self._actor = actor
        private_dir(self.root)
        (self.root / "_broker").mkdir(mode=0o750, exist_ok=True)
        # Owner-only before SQLite or open() make them with their default (0644) modes.
        private_file(self.root / _LOCK_FILE)
        private_file(self.db_path)
        self._broker = BrokerFiles(
            self.password_file, self.acl_file, mosquitto_passwd=mosquitto_passwd
        )
        with self._locked():
            self._broker.create_missing()
            with closing(self._connect()) as db, db:
                db.executescript(_SCHEMA + NODES_SCHEMA)
                add_public_key_column(db)

    @property
    def db_path(self) -> Path:
        """The SQLite database of tenants and deleted tenants."""
        return self.root / _REGISTRY_DB

    @property
    def password_file(self) -> Path:
        """The mosquitto password file (``password_file`` in mosquitto.conf)."""
        return self.root / "_broker" / "passwd"

    @property
    def acl_file(self) -> Path:
        """The mosquitto ACL file (``acl_file`` in mosquitto.conf)."""
        return self.root / "_broker" / "acl"

    @property
    def archive_dir(self) -> Path:
        """Where deleted tenants' directories go."""
        return self.root / "_archive"

    def service_credentials_dir(self, tenant: str) -> Path:
        """Return the owner-only folder holding ``tenant``'s service passwords.

        ``control.password`` (``control@{tenant}``) and ``ingest.password`` (every
        ``ingest.N@{tenant}``), written by ``create`` and ``rotate_credentials``.
        """
        return service_credentials_dir(self.root, tenant)

    def _audit_change(self, name: str, action: AuditAction, details: dict[str, object]) -> None:
        """Append a change to ``name``'s audit log; raises ``AuditWriteError`` if it cannot."""
        if self._audit is not None:
            # Sign the head as the tenant's services do, so `audit verify` (pinned key)
            # holds whoever appended last.
            key = self.tenant_dir(name) / "keys" / "signing.key"
            if key.is_file():
                self._audit.add_signing_key(name, key.read_bytes())
            self._audit.append(name, action, f"tenant/{name}", details, self._actor)

    def tenant_dir(self, name: str) -> Path:
        """Return the directory of tenant ``name`` (its keys)."""
        return self.root / check_tenant_name(name)

    def create(self, name: str, quotas: Quotas | None = None) -> TenantRecord:
        """Create tenant ``name``; the returned record carries its passwords, once.

        Raises:
            SpecError: the name is not a valid topic level, or a quota is negative.
            ConfigError: the tenant exists, or existed once (names are never reused).
            NotReadyError: mosquitto_passwd is missing or failed.
        """
        check_tenant_name(name)
        quotas = quotas if quotas is not None else Quotas()
        with self._locked(), closing(self._connect()) as db:
            self._refuse_taken(db, name)
            credentials = _new_credentials(name)
            try:
                record = self._new_identity(name, quotas, credentials)
                with db:
                    db.execute(
                        "INSERT INTO tenants (name, created_at, edge_nodes, samples_per_day, "
                        "training_gpu_hours, key_fingerprint, public_key_pem) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            name,
                            record.created_at,
                            quotas.edge_nodes,
                            quotas.samples_per_day,
                            quotas.training_gpu_hours,
                            record.key_fingerprint,
                            record.public_key_path.read_text(),
                        ),
                    )
                    self._set_passwords(credentials)
                    self._audit_change(
                        name,
                        AuditAction.TENANT_CHANGE,
                        {
                            "event": "created",
                            "quotas": asdict(quotas),
                            "key_fingerprint": record.key_fingerprint,
                            "mqtt_users": record.service_usernames,
                        },
                    )
            except BaseException:
                shutil.rmtree(self.tenant_dir(name), ignore_errors=True)
                self._broker.remove(_service_usernames(name))
                raise
            self._write_acl()
        return record

    def _new_identity(
        self, name: str, quotas: Quotas, credentials: TenantCredentials
    ) -> TenantRecord:
        """Make the tenant's directory and signing key pair; return its record (not stored)."""
        keys = private_dir(self.tenant_dir(name) / "keys")
        private_pem, public_pem = generate_keypair()
        atomic_write(keys / "signing.key", private_pem, mode=OWNER_ONLY)
        atomic_write(keys / "signing.pub", public_pem, mode=OWNER_ONLY)
        return TenantRecord(
            name=name,
            created_at=time.time(),
            quotas=quotas,
            key_fingerprint=key_fingerprint(public_pem),
            signing_key_path=keys / "signing.key",
            public_key_path=keys / "signing.pub",
            credentials=credentials,
        )

    def get(self, name: str) -> TenantRecord:
        """Return tenant ``name``; ``NotFoundError`` naming the known tenants if it is unknown."""
        check_tenant_name(name)
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM tenants WHERE name = ?", (name,)).fetchone()
            if row is None:
                known = [r["name"] for r in db.execute("SELECT name FROM tenants ORDER BY name")]
                raise NotFoundError(
                    f"no tenant {name!r} in {self.root}; known tenants: "
                    f"{', '.join(known) or 'none'} (create one with `continuum tenant create`)"
                )
        return self._record(row)

    def list(self) -> list[TenantRecord]:
        """Return every tenant, by name."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM tenants ORDER BY name").fetchall()
        return [self._record(row) for row in rows]

    def set_quotas(self, name: str, quotas: Quotas) -> TenantRecord:
        """Replace the quotas of tenant ``name``; return the updated record."""
        with self._locked(), closing(self._connect()) as db, db:
            before = self.get(name).quotas
            db.execute(
                "UPDATE tenants SET edge_nodes = ?, samples_per_day = ?, training_gpu_hours = ? "
                "WHERE name = ?",
                (quotas.edge_nodes, quotas.samples_per_day, quotas.training_gpu_hours, name),
            )
            # Inside the transaction: a change that cannot be recorded is rolled back.
            self._audit_change(
                name,
                AuditAction.TENANT_CHANGE,
                {"event": "quota", "before": asdict(before), "after": asdict(quotas)},
            )
        return self.get(name)

    def check_quota(
        self, tenant: str, kind: QuotaKind, current: float, requested: float = 1
    ) -> None:
        """Return if ``tenant`` may add ``requested`` to ``current`` of ``kind``, else raise.

        Raises:
            QuotaExceededError: over the limit; the message names it and how to raise it.
            NotFoundError: no such tenant.
        """
        self.get(tenant).quotas.check(tenant, kind, current, requested)

    def rotate_credentials(self, name: str) -> TenantCredentials:
        """Give tenant ``name``'s operator and services new passwords (returned once).

        The services' files in ``service_credentials_dir`` are rewritten; the old passwords
        stop working at the broker's next reload (``apply_to_broker``).  The services'
        client certificates are revoked (``revoked_serials``) and their files removed: issue
        new ones with ``continuum certs service``.  Nodes keep theirs
        (``enroll_node(..., replace=True)`` replaces one).
        """
        with self._locked(), closing(self._connect()) as db:
            record = self.get(name)
            credentials = _new_credentials(record.name)
            with db:
                revoked = revoke_service_certs(db, name, time.time())
                self._audit_change(
                    name,
                    AuditAction.KEY_CHANGE,
                    {
                        "event": "credentials rotated",
                        "mqtt_users": record.service_usernames,
                        "revoked_service_serials": revoked,
                    },
                )
            remove_service_certificate_files(self.service_credentials_dir(name))
            self._set_passwords(credentials)
        return credentials

    def delete(self, name: str) -> Path:
        """Revoke tenant ``name`` and archive its identity; return the archive directory.

        Its MQTT users leave the password and ACL files (effective at the broker's next
        reload), its private key is destroyed, its public key and record are archived,
        its data stays (see the module docstring) and its name is never reused.

        Raises:
            NotFoundError: no such tenant.
        """
        with self._locked(), closing(self._connect()) as db:
            record = self.get(name)
            self._audit_change(
                name,
                AuditAction.TENANT_CHANGE,
                {
                    "event": "deleted",
                    "key_fingerprint": record.key_fingerprint,
                    "revoked_mqtt_users": [
                        *record.service_usernames,
                        *(n.identity for n in self.nodes(name) if n.active),
                    ],
                    "kept": ["samples", "models", "audit records", "public key"],
                },
            )
            self._broker.remove(
                [*record.service_usernames, *(n.identity for n in self.nodes(name))]
            )
            deleted_at = time.time()
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(deleted_at))
            archive = self.archive_dir / f"{name}-{stamp}"
            private_dir(self.archive_dir)
            directory = self.tenant_dir(name)
            if directory.exists():
                directory.rename(archive)
            else:
                private_dir(archive)
            (archive / "keys" / "signing.key").unlink(missing_ok=True)
            shutil.rmtree(archive / "credentials", ignore_errors=True)
            summary = {
                **{k: v for k, v in asdict(record).items() if k != "credentials"},
                "deleted_at": deleted_at,
                "ray_namespace": record.ray_namespace,
                "store_partition": record.store_partition,
            }
            atomic_write(
                archive / "tenant.json",
                json.dumps(summary, indent=2, default=str),
                mode=OWNER_ONLY,
            )
            with db:
                db.execute(
                    "INSERT INTO deleted_tenants VALUES (?, ?, ?, ?, ?)",
                    (name, record.created_at, deleted_at, str(archive), record.key_fingerprint),
                )
                db.execute("DELETE FROM tenants WHERE name = ?", (name,))
                revoke_rows(db, name, None, deleted_at)
                revoke_service_certs(db, name, deleted_at)
            self._write_acl()
        return archive

    def apply_to_broker(
        self, *, pid: int | None = None, pid_file: Path | None = None
    ) -> int | None:
        """Bring the broker files in line with the registry and make the broker reload them.

        Users in the password file that belong to no tenant (or to a revoked node) are
        removed; the ACL is rewritten.  With ``pid`` or ``pid_file`` (mosquitto's
        ``pid_file``) the broker gets a SIGHUP: mosquitto 2.0 then re-reads both files and
        disconnects sessions whose user is gone.  Returns the pid signalled, or None when
        none was given.

        Raises:
            ConfigError: an identity has no entry in the password file (rotate the tenant's
                credentials, or enrol the node again).
            NotReadyError: the pid file or the process does not exist.
        """
        with self._locked():
            services = {u for t in self.list() for u in t.service_usernames}
            nodes = {n.identity: n for n in self.nodes() if n.active and n.method == "password"}
            present = set(self._broker.users())
            self._broker.remove(sorted(present - services - set(nodes)))
            missing = sorted((services | set(nodes)) - present)
            if missing:
                fixes = sorted(
                    f"`continuum node enroll {nodes[u].tenant} {nodes[u].node} --replace`"
                    if u in nodes
                    else f"`continuum tenant rotate {identities.parse_identity(u).tenant}`"
                    for u in missing
                )
                raise ConfigError(
                    f"{self.password_file} lacks {', '.join(missing)}; give them new passwords "
                    f"with {', '.join(dict.fromkeys(fixes))}"
                )
            self._write_acl()
        return reload_broker(pid, pid_file)

    def acl_text(self) -> str:
        """Return the ACL file for the current tenants and nodes (mosquitto ``acl_file``)."""
        return acl_text([t.name for t in self.list()], self.nodes())

    def _record(self, row: sqlite3.Row) -> TenantRecord:
        keys = self.root / row["name"] / "keys"
        return TenantRecord(
            name=row["name"],
            created_at=row["created_at"],
            quotas=Quotas(
                edge_nodes=row["edge_nodes"],
                samples_per_day=row["samples_per_day"],
                training_gpu_hours=row["training_gpu_hours"],
            ),
            key_fingerprint=row["key_fingerprint"],
            signing_key_path=keys / "signing.key",
            public_key_path=keys / "signing.pub",
        )

    def _refuse_taken(self, db: sqlite3.Connection, name: str) -> None:
        if db.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
            raise ConfigError(f"tenant {name!r} already exists (see `continuum tenant list`)")
        gone = db.execute(
            "SELECT deleted_at FROM deleted_tenants WHERE name = ?", (name,)
        ).fetchone()
        if gone is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(gone["deleted_at"]))
            raise ConfigError(
                f"tenant name {name!r} was deleted at {when} and is not reused, so a new "
                "tenant cannot inherit its retained samples, models and audit records; "
                "choose another name"
            )
        if self.tenant_dir(name).exists():
            raise ConfigError(
                f"{self.tenant_dir(name)} exists but belongs to no tenant; move it away first"
            )

    def _write_acl(self) -> None:
        self._broker.write_acl([t.name for t in self.list()], self.nodes())

    def _set_passwords(self, credentials: TenantCredentials) -> None:
        """Set the operator's and services' passwords, and write the services' files."""
        self._broker.set_password(credentials.username, credentials.password)
        self._broker.set_password(credentials.control_username, credentials.control_password)
        first, *others = credentials.ingest_usernames
        self._broker.set_password(first, credentials.ingest_password)
        shared = self._broker.hash_of(first)
        assert shared is not None  # mosquitto_passwd just wrote it
        self._broker.set_hashes(dict.fromkeys(others, shared))
        write_service_passwords(
            self.service_credentials_dir(credentials.username),
            control=credentials.control_password,
            ingest=credentials.ingest_password,
        )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=10.0)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        return db

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / _LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _new_credentials(name: str) -> TenantCredentials:
    """Return fresh random passwords for tenant ``name``'s operator and services."""
    return TenantCredentials(
        username=identities.operator_identity(name),
        password=secrets.token_urlsafe(_PASSWORD_BYTES),
        control_username=identities.control_identity(name),
        control_password=secrets.token_urlsafe(_PASSWORD_BYTES),
        ingest_password=secrets.token_urlsafe(_PASSWORD_BYTES),
    )


def _service_usernames(name: str) -> list[str]:
    """Return the operator's and services' identities of tenant ``name``."""
    operator, control = identities.operator_identity(name), identities.control_identity(name)
    return [operator, control, *ingest_usernames(name)]
