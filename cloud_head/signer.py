"""The tenant's signer: the one holder of its Ed25519 release key on the cloud head.

Every edge box trusts that key, so nothing that parses untrusted input holds it: ingest and
the fleet append their audit records unsigned, and the controllers ask the signer, through
the methods below, to sign an artifact or a desired state.  ``TenantSigner`` signs only
those structured requests, never raw bytes, so whoever can reach it (within one Ray cluster,
any holder of the cluster token: Ray namespaces are not a security boundary) can get signed
only what a controller could have asked for.  It also seals the tenant's audit log: it
checks the hash chain from its last seal to the head and signs the head anchor
(``seal``).  ``cloud_head._service_actors.SignerActor`` runs it as a Ray actor that seals
every ``CloudSettings.seal_interval_s``.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from cloud_head._actor_calls import call_actor
from cloud_head._audit_chain import Seal, check_chain, head_message
from continuum import signing
from continuum.errors import (
    ArtifactError,
    ConfigError,
)
from continuum.wire.topics import check_name

if TYPE_CHECKING:
    from cloud_head.audit import AuditLog
    from continuum.wire.messages import DesiredState

__all__ = ["ReleaseSigner", "RemoteSigner", "TenantSigner", "release_signer"]


class ReleaseSigner(Protocol):
    """What a controller may have signed: a ``TenantSigner``, or a client of its actor."""

    def sign_artifact(self, model: str, version: str, sha256: str) -> str:
        """Return the release key's signature of one model artifact."""
        ...

    def sign_desired_state(self, state: DesiredState) -> str:
        """Return the release key's signature of one node's desired state."""
        ...

    def key_fingerprint(self) -> str:
        """Return the fingerprint of the release key (recorded with each signature)."""
        ...


class TenantSigner:
    """Hold one tenant's release key; sign artifacts and desired states; seal its audit log.

    Args:
        tenant: whose key it is: a desired state of another tenant is refused.
        private_key_pem: the tenant's Ed25519 private key.

    Raises:
        ArtifactError: ``private_key_pem`` is not an Ed25519 private key.
        ProtocolError: ``tenant`` is not a valid tenant name.
    """

    def __init__(self, tenant: str, private_key_pem: bytes) -> None:
        signing.load_private_key(private_key_pem)  # fail now, not at the first signature
        self.tenant = check_name(tenant, "tenant")
        self._key = private_key_pem
        self._fingerprint = signing.key_fingerprint(signing.public_pem_of(private_key_pem))
        self._lock = threading.Lock()
        # The last seal this signer wrote: where the next chain check starts.  None (a new
        # signer) checks the whole chain once, so a stored seal, which whoever can write the
        # file could roll back, is never the starting point.
        self._sealed: tuple[int, str] | None = None

    def __repr__(self) -> str:  # never show the key
        return f"TenantSigner(tenant={self.tenant!r}, key_fingerprint={self._fingerprint[:16]!r})"

    def key_fingerprint(self) -> str:
        """Return the sha256 of the public key: the id recorded with each signature."""
        return self._fingerprint

    def public_key_pem(self) -> bytes:
        """Return the public key that verifies what this signer signs."""
        return signing.public_pem_of(self._key)

    def sign_artifact(self, model: str, version: str, sha256: str) -> str:
        """Return the signature of the artifact ``model`` ``version`` with digest ``sha256``.

        Raises:
            ArtifactError: ``sha256`` is not 64 hex digits, or a name is empty.
        """
        if not (isinstance(sha256, str) and len(sha256) == 64):
            raise ArtifactError(f"refusing to sign artifact digest {sha256!r}: not a sha256 hex")
        if not (isinstance(model, str) and model and isinstance(version, str) and version):
            raise ArtifactError(
                f"refusing to sign artifact {model!r} {version!r}: model and version must be "
                "non-empty names"
            )
        return signing.sign_artifact(self._key, model, version, sha256)

    def sign_desired_state(self, state: DesiredState) -> str:
        """Return the signature of ``state`` (less its ``signature``), a desired state of this
        signer's tenant.

        Raises:
            ArtifactError: ``state`` names another tenant, or cannot be encoded.
        """
        if state.tenant != self.tenant:
            raise ArtifactError(
                f"refusing to sign a desired state of tenant {state.tenant!r} with the key of "
                f"tenant {self.tenant!r}: each tenant's controller asks its own signer"
            )
        return signing.sign_desired(self._key, state.model_dump(mode="json"))

    def seal(self, audit: AuditLog, *, now: float | None = None) -> Seal | None:
        """Check the tenant's audit chain since the last seal, then sign its head (the seal).

        A new signer checks the whole chain once; after that only the records appended since
        its own last seal.  The seal is stored beside the head anchor, where appends by
        writers without the key never touch it, and it only ever moves forward.

        Returns:
            the seal now covering the head, or None when the log has no record yet.

        Raises:
            AuditTamperedError: the chain is broken since the last seal (nothing is sealed;
                run ``continuum audit verify``).
            AuditWriteError: the seal could not be written.
        """
        from cloud_head.audit import AuditTamperedError

        with self._lock:
            if not audit.exists(self.tenant):
                return None
            after = self._sealed
            rows = audit.chain_rows(self.tenant, after_seq=0 if after is None else after[0])
            if not rows:
                return None if after is None else audit.seal_of(self.tenant)
            broken = check_chain(self.tenant, rows, after=after)
            if broken is not None:
                raise AuditTamperedError(
                    f"not sealing the audit log of tenant {self.tenant!r}: {broken.reason}; "
                    "run `continuum audit verify` and restore the log from a copy",
                    seq=broken.first_bad_seq or 0,
                )
            seq, digest = int(rows[-1][0]), str(rows[-1][8])
            stamp = time.time() if now is None else now
            seal = Seal(
                seq=seq,
                hash=digest,
                signature=signing.sign(self._key, head_message(self.tenant, seq, digest)),
                key_fingerprint=self._fingerprint,
                sealed_at=stamp,
            )
            audit.write_seal(self.tenant, seal)
            self._sealed = (seq, digest)
            return seal


