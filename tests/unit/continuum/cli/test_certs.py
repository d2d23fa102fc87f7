"""``continuum certs``: one clients CA, requests made on the box, signing that checks the
identity, CRLs; certificates whose chain verifies and whose CN is the broker identity."""

from __future__ import annotations

import argparse
import datetime as dt
import stat
from importlib import metadata
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from continuum import pki
from continuum.cli import certs
from continuum.errors import AccessDeniedError, ConfigError, SpecError


def _ca(tmp_path: Path, deployment: str = "plant-eu") -> Path:
    out = tmp_path / f"ca-{deployment}"
    assert certs.run_ca(argparse.Namespace(deployment=deployment, out=out, days=30)) == 0
    return out


def _request(tmp_path: Path, tenant: str = "acme", node: str = "cam-1") -> Path:
    out = tmp_path / "box"
    assert certs.run_request(argparse.Namespace(tenant=tenant, node=node, out=out)) == 0
    return out / f"{node}.csr"


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _verify_client(leaf: x509.Certificate, ca: x509.Certificate) -> None:
    verifier = PolicyBuilder().store(Store([ca])).build_client_verifier()
    verifier.verify(leaf, [])


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    cn: str,
    *,
    org: str | None = "acme",
    uris: list[str] | None = None,
    dns: list[str] | None = None,
) -> bytes:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org is not None:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris or []]
    names += [x509.DNSName(d) for d in dns or []]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


class TestClientsCa:
    def test_ca_is_self_signed_and_names_the_deployment_not_a_tenant(self, tmp_path: Path) -> None:
        ca = _load(_ca(tmp_path) / "ca.crt")
        ca.verify_directly_issued_by(ca)
        assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "plant-eu"
        assert _cn(ca.subject) == "plant-eu clients CA"
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.key_cert_sign and usage.crl_sign

    def test_ca_key_is_0600(self, tmp_path: Path) -> None:
        assert stat.S_IMODE((_ca(tmp_path) / "ca.key").stat().st_mode) == 0o600

    def test_existing_ca_is_not_overwritten(self, tmp_path: Path) -> None:
        out = _ca(tmp_path)
        before = (out / "ca.key").read_bytes()
        with pytest.raises(ConfigError, match="exists"):
            certs.run_ca(argparse.Namespace(deployment="plant-eu", out=out, days=30))
        assert (out / "ca.key").read_bytes() == before

    def test_invalid_deployment_name_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(SpecError, match="invalid deployment name"):
            certs.run_ca(argparse.Namespace(deployment="Plant/1", out=tmp_path, days=30))

    def test_missing_ca_names_the_command_that_makes_one(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="continuum certs ca --out"):
            pki.load_ca(tmp_path / "no-ca")


class TestRequestOnTheBox:
    def test_request_names_the_nodes_broker_identity_and_its_urn(self, tmp_path: Path) -> None:
        csr = x509.load_pem_x509_csr(_request(tmp_path).read_bytes())
        assert csr.is_signature_valid
        assert _cn(csr.subject) == "edge.cam-1@acme"
        names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
            "urn:continuum:acme:node:cam-1"
        ]

    def test_key_is_0600_and_is_the_requests(self, tmp_path: Path) -> None:
        csr_path = _request(tmp_path)
        key_path = csr_path.with_suffix(".key")
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert key.public_key() == x509.load_pem_x509_csr(csr_path.read_bytes()).public_key()

    def test_existing_key_is_not_overwritten(self, tmp_path: Path) -> None:
        csr_path = _request(tmp_path)
        key = csr_path.with_suffix(".key").read_bytes()
        csr_path.unlink()
        with pytest.raises(ConfigError, match="exists"):
            _request(tmp_path)
        assert csr_path.with_suffix(".key").read_bytes() == key

    def test_invalid_node_name_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(SpecError, match="invalid node name"):
            _request(tmp_path, node="cam/1")


class TestSigningChecksTheIdentity:
    def test_request_of_the_node_is_accepted(self, tmp_path: Path) -> None:
        csr = pki.check_request(_request(tmp_path).read_bytes(), "acme", "cam-1")
        assert _cn(csr.subject) == "edge.cam-1@acme"

    def test_request_claiming_another_tenants_identity_is_refused(self, tmp_path: Path) -> None:
        pem = _request(tmp_path, tenant="medica", node="cam-1").read_bytes()
        with pytest.raises(AccessDeniedError, match=r"not 'edge\.cam-1@acme'"):
            pki.check_request(pem, "acme", "cam-1")

    def test_request_claiming_another_node_is_refused(self, tmp_path: Path) -> None:
        pem = _request(tmp_path, node="cam-2").read_bytes()
        with pytest.raises(AccessDeniedError, match="certs request --tenant acme --node cam-1"):
            pki.check_request(pem, "acme", "cam-1")

    @pytest.mark.parametrize(
        "cn",
        ["cam-1", "acme", "control@acme", "ingest.0@acme", "edge.cam-1@acme.evil"],
        ids=["bare-node", "operator", "control", "ingest", "suffix"],
    )
    def test_request_for_anything_but_the_exact_identity_is_refused(self, cn: str) -> None:
        pem = _csr(ec.generate_private_key(ec.SECP256R1()), cn)
        with pytest.raises(AccessDeniedError):
            pki.check_request(pem, "acme", "cam-1")

    def test_request_with_another_organisation_is_refused(self) -> None:
        pem = _csr(ec.generate_private_key(ec.SECP256R1()), "edge.cam-1@acme", org="medica")
        with pytest.raises(AccessDeniedError):
            pki.check_request(pem, "acme", "cam-1")

    def test_request_with_extra_alternative_names_is_refused(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        for pem in (
            _csr(key, "edge.cam-1@acme", uris=["urn:continuum:medica:node:cam-1"]),
            _csr(key, "edge.cam-1@acme", uris=["urn:continuum:acme:node:cam-1"], dns=["x.io"]),
        ):
            with pytest.raises(AccessDeniedError, match="subjectAltName"):
                pki.check_request(pem, "acme", "cam-1")

    def test_request_with_a_bad_signature_is_refused(self, tmp_path: Path) -> None:
        csr = x509.load_pem_x509_csr(_request(tmp_path).read_bytes())
        der = bytearray(csr.public_bytes(serialization.Encoding.DER))
        der[-3] ^= 0x01  # inside the signature value
        pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
        with pytest.raises(ConfigError, match="signature does not verify"):
            pki.check_request(pem, "acme", "cam-1")

    def test_text_that_is_not_a_request_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="not a certificate request"):
            pki.check_request(b"-----BEGIN NOTHING-----\n", "acme", "cam-1")

    def test_weak_rsa_key_is_refused(self) -> None:
        pem = _csr(rsa.generate_private_key(65537, 1024), "edge.cam-1@acme")
        with pytest.raises(ConfigError, match="RSA of at least 2048"):
            pki.check_request(pem, "acme", "cam-1")


