"""The audit log: an append-only, hash-chained record per tenant of every decision that moves
data or models (DESIGN.md §6; EU AI Act Art. 12 record-keeping).

Each tenant has its own SQLite file, ``root/<tenant>/audit.sqlite3`` (WAL), owner-only
(0600, in 0700 folders) like the rest of the cloud head's state.  SQLite rather
than JSONL because an append is one transaction: the new record and the head anchor commit
together or not at all, a crash never leaves a half-written line, and ``BEGIN IMMEDIATE``
serialises writers across threads *and* processes, so two writers can never both chain onto
the same previous record.  The schema is plain SQL (PostgreSQL in production).

Every record's ``hash`` is the sha256 of the canonical JSON of all its other fields,
``prev_hash`` included, so editing any byte of a record or removing, inserting or reordering
records breaks the chain at the first bad record.  A chain alone cannot show that its *last*
records were removed; the head anchor (the latest ``seq`` and ``hash``, written in the same
transaction as each record) shows an accident, and the seal shows an attack: the tenant's
signer (``cloud_head.signer.TenantSigner``, the one holder of the tenant's Ed25519 release
key on the head) checks the chain from its last seal to the head and signs the head anchor,
every ``seal_interval_s`` (default 1 s) while the head runs and once more when it stops.
Ingest, the fleet and the controllers hold no key: they append unsigned, and an append never
touches the seal.  (Within one Ray cluster any holder of the cluster token can call the
signer actor, since Ray namespaces are not a security boundary, which is why it signs only
artifacts, desired states and seals through its methods, never raw bytes; tenants that
distrust each other get a cluster each, ``deploy/tenant-clusters/``.)

Like journald's forward-secure sealing, what the seal covers cannot be removed or changed
without the key; the records after it (at most one interval's worth while the head runs)
can be removed undetected by whoever can write the file, and ``continuum audit verify``
says how many there are (``--sealed`` fails on them).  The operator's own
changes (``continuum tenant ...``, a deploy) are sealed at once, through the same
``TenantSigner.seal``, by the operator who holds the key file.  What a seal cannot show is
the whole file being replaced by an older copy of itself (an older, validly signed seal):
against that, copy the seal somewhere the operator cannot rewrite (WORM storage, the
tenant's own system) — production counterpart, not done here.

The chain itself (the record encoding, its hash, the signed head, ``verify``'s check) lives
in ``_audit_chain``; this module stores and appends.
"""

from __future__ import annotations

import getpass
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_head._audit_chain import (
    GENESIS_HASH,
    Seal,
    VerifyResult,
    canonical_json,
    check_log,
    head_message,
    record_hash,
)
from cloud_head._audit_chain import HEAD_TAG as HEAD_TAG
from cloud_head._audit_chain import RECORD_FORMAT as RECORD_FORMAT
from continuum._fs import private_dir, private_file
from continuum._retry import Backoff
from continuum.errors import ContinuumError, NotFoundError, NotReadyError, SpecError
from continuum.wire.topics import check_name

if TYPE_CHECKING:
    from cloud_head.signer import TenantSigner

__all__ = [
    "GENESIS_HASH",
    "AuditAction",
    "AuditLog",
    "AuditRecord",
    "AuditTamperedError",
    "AuditTrail",
    "AuditWriteError",
    "Seal",
    "VerifyResult",
    "canonical_json",
    "default_actor",
    "head_message",
    "model_subject",
    "record_hash",
    "service_actor",
]

#: Longest accepted actor or subject; both are one line.
MAX_FIELD_CHARS = 256