class RemoteSigner:
    """A ``ReleaseSigner`` that asks the tenant's signer actor
    (``cloud_head._service_actors.SignerActor``): how a controller signs without the key."""

    def __init__(self, actor: Any, *, timeout_s: float = 30.0) -> None:
        self._actor = actor
        self._timeout_s = timeout_s
        self._fingerprint: str | None = None

    def sign_artifact(self, model: str, version: str, sha256: str) -> str:
        """Return the signer's signature of one model artifact."""
        return str(self._call("sign_artifact", model, version, sha256))

    def sign_desired_state(self, state: DesiredState) -> str:
        """Return the signer's signature of one desired state."""
        return str(self._call("sign_desired_state", state))

    def key_fingerprint(self) -> str:
        """Return the release key's fingerprint (asked once)."""
        if self._fingerprint is None:
            self._fingerprint = str(self._call("key_fingerprint"))
        return self._fingerprint

    def _call(self, method: str, *args: Any) -> Any:
        return call_actor(
            self._actor,
            method,
            *args,
            timeout_s=self._timeout_s,
            who="the signer",
            role="signs for the controller",
        )


def release_signer(
    tenant: str, signer: ReleaseSigner | None, private_key_pem: bytes | None
) -> ReleaseSigner:
    """Return ``signer``, or a local ``TenantSigner`` of ``private_key_pem``: exactly one.

    The cloud head's controllers get ``signer`` (a client of the signer actor); a tool or a
    test that holds the release key may pass the key instead.

    Raises:
        ConfigError: both or neither given.
        ArtifactError: ``private_key_pem`` is not an Ed25519 private key.
    """
    if signer is not None and private_key_pem is None:
        return signer
    if signer is None and private_key_pem is not None:
        return TenantSigner(tenant, private_key_pem)
    raise ConfigError(
        "give the tenant's signer (signer=, what the cloud head's services get) or, for a "
        "tool or test that holds the release key, private_key_pem=; not both, not neither"
    )
