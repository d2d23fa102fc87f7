"""The audit log: hash-chained per tenant, tamper-evident, and the model lineage export."""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cloud_head.audit import (
    GENESIS_HASH,
    AuditAction,
    AuditLog,
    AuditTamperedError,
    Seal,
    VerifyResult,
    head_message,
    model_subject,
    record_hash,
)
from cloud_head.cli import audit as audit_cli
from cloud_head.model_card import export_model
from cloud_head.registry import ModelRegistry
from cloud_head.signer import TenantSigner
from continuum.errors import ConfigError, NotFoundError, ProtocolError, SpecError
from continuum.signing import generate_keypair, sign, sign_artifact

# 2026-11-22T12:00:00Z
NOON = 1_795_348_800.0


def fill(
    root: Path, tenant: str = "acme", count: int = 5, signing_keys: dict[str, bytes] | None = None
) -> None:
    """Append ``count`` uplink records (details batch-000N) and close the log."""
    with AuditLog(root, clock=lambda: NOON, signing_keys=signing_keys) as log:
        for n in range(1, count + 1):
            log.append(
                tenant,
                AuditAction.UPLINK_BATCH,
                "digits/cam-1",
                {"batch": f"batch-{n:04d}", "samples": n},
                actor="ingest",
            )


@contextmanager
def raw(root: Path, tenant: str = "acme") -> Iterator[sqlite3.Connection]:
    """Open the tenant's file directly, as an attacker would, without the append-only guards."""
    db = sqlite3.connect(root / tenant / "audit.sqlite3", isolation_level=None)
    try:
        db.execute("DROP TRIGGER records_no_update")
        db.execute("DROP TRIGGER records_no_delete")
        yield db
    finally:
        db.close()


def verify(root: Path, tenant: str = "acme", key: bytes | None = None) -> VerifyResult:
    with AuditLog(root) as log:
        return log.verify(tenant, public_key_pem=key)


class TestAppend:
    def test_records_chain_from_genesis_and_verify(self, tmp_path: Path) -> None:
        with AuditLog(tmp_path, clock=lambda: NOON) as log:
            first = log.append("acme", "deploy", "digits", {"b": 1, "a": [1, 2]}, actor="alice@h")
            second = log.append("acme", AuditAction.GATE, model_subject("digits", "v1"))
            records = log.records("acme")
            result = log.verify("acme")
        assert (first.seq, second.seq) == (1, 2)
        assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash
        assert first.ts == "2026-11-22T12:00:00.000000Z"
        assert [r.hash for r in records] == [first.hash, second.hash]
        assert records[0].details == {"a": [1, 2], "b": 1}
        assert second.actor  # default: user@host of the caller
        assert (result.ok, result.count, result.first_bad_seq) == (True, 2, None)
        assert result.head_hash == second.hash

    def test_details_are_stored_canonically(self, tmp_path: Path) -> None:
        with AuditLog(tmp_path) as log:
            log.append("acme", "deploy", "digits", {"z": 1, "a": "é"}, actor="svc")
        with raw(tmp_path) as db:
            (text,) = db.execute("SELECT details FROM records").fetchone()
        assert text == '{"a":"é","z":1}'

    def test_records_filter_by_subject_and_action(self, tmp_path: Path) -> None:
        with AuditLog(tmp_path) as log:
            log.append("acme", "gate", "digits/v1", actor="svc")
            log.append("acme", "rollout", "digits/v1", actor="svc")
            log.append("acme", "rollout", "digits/v2", actor="svc")
            assert [r.seq for r in log.records("acme", subject="digits/v1")] == [1, 2]
            assert [r.seq for r in log.records("acme", action="rollout")] == [2, 3]

    @pytest.mark.parametrize(
        ("action", "subject", "details", "actor"),
        [
            ("delete_everything", "digits", {}, "svc"),
            ("deploy", "", {}, "svc"),
            ("deploy", "two\nlines", {}, "svc"),
            ("deploy", "digits", {"x": float("nan")}, "svc"),
            ("deploy", "digits", {"x": {1, 2}}, "svc"),
            ("deploy", "digits", {}, " "),
        ],
    )
    def test_bad_fields_are_refused_and_nothing_is_written(
        self, tmp_path: Path, action: str, subject: str, details: dict[str, object], actor: str
    ) -> None:
        with AuditLog(tmp_path) as log:
            log.append("acme", "deploy", "digits", actor="svc")
            with pytest.raises(SpecError):
                log.append("acme", action, subject, details, actor=actor)
            assert len(log.records("acme")) == 1

    def test_concurrent_appends_keep_one_unbroken_chain(self, tmp_path: Path) -> None:
        with AuditLog(tmp_path) as log:

            def write(worker: int) -> None:
                for n in range(25):
                    log.append("acme", "uplink_batch", f"cam-{worker}", {"n": n}, actor="ingest")

            threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            result = log.verify("acme")
        assert (result.ok, result.count) == (True, 100)

    def test_two_log_objects_on_one_file_never_fork_the_chain(self, tmp_path: Path) -> None:
        # Two processes (here: two AuditLog objects) appending share SQLite's write lock.
        with AuditLog(tmp_path) as a, AuditLog(tmp_path) as b:
            for n in range(10):
                (a if n % 2 else b).append("acme", "deploy", "digits", {"n": n}, actor="svc")
            assert a.verify("acme").ok and a.verify("acme").count == 10


