"""What proves who a tenant is: its operator's password and its pinned signing key.

Part of ``cloud_head.tenants``: the operator's credential is checked against the broker's
own password file, so the secret that is the tenant on the broker is the one that is the
tenant at the CLI; the public key pinned at creation is what ``continuum audit verify`` and
every deploy hold the tenant's signatures to.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager, closing
from pathlib import Path
from typing import TYPE_CHECKING

from continuum.errors import AccessDeniedError, ArtifactError, ConfigError
from continuum.signing import key_fingerprint, load_public_key

if TYPE_CHECKING:
    from cloud_head._tenant_broker import BrokerFiles
    from cloud_head.tenants import TenantRecord


class TenantAuthentication:
    """The authentication half of ``TenantRegistry``: the operator's login and pinned keys."""

    if TYPE_CHECKING:
        _broker: BrokerFiles

        @property
        def db_path(self) -> Path: ...

        def _connect(self) -> sqlite3.Connection: ...
        def _locked(self) -> AbstractContextManager[None]: ...
        def get(self, name: str) -> TenantRecord: ...
        def tenant_dir(self, name: str) -> Path: ...

    def authenticate(self, name: str, password: str) -> TenantRecord:
        """Return tenant ``name`` if ``password`` is its MQTT password, else refuse.

        The check reads the broker's own password file (mosquitto's PBKDF2-SHA512 hashes),
        so the credential that lets an agent publish under ``ctm/{name}/#`` is the one that
        lets a person read the tenant's samples, models and audit records, and a rotation
        revokes both at once.

        Raises:
            NotFoundError: no such tenant.
            AccessDeniedError: the password is not the tenant's (or the tenant has none).
        """
        record = self.get(name)
        if not self._broker.matches(record.mqtt_username, password):
            raise AccessDeniedError(
                f"the credential given is not that of tenant {name!r}: give its MQTT password (the "
                "one `continuum tenant create` or `rotate` printed) with --password-file or "
                "CONTINUUM_TENANT_PASSWORD"
            )
        return record

    def public_key(self, name: str) -> bytes:
        """Return the public key PEM pinned for tenant ``name``: its audit heads' signer.

        A tenant made before keys were pinned has only its key's fingerprint in the registry;
        its ``keys/signing.pub`` is taken when it has that fingerprint.

        Raises:
            NotFoundError: no such tenant.
            ConfigError: no key is pinned and ``signing.pub`` is missing or not the key whose
                fingerprint the registry holds.
        """
        record = self.get(name)
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT public_key_pem FROM tenants WHERE name = ?", (name,)
            ).fetchone()
        if row is not None and row["public_key_pem"]:
            return str(row["public_key_pem"]).encode()
        path = self.tenant_dir(name) / "keys" / "signing.pub"
        try:
            pem = path.read_bytes()
            matches = key_fingerprint(pem) == record.key_fingerprint
        except (OSError, ArtifactError) as error:
            raise ConfigError(
                f"tenant {name!r} has no public key pinned in {self.db_path} and {path} cannot "
                f"be used ({error}); deploy the tenant again with its signing key to pin it, "
                "or give the key with --public-key"
            ) from error
        if not matches:
            raise ConfigError(
                f"{path} is not the key registered for tenant {name!r} (fingerprint "
                f"{record.key_fingerprint[:16]}...); it was replaced: give the tenant's real "
                "public key with --public-key"
            )
        return pem

    def pin_public_key(self, name: str, public_pem: bytes) -> None:
        """Pin ``public_pem`` as tenant ``name``'s key, or check it is the one pinned.

        A deploy calls this with the key its services will sign with: a key other than the
        tenant's registered one would sign audit heads that ``audit verify`` then refuses, so
        it is refused here, before any service starts.

        Raises:
            NotFoundError: no such tenant.
            ConfigError: the key is not an Ed25519 public key, or not the tenant's.
        """
        try:
            load_public_key(public_pem)
            fingerprint = key_fingerprint(public_pem)
        except ArtifactError as error:
            raise ConfigError(f"tenant {name!r}'s signing key: {error}") from error
        with self._locked(), closing(self._connect()) as db, db:
            record = self.get(name)
            if fingerprint != record.key_fingerprint:
                raise ConfigError(
                    f"the signing key given (fingerprint {fingerprint[:16]}...) is not the "
                    f"registered key of tenant {name!r} (fingerprint "
                    f"{record.key_fingerprint[:16]}...); "
                    f"sign with {record.signing_key_path}, the key `continuum tenant create` "
                    "made"
                )
            db.execute(
                "UPDATE tenants SET public_key_pem = ? WHERE name = ? AND public_key_pem IS NULL",
                (public_pem.decode(), name),
            )


def add_public_key_column(db: sqlite3.Connection) -> None:
    """Give a registry made before keys were pinned its ``public_key_pem`` column (NULL)."""
    columns = {row["name"] for row in db.execute("PRAGMA table_info(tenants)")}
    if "public_key_pem" not in columns:
        db.execute("ALTER TABLE tenants ADD COLUMN public_key_pem TEXT")


def authorize_operator(
    tenants_root: Path | None, tenant: str, credential: str | None, origin: str | None
) -> str:
    """Authorise an operator action inside the service that carries it out; return the actor.

    The CLI checks the credential too, but the controller and the fleet are Ray actors that
    anyone holding the cluster's token can call directly (``ray.get_actor(name,
    namespace=tenant)``), around the CLI and around a ``--root`` pointed at an empty folder.
    So every service method that changes a tenant's state takes the operator credential and
    checks it here against the registry the service itself was started with.  ``origin``
    (the caller's ``user@host``) is informative only: the audit actor is the tenant whose
    credential was checked, as seen from there.  A head without a registry is a
    single-tenant development setup: nothing is checked and the actor is ``origin``.

    Raises:
        AccessDeniedError: a registry exists and no credential, or a wrong one, was given.
        NotFoundError: the registry has no such tenant.
    """
    from cloud_head.audit import default_actor
    from cloud_head.tenants import TenantRegistry, registry_exists

    where = origin or default_actor()
    if tenants_root is None or not registry_exists(tenants_root):
        return where
    if not credential:
        raise AccessDeniedError(
            f"the cloud head serves several tenants: changing tenant {tenant!r}'s state needs "
            "its operator credential (--password-file or CONTINUUM_TENANT_PASSWORD)"
        )
    record = TenantRegistry(tenants_root).authenticate(tenant, credential)
    return f"tenant:{record.name} via {where}"
