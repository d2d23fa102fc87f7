"""The tenant registry: records, files and their permissions, quotas, names, and the CLI.

Uses the real ``mosquitto_passwd`` (no broker, no network); the broker's view is
``tests/integration/cloud_head/test_tenant_isolation.py``.
"""

from __future__ import annotations

import argparse
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud_head._tenant_broker import password_matches
from cloud_head.cli import tenant as tenant_cli
from cloud_head.tenants import (
    QuotaExceededError,
    Quotas,
    TenantRegistry,
    service_credentials_dir,
)
from continuum.errors import ConfigError, ContinuumError, NotFoundError, NotReadyError, SpecError
from continuum.signing import key_fingerprint, public_pem_of, sign, verify


@pytest.fixture
def registry(tmp_path: Path) -> TenantRegistry:
    return TenantRegistry(tmp_path / "tenants")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _password_users(registry: TenantRegistry) -> list[str]:
    return [line.split(":", 1)[0] for line in registry.password_file.read_text().splitlines()]


def _service_users(tenant: str) -> list[str]:
    return [tenant, f"control@{tenant}", *(f"ingest.{i}@{tenant}" for i in range(8))]


class TestCreate:
    def test_record_names_what_the_tenant_owns(self, registry: TenantRegistry) -> None:
        record = registry.create(
            "acme", Quotas(edge_nodes=3, samples_per_day=50, training_gpu_hours=1.5)
        )
        assert record.name == "acme"
        assert record.mqtt_username == "acme"
        assert record.control_username == "control@acme"
        assert record.ingest_usernames == [f"ingest.{i}@acme" for i in range(8)]
        assert record.ray_namespace == "acme"
        assert record.store_partition == "tenant=acme"
        assert record.topic_filter == "ctm/acme/#"
        assert record.quotas == Quotas(3, 50, 1.5)

    def test_operator_credential_is_handed_out_once_and_never_stored(
        self, registry: TenantRegistry
    ) -> None:
        record = registry.create("acme")
        credentials = record.credentials
        assert credentials is not None
        password = credentials.password
        assert len(password) >= 40
        assert len({password, credentials.control_password, credentials.ingest_password}) == 3
        for secret in (password, credentials.control_password, credentials.ingest_password):
            assert secret not in repr(credentials)
        assert registry.get("acme").credentials is None
        for path in registry.root.rglob("*"):
            if path.is_file():
                assert password.encode() not in path.read_bytes(), path

    def test_service_passwords_are_kept_owner_only_for_the_cloud_head(
        self, registry: TenantRegistry
    ) -> None:
        credentials = registry.create("acme").credentials
        assert credentials is not None
        folder = registry.service_credentials_dir("acme")
        assert folder == service_credentials_dir(registry.root, "acme")
        assert folder == registry.root / "acme" / "credentials"
        assert _mode(folder) == 0o700
        control, ingest = folder / "control.password", folder / "ingest.password"
        assert control.read_text().strip() == credentials.control_password
        assert ingest.read_text().strip() == credentials.ingest_password
        assert _mode(control) == _mode(ingest) == 0o600
        rotated = registry.rotate_credentials("acme")
        assert control.read_text().strip() == rotated.control_password
        assert ingest.read_text().strip() == rotated.ingest_password

    def test_password_file_holds_mosquitto_hashes_of_every_identity(
        self, registry: TenantRegistry
    ) -> None:
        credentials = registry.create("acme").credentials
        assert credentials is not None
        hashes = dict(line.split(":", 1) for line in registry.password_file.read_text().split())
        assert sorted(hashes) == sorted(_service_users("acme"))
        assert all(h.startswith("$7$") for h in hashes.values())  # PBKDF2-SHA512
        # One role, one secret: every ingest replica shares the hash of ingest.password.
        assert len({hashes[user] for user in credentials.ingest_usernames}) == 1
        for user, password in (
            ("acme", credentials.password),
            ("control@acme", credentials.control_password),
            ("ingest.7@acme", credentials.ingest_password),
        ):
            assert password_matches(hashes[user], password), user

    def test_signing_key_is_private_and_signs_for_the_public_key(
        self, registry: TenantRegistry
    ) -> None:
        record = registry.create("acme")
        assert _mode(record.signing_key_path) == 0o600
        assert _mode(record.signing_key_path.parent) == 0o700
        private_pem = record.signing_key_path.read_bytes()
        public_pem = record.public_key_path.read_bytes()
        assert public_pem_of(private_pem) == public_pem
        assert key_fingerprint(public_pem) == record.key_fingerprint
        verify(public_pem, b"payload", sign(private_pem, b"payload"))

    def test_broker_files_are_not_world_readable(self, registry: TenantRegistry) -> None:
        registry.create("acme")
        assert _mode(registry.password_file) & 0o007 == 0
        assert _mode(registry.acl_file) & 0o007 == 0

    def test_each_tenant_gets_its_own_key(self, registry: TenantRegistry) -> None:
        a, b = registry.create("acme"), registry.create("globex")
        assert a.key_fingerprint != b.key_fingerprint

    def test_existing_tenant_is_refused(self, registry: TenantRegistry) -> None:
        registry.create("acme")
        with pytest.raises(ConfigError, match="already exists"):
            registry.create("acme")

    def test_failed_create_leaves_nothing_behind(self, tmp_path: Path) -> None:
        broken = TenantRegistry(tmp_path / "t", mosquitto_passwd=str(tmp_path / "missing"))
        with pytest.raises(NotReadyError, match="mosquitto_passwd not found"):
            broken.create("acme")
        assert broken.list() == []
        assert not (broken.root / "acme").exists()