class TestTamperIsDetected:
    def test_one_edited_byte_in_the_file_names_its_record(self, tmp_path: Path) -> None:
        fill(tmp_path)
        path = tmp_path / "acme" / "audit.sqlite3"
        assert not path.with_name("audit.sqlite3-wal").exists()  # checkpointed on close
        data = path.read_bytes()
        assert data.count(b"batch-0003") == 1
        path.write_bytes(data.replace(b"batch-0003", b"batch-0009"))
        result = verify(tmp_path)
        assert (result.ok, result.first_bad_seq) == (False, 3)
        assert "does not match its hash" in result.reason

    @pytest.mark.parametrize(
        "column", ["ts", "tenant", "actor", "action", "subject", "details", "prev_hash", "hash"]
    )
    def test_any_edited_field_names_its_record(self, tmp_path: Path, column: str) -> None:
        fill(tmp_path)
        with raw(tmp_path) as db:
            db.execute(f"UPDATE records SET {column} = {column} || ' ' WHERE seq = 2")
        result = verify(tmp_path)
        assert (result.ok, result.first_bad_seq) == (False, 2)

    def test_a_rewritten_record_with_a_fresh_hash_breaks_the_next_link(
        self, tmp_path: Path
    ) -> None:
        fill(tmp_path)
        with raw(tmp_path) as db:
            row = db.execute("SELECT * FROM records WHERE seq = 2").fetchone()
            seq, ts, tenant, actor, action, subject, _, prev_hash = row[:8]
            forged = '{"batch":"forged"}'
            digest = record_hash(
                seq=seq,
                ts=ts,
                tenant=tenant,
                actor=actor,
                action=action,
                subject=subject,
                details=forged,
                prev_hash=prev_hash,
            )
            db.execute("UPDATE records SET details = ?, hash = ? WHERE seq = 2", (forged, digest))
        result = verify(tmp_path)
        assert (result.ok, result.first_bad_seq) == (False, 3)
        assert "does not chain onto record 2" in result.reason

    def test_a_deleted_record_names_the_missing_one(self, tmp_path: Path) -> None:
        fill(tmp_path)
        with raw(tmp_path) as db:
            db.execute("DELETE FROM records WHERE seq = 3")
        result = verify(tmp_path)
        assert (result.ok, result.first_bad_seq) == (False, 3)
        assert "record 3 is missing" in result.reason

    def test_deleting_and_renumbering_breaks_the_chain(self, tmp_path: Path) -> None:
        fill(tmp_path)
        with raw(tmp_path) as db:
            db.execute("DELETE FROM records WHERE seq = 3")
            db.execute("UPDATE records SET seq = seq - 1 WHERE seq > 3")
        result = verify(tmp_path)
        assert (result.ok, result.first_bad_seq) == (False, 3)

    def test_two_swapped_records_name_the_first(self, tmp_path: Path) -> None:
        fill(tmp_path)
        with raw(tmp_path) as db:
            db.execute("UPDATE records SET seq = -2 WHERE seq = 2")
            db.execute("UPDATE records SET seq = 2 WHERE seq = 4")
            db.execute("UPDATE records SET seq = 4 WHERE seq = -2")
        result = verify(tmp_path)
        assert (result.ok, result.first_bad_seq) == (False, 2)

    def test_a_deleted_last_record_is_caught_by_the_head_anchor(self, tmp_path: Path) -> None:
        fill(tmp_path)
        with raw(tmp_path) as db:
            db.execute("DELETE FROM records WHERE seq = 5")
        result = verify(tmp_path)
        assert (result.ok, result.first_bad_seq) == (False, 5)
        assert "tail was removed" in result.reason

    def test_a_record_appended_behind_the_logs_back_is_caught(self, tmp_path: Path) -> None:
        fill(tmp_path)
        with raw(tmp_path) as db:
            db.execute(
                "INSERT INTO records SELECT seq + 1, ts, tenant, actor, action, subject, details, "
                "hash, hash FROM records WHERE seq = 5"
            )
        result = verify(tmp_path)
        assert (result.ok, result.first_bad_seq) == (False, 6)

    def test_a_record_copied_from_another_tenant_is_caught(self, tmp_path: Path) -> None:
        fill(tmp_path, "acme")
        fill(tmp_path, "globex")
        with raw(tmp_path, "globex") as db:
            theirs = db.execute("SELECT * FROM records WHERE seq = 2").fetchone()
        with raw(tmp_path, "acme") as db:
            db.execute("DELETE FROM records WHERE seq = 2")
            db.execute("INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?)", theirs)
        result = verify(tmp_path, "acme")
        assert (result.ok, result.first_bad_seq) == (False, 2)
        assert "globex" in result.reason

    def test_unreadable_details_raise_a_clear_error_when_read(self, tmp_path: Path) -> None:
        fill(tmp_path)
        with raw(tmp_path) as db:
            db.execute("UPDATE records SET details = '{broken' WHERE seq = 4")
        with AuditLog(tmp_path) as log, pytest.raises(AuditTamperedError, match="record 4"):
            log.records("acme")

    def test_a_stray_sql_update_is_refused_by_the_append_only_guard(self, tmp_path: Path) -> None:
        fill(tmp_path)
        db = sqlite3.connect(tmp_path / "acme" / "audit.sqlite3")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE records SET actor = 'x' WHERE seq = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM records")
        db.close()
        assert verify(tmp_path).ok