_FILENAME = "audit.sqlite3"
#: The waits between tries to open a new log another process is creating (capped, jittered).
_LOCKED_RETRY_MIN_S = 0.005
_LOCKED_RETRY_MAX_S = 0.05

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    tenant TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_subject ON records (subject);
CREATE TABLE IF NOT EXISTS head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT,
    key_fingerprint TEXT
);
-- Written only by the signer's seal; the head row above moves with every append.
CREATE TABLE IF NOT EXISTS seal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_fingerprint TEXT,
    sealed_at REAL
);
-- A log from before seals: its signed head becomes its seal (once; later appends clear the
-- head's signature).
INSERT INTO seal SELECT 1, seq, hash, signature, key_fingerprint, NULL FROM head
WHERE id = 1 AND signature IS NOT NULL AND NOT EXISTS (SELECT 1 FROM seal);
-- A guard against accidents (a stray UPDATE from a SQL shell), not against an attacker, who
-- can drop the triggers: the hash chain and the head anchor are what detect tampering.
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
"""


class AuditTamperedError(ContinuumError, ValueError):
    """A stored record cannot even be read back; run ``continuum audit verify`` for details."""

    def __init__(self, message: str, *, seq: int) -> None:
        self.seq = seq
        super().__init__(message)


class AuditWriteError(NotReadyError):
    """A record could not be written, so the decision it records must not go ahead.

    Callers write the record *before* carrying out the step (publishing desired state,
    registering a model, starting a run): when this is raised the step has not happened.
    Retry once the log's storage is writable again.
    """

    def __init__(self, message: str, *, tenant: str, action: str, subject: str) -> None:
        self.tenant = tenant
        self.action = action
        self.subject = subject
        super().__init__(message)


class AuditAction(StrEnum):
    """What a record is about.  Extend by adding a member; records keep the string value."""

    DEPLOY = "deploy"
    POLICY_REFUSAL = "policy_refusal"
    #: Samples ingest refused for good for a reason other than the policy (malformed,
    #: off the schema or class), with their ids.
    INGEST_REFUSAL = "ingest_refusal"
    UPLINK_BATCH = "uplink_batch"
    TRAINING_RUN = "training_run"
    GATE = "gate"
    REGISTER = "register"
    SIGN = "sign"
    ROLLOUT = "rollout"
    ROLLBACK = "rollback"
    TENANT_CHANGE = "tenant_change"
    KEY_CHANGE = "key_change"
    #: An operator removed an edge node and its telemetry history (``continuum fleet remove``).
    NODE_REMOVED = "node_removed"


@dataclass(frozen=True)
class AuditRecord:
    """One entry of a tenant's audit log, as stored."""

    seq: int
    ts: str
    tenant: str
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


def default_actor() -> str:
    """Return who is asking when no service name is given: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in a container without /etc/passwd entry
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def service_actor(name: str) -> str:
    """Return the actor name of a cloud service (``service:controller-digits``)."""
    return f"service:{name}"


def model_subject(pipeline: str, version: str) -> str:
    """Return the subject that names one model version in the log (``digits/v3``)."""
    return f"{check_name(pipeline, 'pipeline')}/{version}"


def _utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _one_line(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_FIELD_CHARS:
        raise SpecError(
            f"audit {what} must be a non-empty string of at most {MAX_FIELD_CHARS} characters, "
            f"got {value!r}",
            field=what,
        )
    if "\n" in value or "\r" in value:
        raise SpecError(f"audit {what} {value!r} must be on one line", field=what)
    return value


def _action(value: AuditAction | str) -> str:
    try:
        return AuditAction(value).value
    except ValueError:
        known = ", ".join(a.value for a in AuditAction)
        raise SpecError(
            f"unknown audit action {value!r}",
            field="action",
            fix=f"use one of {known}, or add a member to AuditAction",
        ) from None


class _TenantLog:
    """One tenant's open database and the lock that makes this process its one writer."""

    def __init__(self, path: Path, timeout_s: float = 30.0) -> None:
        self.lock = threading.Lock()
        self.db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=timeout_s
        )
        self.db.execute("PRAGMA synchronous=FULL")
        # Two processes opening a new log at once: switching it to WAL and creating the
        # schema answer "database is locked" at once, without SQLite's busy wait; retry
        # (both steps are idempotent) rather than fail the first append of an actor.
        deadline = time.monotonic() + timeout_s
        backoff = Backoff(_LOCKED_RETRY_MIN_S, _LOCKED_RETRY_MAX_S)
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    self.db.close()
                    raise
                time.sleep(backoff.next_delay())

    @contextmanager
    def transaction(self, mode: str) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute(f"BEGIN {mode}")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")