class TestNames:
    @pytest.mark.parametrize(
        "name",
        ["", "Acme", "ac/me", "a+b", "a#", "ingest@acme", "_broker", "-x", "a b", "x" * 65, "a\n"],
    )
    def test_invalid_names_are_rejected_before_anything_is_written(
        self, registry: TenantRegistry, name: str
    ) -> None:
        with pytest.raises(SpecError, match="invalid tenant name"):
            registry.create(name)
        assert registry.list() == []
        assert registry.password_file.read_text() == ""

    def test_negative_quota_is_rejected_naming_the_field(self) -> None:
        with pytest.raises(SpecError, match=r"quotas\.edge_nodes"):
            Quotas(edge_nodes=-1)

    def test_fractional_node_quota_is_rejected(self) -> None:
        with pytest.raises(SpecError, match="whole number"):
            Quotas(edge_nodes=1.5)  # type: ignore[arg-type]


class TestListAndGet:
    def test_list_is_sorted_and_get_reads_back_the_record(self, registry: TenantRegistry) -> None:
        created = registry.create("globex", Quotas(edge_nodes=2))
        registry.create("acme")
        assert [t.name for t in registry.list()] == ["acme", "globex"]
        assert registry.get("globex") == created  # credentials are not compared

    def test_unknown_tenant_names_the_known_ones(self, registry: TenantRegistry) -> None:
        registry.create("acme")
        with pytest.raises(NotFoundError, match="known tenants: acme"):
            registry.get("globex")

    def test_registry_reopens_from_disk(self, registry: TenantRegistry) -> None:
        registry.create("acme", Quotas(samples_per_day=7))
        again = TenantRegistry(registry.root)
        assert again.get("acme").quotas.samples_per_day == 7


class TestAcl:
    def test_acl_gives_each_identity_only_its_role_within_its_tenant(
        self, registry: TenantRegistry
    ) -> None:
        registry.create("acme")
        registry.create("globex")
        blocks = _acl_blocks(registry.acl_file.read_text())
        assert sorted(blocks) == sorted(_service_users("acme") + _service_users("globex"))
        for tenant in ("acme", "globex"):
            assert blocks[tenant] == [f"topic read ctm/{tenant}/#"]  # the operator writes nothing
            assert blocks[f"control@{tenant}"] == [
                f"topic readwrite ctm/{tenant}/nodes/+/status",
                f"topic readwrite ctm/{tenant}/nodes/+/reported",
                f"topic read ctm/{tenant}/pipelines/+/telemetry/+",
                f"topic write ctm/{tenant}/nodes/+/desired",
                f"topic write ctm/{tenant}/models/#",
            ]
            for replica in range(8):
                assert blocks[f"ingest.{replica}@{tenant}"] == [
                    f"topic read ctm/{tenant}/pipelines/+/samples/+",
                    f"topic read ctm/{tenant}/pipelines/+/feedback/+",
                    f"topic write ctm/{tenant}/nodes/+/stored",
                ]

    def test_acl_has_no_pattern_or_anonymous_rule(self, registry: TenantRegistry) -> None:
        registry.create("acme")
        text = registry.acl_file.read_text()
        body = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert body[0].startswith("user ")  # nothing before the first user: no anonymous rights
        assert not any(line.startswith("pattern") for line in body)


