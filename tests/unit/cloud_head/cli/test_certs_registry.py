"""``continuum certs sign|crl|node``: signing authorises the tenant's operator, refuses any
identity but the node's, records the certificate in the tenant registry; renewal replaces
it; the CRL lists what was revoked."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cloud_head.audit import AuditLog
from cloud_head.cli._common import PASSWORD_ENV
from cloud_head.tenants import Quotas, TenantRegistry
from continuum import pki
from continuum.cli import EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_REFUSED, main
from tests.tools import require_tool


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tenant registry hashes with mosquitto's tool; no credential comes from outside."""
    require_tool("mosquitto_passwd", "apt-get install mosquitto")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], Path]:
    """A head shared by acme and globex, their password files, and the clients CA."""
    root = tmp_path_factory.mktemp("head")
    passwords = {}
    with AuditLog(root / "audit") as log:
        registry = TenantRegistry(root / "tenants", audit=log)
        for name in ("acme", "globex"):
            credentials = registry.create(name).credentials
            assert credentials is not None
            passwords[name] = root / f"{name}.password"
            passwords[name].write_text(credentials.password + "\n")
    ca = root / "ca"
    assert main(["certs", "ca", "--out", str(ca), "--deployment", "test-plant"]) == EXIT_OK
    return root, passwords, ca


def _request(folder: Path, tenant: str, node: str) -> Path:
    assert main(["certs", "request", "--tenant", tenant, "--node", node, "--out", str(folder)]) == 0
    return folder / f"{node}.csr"


def _sign(head: tuple[Path, dict[str, Path], Path], csr: Path, node: str, *extra: str) -> int:
    root, _, ca = head
    return main(
        [
            *("certs", "sign", "--ca", str(ca), "--csr", str(csr), "--tenant", "acme"),
            *("--node", node, "--root", str(root), *extra),
        ]
    )


def _as(head: tuple[Path, dict[str, Path], Path], tenant: str = "acme") -> list[str]:
    return ["--password-file", str(head[1][tenant])]


def _enrolment(root: Path, node: str) -> list[tuple[str | None, bool]]:
    """(serial, revoked) of each enrolment of acme's ``node``, oldest first."""
    nodes = TenantRegistry(root / "tenants").nodes("acme")
    return [(n.cert_serial, n.revoked_at is not None) for n in nodes if n.node == node]


class TestSignEnrolsTheNode:
    def test_signed_certificate_is_recorded_with_its_serial_and_gets_an_acl_block(
        self, tmp_path: Path, head: tuple[Path, dict[str, Path], Path]
    ) -> None:
        csr = _request(tmp_path, "acme", "cam-1")
        assert _sign(head, csr, "cam-1", *_as(head)) == EXIT_OK
        cert = x509.load_pem_x509_certificate((tmp_path / "cam-1.crt").read_bytes())
        assert cert.subject.rfc4514_string() == "CN=edge.cam-1@acme,O=acme"
        assert cert.public_key() == x509.load_pem_x509_csr(csr.read_bytes()).public_key()
        assert _enrolment(head[0], "cam-1") == [(pki.serial_hex(cert), False)]
        assert "user edge.cam-1@acme" in (head[0] / "tenants" / "_broker" / "acl").read_text()

    def test_enrolment_is_audited_as_the_checked_tenant(
        self, tmp_path: Path, head: tuple[Path, dict[str, Path], Path]
    ) -> None:
        assert _sign(head, _request(tmp_path, "acme", "cam-a"), "cam-a", *_as(head)) == EXIT_OK
        with AuditLog(head[0] / "audit") as log:
            last = log.records("acme")[-1]
        assert last.details["event"] == "node enrolled" and last.details["node"] == "cam-a"
        assert last.actor.startswith("tenant:acme via ")

    def test_renewal_replaces_the_certificate_and_revokes_the_old_serial(
        self, tmp_path: Path, head: tuple[Path, dict[str, Path], Path]
    ) -> None:
        csr = _request(tmp_path, "acme", "cam-2")
        assert _sign(head, csr, "cam-2", *_as(head)) == EXIT_OK
        old = x509.load_pem_x509_certificate((tmp_path / "cam-2.crt").read_bytes())
        assert _sign(head, csr, "cam-2", *_as(head)) == EXIT_INVALID  # exists: --renew
        assert _sign(head, csr, "cam-2", "--renew", *_as(head)) == EXIT_OK
        new = x509.load_pem_x509_certificate((tmp_path / "cam-2.crt").read_bytes())
        assert new.serial_number != old.serial_number
        assert new.subject == old.subject
        assert _enrolment(head[0], "cam-2") == [
            (pki.serial_hex(old), True),
            (pki.serial_hex(new), False),
        ]
        registry = TenantRegistry(head[0] / "tenants")
        assert pki.serial_hex(old) in registry.revoked_serials()