class TestSignedHead:
    def test_a_signed_head_verifies_with_the_tenant_key(self, tmp_path: Path) -> None:
        private, public = generate_keypair()
        fill(tmp_path, signing_keys={"acme": private})
        result = verify(tmp_path, key=public)
        assert result.ok and result.signature_checked
        assert result.sealed_seq == 5 and result.unsealed == 0

    def test_truncating_below_the_seal_fails_even_without_the_key(self, tmp_path: Path) -> None:
        private, _ = generate_keypair()
        fill(tmp_path, signing_keys={"acme": private})
        with raw(tmp_path) as db:
            db.execute("DELETE FROM records WHERE seq = 5")
            db.execute("UPDATE head SET seq = 4, hash = (SELECT hash FROM records WHERE seq = 4)")
        result = verify(tmp_path)
        assert not result.ok and result.first_bad_seq == 5 and "seal" in result.reason

    def test_truncating_and_moving_the_seal_back_needs_the_key(self, tmp_path: Path) -> None:
        private, public = generate_keypair()
        fill(tmp_path, signing_keys={"acme": private})
        with raw(tmp_path) as db:
            db.execute("DELETE FROM records WHERE seq = 5")
            last = "(SELECT hash FROM records WHERE seq = 4)"
            db.execute(f"UPDATE head SET seq = 4, hash = {last}")
            db.execute(f"UPDATE seal SET seq = 4, hash = {last}")
        assert verify(tmp_path).ok  # the chain alone cannot tell ...
        result = verify(tmp_path, key=public)  # ... the seal's signature can
        assert not result.ok and "signature does not verify" in result.reason

    def test_rewriting_a_sealed_record_fails_at_the_seal(self, tmp_path: Path) -> None:
        private, _ = generate_keypair()
        fill(tmp_path, signing_keys={"acme": private})
        with raw(tmp_path) as db:  # a consistent rewrite of the last record, hash and all
            row = db.execute("SELECT * FROM records WHERE seq = 5").fetchone()
            forged = record_hash(
                seq=5,
                ts=row[1],
                tenant="acme",
                actor=row[3],
                action=row[4],
                subject=row[5],
                details='{"batch":"forged","samples":0}',
                prev_hash=row[7],
            )
            db.execute(
                'UPDATE records SET details = \'{"batch":"forged","samples":0}\', '
                "hash = ? WHERE seq = 5",
                (forged,),
            )
            db.execute("UPDATE head SET hash = ?", (forged,))
        result = verify(tmp_path)
        assert not result.ok and result.first_bad_seq == 5 and "seal" in result.reason

    def test_an_unsealed_log_fails_when_a_key_is_given(self, tmp_path: Path) -> None:
        _, public = generate_keypair()
        fill(tmp_path)
        result = verify(tmp_path, key=public)
        assert not result.ok and "no seal" in result.reason