class TestIssuedCertificate:
    def _issue(self, tmp_path: Path, days: int = 10) -> tuple[x509.Certificate, pki.ClientsCa]:
        ca = pki.load_ca(_ca(tmp_path))
        csr = pki.check_request(_request(tmp_path).read_bytes(), "acme", "cam-1")
        return pki.sign_request(csr, ca, "acme", "cam-1", days=days), ca

    def test_chain_verifies_as_a_client_certificate_with_the_identity_as_cn(
        self, tmp_path: Path
    ) -> None:
        leaf, ca = self._issue(tmp_path)
        leaf.verify_directly_issued_by(ca.cert)
        _verify_client(leaf, ca.cert)
        assert _cn(leaf.subject) == "edge.cam-1@acme"
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    def test_validity_is_bounded_and_never_outlives_the_ca(self, tmp_path: Path) -> None:
        leaf, _ = self._issue(tmp_path)
        now = dt.datetime.now(dt.timezone.utc)
        assert leaf.not_valid_before_utc <= now
        assert now + dt.timedelta(days=9) < leaf.not_valid_after_utc
        assert leaf.not_valid_after_utc <= now + dt.timedelta(days=10, minutes=1)
        long, ca = self._issue(tmp_path / "long", days=3650)  # the CA lives 30 days
        assert long.not_valid_after_utc == ca.cert.not_valid_after_utc

    def test_another_cas_certificate_does_not_verify(self, tmp_path: Path) -> None:
        leaf, _ = self._issue(tmp_path)
        other = _load(_ca(tmp_path, "elsewhere") / "ca.crt")
        with pytest.raises(VerificationError):
            _verify_client(leaf, other)


class TestCrl:
    def test_crl_lists_the_serials_and_is_signed_by_the_ca(self, tmp_path: Path) -> None:
        ca = pki.load_ca(_ca(tmp_path))
        crl = x509.load_pem_x509_crl(pki.make_crl(ca, ["1f", "A0", "1f"], days=2))
        assert crl.is_signature_valid(ca.key.public_key())
        assert crl.issuer == ca.cert.subject
        assert sorted(r.serial_number for r in crl) == [0x1F, 0xA0]
        assert crl.next_update_utc is not None
        assert crl.next_update_utc <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)

    def test_empty_crl_is_valid(self, tmp_path: Path) -> None:
        ca = pki.load_ca(_ca(tmp_path))
        crl = x509.load_pem_x509_crl(pki.make_crl(ca, []))
        assert crl.is_signature_valid(ca.key.public_key()) and len(crl) == 0

    def test_serial_that_is_not_hex_is_refused(self, tmp_path: Path) -> None:
        ca = pki.load_ca(_ca(tmp_path))
        with pytest.raises(ConfigError, match="not hex"):
            pki.make_crl(ca, ["xyz"])


def test_parser_accepts_the_documented_command_lines(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    certs.register(parser.add_subparsers())
    args = parser.parse_args(["certs", "ca", "--out", str(tmp_path)])
    assert args.run is certs.run_ca and args.days == pki.CA_VALIDITY_DAYS
    assert args.deployment == "continuum"
    args = parser.parse_args(["certs", "request", "--tenant", "acme", "--node", "n", "--out", "o"])
    assert args.run is certs.run_request


class TestSidesAddActions:
    def _parser(self, monkeypatch: pytest.MonkeyPatch, target: str) -> argparse.ArgumentParser:
        entry = metadata.EntryPoint(name="registry", value=target, group=certs.ACTIONS_GROUP)
        monkeypatch.setattr(
            metadata,
            "entry_points",
            lambda group: [entry] if group == certs.ACTIONS_GROUP else [],
        )
        parser = argparse.ArgumentParser()
        certs.register(parser.add_subparsers())
        return parser

    def test_a_sides_actions_join_certs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        parser = self._parser(monkeypatch, f"{__name__}:_register_extra")
        args = parser.parse_args(["certs", "extra"])
        assert args.run(args) == 7

    def test_a_side_not_installed_is_named_and_the_core_actions_remain(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        parser = self._parser(monkeypatch, "no_such_side.cli.certs:register")
        with pytest.raises(SystemExit):
            parser.parse_args(["certs", "--help"])
        out = capsys.readouterr().out
        assert "request" in out and "ca" in out
        assert "the actions of no_such_side.cli.certs:register" in out


def _register_extra(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    actions.add_parser("extra").set_defaults(run=lambda args: 7)
