"""``continuum certs``: a tenant CA and node client certificates whose chain verifies."""

from __future__ import annotations

import argparse
import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from continuum.cli import certs
from continuum.errors import ConfigError, SpecError


def _ca(tmp_path: Path, tenant: str = "acme") -> Path:
    out = tmp_path / f"ca-{tenant}"
    assert certs.run_ca(argparse.Namespace(tenant=tenant, out=out, days=30)) == 0
    return out


def _node(tmp_path: Path, ca: Path, tenant: str = "acme", node: str = "cam-1") -> Path:
    out = tmp_path / "nodes"
    args = argparse.Namespace(tenant=tenant, node=node, ca=ca, out=out, days=10)
    assert certs.run_node(args) == 0
    return out


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify_client(leaf: x509.Certificate, ca: x509.Certificate) -> None:
    verifier = PolicyBuilder().store(Store([ca])).build_client_verifier()
    verifier.verify(leaf, [])


class TestTenantCa:
    def test_ca_is_self_signed_for_the_tenant(self, tmp_path: Path) -> None:
        out = _ca(tmp_path)
        ca = _load(out / "ca.crt")
        ca.verify_directly_issued_by(ca)
        assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "acme"
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca
        assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign

    def test_ca_key_is_0600(self, tmp_path: Path) -> None:
        out = _ca(tmp_path)
        assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600

    def test_existing_ca_is_not_overwritten(self, tmp_path: Path) -> None:
        out = _ca(tmp_path)
        before = (out / "ca.key").read_bytes()
        with pytest.raises(ConfigError, match="exists"):
            certs.run_ca(argparse.Namespace(tenant="acme", out=out, days=30))
        assert (out / "ca.key").read_bytes() == before

    def test_invalid_tenant_name_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(SpecError, match="invalid tenant name"):
            certs.run_ca(argparse.Namespace(tenant="Acme/1", out=tmp_path, days=30))


class TestNodeCertificate:
    def test_chain_verifies_as_a_client_certificate(self, tmp_path: Path) -> None:
        ca_dir = _ca(tmp_path)
        out = _node(tmp_path, ca_dir)
        ca, leaf = _load(ca_dir / "ca.crt"), _load(out / "cam-1.crt")
        leaf.verify_directly_issued_by(ca)
        _verify_client(leaf, ca)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
            "urn:continuum:acme:node:cam-1"
        ]

    def test_subject_is_cn_node_o_tenant(self, tmp_path: Path) -> None:
        leaf = _load(_node(tmp_path, _ca(tmp_path)) / "cam-1.crt")
        assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-1"
        assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "acme"
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    def test_validity_is_bounded(self, tmp_path: Path) -> None:
        leaf = _load(_node(tmp_path, _ca(tmp_path)) / "cam-1.crt")
        now = dt.datetime.now(dt.UTC)
        assert leaf.not_valid_before_utc <= now
        assert now + dt.timedelta(days=9) < leaf.not_valid_after_utc
        assert leaf.not_valid_after_utc <= now + dt.timedelta(days=10, minutes=1)

    def test_node_validity_never_outlives_the_ca(self, tmp_path: Path) -> None:
        ca_dir = _ca(tmp_path)  # 30 days
        out = tmp_path / "long"
        certs.run_node(
            argparse.Namespace(tenant="acme", node="cam-2", ca=ca_dir, out=out, days=3650)
        )
        leaf, ca = _load(out / "cam-2.crt"), _load(ca_dir / "ca.crt")
        assert leaf.not_valid_after_utc == ca.not_valid_after_utc

    def test_node_key_is_0600_and_matches_the_certificate(self, tmp_path: Path) -> None:
        from cryptography.hazmat.primitives import serialization

        out = _node(tmp_path, _ca(tmp_path))
        key_path = out / "cam-1.key"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key() == _load(out / "cam-1.crt").public_key()

    def test_another_tenants_ca_does_not_verify_the_node(self, tmp_path: Path) -> None:
        acme_ca = _ca(tmp_path, "acme")
        globex_ca = _load(_ca(tmp_path, "globex") / "ca.crt")
        leaf = _load(_node(tmp_path, acme_ca) / "cam-1.crt")
        with pytest.raises(VerificationError):
            _verify_client(leaf, globex_ca)

    def test_ca_of_another_tenant_is_refused(self, tmp_path: Path) -> None:
        acme_ca = _ca(tmp_path, "acme")
        with pytest.raises(ConfigError, match="belongs to tenant acme, not 'globex'"):
            _node(tmp_path, acme_ca, tenant="globex")

    def test_missing_ca_names_the_command_that_makes_one(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="continuum certs ca"):
            _node(tmp_path, tmp_path / "no-ca")

    def test_invalid_node_name_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(SpecError, match="invalid node name"):
            _node(tmp_path, _ca(tmp_path), node="cam/1")


def test_parser_accepts_the_documented_command_lines(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    certs.register(parser.add_subparsers())
    args = parser.parse_args(["certs", "ca", "--tenant", "acme", "--out", str(tmp_path)])
    assert args.run is certs.run_ca and args.days == certs.CA_VALIDITY_DAYS
    args = parser.parse_args(
        ["certs", "node", "--tenant", "acme", "--node", "cam-1", "--ca", "c", "--out", "o"]
    )
    assert args.run is certs.run_node and args.node == "cam-1"
