"""On a cloud head shared by tenants, a tenant's data is read only with that tenant's credential.

The credential is the tenant's MQTT password, checked against the broker's own password
file, so one secret governs both what an agent may publish and what a person may read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_head.registry import ModelRegistry
from cloud_head.tenants import TenantRegistry
from continuum.cli import EXIT_REFUSED, main
from tests.tools import require_tool


@pytest.fixture(autouse=True)
def _mosquitto_passwd() -> None:
    """The tenant registry hashes passwords with mosquitto's own tool."""
    require_tool("mosquitto_passwd", "apt-get install mosquitto")


@pytest.fixture
def head(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A cloud head root with tenants acme and globex; returns it and their password files."""
    registry = TenantRegistry(tmp_path / "tenants")
    passwords = {}
    for name in ("acme", "globex"):
        credentials = registry.create(name).credentials
        assert credentials is not None
        path = tmp_path / f"{name}.password"
        path.write_text(credentials.password + "\n")
        passwords[name] = path
    ModelRegistry(tmp_path / "registry").close()
    return tmp_path, passwords


def models(root: Path, tenant: str, *extra: str) -> int:
    argv = ["models", "list", "--root", str(root), "--tenant", tenant]
    return main([*argv, "--pipeline", "digits-inspection", *extra])


class TestTenantCredentials:
    def test_a_tenant_reads_its_own_data_with_its_password(
        self, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, passwords = head
        assert models(root, "acme", "--password-file", str(passwords["acme"])) == 0
        assert "no model versions" in capsys.readouterr().out

    def test_another_tenants_password_is_refused(
        self, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, passwords = head
        assert models(root, "acme", "--password-file", str(passwords["globex"])) == EXIT_REFUSED
        assert "not that of tenant 'acme'" in capsys.readouterr().err
        for argv in (
            ["audit", "verify", "--tenant", "acme"],
            ["fleet", "--tenant", "acme"],
            ["label", "list", "--tenant", "acme", "--pipeline", "digits-inspection"],
        ):
            code = main([*argv, "--root", str(root), "--password-file", str(passwords["globex"])])
            assert code == EXIT_REFUSED, argv
            assert "not that of tenant 'acme'" in capsys.readouterr().err

    def test_no_credential_is_refused_naming_how_to_give_one(
        self, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, _ = head
        assert models(root, "acme") == EXIT_REFUSED
        err = capsys.readouterr().err
        assert "--password-file" in err and "CONTINUUM_TENANT_PASSWORD" in err

    def test_the_environment_variable_works_and_a_rotation_revokes_it(
        self,
        head: tuple[Path, dict[str, Path]],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        root, passwords = head
        monkeypatch.setenv("CONTINUUM_TENANT_PASSWORD", passwords["acme"].read_text().strip())
        assert models(root, "acme") == 0
        TenantRegistry(root / "tenants").rotate_credentials("acme")
        assert models(root, "acme") == EXIT_REFUSED
        assert "not that of tenant 'acme'" in capsys.readouterr().err

    def test_a_single_tenant_head_needs_no_credential(self, tmp_path: Path) -> None:
        ModelRegistry(tmp_path / "registry").close()
        assert models(tmp_path, "acme") == 0
        assert not (tmp_path / "tenants").exists()
