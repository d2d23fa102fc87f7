"""``continuum audit verify`` checks the head's signature by default (issue 14, finding 6).

The truncation an attacker with write access to the file can make (the last records deleted,
the head anchor moved back onto the new last record) passes the hash chain; only the head's
signature shows it. Real SQLite logs, a real tenant registry (with ``mosquitto_passwd``), the
real command line.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cloud_head.audit import AuditAction, AuditLog
from cloud_head.registry import ModelRegistry
from cloud_head.tenants import TenantRegistry
from continuum.cli import EXIT_FAILED, EXIT_INVALID, main
from continuum.errors import ConfigError
from continuum.signing import generate_keypair, public_pem_of
from tests.tools import register_test_version, require_tool

TENANT = "acme"


def _write_log(root: Path, private_pem: bytes | None, records: int = 4) -> None:
    keys = {TENANT: private_pem} if private_pem is not None else {}
    with AuditLog(root / "audit", signing_keys=keys) as log:
        for n in range(records):
            log.append(TENANT, AuditAction.REGISTER, f"digits/v{n + 1}", {"n": n})


def _truncate(root: Path, removed: int = 2) -> None:
    """As an attacker would: delete the last records and move the head and the seal back onto
    the new last (only the seal's signature can show it)."""
    db = sqlite3.connect(root / "audit" / TENANT / "audit.sqlite3", isolation_level=None)
    try:
        db.execute("DROP TRIGGER records_no_delete")
        (last,) = db.execute("SELECT MAX(seq) FROM records").fetchone()
        db.execute("DELETE FROM records WHERE seq > ?", (last - removed,))
        seq, digest = db.execute("SELECT seq, hash FROM records ORDER BY seq DESC").fetchone()
        db.execute("UPDATE head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
        db.execute("UPDATE seal SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
    finally:
        db.close()


def _verify(root: Path, *extra: str) -> list[str]:
    return ["audit", "verify", "--tenant", TENANT, "--root", str(root), *extra]


@pytest.fixture
def shared_head(tmp_path: Path) -> tuple[Path, Path]:
    """A head with a tenant registry; the log signed by the tenant's key. Returns root, password."""
    require_tool("mosquitto_passwd", "apt-get install mosquitto")
    record = TenantRegistry(tmp_path / "tenants").create(TENANT)
    assert record.credentials is not None
    password = tmp_path / "acme.password"
    password.write_text(record.credentials.password + "\n")
    _write_log(tmp_path, record.signing_key_path.read_bytes())
    return tmp_path, password


class TestWithTheRegistrysPinnedKey:
    def test_an_intact_log_verifies_its_signature_by_default(
        self, shared_head: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, password = shared_head
        assert main(_verify(root, "--password-file", str(password))) == 0
        out = capsys.readouterr().out
        assert "OK" in out and "head signature verified" in out and "tenant registry" in out

    def test_a_truncated_log_fails_by_default(
        self, shared_head: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, password = shared_head
        _truncate(root)
        code = main(_verify(root, "--password-file", str(password), "--json"))
        assert code == EXIT_FAILED
        document = json.loads(capsys.readouterr().out)
        assert (document["ok"], document["records"]) == (False, 2)
        assert "signature does not verify" in document["reason"]
        assert document["key_source"] == f"tenant registry {root / 'tenants'}"

    def test_unsigned_ok_does_not_waive_a_key_that_is_there(
        self, shared_head: tuple[Path, Path]
    ) -> None:
        root, password = shared_head
        _truncate(root)
        assert main(_verify(root, "--password-file", str(password), "--unsigned-ok")) == (
            EXIT_FAILED
        )

    def test_a_key_replaced_on_disk_is_not_taken_for_the_pinned_one(
        self, shared_head: tuple[Path, Path]
    ) -> None:
        root, _ = shared_head
        registry = TenantRegistry(root / "tenants")
        pinned = registry.public_key(TENANT)
        _, other_public = generate_keypair()
        registry.get(TENANT).public_key_path.write_bytes(other_public)
        assert registry.public_key(TENANT) == pinned


class TestUnsealedTail:
    def test_records_after_the_seal_are_reported_and_pass_by_default(
        self, shared_head: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, password = shared_head
        _write_log(root, None, records=2)  # ingest's and the fleet's appends: no key
        assert main(_verify(root, "--password-file", str(password))) == 0
        out = capsys.readouterr().out
        assert "2 records after the last seal" in out and "seals every" in out
        assert main(_verify(root, "--password-file", str(password), "--json")) == 0
        document = json.loads(capsys.readouterr().out)
        assert (document["sealed_seq"], document["unsealed_records"]) == (4, 2)
        assert document["newest_unsealed_age_s"] >= 0

    def test_sealed_requires_the_seal_to_cover_the_head(
        self, shared_head: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, password = shared_head
        assert main(_verify(root, "--password-file", str(password), "--sealed")) == 0
        _write_log(root, None, records=1)
        capsys.readouterr()
        assert main(_verify(root, "--password-file", str(password), "--sealed")) == EXIT_FAILED
        assert "1 records after the last seal" in capsys.readouterr().out

    def test_removing_sealed_records_fails_without_moving_the_seal(
        self, shared_head: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, password = shared_head
        db = sqlite3.connect(root / "audit" / TENANT / "audit.sqlite3", isolation_level=None)
        try:
            db.execute("DROP TRIGGER records_no_delete")
            db.execute("DELETE FROM records WHERE seq > 2")
            db.execute("UPDATE head SET seq = 2, hash = (SELECT hash FROM records WHERE seq = 2)")
        finally:
            db.close()
        assert main(_verify(root, "--password-file", str(password))) == EXIT_FAILED
        assert "sealed records were removed" in capsys.readouterr().out


class TestWithoutAKey:
    def test_no_key_is_not_verified_and_fails_naming_the_ways_out(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        private_pem, _ = generate_keypair()
        _write_log(tmp_path, private_pem)
        assert main(_verify(tmp_path)) == EXIT_FAILED
        out = capsys.readouterr().out
        assert "NOT VERIFIED" in out
        assert "--public-key" in out and "--unsigned-ok" in out

    def test_the_truncation_finding_no_longer_exits_0(self, tmp_path: Path) -> None:
        private_pem, _ = generate_keypair()
        _write_log(tmp_path, private_pem)
        _truncate(tmp_path)
        assert main(_verify(tmp_path)) == EXIT_FAILED

    def test_unsigned_ok_accepts_the_chain_alone_and_says_so(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _write_log(tmp_path, None)
        assert main(_verify(tmp_path, "--unsigned-ok", "--json")) == 0
        document = json.loads(capsys.readouterr().out)
        assert (document["ok"], document["signature_checked"]) == (True, False)
        assert document["key_source"] is None
        assert main(_verify(tmp_path, "--unsigned-ok")) == 0
        assert "NOT VERIFIED" in capsys.readouterr().out

    def test_a_tampered_record_fails_even_with_unsigned_ok(self, tmp_path: Path) -> None:
        _write_log(tmp_path, None)
        db = sqlite3.connect(tmp_path / "audit" / TENANT / "audit.sqlite3", isolation_level=None)
        try:
            db.execute("DROP TRIGGER records_no_update")
            db.execute("UPDATE records SET actor = 'mallory' WHERE seq = 2")
        finally:
            db.close()
        assert main(_verify(tmp_path, "--unsigned-ok")) == EXIT_FAILED

    def test_the_flag_is_documented_in_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["audit", "verify", "--help"]) == 0
        assert "--unsigned-ok" in capsys.readouterr().out


class TestWithAGivenKey:
    def test_the_given_key_checks_the_signature_and_catches_the_truncation(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        private_pem, public_pem = generate_keypair()
        (tmp_path / "acme.pub").write_bytes(public_pem)
        _write_log(tmp_path, private_pem)
        assert main(_verify(tmp_path, "--public-key", str(tmp_path / "acme.pub"))) == 0
        assert "head signature verified" in capsys.readouterr().out
        _truncate(tmp_path)
        assert main(_verify(tmp_path, "--public-key", str(tmp_path / "acme.pub"))) == (EXIT_FAILED)

    def test_another_key_fails(self, tmp_path: Path) -> None:
        private_pem, _ = generate_keypair()
        _, stranger = generate_keypair()
        (tmp_path / "other.pub").write_bytes(stranger)
        _write_log(tmp_path, private_pem)
        assert main(_verify(tmp_path, "--public-key", str(tmp_path / "other.pub"))) == (EXIT_FAILED)

    def test_an_unreadable_key_file_is_invalid_input(self, tmp_path: Path) -> None:
        _write_log(tmp_path, None)
        assert main(_verify(tmp_path, "--public-key", str(tmp_path / "missing.pub"))) == (
            EXIT_INVALID
        )


class TestPinning:
    @pytest.fixture(autouse=True)
    def _mosquitto_passwd(self) -> None:
        require_tool("mosquitto_passwd", "apt-get install mosquitto")

    def test_create_pins_the_key_it_makes(self, tmp_path: Path) -> None:
        registry = TenantRegistry(tmp_path / "tenants")
        record = registry.create(TENANT)
        assert registry.public_key(TENANT) == public_pem_of(record.signing_key_path.read_bytes())

    def test_a_deploy_key_other_than_the_tenants_is_refused(self, tmp_path: Path) -> None:
        registry = TenantRegistry(tmp_path / "tenants")
        record = registry.create(TENANT)
        registry.pin_public_key(TENANT, record.public_key_path.read_bytes())  # its own: fine
        _, stranger = generate_keypair()
        with pytest.raises(ConfigError, match="not the registered key of tenant 'acme'"):
            registry.pin_public_key(TENANT, stranger)
        with pytest.raises(ConfigError, match=r"not an Ed25519|malformed"):
            registry.pin_public_key(TENANT, b"not a key")

    def test_a_registry_from_before_pinning_gets_the_key_pinned_at_deploy(
        self, tmp_path: Path
    ) -> None:
        registry = TenantRegistry(tmp_path / "tenants")
        record = registry.create(TENANT)
        public_pem = record.public_key_path.read_bytes()
        with sqlite3.connect(registry.db_path) as db:  # as an older registry left it
            db.execute("UPDATE tenants SET public_key_pem = NULL")
        # Until then the key file counts only with the fingerprint the registry holds.
        assert registry.public_key(TENANT) == public_pem
        _, stranger = generate_keypair()
        record.public_key_path.write_bytes(stranger)
        with pytest.raises(ConfigError, match="not the key registered"):
            registry.public_key(TENANT)
        registry.pin_public_key(TENANT, public_pem)
        assert TenantRegistry(tmp_path / "tenants").public_key(TENANT) == public_pem


class TestExport:
    def test_the_card_checks_the_log_against_the_pinned_key(
        self, shared_head: tuple[Path, Path], tmp_path: Path
    ) -> None:
        root, password = shared_head
        record = TenantRegistry(root / "tenants").get(TENANT)
        private_pem = record.signing_key_path.read_bytes()
        artifact = tmp_path / "model.onnx"
        artifact.write_bytes(b"model bytes")
        registry = ModelRegistry(root / "registry")
        try:
            register_test_version(
                registry, TENANT, "digits", "digits-cnn", artifact, private_pem=private_pem
            )
        finally:
            registry.close()
        _truncate(root)
        argv = ["audit", "export", "--tenant", TENANT, "--root", str(root), "--out", str(tmp_path)]
        argv += ["--password-file", str(password), "--pipeline", "digits", "--model", "v1"]
        assert main(argv) == 0
        lineage = json.loads((tmp_path / "digits-v1.lineage.json").read_text())
        # The chain alone holds after the truncation; the pinned key's check does not.
        assert lineage["audit"]["verified"] is False
        assert "signature does not verify" in lineage["audit"]["reason"]


class TestDeploy:
    def test_a_deploy_signing_with_another_key_is_refused_before_anything_starts(
        self, tmp_path: Path
    ) -> None:
        require_tool("mosquitto_passwd", "apt-get install mosquitto")
        from cloud_head.services import CloudHead
        from cloud_head.settings import CloudSettings

        TenantRegistry(tmp_path / "tenants").create(TENANT)
        stranger, _ = generate_keypair()
        settings = CloudSettings.load(tenant=TENANT, root=tmp_path, code_version="test")
        with pytest.raises(ConfigError, match="not the registered key of tenant 'acme'"):
            CloudHead.start(settings, [], signing_key_pem=stranger)
        # Refused before the deploy was recorded or any service was started.
        assert not (tmp_path / "audit").exists()
