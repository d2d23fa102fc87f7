"""The tenant's signer: the one holder of the release key; signs structured requests only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloud_head.audit import AuditLog
from cloud_head.desired_state import DesiredStateBook, signed_desired_state
from cloud_head.signer import TenantSigner, release_signer
from continuum import signing
from continuum.errors import ArtifactError, ConfigError
from continuum.wire.messages import DesiredModel, DesiredState

TENANT = "acme"
DIGEST = "ab" * 32


@pytest.fixture
def keys() -> tuple[bytes, bytes]:
    return signing.generate_keypair()


class TestSigning:
    def test_an_artifact_signature_verifies_with_the_tenant_key(
        self, keys: tuple[bytes, bytes]
    ) -> None:
        signer = TenantSigner(TENANT, keys[0])
        signature = signer.sign_artifact("digits-cnn", "v3", DIGEST)
        signing.verify_artifact(keys[1], "digits-cnn", "v3", DIGEST, signature)
        assert signer.key_fingerprint() == signing.key_fingerprint(keys[1])

    def test_what_is_not_an_artifact_digest_is_not_signed(self, keys: tuple[bytes, bytes]) -> None:
        signer = TenantSigner(TENANT, keys[0])
        with pytest.raises(ArtifactError, match="not a sha256"):
            signer.sign_artifact("digits-cnn", "v3", "raw bytes to sign")
        with pytest.raises(ArtifactError, match="non-empty"):
            signer.sign_artifact("", "v3", DIGEST)

    def test_a_desired_state_of_another_tenant_is_refused(self, keys: tuple[bytes, bytes]) -> None:
        now = time.time()
        state = DesiredState(
            tenant="medica",
            node="n1",
            pipelines={},
            issued_at=now,
            expires_at=now + 3600,
            generation=1,
        )
        with pytest.raises(ArtifactError, match="tenant 'medica'"):
            TenantSigner(TENANT, keys[0]).sign_desired_state(state)

    def test_the_signer_signs_what_signed_desired_state_publishes(
        self, keys: tuple[bytes, bytes]
    ) -> None:
        signer = TenantSigner(TENANT, keys[0])
        fields = {"tenant": TENANT, "node": "n1", "pipelines": {}, "generation": 7}
        by_signer = signed_desired_state(signer, issued_at=1e9, **fields)  # type: ignore[arg-type]
        by_key = signed_desired_state(keys[0], issued_at=1e9, **fields)  # type: ignore[arg-type]
        assert by_signer == by_key and by_signer.signature is not None
        signing.verify_desired(keys[1], by_signer.model_dump(mode="json"), by_signer.signature)

    def test_the_key_never_shows_in_its_repr(self, keys: tuple[bytes, bytes]) -> None:
        assert "PRIVATE" not in repr(TenantSigner(TENANT, keys[0]))

    def test_a_public_key_is_not_a_signer(self, keys: tuple[bytes, bytes]) -> None:
        with pytest.raises(ArtifactError, match="malformed private key"):
            TenantSigner(TENANT, keys[1])


class TestReleaseSigner:
    def test_exactly_one_of_signer_and_key(self, keys: tuple[bytes, bytes]) -> None:
        signer = TenantSigner(TENANT, keys[0])
        assert release_signer(TENANT, signer, None) is signer
        assert isinstance(release_signer(TENANT, None, keys[0]), TenantSigner)
        with pytest.raises(ConfigError, match="not both, not neither"):
            release_signer(TENANT, None, None)
        with pytest.raises(ConfigError, match="not both"):
            release_signer(TENANT, signer, keys[0])

    def test_a_book_given_a_signer_holds_no_key(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        published: list[bytes] = []
        book = DesiredStateBook(
            tmp_path / "d.sqlite3",
            TENANT,
            lambda _topic, payload: published.append(payload),
            signer=TenantSigner(TENANT, keys[0]),
        )
        try:
            book.assign(
                "n1",
                "digits",
                DesiredModel(
                    model="digits-cnn",
                    version="v1",
                    sha256=DIGEST,
                    signature="00" * 64,
                    size_bytes=10,
                    chunk_size=10,
                    chunks=1,
                ),
            )
            assert all(keys[0] != v for v in vars(book).values())
        finally:
            book.close()
        state = DesiredState.from_payload(published[-1])
        assert state.signature is not None
        signing.verify_desired(keys[1], state.model_dump(mode="json"), state.signature)


class TestSeal:
    def test_an_empty_root_has_nothing_to_seal(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        with AuditLog(tmp_path) as log:
            assert TenantSigner(TENANT, keys[0]).seal(log) is None
        assert not (tmp_path / TENANT).exists()

    def test_sealing_twice_without_appends_keeps_the_seal(
        self, tmp_path: Path, keys: tuple[bytes, bytes]
    ) -> None:
        signer = TenantSigner(TENANT, keys[0])
        with AuditLog(tmp_path) as log:
            log.append(TENANT, "deploy", "digits", actor="svc")
            first = signer.seal(log, now=1.0)
            again = signer.seal(log, now=2.0)
            assert first is not None and again == first
            assert log.verify(TENANT, public_key_pem=keys[1]).signature_checked
