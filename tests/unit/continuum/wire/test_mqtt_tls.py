"""``ClientTls``: a renewed client certificate is loaded again before the next connection; a
half-written renewal keeps the pair loaded before."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from continuum import pki
from continuum.errors import ConfigError
from continuum.wire import mqtt


def _issue(folder: Path, ca: pki.ClientsCa, *, replace: bool = False) -> x509.Certificate:
    """Write a new key and certificate for edge.cam-1@acme into ``folder``."""
    key, pem = pki.make_request("acme", "cam-1")
    cert = pki.sign_request(x509.load_pem_x509_csr(pem), ca, "acme", "cam-1", days=1)
    if replace:
        (folder / "cam-1.key").unlink()
    pki.write_key(key, folder / "cam-1.key")
    pki.write_certificate(cert, folder / "cam-1.crt", replace=replace)
    return cert


@pytest.fixture
def files(tmp_path: Path) -> tuple[pki.ClientsCa, Path]:
    pki.make_ca(tmp_path / "ca", deployment="test")
    ca = pki.load_ca(tmp_path / "ca")
    _issue(tmp_path, ca)
    return ca, tmp_path


def _tls(folder: Path) -> mqtt.ClientTls:
    return mqtt.ClientTls(folder / "ca" / "ca.crt", folder / "cam-1.crt", folder / "cam-1.key")


class TestClientTls:
    def test_unchanged_files_are_not_loaded_again(self, files: tuple[pki.ClientsCa, Path]) -> None:
        tls = _tls(files[1])
        assert not tls.reload_if_changed()

    def test_renewed_files_are_loaded_once(self, files: tuple[pki.ClientsCa, Path]) -> None:
        ca, folder = files
        tls = _tls(folder)
        _issue(folder, ca, replace=True)
        assert tls.reload_if_changed()
        assert not tls.reload_if_changed()

    def test_a_key_without_its_certificate_keeps_the_old_pair_until_the_certificate_comes(
        self, files: tuple[pki.ClientsCa, Path], caplog: pytest.LogCaptureFixture
    ) -> None:
        ca, folder = files
        tls = _tls(folder)
        old_cert = (folder / "cam-1.crt").read_bytes()
        _issue(folder, ca, replace=True)
        new_cert = (folder / "cam-1.crt").read_bytes()
        (folder / "cam-1.crt").write_bytes(old_cert)  # the renewal's key came first
        assert not tls.reload_if_changed()
        assert not tls.reload_if_changed()
        warnings = [r for r in caplog.records if "client certificate" in r.getMessage()]
        assert len(warnings) == 1  # logged once, not at every reconnect
        (folder / "cam-1.crt").write_bytes(new_cert)
        assert tls.reload_if_changed()

    def test_pre_connect_hook_never_raises(self, files: tuple[pki.ClientsCa, Path]) -> None:
        tls = _tls(files[1])
        (files[1] / "cam-1.crt").unlink()
        tls.on_pre_connect(None, None)  # a missing file is logged; the connect goes on

    def test_files_that_do_not_load_at_start_name_the_fix(self, tmp_path: Path) -> None:
        pki.make_ca(tmp_path / "ca", deployment="test")
        with pytest.raises(ConfigError, match="key is the certificate's"):
            _tls(tmp_path)
        with pytest.raises(ConfigError, match="broker's CA"):
            mqtt.ClientTls(tmp_path / "missing.crt", None, None)
        with pytest.raises(ConfigError, match="go together"):
            mqtt.ClientTls(tmp_path / "ca" / "ca.crt", tmp_path / "x.crt", None)

    def test_a_client_with_tls_settings_reloads_before_each_connection(
        self, files: tuple[pki.ClientsCa, Path]
    ) -> None:
        folder = files[1]
        settings = mqtt.BrokerSettings(
            tls_ca=folder / "ca" / "ca.crt",
            tls_cert=folder / "cam-1.crt",
            tls_key=folder / "cam-1.key",
        )
        client = mqtt.make_client("edge.cam-1@acme", settings)
        # paho calls on_pre_connect before each socket it opens; the client's own ClientTls.
        assert isinstance(getattr(client.on_pre_connect, "__self__", None), mqtt.ClientTls)