class TestSeal:
    def test_appends_without_the_key_keep_the_seal_and_count_as_unsealed(
        self, tmp_path: Path
    ) -> None:
        private, public = generate_keypair()
        fill(tmp_path, count=3, signing_keys={"acme": private})
        with AuditLog(tmp_path, clock=lambda: NOON) as log:  # ingest, fleet: no key
            log.append("acme", "uplink_batch", "digits", {"n": 1}, actor="service:ingest-0")
            log.append("acme", "uplink_batch", "digits", {"n": 2}, actor="service:ingest-0")
        result = verify(tmp_path, key=public)
        assert result.ok and result.signature_checked
        assert (result.count, result.sealed_seq, result.unsealed) == (5, 3, 2)
        assert result.newest_unsealed_ts is not None

    def test_the_signer_seals_what_keyless_writers_appended(self, tmp_path: Path) -> None:
        private, public = generate_keypair()
        fill(tmp_path, count=2)
        signer = TenantSigner("acme", private)
        with AuditLog(tmp_path) as log:
            seal = signer.seal(log, now=NOON)
            assert seal is not None and seal.seq == 2
            log.append("acme", "gate", "digits/v1", actor="service:controller-digits")
            assert signer.seal(log) is not None
            assert log.seal_of("acme") is not None and log.seal_of("acme").seq == 3  # type: ignore[union-attr]
        result = verify(tmp_path, key=public)
        assert result.ok and result.unsealed == 0 and result.sealed_seq == 3

    def test_the_signer_refuses_to_seal_over_a_broken_chain(self, tmp_path: Path) -> None:
        private, public = generate_keypair()
        fill(tmp_path, count=3)
        with raw(tmp_path) as db:
            db.execute("UPDATE records SET actor = 'mallory' WHERE seq = 2")
        with AuditLog(tmp_path) as log, pytest.raises(AuditTamperedError, match="record 2"):
            TenantSigner("acme", private).seal(log)
        assert not verify(tmp_path, key=public).ok

    def test_a_new_signer_checks_the_whole_chain_not_from_a_stored_seal(
        self, tmp_path: Path
    ) -> None:
        private, _ = generate_keypair()
        fill(tmp_path, count=3, signing_keys={"acme": private})
        with AuditLog(tmp_path) as log:
            log.append("acme", "gate", "digits/v1", actor="svc")
        with raw(tmp_path) as db:  # below the seal: a later signer must not cover it
            db.execute("UPDATE records SET actor = 'mallory' WHERE seq = 1")
        with AuditLog(tmp_path) as log, pytest.raises(AuditTamperedError, match="record 1"):
            TenantSigner("acme", private).seal(log)

    def test_a_seal_never_moves_back(self, tmp_path: Path) -> None:
        private, _ = generate_keypair()
        fill(tmp_path, count=3, signing_keys={"acme": private})
        with AuditLog(tmp_path) as log:
            log.write_seal("acme", Seal(seq=1, hash="0" * 64, signature="00" * 64))
            assert log.seal_of("acme").seq == 3  # type: ignore[union-attr]

    def test_a_signed_head_from_before_seals_is_read_as_the_seal(self, tmp_path: Path) -> None:
        private, public = generate_keypair()
        fill(tmp_path, count=3)
        with raw(tmp_path) as db:  # the layout of a log written before seals
            db.execute("DROP TABLE seal")
            head = db.execute("SELECT seq, hash FROM head").fetchone()
            signature = sign(private, head_message("acme", head[0], head[1]))
            db.execute("UPDATE head SET signature = ?", (signature,))
        assert verify(tmp_path, key=public).signature_checked
        with AuditLog(tmp_path) as log:  # a keyless append keeps it as the seal
            log.append("acme", "gate", "digits/v1", actor="svc")
        result = verify(tmp_path, key=public)
        assert result.ok and result.sealed_seq == 3 and result.unsealed == 1