def _acl_blocks(text: str) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    user = None
    for line in text.splitlines():
        if line.startswith("user "):
            user = line.split(" ", 1)[1]
            blocks[user] = []
        elif line.startswith("topic ") and user is not None:
            blocks[user].append(line)
    return blocks


class TestDelete:
    def test_delete_revokes_credentials_and_acl(self, registry: TenantRegistry) -> None:
        registry.create("acme")
        registry.create("globex")
        registry.delete("globex")
        assert sorted(_password_users(registry)) == sorted(_service_users("acme"))
        assert "globex" not in registry.acl_file.read_text()
        assert [t.name for t in registry.list()] == ["acme"]

    def test_delete_archives_public_key_and_destroys_private_key(
        self, registry: TenantRegistry
    ) -> None:
        record = registry.create("globex")
        public_pem = record.public_key_path.read_bytes()
        archive = registry.delete("globex")
        assert archive.parent == registry.archive_dir
        assert not (registry.root / "globex").exists()
        assert not (archive / "keys" / "signing.key").exists()
        assert not (archive / "credentials").exists()  # the services' passwords go too
        assert (archive / "keys" / "signing.pub").read_bytes() == public_pem
        assert (
            '"key_fingerprint": "' + record.key_fingerprint in (archive / "tenant.json").read_text()
        )

    def test_deleted_name_is_never_reused(self, registry: TenantRegistry) -> None:
        registry.create("globex")
        registry.delete("globex")
        with pytest.raises(ConfigError, match="not reused"):
            registry.create("globex")

    def test_deleting_unknown_tenant_raises(self, registry: TenantRegistry) -> None:
        with pytest.raises(NotFoundError):
            registry.delete("nobody")


class TestQuotas:
    def test_within_quota_passes(self, registry: TenantRegistry) -> None:
        registry.create("acme", Quotas(edge_nodes=2))
        registry.check_quota("acme", "edge_nodes", current=1, requested=1)

    def test_over_quota_raises_with_limit_current_and_fix(self, registry: TenantRegistry) -> None:
        registry.create("acme", Quotas(edge_nodes=2))
        with pytest.raises(QuotaExceededError) as caught:
            registry.check_quota("acme", "edge_nodes", current=2, requested=1)
        error = caught.value
        assert isinstance(error, ContinuumError) and isinstance(error, RuntimeError)
        assert (error.tenant, error.kind, error.limit, error.current) == (
            "acme",
            "edge_nodes",
            2,
            2,
        )
        message = str(error)
        assert "edge_nodes quota: limit 2, current 2, requested 1" in message
        assert "continuum tenant quota acme --edge-nodes 3" in message

    def test_gpu_hours_are_fractional(self, registry: TenantRegistry) -> None:
        registry.create("acme", Quotas(training_gpu_hours=2.0))
        registry.check_quota("acme", "training_gpu_hours", current=1.25, requested=0.75)
        with pytest.raises(QuotaExceededError, match=r"--gpu-hours 2\.5"):
            registry.check_quota("acme", "training_gpu_hours", current=1.25, requested=1.25)

    def test_zero_quota_forbids_everything(self, registry: TenantRegistry) -> None:
        registry.create("acme", Quotas(samples_per_day=0))
        with pytest.raises(QuotaExceededError, match="samples_per_day"):
            registry.check_quota("acme", "samples_per_day", current=0, requested=1)

    def test_raised_quota_takes_effect(self, registry: TenantRegistry) -> None:
        registry.create("acme", Quotas(edge_nodes=1))
        registry.set_quotas("acme", Quotas(edge_nodes=5))
        registry.check_quota("acme", "edge_nodes", current=4, requested=1)

    def test_unknown_kind_is_a_spec_error(self, registry: TenantRegistry) -> None:
        registry.create("acme")
        with pytest.raises(SpecError, match="unknown quota"):
            registry.check_quota("acme", "cpu_hours", 0, 1)  # type: ignore[arg-type]


