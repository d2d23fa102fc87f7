"""Ed25519 signatures of artifacts and desired states, and sha256 digests."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from continuum.errors import ArtifactError
from continuum.signing import (
    DESIRED_MESSAGE_TAG,
    artifact_message,
    desired_message,
    generate_keypair,
    key_fingerprint,
    public_pem_of,
    sha256_bytes,
    sha256_file,
    sign,
    sign_artifact,
    sign_desired,
    verify,
    verify_artifact,
    verify_desired,
)

DIGEST = hashlib.sha256(b"model bytes").hexdigest()


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return generate_keypair()


@pytest.fixture(scope="module")
def other_keys() -> tuple[bytes, bytes]:
    return generate_keypair()


class TestKeys:
    def test_keypair_is_pkcs8_and_spki_pem(self, keys: tuple[bytes, bytes]) -> None:
        private_pem, public_pem = keys

        assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")

    def test_public_key_derives_from_the_private_key(self, keys: tuple[bytes, bytes]) -> None:
        assert public_pem_of(keys[0]) == keys[1]

    def test_each_keypair_is_new(
        self, keys: tuple[bytes, bytes], other_keys: tuple[bytes, bytes]
    ) -> None:
        assert keys[0] != other_keys[0]
        assert key_fingerprint(keys[1]) != key_fingerprint(other_keys[1])

    def test_fingerprint_is_a_stable_sha256_hex(self, keys: tuple[bytes, bytes]) -> None:
        fingerprint = key_fingerprint(keys[1])

        assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
        assert key_fingerprint(keys[1]) == fingerprint


class TestSignAndVerify:
    def test_a_valid_signature_verifies(self, keys: tuple[bytes, bytes]) -> None:
        signature = sign(keys[0], b"payload")

        assert re.fullmatch(r"[0-9a-f]{128}", signature)
        assert verify(keys[1], b"payload", signature) is None

    def test_tampered_data_is_a_bad_signature(self, keys: tuple[bytes, bytes]) -> None:
        signature = sign(keys[0], b"payload")

        with pytest.raises(ArtifactError, match="bad signature"):
            verify(keys[1], b"payload!", signature)

    def test_another_key_is_a_bad_signature(
        self, keys: tuple[bytes, bytes], other_keys: tuple[bytes, bytes]
    ) -> None:
        signature = sign(other_keys[0], b"payload")

        with pytest.raises(ArtifactError, match="bad signature"):
            verify(keys[1], b"payload", signature)

    def test_a_flipped_bit_in_the_signature_is_a_bad_signature(
        self, keys: tuple[bytes, bytes]
    ) -> None:
        signature = bytearray.fromhex(sign(keys[0], b"payload"))
        signature[10] ^= 0x01

        with pytest.raises(ArtifactError, match="bad signature"):
            verify(keys[1], b"payload", signature.hex())

    def test_non_hex_garbage_is_a_malformed_signature(self, keys: tuple[bytes, bytes]) -> None:
        with pytest.raises(ArtifactError, match="malformed signature: not hex"):
            verify(keys[1], b"payload", "zz" * 64)

    def test_a_short_signature_is_malformed(self, keys: tuple[bytes, bytes]) -> None:
        with pytest.raises(ArtifactError, match="expected 128 hex digits, got 6"):
            verify(keys[1], b"payload", "abcdef")

    def test_a_garbage_public_key_is_malformed(self, keys: tuple[bytes, bytes]) -> None:
        signature = sign(keys[0], b"payload")

        with pytest.raises(ArtifactError, match="malformed public key"):
            verify(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", b"x", signature)

    def test_a_garbage_private_key_is_malformed(self) -> None:
        with pytest.raises(ArtifactError, match="malformed private key"):
            sign(b"not a key", b"payload")

    def test_a_non_ed25519_key_is_named(self, keys: tuple[bytes, bytes]) -> None:
        ec_public = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

        with pytest.raises(ArtifactError, match="not an Ed25519 key"):
            verify(ec_public, b"payload", sign(keys[0], b"payload"))

    def test_artifact_error_is_a_value_error(self, keys: tuple[bytes, bytes]) -> None:
        with pytest.raises(ValueError):
            verify(keys[1], b"payload", "00" * 64)


class TestArtifactSignatures:
    def test_the_signed_message_is_canonical(self) -> None:
        message = artifact_message("inspector", "3", DIGEST)

        assert message == f"continuum-artifact-v1\ninspector\n3\n{DIGEST}".encode()

    def test_an_artifact_signature_verifies(self, keys: tuple[bytes, bytes]) -> None:
        signature = sign_artifact(keys[0], "inspector", "3", DIGEST)

        assert verify_artifact(keys[1], "inspector", "3", DIGEST, signature) is None

    def test_a_signature_cannot_be_replayed_for_another_version(
        self, keys: tuple[bytes, bytes]
    ) -> None:
        signature = sign_artifact(keys[0], "inspector", "3", DIGEST)

        with pytest.raises(ArtifactError, match="bad signature"):
            verify_artifact(keys[1], "inspector", "4", DIGEST, signature)

    def test_a_signature_cannot_be_replayed_for_another_model(
        self, keys: tuple[bytes, bytes]
    ) -> None:
        signature = sign_artifact(keys[0], "inspector", "3", DIGEST)

        with pytest.raises(ArtifactError, match="bad signature"):
            verify_artifact(keys[1], "counter", "3", DIGEST, signature)

    def test_a_signature_does_not_cover_other_bytes(self, keys: tuple[bytes, bytes]) -> None:
        signature = sign_artifact(keys[0], "inspector", "3", DIGEST)
        other_digest = hashlib.sha256(b"other model bytes").hexdigest()

        with pytest.raises(ArtifactError, match="bad signature"):
            verify_artifact(keys[1], "inspector", "3", other_digest, signature)

    @pytest.mark.parametrize(
        ("model", "version", "digest", "complaint"),
        [
            ("inspector\n4", "3", DIGEST, "model"),
            ("inspector", "", DIGEST, "version"),
            ("inspector", "3", DIGEST.upper(), "sha256"),
            ("inspector", "3", DIGEST[:-1], "sha256"),
        ],
    )
    def test_an_ambiguous_field_is_refused(
        self, model: str, version: str, digest: str, complaint: str
    ) -> None:
        with pytest.raises(ArtifactError, match=f"artifact {complaint}"):
            artifact_message(model, version, digest)


class TestDigests:
    def test_sha256_bytes_matches_the_standard_vector(self) -> None:
        assert sha256_bytes(b"abc") == (
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        )

    def test_sha256_file_streams_to_the_same_digest(self, tmp_path: Path) -> None:
        data = bytes(range(256)) * 41
        path = tmp_path / "model.onnx"
        path.write_bytes(data)

        assert sha256_file(path, chunk_bytes=7) == hashlib.sha256(data).hexdigest()
        assert sha256_file(str(path)) == sha256_bytes(data)

    def test_an_empty_file_has_the_empty_digest(self, tmp_path: Path) -> None:
        path = tmp_path / "empty"
        path.write_bytes(b"")

        assert sha256_file(path) == hashlib.sha256(b"").hexdigest()

    def test_a_missing_file_names_the_path(self, tmp_path: Path) -> None:
        missing = tmp_path / "absent.onnx"

        with pytest.raises(ArtifactError, match=re.escape(str(missing))):
            sha256_file(missing)


class TestDesiredStateSignatures:
    """The whole desired-state document is signed over one canonical encoding."""

    DOCUMENT = {
        "tenant": "acme",
        "node": "cam-1",
        "generation": 7,
        "issued_at": 1_763_800_000.123456,
        "expires_at": 1_763_886_400.123456,
        "pipelines": {"inspect": {"model": "inspector", "version": "v3", "rollback": False}},
    }

    def test_the_encoding_is_tagged_sorted_compact_and_leaves_out_the_signature(self) -> None:
        message = desired_message({**self.DOCUMENT, "signature": "ab" * 64})

        tag, body = message.split(b"\n", 1)
        assert tag == DESIRED_MESSAGE_TAG.encode() == b"continuum-desired-v1"
        assert b"signature" not in body and b" " not in body
        assert body.startswith(b'{"expires_at":1763886400.123456,"generation":7,')
        # Key order in the input does not matter: the cloud and the agent may build it apart.
        assert desired_message(dict(reversed(list(self.DOCUMENT.items())))) == message

    def test_a_signed_document_verifies_and_any_changed_field_does_not(
        self, keys: tuple[bytes, bytes]
    ) -> None:
        signature = sign_desired(keys[0], self.DOCUMENT)
        verify_desired(keys[1], self.DOCUMENT, signature)
        for field, value in (
            ("generation", 2**63 - 1),
            ("node", "cam-2"),
            ("tenant", "medica"),
            ("expires_at", 1_999_999_999.0),
            ("issued_at", 1_763_800_001.0),
        ):
            with pytest.raises(ArtifactError, match="bad signature"):
                verify_desired(keys[1], {**self.DOCUMENT, field: value}, signature)
        rolled_back = {"inspect": {"model": "inspector", "version": "v3", "rollback": True}}
        with pytest.raises(ArtifactError, match="bad signature"):
            verify_desired(keys[1], {**self.DOCUMENT, "pipelines": rolled_back}, signature)

    def test_another_tenants_key_does_not_verify(
        self, keys: tuple[bytes, bytes], other_keys: tuple[bytes, bytes]
    ) -> None:
        signature = sign_desired(other_keys[0], self.DOCUMENT)
        with pytest.raises(ArtifactError, match="bad signature"):
            verify_desired(keys[1], self.DOCUMENT, signature)

    def test_an_artifact_signature_is_no_desired_state_signature(
        self, keys: tuple[bytes, bytes]
    ) -> None:
        """The tags keep the two uses of one key apart."""
        signature = sign_artifact(keys[0], "inspector", "v3", DIGEST)
        with pytest.raises(ArtifactError, match="bad signature"):
            verify_desired(keys[1], self.DOCUMENT, signature)

    def test_a_document_json_cannot_encode_is_refused_by_name(self) -> None:
        with pytest.raises(ArtifactError, match="cannot be encoded"):
            desired_message({**self.DOCUMENT, "issued_at": float("nan")})