class TestTenantIsolation:
    def test_each_tenant_has_its_own_file_and_chain(self, tmp_path: Path) -> None:
        with AuditLog(tmp_path) as log:
            log.append("acme", "deploy", "digits", {"who": "acme"}, actor="svc")
            log.append("globex", "deploy", "digits", {"who": "globex"}, actor="svc")
            log.append("globex", "deploy", "digits", {"who": "globex"}, actor="svc")
            assert [r.details["who"] for r in log.records("acme")] == ["acme"]
            assert [r.seq for r in log.records("globex")] == [1, 2]
        assert (tmp_path / "acme" / "audit.sqlite3").is_file()
        assert (tmp_path / "globex" / "audit.sqlite3").is_file()
        with raw(tmp_path, "globex") as db:
            db.execute("DELETE FROM records WHERE seq = 1")
        assert verify(tmp_path, "acme").ok
        assert not verify(tmp_path, "globex").ok

    @pytest.mark.parametrize("tenant", ["..", "../globex", "acme/../globex", "", "ACME", "a/b"])
    def test_a_tenant_name_cannot_leave_the_root(self, tmp_path: Path, tenant: str) -> None:
        with AuditLog(tmp_path / "audit") as log:
            with pytest.raises(ProtocolError):
                log.append(tenant, "deploy", "digits", actor="svc")
            with pytest.raises(ProtocolError):
                log.records(tenant)
        assert not (tmp_path / "audit").exists()

    def test_a_tenant_without_a_log_is_not_found_and_none_is_created(self, tmp_path: Path) -> None:
        with AuditLog(tmp_path) as log:
            with pytest.raises(NotFoundError, match="initech"):
                log.verify("initech")
            with pytest.raises(NotFoundError):
                log.records("initech")
        assert not (tmp_path / "initech").exists()


