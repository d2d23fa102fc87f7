"""Ed25519 keys, signatures over model artifacts and desired states, and the sha256 digests
they cover.

What gets signed for a model artifact is ``artifact_message(model, version,
sha256)``::

    b"continuum-artifact-v1\\n{model}\\n{version}\\n{sha256}"

The digest binds the bytes; the model name and version bind the purpose, so a
signature made for ``inspector`` 3 cannot be replayed to pass a different
artifact off as ``inspector`` 4 (or as another model).  The leading tag
separates this use of a tenant key from any other, and versions the format.

What gets signed for a node's desired state is ``desired_message(document)``::

    b"continuum-desired-v1\n" + canonical JSON of the document without its signature

(keys sorted, no spaces, ASCII only).  The document names tenant, node, generation, issue
time and expiry, so a signed desired state cannot be replayed to another node, pushed past
the real one with a made-up generation, or kept for good: the agent checks all of them, and
signature first, so a forged field is never even read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from continuum.errors import ArtifactError

#: Tag and format version at the head of every signed artifact message.
ARTIFACT_MESSAGE_TAG = "continuum-artifact-v1"

#: Tag and format version at the head of every signed desired-state message.
DESIRED_MESSAGE_TAG = "continuum-desired-v1"

#: An Ed25519 signature is 64 bytes: 128 hex digits.
SIGNATURE_HEX_LENGTH = 128

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_CHUNK_BYTES = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Return the lowercase hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str, *, chunk_bytes: int = _CHUNK_BYTES) -> str:
    """Return the lowercase hex sha256 of a file, read in chunks (models may be large).

    Raises:
        ArtifactError: the file cannot be read; the message names it and why.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                digest.update(chunk)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path} to digest it: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def artifact_message(model: str, version: str, sha256: str) -> bytes:
    """Return the canonical bytes that an artifact's signature covers.

    Raises:
        ArtifactError: a field would make the message ambiguous (a newline in the name or
            version, or a digest that is not 64 lowercase hex digits).
    """
    for field, value in (("model", model), ("version", version)):
        if not value or "\n" in value or "\r" in value:
            raise ArtifactError(f"artifact {field} {value!r} must be non-empty and on one line")
    if not _SHA256_HEX.match(sha256):
        raise ArtifactError(f"artifact sha256 {sha256!r} is not 64 lowercase hex digits")
    return f"{ARTIFACT_MESSAGE_TAG}\n{model}\n{version}\n{sha256}".encode()


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a new Ed25519 key pair as (PKCS#8 private PEM, SubjectPublicKeyInfo public PEM).

    The private PEM is unencrypted: keep it in the tenant's secret store, not on disk in clear.
    """
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    return private_pem, public_pem_of(private_pem)


def public_pem_of(private_pem: bytes) -> bytes:
    """Return the public PEM that belongs to ``private_pem``."""
    return (
        load_private_key(private_pem)
        .public_key()
        .public_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )


def load_private_key(private_pem: bytes) -> Ed25519PrivateKey:
    """Return the Ed25519 private key in ``private_pem``; ``ArtifactError`` if it is not one."""
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ArtifactError(f"malformed private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactError(f"private key is {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(public_pem: bytes) -> Ed25519PublicKey:
    """Return the Ed25519 public key in ``public_pem``; ``ArtifactError`` if it is not one."""
    try:
        key = serialization.load_pem_public_key(public_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ArtifactError(f"malformed public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ArtifactError(f"public key is {type(key).__name__}, not an Ed25519 key")
    return key


def key_fingerprint(public_pem: bytes) -> str:
    """Return the sha256 hex of the raw public key: a short, stable id for audit records."""
    raw = load_public_key(public_pem).public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )
    return sha256_bytes(raw)


def sign(private_pem: bytes, data: bytes) -> str:
    """Return the Ed25519 signature of ``data`` as 128 lowercase hex digits."""
    return load_private_key(private_pem).sign(data).hex()


def verify(public_pem: bytes, data: bytes, signature_hex: str) -> None:
    """Return if ``signature_hex`` is ``public_pem``'s signature of ``data``.

    Raises:
        ArtifactError: the key or the signature is malformed, or the signature does not
            match (wrong key, or data changed after signing).
    """
    key = load_public_key(public_pem)
    if not isinstance(signature_hex, str) or len(signature_hex) != SIGNATURE_HEX_LENGTH:
        shown = len(signature_hex) if isinstance(signature_hex, str) else type(signature_hex)
        raise ArtifactError(
            f"malformed signature: expected {SIGNATURE_HEX_LENGTH} hex digits, got {shown}"
        )
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError as exc:
        raise ArtifactError(f"malformed signature: not hex ({exc})") from exc
    try:
        key.verify(signature, data)
    except InvalidSignature as exc:
        raise ArtifactError(
            "bad signature: the data was not signed by this key, or changed after signing"
        ) from exc


def sign_artifact(private_pem: bytes, model: str, version: str, sha256: str) -> str:
    """Return the signature (hex) of the artifact ``model`` ``version`` with digest ``sha256``."""
    return sign(private_pem, artifact_message(model, version, sha256))


def verify_artifact(
    public_pem: bytes, model: str, version: str, sha256: str, signature_hex: str
) -> None:
    """Return if the signature covers exactly this model, version and digest; else raise.

    Raises:
        ArtifactError: as ``verify``; also when a field is malformed.
    """
    verify(public_pem, artifact_message(model, version, sha256), signature_hex)


def desired_message(document: Mapping[str, Any]) -> bytes:
    """Return the canonical bytes that a desired state's signature covers.

    ``document`` is the desired state as JSON types (``model_dump(mode="json")``); its
    ``signature`` entry, if any, is left out.  Sorted keys and fixed separators make the
    bytes the same on the cloud that signs and the agent that re-encodes what it parsed
    (floats print as their shortest round-trip form on both).

    Raises:
        ArtifactError: the document holds something JSON cannot encode (NaN, an object).
    """
    signed = {key: value for key, value in document.items() if key != "signature"}
    try:
        body = json.dumps(
            signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"desired state cannot be encoded for signing: {exc}") from exc
    return f"{DESIRED_MESSAGE_TAG}\n{body}".encode()


def sign_desired(private_pem: bytes, document: Mapping[str, Any]) -> str:
    """Return the signature (hex) of the desired state ``document`` (see ``desired_message``)."""
    return sign(private_pem, desired_message(document))


def verify_desired(public_pem: bytes, document: Mapping[str, Any], signature_hex: str) -> None:
    """Return if ``signature_hex`` covers exactly ``document`` (less its signature); else raise.

    Raises:
        ArtifactError: as ``verify``.
    """
    verify(public_pem, desired_message(document), signature_hex)
