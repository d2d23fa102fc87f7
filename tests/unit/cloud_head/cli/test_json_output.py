"""``--json`` on the list and status commands: one document on stdout, with stable keys.

``models list`` and ``fleet`` are in ``test_operator_commands``; here the review queue, the
audit log's verdict, the tenant list and the rollout status, each on real stores.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from cloud_head.audit import AuditAction, AuditLog
from cloud_head.cli.rollout import print_status
from cloud_head.labelling import LabelStore
from cloud_head.rollout import RampStep, RolloutState
from cloud_head.store import SampleStore
from cloud_head.tenants import TenantRegistry
from continuum.cli import EXIT_FAILED, build_parser, main
from continuum.spec import DataClass
from continuum.wire.codec import SampleBatch, SampleRecord
from tests.tools import require_tool

WHO = ["--tenant", "acme", "--pipeline", "digits-inspection"]


@pytest.fixture
def queue(tmp_path: Path) -> Path:
    """A cloud state root with three stored samples of acme's pipeline: one labelled, two not."""
    records = tuple(
        SampleRecord(
            seq=seq,
            captured_at_ns=1_700_000_000_000_000_000 + seq,
            tensor=np.zeros((4,), dtype=np.float32),
            prediction=seq,
            confidence=0.1 * (seq + 1),
            label=7 if seq == 0 else None,
        )
        for seq in range(3)
    )
    store = SampleStore(tmp_path / "store")
    batch = SampleBatch("digits-inspection", "cam-1", "v1", DataClass.INTERNAL, records)
    store.append("acme", batch)
    store.flush()
    LabelStore(tmp_path / "state" / "labels.sqlite3").close()
    return tmp_path


class TestLabelListJson:
    def test_prints_the_pending_samples_least_certain_first(
        self, queue: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["label", "list", *WHO, "--root", str(queue), "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert (document["tenant"], document["pipeline"]) == ("acme", "digits-inspection")
        samples = document["samples"]
        assert [s["sample_id"] for s in samples] == ["cam-1:1", "cam-1:2"]
        assert set(samples[0]) == {
            "sample_id",
            "node",
            "captured_at_ns",
            "model_version",
            "prediction",
            "confidence",
            "doubt",
            "proposal",
        }
        # A classifier's queue is ordered by its confidence: the doubt is the confidence.
        assert samples[0]["doubt"] == samples[0]["confidence"]
        assert (samples[0]["node"], samples[0]["prediction"], samples[0]["proposal"]) == (
            "cam-1",
            1,
            None,
        )


@pytest.fixture
def audit_root(tmp_path: Path) -> Path:
    with AuditLog(tmp_path / "audit") as log:
        for version in ("v1", "v2"):
            log.append("acme", AuditAction.REGISTER, f"model/digits-inspection/{version}", {})
    return tmp_path


class TestAuditVerifyJson:
    def test_an_intact_log_is_ok(
        self, audit_root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = ["audit", "verify", "--tenant", "acme", "--root", str(audit_root), "--json"]
        assert main([*argv, "--unsigned-ok"]) == 0  # no key here: the chain alone, on request
        document = json.loads(capsys.readouterr().out)
        assert set(document) == {
            "tenant",
            "ok",
            "records",
            "first_bad_seq",
            "reason",
            "signature_checked",
            "key_source",
            "sealed_seq",
            "unsealed_records",
            "newest_unsealed_age_s",
        }
        assert (document["tenant"], document["ok"], document["records"]) == ("acme", True, 2)
        # Appended without a key and never sealed: both records after the (absent) seal.
        assert (document["sealed_seq"], document["unsealed_records"]) == (None, 2)
        assert (document["first_bad_seq"], document["signature_checked"]) == (None, False)
        assert document["key_source"] is None
        assert document["reason"].startswith("2 records intact")

    def test_a_tampered_log_names_the_record_and_exits_failed(
        self, audit_root: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # As an attacker would: the file itself, without the append-only guards.
        db = sqlite3.connect(audit_root / "audit" / "acme" / "audit.sqlite3", isolation_level=None)
        try:
            db.execute("DROP TRIGGER records_no_update")
            db.execute("UPDATE records SET actor = 'mallory' WHERE seq = 2")
        finally:
            db.close()
        argv = ["audit", "verify", "--tenant", "acme", "--root", str(audit_root), "--json"]
        assert main(argv) == EXIT_FAILED
        document = json.loads(capsys.readouterr().out)
        assert (document["ok"], document["first_bad_seq"]) == (False, 2)


class TestTenantListJson:
    def test_lists_every_tenant_without_a_secret(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        require_tool("mosquitto_passwd", "apt-get install mosquitto")
        registry = TenantRegistry(tmp_path / "tenants")
        passwords = [registry.create(name).credentials for name in ("acme", "globex")]
        assert main(["tenant", "list", "--root", str(tmp_path), "--json"]) == 0
        out = capsys.readouterr().out
        tenants = json.loads(out)["tenants"]
        assert [t["name"] for t in tenants] == ["acme", "globex"]
        assert set(tenants[0]) == {
            "name",
            "created_at",
            "quotas",
            "key_fingerprint",
            "public_key_path",
        }
        assert tenants[0]["quotas"] == {
            "edge_nodes": 10,
            "samples_per_day": 1_000_000,
            "training_gpu_hours": 100.0,
        }
        assert all(c is not None and c.password not in out for c in passwords)


class TestRolloutStatusJson:
    def test_the_flag_is_parsed(self) -> None:
        argv = ["rollout", "status", *WHO, "--address", "127.0.0.1:1", "--json"]
        assert build_parser().parse_args(argv).json is True

    def test_prints_the_controllers_snapshot_as_one_document(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        step = RampStep(
            index=0, share=0.25, nodes=("cam-3",), started_at=1_790_000_000.0, reason="canary"
        )
        state = RolloutState(
            pipeline="digits-inspection",
            stage="canary",
            candidate="v2",
            baseline="v1",
            canary_nodes=("cam-3",),
            started_at=1_790_000_000.0,
            reason="canary on cam-3",
            steps=(step,),
        )
        status = {"current": "v1", "training": "idle", "trainings": [], "rollout": asdict(state)}
        args = argparse.Namespace(tenant="acme", pipeline="digits-inspection", json=True)
        print_status(args, status)
        document = json.loads(capsys.readouterr().out)
        assert set(document) == {
            "tenant",
            "pipeline",
            "current",
            "training",
            "rollout",
            "last_training",
            "gpu_hours_used",
            "federated",
        }
        assert document["last_training"] is None
        assert document["federated"] is None  # trained centrally
        assert (document["current"], document["training"]) == ("v1", "idle")
        assert document["rollout"]["stage"] == "canary"
        assert document["rollout"]["steps"][0]["nodes"] == ["cam-3"]