@pytest.fixture
def cloud(tmp_path: Path) -> Path:
    """A cloud state root: two registered versions of digits-inspection and their audit trail."""
    private, public = generate_keypair()
    (tmp_path / "acme.pub").write_bytes(public)
    registry = ModelRegistry(tmp_path / "cloud" / "registry")
    artifact = tmp_path / "model.onnx"
    with AuditLog(tmp_path / "cloud" / "audit", signing_keys={"acme": private}) as log:
        for number in (1, 2):
            artifact.write_bytes(b"tiny model %d" % number)
            version = registry.register(
                "acme",
                "digits-inspection",
                "digits-cnn",
                artifact,
                sign=lambda model, ver, digest: sign_artifact(private, model, ver, digest),
                parent=None if number == 1 else "v1",
                code_version="git:abc123",
                metrics={"train_accuracy": 0.97},
                gate={
                    "passed": True,
                    "candidate_score": 0.9312,
                    "current_score": None if number == 1 else 0.9011,
                    "margin": 0.01,
                    "gain": None if number == 1 else 0.0301,
                    "reason": "candidate beats current",
                    "holdout_size": 200,
                },
                lineage={
                    "store_partitions": ["2026-11-21", "2026-11-22"],
                    "store_rows": 1234,
                    "trained_on_edge_samples": 987,
                    "holdout_edge_samples": 247,
                    "reason": "500 new labelled samples",
                    "checkpoint": "/ckpt/run-1.pt",
                },
            )
            subject = model_subject("digits-inspection", version.version)
            log.append("acme", "training_run", subject, {"reason": "500 new"}, actor="ctl")
            log.append("acme", "gate", subject, version.gate, actor="ctl")
            log.append("acme", "sign", subject, {"key_fingerprint": "f" * 64}, actor="ctl")
            log.append("acme", "rollout", subject, {"stage": "canary", "nodes": ["cam-1"]})
        log.append("acme", "rollback", model_subject("digits-inspection", "v2"), {"reason": "drop"})
        log.append("acme", "rollout", model_subject("digits-inspection", "v1"), {"to": "v1"})
        log.append("globex", "rollout", model_subject("digits-inspection", "v2"), {"x": 1})
    registry.close()
    return tmp_path


class TestExport:
    def test_writes_the_lineage_json_with_registry_and_audit_content(
        self, cloud: Path, tmp_path: Path
    ) -> None:
        with AuditLog(cloud / "cloud" / "audit") as log:
            registry = ModelRegistry(cloud / "cloud" / "registry")
            files = export_model(
                registry,
                log,
                "acme",
                "digits-inspection",
                "v2",
                tmp_path / "out",
                public_key_pem=(cloud / "acme.pub").read_bytes(),
            )
            registry.close()
        lineage = json.loads(files.lineage_json.read_text())
        assert files.lineage_json.name == "digits-inspection-v2.lineage.json"
        assert (lineage["version"], lineage["parent"], lineage["code_version"]) == (
            "v2",
            "v1",
            "git:abc123",
        )
        assert lineage["data"]["store_partitions"] == ["2026-11-21", "2026-11-22"]
        assert lineage["data"]["store_rows"] == 1234
        assert lineage["gate"]["current_score"] == 0.9011
        assert len(lineage["artifact"]["sha256"]) == 64
        assert len(lineage["artifact"]["signature"]) == 128
        assert lineage["artifact"]["key_fingerprint"] == "f" * 64
        assert lineage["intended_use"] is None
        assert [h["action"] for h in lineage["rollout_history"]] == ["rollout", "rollback"]
        audit = lineage["audit"]
        assert audit["verified"] is True
        assert [r["action"] for r in audit["records"]] == [
            "training_run",
            "gate",
            "sign",
            "rollout",
            "rollback",
        ]
        assert {r["subject"] for r in audit["records"]} == {"digits-inspection/v2"}
        assert all(r["tenant"] == "acme" for r in audit["records"])

    def test_writes_a_readable_model_card(self, cloud: Path, tmp_path: Path) -> None:
        with AuditLog(cloud / "cloud" / "audit") as log:
            registry = ModelRegistry(cloud / "cloud" / "registry")
            files = export_model(
                registry,
                log,
                "acme",
                "digits-inspection",
                "v2",
                tmp_path,
                intended_use="Flag mis-stamped digits on line 7; not for people.",
            )
            registry.close()
        card = files.model_card_md.read_text()
        assert card.startswith("# Model card: digits-inspection v2")
        assert "Flag mis-stamped digits on line 7" in card
        assert "2026-11-21, 2026-11-22" in card
        assert "| Candidate accuracy | 0.9312 |" in card
        assert "| Current model's accuracy | 0.9011 |" in card
        assert "The gate **passed**" in card
        assert "| Parent version | v1 |" in card
        assert "rollback" in card and "drop" in card
        assert "audit log verified at export" in card

    def test_a_tampered_log_is_stated_on_the_card(self, cloud: Path, tmp_path: Path) -> None:
        with raw(cloud / "cloud" / "audit") as db:
            db.execute("DELETE FROM records WHERE seq = 2")
        with AuditLog(cloud / "cloud" / "audit") as log:
            registry = ModelRegistry(cloud / "cloud" / "registry")
            files = export_model(registry, log, "acme", "digits-inspection", "v1", tmp_path)
            registry.close()
        assert "FAILED verification** at record 2" in files.model_card_md.read_text()
        assert json.loads(files.lineage_json.read_text())["audit"]["verified"] is False

    def test_an_unknown_version_names_what_exists(self, cloud: Path, tmp_path: Path) -> None:
        with AuditLog(cloud / "cloud" / "audit") as log:
            registry = ModelRegistry(cloud / "cloud" / "registry")
            with pytest.raises(NotFoundError, match="v1, v2"):
                export_model(registry, log, "acme", "digits-inspection", "v9", tmp_path)
            registry.close()


