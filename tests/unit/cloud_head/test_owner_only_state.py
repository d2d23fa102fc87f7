"""The cloud head's state is owner-only: files 0600, folders 0700 (issue 14, finding 8).

Real SQLite, real Parquet, the real ``mosquitto_passwd``: each test makes the state the way the
cloud head does, under a permissive umask, and reads the modes back from the disk.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_head._pipeline_state import PipelineStateStore
from cloud_head.audit import AuditAction, AuditLog
from cloud_head.fleet import FleetRegistry
from cloud_head.labelling import LabelStore
from cloud_head.paths import HeadPaths
from cloud_head.registry import ModelRegistry
from cloud_head.seen import SeenIndex
from cloud_head.store import SampleStore
from cloud_head.tenants import TenantRegistry
from continuum.signing import generate_keypair
from continuum.spec import DataClass
from continuum.wire.codec import SampleBatch, SampleRecord
from tests.tools import register_test_version

SECRET_DIRS = 0o700
SECRET_FILES = 0o600


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The default of many hosts (0022) would already hide nothing from others' reading."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tree_modes(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Every file and folder under ``root`` (itself included) with its mode."""
    modes = {".": _mode(root)}
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if not relative.startswith(skip):
            modes[relative] = _mode(path)
    return modes


def _not_owner_only(modes: dict[str, int], root: Path) -> dict[str, str]:
    wrong = {}
    for relative, mode in modes.items():
        expected = SECRET_DIRS if (root / relative).is_dir() else SECRET_FILES
        if mode != expected:
            wrong[relative] = oct(mode)
    return wrong


class TestAuditLog:
    def test_the_log_its_wal_and_its_folders_are_owner_only(self, tmp_path: Path) -> None:
        root = tmp_path / "cloud" / "audit"
        with AuditLog(root) as log:
            log.append("acme", AuditAction.DEPLOY, "pipeline/digits", {"n": 1})
            modes = _tree_modes(tmp_path / "cloud")
        assert {"audit/acme/audit.sqlite3", "audit/acme/audit.sqlite3-wal"} <= set(modes)
        assert _not_owner_only(modes, tmp_path / "cloud") == {}


class TestTenantRegistry:
    def test_registry_keys_archive_and_lock_are_owner_only(self, tmp_path: Path) -> None:
        registry = TenantRegistry(tmp_path / "tenants")
        registry.create("acme")
        registry.create("globex")
        registry.delete("globex")
        root = tmp_path / "tenants"
        # The broker's files are read by mosquitto's user: group-readable, never others.
        modes = _tree_modes(root, skip=("_broker",))
        assert {
            "_tenants.sqlite",
            "_tenants.lock",
            "acme/keys/signing.key",
            "acme/keys/signing.pub",
        } <= set(modes)
        assert any(name.endswith("tenant.json") for name in modes)
        assert _not_owner_only(modes, root) == {}
        assert _mode(root / "_broker") & 0o007 == 0
        assert _mode(registry.password_file) & 0o007 == 0


class TestSampleStore:
    def test_parquet_files_and_partition_folders_are_owner_only(self, tmp_path: Path) -> None:
        store = SampleStore(tmp_path / "store", flush_rows=1)
        record = SampleRecord(seq=1, captured_at_ns=1, tensor=np.zeros((2, 2), np.float32))
        batch = SampleBatch("digits", "cam-1", "v1", DataClass.CONFIDENTIAL, (record,))
        store.append("acme", batch)
        store.flush()
        modes = _tree_modes(tmp_path / "store")
        assert any(name.endswith(".parquet") for name in modes), modes
        assert _not_owner_only(modes, tmp_path / "store") == {}


class TestModelRegistry:
    def test_database_artifacts_and_folders_are_owner_only(self, tmp_path: Path) -> None:
        private_pem, _ = generate_keypair()
        artifact = tmp_path / "model.onnx"
        artifact.write_bytes(b"not really onnx")
        registry = ModelRegistry(tmp_path / "cloud" / "registry")
        try:
            register_test_version(
                registry, "acme", "digits", "digits-cnn", artifact, private_pem=private_pem
            )
        finally:
            registry.close()
        modes = _tree_modes(tmp_path / "cloud")
        assert "registry/registry.sqlite3" in modes
        assert any(name.endswith(".onnx") for name in modes), modes
        assert _not_owner_only(modes, tmp_path / "cloud") == {}


class TestHeadState:
    def test_the_deploys_state_folders_and_each_services_database_are_owner_only(
        self, tmp_path: Path
    ) -> None:
        root = tmp_path / "cloud"
        paths = HeadPaths(root, registry_url=None)
        paths.create_private()
        # What the ingest, labelling, fleet and controller services open under it.
        SeenIndex(paths.seen_db).close()
        LabelStore(paths.labels_db).close()
        FleetRegistry("acme", paths.fleet_db("acme")).close()
        state = paths.controller("acme", "digits") / "state.sqlite3"
        PipelineStateStore(state, "acme", "digits").close()
        modes = _tree_modes(root)
        assert {"state", "store", "audit", "registry", "controllers"} <= set(modes)
        assert {
            "state/ingest-seen.sqlite3",
            "state/labels.sqlite3",
            "state/fleet-acme.sqlite3",
        } <= (set(modes))
        assert "controllers/acme/digits/state.sqlite3" in modes
        assert _not_owner_only(modes, root) == {}