class AuditLog:
    """Per-tenant, append-only, hash-chained audit logs under one root directory.

    Every method takes the tenant: a caller reads and writes exactly the log it names, and
    tenant names are checked like topic levels, so no name reaches outside ``root``.

    Args:
        root: the directory holding ``<tenant>/audit.sqlite3``.
        signing_keys: tenant -> Ed25519 private key PEM, for the operator who holds the key
            file: a tenant listed here is sealed (``TenantSigner.seal``) after every append.
            The services hold no key; the tenant's signer seals their appends.
        clock: seconds since the epoch (tests pin it).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        signing_keys: Mapping[str, bytes] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.clock = clock
        self._lock = threading.Lock()
        self._logs: dict[str, _TenantLog] = {}
        self._signers: dict[str, TenantSigner] = {}
        for tenant, key in (signing_keys or {}).items():
            self.add_signing_key(tenant, key)

    def add_signing_key(self, tenant: str, private_key_pem: bytes) -> None:
        """Seal ``tenant``'s log with this key after every append from now on."""
        from cloud_head.signer import TenantSigner

        signer = TenantSigner(tenant, private_key_pem)
        with self._lock:
            self._signers[tenant] = signer

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every open tenant database."""
        with self._lock:
            logs, self._logs = list(self._logs.values()), {}
        for log in logs:
            with log.lock:
                log.db.close()

    def path(self, tenant: str) -> Path:
        """Return the database file of ``tenant``'s log."""
        return self.root / check_name(tenant, "tenant") / _FILENAME

    def exists(self, tenant: str) -> bool:
        """Return whether ``tenant`` has a log under this root."""
        return self.path(tenant).is_file()

    def _open(self, tenant: str, *, create: bool) -> _TenantLog:
        path = self.path(tenant)
        with self._lock:
            log = self._logs.get(tenant)
            if log is None:
                if not path.is_file():
                    if not create:
                        raise NotFoundError(
                            f"no audit log for tenant {tenant!r} under {self.root} "
                            "(nothing was recorded for it, or --root points elsewhere)"
                        )
                    # Owner-only before SQLite makes it (its -wal and -shm take its mode).
                    private_file(private_dir(path.parent) / path.name)
                log = self._logs[tenant] = _TenantLog(path)
            return log

    def append(
        self,
        tenant: str,
        action: AuditAction | str,
        subject: str,
        details: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> AuditRecord:
        """Append one record to ``tenant``'s log and move its head anchor; return the record.

        Args:
            tenant: whose log.
            action: an ``AuditAction`` (or its string value).
            subject: what it is about, one line (``model_subject(pipeline, version)`` for a
                model version).
            details: plain JSON, stored canonically.
            actor: who asked: a service name or ``user@host``; default ``default_actor()``.

        Raises:
            SpecError: an unknown action, or a field that is empty, multi-line or not JSON.
            ProtocolError: the tenant name is invalid.
            AuditWriteError: the record was not written (storage failed); do not go ahead
                with what it records.
            AuditTamperedError: with a signing key for ``tenant``: the record was written but
                not sealed, because the chain before it is broken.
        """
        check_name(tenant, "tenant")
        action_value = _action(action)
        _one_line(subject, "subject")
        who = _one_line(actor if actor is not None else default_actor(), "actor")
        details_json = canonical_json(dict(details or {}))
        try:
            record = self._append(tenant, action_value, subject, who, details_json)
        except (sqlite3.Error, OSError) as exc:
            raise AuditWriteError(
                f"could not append a {action_value} record about {subject!r} to the audit log "
                f"of tenant {tenant!r} at {self.path(tenant)}: {exc}; the step it records was "
                "not carried out (check the disk and the file's permissions, then retry)",
                tenant=tenant,
                action=action_value,
                subject=subject,
            ) from exc
        with self._lock:
            signer = self._signers.get(tenant)
        if signer is not None:
            signer.seal(self)
        return record

    def _append(
        self, tenant: str, action_value: str, subject: str, who: str, details_json: str
    ) -> AuditRecord:
        log = self._open(tenant, create=True)
        with log.transaction("IMMEDIATE") as db:
            row = db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (1, GENESIS_HASH) if row is None else (int(row[0]) + 1, str(row[1]))
            ts = _utc_iso(self.clock())
            digest = record_hash(
                seq=seq,
                ts=ts,
                tenant=tenant,
                actor=who,
                action=action_value,
                subject=subject,
                details=details_json,
                prev_hash=prev,
            )
            db.execute(
                "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?)",
                (seq, ts, tenant, who, action_value, subject, details_json, prev, digest),
            )
            # The head's own signature columns are from before seals (``_TenantLog`` moved
            # a signed head into the seal table on open): an append clears them.
            db.execute(
                "INSERT INTO head VALUES (1,?,?,NULL,NULL) ON CONFLICT(id) DO UPDATE SET "
                "seq=excluded.seq, hash=excluded.hash, signature=NULL, key_fingerprint=NULL",
                (seq, digest),
            )
        return AuditRecord(
            seq=seq,
            ts=ts,
            tenant=tenant,
            actor=who,
            action=action_value,
            subject=subject,
            details=json.loads(details_json),
            prev_hash=prev,
            hash=digest,
        )

    def records(
        self,
        tenant: str,
        *,
        subject: str | None = None,
        action: AuditAction | str | None = None,
        since_seq: int = 0,
    ) -> list[AuditRecord]:
        """Return ``tenant``'s records in order, optionally only one subject or action.

        Records are returned as stored; run ``verify`` to know they are intact.

        Raises:
            NotFoundError: the tenant has no log under this root.
        """
        query = "SELECT * FROM records WHERE seq > ?"
        args: list[Any] = [since_seq]
        if subject is not None:
            query += " AND subject = ?"
            args.append(subject)
        if action is not None:
            query += " AND action = ?"
            args.append(_action(action))
        log = self._open(tenant, create=False)
        with log.lock:
            rows = log.db.execute(query + " ORDER BY seq", args).fetchall()
        return [_to_record(r) for r in rows]

    def chain_rows(self, tenant: str, *, after_seq: int = 0) -> list[tuple[Any, ...]]:
        """Return ``tenant``'s stored records after ``after_seq`` as raw rows, in order, for a
        chain check (``TenantSigner.seal``).

        Raises:
            NotFoundError: the tenant has no log under this root.
        """
        log = self._open(tenant, create=False)
        with log.lock:
            return list(
                log.db.execute("SELECT * FROM records WHERE seq > ? ORDER BY seq", (after_seq,))
            )

    def seal_of(self, tenant: str) -> Seal | None:
        """Return ``tenant``'s seal as stored (None: never sealed); run ``verify`` to check it.

        Raises:
            NotFoundError: the tenant has no log under this root.
        """
        log = self._open(tenant, create=False)
        with log.lock:
            return _read_seal(log.db)

    def write_seal(self, tenant: str, seal: Seal) -> None:
        """Store ``seal`` unless a seal at or past its record is stored (seals only move on).

        Only ``TenantSigner.seal`` calls this: it checked the chain and signed the head.

        Raises:
            AuditWriteError: the seal could not be written.
        """
        try:
            log = self._open(tenant, create=False)
            with log.transaction("IMMEDIATE") as db:
                db.execute(
                    "INSERT INTO seal VALUES (1,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                    "seq=excluded.seq, hash=excluded.hash, signature=excluded.signature, "
                    "key_fingerprint=excluded.key_fingerprint, sealed_at=excluded.sealed_at "
                    "WHERE excluded.seq > seal.seq",
                    (seal.seq, seal.hash, seal.signature, seal.key_fingerprint, seal.sealed_at),
                )
        except (sqlite3.Error, OSError) as exc:
            raise AuditWriteError(
                f"could not write the seal of record {seal.seq} to the audit log of tenant "
                f"{tenant!r} at {self.path(tenant)}: {exc}; the signer tries again at its next "
                "seal (check the disk and the file's permissions)",
                tenant=tenant,
                action="seal",
                subject=f"seal/{seal.seq}",
            ) from exc

    def verify(self, tenant: str, *, public_key_pem: bytes | None = None) -> VerifyResult:
        """Check ``tenant``'s whole chain, its head anchor and its seal; name the first bad record.

        Args:
            tenant: whose log.
            public_key_pem: the tenant's Ed25519 public key; when given, the log must carry a
                seal signed by it that matches the chain (records after it are counted in
                ``unsealed``, not failed).

        Raises:
            NotFoundError: the tenant has no log under this root.
        """
        log = self._open(tenant, create=False)
        with log.transaction("DEFERRED") as db:  # one snapshot of records, head and seal
            rows = db.execute("SELECT * FROM records ORDER BY seq").fetchall()
            head = db.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone()
            seal = _read_seal(db)
        return check_log(tenant, rows, head, seal, public_key_pem)


@dataclass(frozen=True)
class AuditTrail:
    """One tenant's log as one service writes to it: the log, the tenant and who the service is.

    The services that take decisions (deploy, controller, rollout, tenant registry) hold one,
    so each call site names only what happened; ``actor`` overrides the service's own name
    when a person asked for the step (``continuum models rollback`` passes ``user@host``).
    """

    log: AuditLog
    tenant: str
    actor: str

    def record(
        self,
        action: AuditAction | str,
        subject: str,
        details: Mapping[str, Any] | None = None,
        *,
        actor: str | None = None,
    ) -> AuditRecord:
        """Append one record; see ``AuditLog.append`` (raises ``AuditWriteError`` on failure)."""
        return self.log.append(self.tenant, action, subject, details, actor or self.actor)


def _read_seal(db: sqlite3.Connection) -> Seal | None:
    """Return the stored seal; a log from before seals has none, but a signed head, its seal."""
    row = db.execute(
        "SELECT seq, hash, signature, key_fingerprint, sealed_at FROM seal WHERE id = 1"
    ).fetchone()
    if row is None:
        row = db.execute(
            "SELECT seq, hash, signature, key_fingerprint, NULL FROM head "
            "WHERE id = 1 AND signature IS NOT NULL"
        ).fetchone()
    if row is None:
        return None
    seq, digest, signature, fingerprint, sealed_at = row
    return Seal(
        seq=seq,
        hash=digest,
        signature=signature,
        key_fingerprint=fingerprint,
        sealed_at=sealed_at,
    )


def _to_record(row: tuple[Any, ...]) -> AuditRecord:
    seq, ts, tenant, actor, action, subject, details, prev_hash, digest = row
    try:
        parsed = json.loads(details)
    except (TypeError, ValueError) as exc:
        raise AuditTamperedError(
            f"audit record {seq} has unreadable details ({exc}); the log was altered, run "
            "`continuum audit verify`",
            seq=int(seq),
        ) from exc
    return AuditRecord(
        seq=int(seq),
        ts=str(ts),
        tenant=str(tenant),
        actor=str(actor),
        action=str(action),
        subject=str(subject),
        details=parsed if isinstance(parsed, dict) else {"value": parsed},
        prev_hash=str(prev_hash),
        hash=str(digest),
    )