def cli(*argv: str) -> int:
    """Parse ``argv`` with only the audit subcommand registered and run it."""
    parser = argparse.ArgumentParser(prog="continuum")
    audit_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.run(args))


class TestCli:
    def test_verify_exits_0_on_an_intact_log(
        self, cloud: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        root = str(cloud / "cloud")
        # No tenant registry pins a key here: unchecked is NOT VERIFIED unless asked for.
        assert cli("audit", "verify", "--tenant", "acme", "--root", root) == 1
        assert "NOT VERIFIED" in capsys.readouterr().out
        assert cli("audit", "verify", "--tenant", "acme", "--root", root, "--unsigned-ok") == 0
        assert "OK" in capsys.readouterr().out
        key = str(cloud / "acme.pub")
        assert cli("audit", "verify", "--tenant", "acme", "--root", root, "--public-key", key) == 0
        assert "head signature verified" in capsys.readouterr().out

    def test_verify_exits_1_naming_the_first_bad_record(
        self, cloud: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with raw(cloud / "cloud" / "audit") as db:
            db.execute("UPDATE records SET actor = 'mallory' WHERE seq = 6")
        assert cli("audit", "verify", "--tenant", "acme", "--root", str(cloud / "cloud")) == 1
        out = capsys.readouterr().out
        assert "FAILED at record 6" in out and "does not match its hash" in out

    def test_verify_of_another_tenant_is_unaffected(self, cloud: Path) -> None:
        with raw(cloud / "cloud" / "audit") as db:
            db.execute("DELETE FROM records WHERE seq = 1")
        root = str(cloud / "cloud")
        assert cli("audit", "verify", "--tenant", "globex", "--root", root, "--unsigned-ok") == 0

    def test_a_path_as_tenant_is_a_usage_error(self, cloud: Path) -> None:
        with pytest.raises(SystemExit) as exit_:
            cli("audit", "verify", "--tenant", "../acme", "--root", str(cloud / "cloud"))
        assert exit_.value.code == 2

    def test_export_writes_both_files(
        self, cloud: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "cards"
        status = cli(
            "audit",
            "export",
            "--tenant",
            "acme",
            "--pipeline",
            "digits-inspection",
            "--model",
            "v1",
            "--out",
            str(out),
            "--root",
            str(cloud / "cloud"),
        )
        assert status == 0
        assert (
            json.loads((out / "digits-inspection-v1.lineage.json").read_text())["version"] == "v1"
        )
        assert (
            "# Model card: digits-inspection v1"
            in (out / "digits-inspection-v1.model-card.md").read_text()
        )
        assert "model-card.md" in capsys.readouterr().out

    def test_a_missing_root_is_a_config_error(self, tmp_path: Path) -> None:
        # continuum.cli.main turns a ConfigError into exit status 2 with a one-line message.
        with pytest.raises(ConfigError, match="--root"):
            cli("audit", "verify", "--tenant", "acme", "--root", str(tmp_path / "nowhere"))
