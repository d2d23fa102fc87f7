"""``continuum node enroll|revoke|list``: the tenant's operator credential, once-only passwords.

Runs the real ``continuum`` entry point against a registry made by ``TenantRegistry`` (the
real ``mosquitto_passwd``, no broker: what the broker then grants is
``tests/integration/cloud_head/test_node_identities.py``).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cloud_head._tenant_broker import password_matches
from cloud_head.audit import AuditLog
from cloud_head.cli._common import PASSWORD_ENV
from cloud_head.tenants import Quotas, TenantRegistry
from continuum.cli import EXIT_INVALID, EXIT_OK, EXIT_REFUSED, main
from tests.tools import require_tool


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tenant registry hashes with mosquitto's tool; no credential comes from outside."""
    require_tool("mosquitto_passwd", "apt-get install mosquitto")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


@pytest.fixture
def head(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A head shared by acme (2 edge nodes at most) and globex; their password files."""
    passwords = {}
    registry = TenantRegistry(tmp_path / "tenants")
    for name, quotas in (("acme", Quotas(edge_nodes=2)), ("globex", Quotas())):
        credentials = registry.create(name, quotas).credentials
        assert credentials is not None
        passwords[name] = tmp_path / f"{name}.password"
        passwords[name].write_text(credentials.password + "\n")
    return tmp_path, passwords


def node(root: Path, *argv: str, password: Path | None = None) -> int:
    given = [] if password is None else ["--password-file", str(password)]
    return main(["node", *argv, "--root", str(root), *given])


def _hashes(root: Path) -> dict[str, str]:
    text = (root / "tenants" / "_broker" / "passwd").read_text()
    return dict(line.split(":", 1) for line in text.split())


class TestEveryVerbAuthorisesTheTenant:
    @pytest.mark.parametrize(
        "argv",
        [["enroll", "acme", "cam-1"], ["revoke", "acme", "cam-1"], ["list", "acme"]],
    )
    def test_no_credential_or_another_tenants_is_refused(
        self,
        head: tuple[Path, dict[str, Path]],
        argv: list[str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        root, passwords = head
        assert node(root, *argv) == EXIT_REFUSED
        assert "--password-file" in capsys.readouterr().err
        assert node(root, *argv, password=passwords["globex"]) == EXIT_REFUSED
        assert "not that of tenant 'acme'" in capsys.readouterr().err
        assert not any(u.startswith("edge.") for u in _hashes(root))


class TestEnroll:
    def test_enroll_prints_the_identity_and_the_password_once(
        self, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, passwords = head
        assert node(root, "enroll", "acme", "cam-1", password=passwords["acme"]) == EXIT_OK
        out = capsys.readouterr().out
        assert "edge.cam-1@acme" in out
        password = next(
            line.split()[1] for line in out.splitlines() if line.strip().startswith("password")
        )
        assert password_matches(_hashes(root)["edge.cam-1@acme"], password)
        assert "reload the broker" in out  # no --broker-pid: it says what is left to do
        assert node(root, "list", "acme", password=passwords["acme"]) == EXIT_OK
        listed = capsys.readouterr().out
        assert "edge.cam-1@acme" in listed and password not in listed

    def test_password_out_writes_an_owner_only_file_and_prints_no_password(
        self, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, passwords = head
        out_file = root / "cam-1.password"
        code = node(
            root,
            "enroll",
            "acme",
            "cam-1",
            "--password-out",
            str(out_file),
            password=passwords["acme"],
        )
        assert code == EXIT_OK
        secret = out_file.read_text().strip()
        assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
        assert password_matches(_hashes(root)["edge.cam-1@acme"], secret)
        assert secret not in capsys.readouterr().out

    def test_enrolled_node_and_full_quota_are_refused(
        self, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, passwords = head
        acme = passwords["acme"]
        assert node(root, "enroll", "acme", "cam-1", password=acme) == EXIT_OK
        assert node(root, "enroll", "acme", "cam-1", password=acme) == EXIT_INVALID
        assert "--replace" in capsys.readouterr().err
        assert node(root, "enroll", "acme", "cam-1", "--replace", password=acme) == EXIT_OK
        assert node(root, "enroll", "acme", "cam-2", password=acme) == EXIT_OK
        assert node(root, "enroll", "acme", "cam-3", password=acme) == EXIT_REFUSED
        assert "--edge-nodes 3" in capsys.readouterr().err

    def test_the_audit_actor_is_the_checked_tenant_credential(
        self, head: tuple[Path, dict[str, Path]]
    ) -> None:
        root, passwords = head
        assert node(root, "enroll", "acme", "cam-1", password=passwords["acme"]) == EXIT_OK
        with AuditLog(root / "audit") as audit:
            last = audit.records("acme")[-1]
        assert last.details["event"] == "node enrolled"
        assert last.actor.startswith("tenant:acme via ")


class TestRevokeAndList:
    def test_revoke_removes_the_credential_and_list_shows_it_revoked(
        self, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, passwords = head
        acme = passwords["acme"]
        assert node(root, "enroll", "acme", "cam-1", password=acme) == EXIT_OK
        assert node(root, "revoke", "acme", "cam-1", password=acme) == EXIT_OK
        out = capsys.readouterr().out
        assert "revoked node cam-1" in out and "reload the broker" in out
        assert "edge.cam-1@acme" not in _hashes(root)
        assert node(root, "list", "acme", "--json", password=acme) == EXIT_OK
        (listed,) = json.loads(capsys.readouterr().out)["nodes"]
        assert listed["identity"] == "edge.cam-1@acme"
        assert listed["method"] == "password" and listed["revoked_at"] is not None

    def test_revoking_a_certificate_node_says_to_regenerate_the_crl(
        self, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, passwords = head
        TenantRegistry(root / "tenants").enroll_node(
            "acme", "cam-1", method="certificate", cert_serial="0F", not_after=2e9
        )
        assert node(root, "revoke", "acme", "cam-1", password=passwords["acme"]) == EXIT_OK
        out = capsys.readouterr().out
        assert "serial 0f" in out and "continuum certs crl" in out

    def test_revoking_a_node_never_enrolled_says_so(
        self, head: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, passwords = head
        assert node(root, "revoke", "acme", "cam-9", password=passwords["acme"]) != EXIT_OK
        assert "not enrolled" in capsys.readouterr().err