class TestApplyToBroker:
    def test_stray_password_users_are_removed(self, registry: TenantRegistry) -> None:
        registry.create("acme")
        subprocess.run(
            ["mosquitto_passwd", "-b", str(registry.password_file), "intruder", "pw"],
            check=True,
            timeout=10,
        )
        assert registry.apply_to_broker() is None
        assert sorted(_password_users(registry)) == sorted(_service_users("acme"))

    def test_lost_password_entry_names_the_fix(self, registry: TenantRegistry) -> None:
        registry.create("acme")
        registry.password_file.write_text("")
        with pytest.raises(ConfigError, match="rotate"):
            registry.apply_to_broker()
        registry.rotate_credentials("acme")
        registry.apply_to_broker()
        assert sorted(_password_users(registry)) == sorted(_service_users("acme"))

    def test_sighup_goes_to_the_given_pid(self, registry: TenantRegistry, tmp_path: Path) -> None:
        marker = tmp_path / "hup"
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import signal, sys, time, pathlib\n"
                f"signal.signal(signal.SIGHUP, lambda *_: pathlib.Path({str(marker)!r}).touch())\n"
                "print('ready', flush=True)\n"
                "time.sleep(10)\n",
            ],
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            pid_file = tmp_path / "mosquitto.pid"
            pid_file.write_text(f"{child.pid}\n")
            assert registry.apply_to_broker(pid_file=pid_file) == child.pid
            deadline = time.monotonic() + 5
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert marker.exists()
        finally:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=5)
            if child.stdout is not None:
                child.stdout.close()

    def test_dead_pid_is_not_ready(self, registry: TenantRegistry) -> None:
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait(timeout=10)
        with pytest.raises(NotReadyError, match=f"pid {child.pid}"):
            registry.apply_to_broker(pid=child.pid)


def _args(root: Path, **values: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "root": root,
        "edge_nodes": None,
        "samples_per_day": None,
        "training_gpu_hours": None,
        "broker_pid": None,
        "broker_pid_file": None,
        "yes": False,
    }
    base.update(values)
    return argparse.Namespace(**base)


class TestTenantCli:
    def test_create_prints_credentials_once_and_list_does_not(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert tenant_cli.run_create(_args(tmp_path, name="acme", edge_nodes=4)) == 0
        created = capsys.readouterr().out
        password = next(
            line.split("password ", 1)[1]
            for line in created.splitlines()
            if line.strip().startswith("tenant  acme")
        )
        assert len(password) >= 40
        assert tenant_cli.run_list(_args(tmp_path)) == 0
        listed = capsys.readouterr().out
        assert "acme" in listed and password not in listed
        assert TenantRegistry(tmp_path / "tenants").get("acme").quotas.edge_nodes == 4

    def test_quota_changes_only_the_given_limit(self, tmp_path: Path) -> None:
        tenant_cli.run_create(_args(tmp_path, name="acme", samples_per_day=9))
        tenant_cli.run_quota(_args(tmp_path, name="acme", edge_nodes=7))
        quotas = TenantRegistry(tmp_path / "tenants").get("acme").quotas
        assert (quotas.edge_nodes, quotas.samples_per_day) == (7, 9)

    def test_delete_needs_yes(self, tmp_path: Path) -> None:
        tenant_cli.run_create(_args(tmp_path, name="acme"))
        with pytest.raises(ConfigError, match="--yes"):
            tenant_cli.run_delete(_args(tmp_path, name="acme"))
        assert tenant_cli.run_delete(_args(tmp_path, name="acme", yes=True)) == 0
        assert TenantRegistry(tmp_path / "tenants").list() == []

    def test_list_without_registry_names_the_root(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="--root"):
            tenant_cli.run_list(_args(tmp_path / "nowhere"))

    def test_parser_accepts_the_documented_command_lines(self, tmp_path: Path) -> None:
        parser = argparse.ArgumentParser()
        tenant_cli.register(parser.add_subparsers())
        args = parser.parse_args(
            [
                "tenant",
                "create",
                "acme",
                "--edge-nodes",
                "3",
                "--gpu-hours",
                "2.5",
                "--root",
                str(tmp_path),
            ]
        )
        assert (args.name, args.edge_nodes, args.training_gpu_hours) == ("acme", 3, 2.5)
        assert args.run is tenant_cli.run_create
        args = parser.parse_args(["tenant", "delete", "acme", "--yes"])
        assert args.yes and args.run is tenant_cli.run_delete