class TestSignRefuses:
    def test_without_the_tenants_credential(
        self,
        tmp_path: Path,
        head: tuple[Path, dict[str, Path], Path],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        csr = _request(tmp_path, "acme", "cam-3")
        assert _sign(head, csr, "cam-3") == EXIT_REFUSED
        assert PASSWORD_ENV in capsys.readouterr().err
        assert _sign(head, csr, "cam-3", *_as(head, "globex")) == EXIT_REFUSED
        assert not (tmp_path / "cam-3.crt").exists()
        assert _enrolment(head[0], "cam-3") == []

    def test_a_request_claiming_another_tenants_node(
        self,
        tmp_path: Path,
        head: tuple[Path, dict[str, Path], Path],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        csr = _request(tmp_path, "globex", "cam-4")  # CN edge.cam-4@globex
        assert _sign(head, csr, "cam-4", *_as(head)) == EXIT_REFUSED
        assert "not 'edge.cam-4@acme'" in capsys.readouterr().err
        assert not (tmp_path / "cam-4.crt").exists()
        assert _enrolment(head[0], "cam-4") == []

    def test_a_request_whose_signature_does_not_verify(
        self,
        tmp_path: Path,
        head: tuple[Path, dict[str, Path], Path],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        csr = _request(tmp_path, "acme", "cam-5")
        der = bytearray(
            x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(serialization.Encoding.DER)
        )
        der[-3] ^= 0x01
        csr.write_bytes(x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM))
        assert _sign(head, csr, "cam-5", *_as(head)) == EXIT_INVALID
        assert "signature does not verify" in capsys.readouterr().err
        assert _enrolment(head[0], "cam-5") == []

    def test_a_tenant_the_registry_lacks(
        self, tmp_path: Path, head: tuple[Path, dict[str, Path], Path]
    ) -> None:
        root, _, ca = head
        csr = _request(tmp_path, "initech", "cam-6")
        code = main(
            [
                *("certs", "sign", "--ca", str(ca), "--csr", str(csr), "--tenant", "initech"),
                *("--node", "cam-6", "--root", str(root), *_as(head)),
            ]
        )
        assert code in (EXIT_FAILED, EXIT_REFUSED)
        assert not (tmp_path / "cam-6.crt").exists()

    def test_beyond_the_tenants_edge_node_quota(
        self,
        tmp_path: Path,
        head: tuple[Path, dict[str, Path], Path],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        root, _, ca = head
        credentials = TenantRegistry(root / "tenants").create("tiny", Quotas(edge_nodes=0))
        assert credentials.credentials is not None
        password = tmp_path / "tiny.password"
        password.write_text(credentials.credentials.password)
        csr = _request(tmp_path, "tiny", "cam-9")
        for verb in (
            ["sign", "--csr", str(csr)],
            ["node", "--out", str(tmp_path / "dev")],
        ):
            code = main(
                [
                    *("certs", *verb, "--ca", str(ca), "--tenant", "tiny", "--node", "cam-9"),
                    *("--root", str(root), "--password-file", str(password)),
                ]
            )
            assert code == EXIT_REFUSED, verb
            assert "QuotaExceededError" in capsys.readouterr().err
        assert not (tmp_path / "cam-9.crt").exists()
        assert not (tmp_path / "dev" / "cam-9.key").exists()


class TestCrl:
    def test_crl_lists_the_revoked_node_and_not_the_others(
        self, tmp_path: Path, head: tuple[Path, dict[str, Path], Path]
    ) -> None:
        root, _, ca = head
        for node in ("cam-7", "cam-8"):
            assert _sign(head, _request(tmp_path, "acme", node), node, *_as(head)) == EXIT_OK
        TenantRegistry(root / "tenants").revoke_node("acme", "cam-7")
        out = tmp_path / "clients.crl"
        assert main(["certs", "crl", "--ca", str(ca), "--root", str(root), "--out", str(out)]) == 0
        crl = x509.load_pem_x509_crl(out.read_bytes())
        assert crl.is_signature_valid(pki.load_ca(ca).key.public_key())
        revoked = {f"{r.serial_number:x}" for r in crl}
        (seven, _), (eight, _) = _enrolment(root, "cam-7")[0], _enrolment(root, "cam-8")[0]
        assert seven in revoked and eight not in revoked


class TestDevelopmentShortcut:
    def test_without_root_the_certificate_is_made_and_said_not_enrolled(
        self,
        tmp_path: Path,
        head: tuple[Path, dict[str, Path], Path],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        ca = head[2]
        args = ["certs", "node", "--tenant", "acme", "--node", "dev-1", "--ca", str(ca)]
        assert main([*args, "--out", str(tmp_path)]) == EXIT_OK
        cert = x509.load_pem_x509_certificate((tmp_path / "dev-1.crt").read_bytes())
        assert cert.subject.rfc4514_string() == "CN=edge.dev-1@acme,O=acme"
        assert "NOT enrolled" in capsys.readouterr().out
        assert _enrolment(head[0], "dev-1") == []

    def test_with_root_it_is_enrolled(
        self, tmp_path: Path, head: tuple[Path, dict[str, Path], Path]
    ) -> None:
        root, _, ca = head
        args = ["certs", "node", "--tenant", "acme", "--node", "dev-2", "--ca", str(ca)]
        assert main([*args, "--out", str(tmp_path), "--root", str(root), *_as(head)]) == 0
        cert = x509.load_pem_x509_certificate((tmp_path / "dev-2.crt").read_bytes())
        assert _enrolment(root, "dev-2") == [(pki.serial_hex(cert), False)]


def _service(head: tuple[Path, dict[str, Path], Path], *extra: str, tenant: str = "acme") -> int:
    root, _, ca = head
    return main(
        ["certs", "service", "--tenant", tenant, "--ca", str(ca), "--root", str(root), *extra]
    )


def _service_files(root: Path, tenant: str = "acme") -> dict[str, x509.Certificate]:
    """Each service identity's certificate in the tenant's credentials folder, by file stem."""
    from cloud_head.tenants import service_credentials_dir

    folder = service_credentials_dir(root / "tenants", tenant)
    return {
        path.stem: x509.load_pem_x509_certificate(path.read_bytes())
        for path in sorted(folder.glob("*.crt"))
    }


class TestServiceCertificates:
    """`certs service` gives control@T and each ingest.N@T a key and certificate, on the head."""

    @pytest.fixture
    def fresh(self, tmp_path: Path) -> tuple[Path, dict[str, Path], Path]:
        """A head of its own (rotation and deletion change it): acme, its password, a CA."""
        root = tmp_path / "head"
        with AuditLog(root / "audit") as log:
            credentials = TenantRegistry(root / "tenants", audit=log).create("acme").credentials
        assert credentials is not None
        (tmp_path / "acme.password").write_text(credentials.password + "\n")
        assert main(["certs", "ca", "--out", str(tmp_path / "ca"), "--deployment", "t"]) == 0
        return root, {"acme": tmp_path / "acme.password"}, tmp_path / "ca"

    def test_every_service_identity_gets_an_owner_only_pair_recorded_and_audited(
        self, fresh: tuple[Path, dict[str, Path], Path]
    ) -> None:
        from cloud_head.tenants import service_credentials_dir

        root = fresh[0]
        assert _service(fresh, *_as(fresh)) == EXIT_OK
        certs = _service_files(root)
        stems = ["control", *(f"ingest.{n}" for n in range(8))]
        assert sorted(certs) == sorted(stems)
        folder = service_credentials_dir(root / "tenants", "acme")
        ca = pki.load_ca(fresh[2])
        for stem, cert in certs.items():
            assert cert.subject.rfc4514_string() == f"CN={stem}@acme,O=acme"
            assert cert.issuer == ca.cert.subject
            key = serialization.load_pem_private_key(
                (folder / f"{stem}.key").read_bytes(), password=None
            )
            assert key.public_key() == cert.public_key()
            assert (folder / f"{stem}.key").stat().st_mode & 0o077 == 0
        recorded = TenantRegistry(root / "tenants").service_certificates("acme")
        assert {(c.identity, c.cert_serial) for c in recorded} == {
            (f"{stem}@acme", pki.serial_hex(cert)) for stem, cert in certs.items()
        }
        with AuditLog(root / "audit") as log:
            last = log.records("acme")[-1]
        assert last.details["event"] == "service certificates issued"
        assert last.actor.startswith("tenant:acme via ")

    def test_issuing_again_replaces_them_and_revokes_the_old_serials(
        self, fresh: tuple[Path, dict[str, Path], Path]
    ) -> None:
        root = fresh[0]
        assert _service(fresh, *_as(fresh)) == EXIT_OK
        old = {pki.serial_hex(c) for c in _service_files(root).values()}
        assert _service(fresh, *_as(fresh)) == EXIT_OK
        new = {pki.serial_hex(c) for c in _service_files(root).values()}
        assert len(new) == 9 and not old & new
        revoked = set(TenantRegistry(root / "tenants").revoked_serials())
        assert old <= revoked and not new & revoked

    def test_rotating_the_tenant_revokes_them_and_removes_the_files(
        self, fresh: tuple[Path, dict[str, Path], Path]
    ) -> None:
        root = fresh[0]
        assert _service(fresh, *_as(fresh)) == EXIT_OK
        issued = {pki.serial_hex(c) for c in _service_files(root).values()}
        registry = TenantRegistry(root / "tenants")
        registry.rotate_credentials("acme")
        assert issued <= set(registry.revoked_serials())
        assert _service_files(root) == {}  # the services fall back to the new passwords

    def test_deleting_the_tenant_revokes_them(
        self, fresh: tuple[Path, dict[str, Path], Path]
    ) -> None:
        root = fresh[0]
        assert _service(fresh, *_as(fresh)) == EXIT_OK
        issued = {pki.serial_hex(c) for c in _service_files(root).values()}
        registry = TenantRegistry(root / "tenants")
        registry.delete("acme")
        assert issued <= set(registry.revoked_serials())

    def test_without_the_tenants_credential_nothing_is_issued(
        self,
        head: tuple[Path, dict[str, Path], Path],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        assert _service(head, *_as(head, "globex")) == EXIT_REFUSED
        assert "acme" in capsys.readouterr().err
        assert _service_files(head[0]) == {}
        assert TenantRegistry(head[0] / "tenants").service_certificates("acme") == []

    @pytest.mark.parametrize("identity", ["edge.cam-1@acme", "acme", "ingest.8@acme"])
    def test_the_signer_makes_no_key_for_a_node_or_the_operator(
        self, head: tuple[Path, dict[str, Path], Path], identity: str
    ) -> None:
        from continuum.errors import AccessDeniedError

        with pytest.raises(AccessDeniedError, match=r"control@TENANT or ingest\.N@TENANT"):
            pki.sign_service(pki.load_ca(head[2]), identity)
