"""CloudSettings: the cloud head's one source of configuration (keywords, CONTINUUM_CLOUD_*)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from cloud_head.paths import REGISTRY_URL_ENV, HeadPaths
from cloud_head.settings import CloudSettings, ControllerSettings, registry_url_from_env
from continuum.errors import ConfigError


class TestFromTheEnvironment:
    def test_variables_with_the_prefix_set_fields_and_nested_sections(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CONTINUUM_CLOUD_TENANT", "acme")
        monkeypatch.setenv("CONTINUUM_CLOUD_ROOT", "/srv/continuum")
        monkeypatch.setenv("CONTINUUM_CLOUD_BROKER__PORT", "8883")
        monkeypatch.setenv("CONTINUUM_CLOUD_CONTROLLER__TICK_INTERVAL_S", "0.5")
        monkeypatch.setenv("CONTINUUM_CLOUD_STORE_LABELS", '{"continuum.io/jurisdiction": "LU"}')

        settings = CloudSettings.load()

        assert (settings.tenant, settings.root) == ("acme", Path("/srv/continuum"))
        assert settings.broker.port == 8883
        assert settings.controller.tick_interval_s == 0.5
        assert settings.store_labels == {"continuum.io/jurisdiction": "LU"}

    def test_keywords_win_over_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CONTINUUM_CLOUD_TENANT", "acme")
        assert CloudSettings.load(tenant="lab").tenant == "lab"

    def test_tenant_and_root_have_no_default_and_say_how_to_give_them(self) -> None:
        settings = CloudSettings.load()
        assert (settings.tenant, settings.root) == (None, None)
        with pytest.raises(ConfigError, match="--tenant NAME or set CONTINUUM_CLOUD_TENANT"):
            settings.require_tenant()
        with pytest.raises(ConfigError, match="--root DIR or set CONTINUUM_CLOUD_ROOT"):
            settings.require_root()

    def test_every_problem_is_named_with_its_variable(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CONTINUUM_CLOUD_INGEST_REPLICAS", "0")
        with pytest.raises(ConfigError) as error:
            CloudSettings.load(tenant="no/slash", controler={})
        text = str(error.value)
        assert "3 problem(s)" in text
        assert "ingest_replicas (CONTINUUM_CLOUD_INGEST_REPLICAS)" in text
        assert "tenant (CONTINUUM_CLOUD_TENANT)" in text
        assert "controler (CONTINUUM_CLOUD_CONTROLER): unknown setting" in text

    def test_every_field_has_a_description(self) -> None:
        for model in (CloudSettings, ControllerSettings):
            for name, info in model.model_fields.items():
                assert info.description, f"{model.__name__}.{name} has no description"


class TestRegistryUrl:
    def test_the_older_variable_is_still_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        url = "postgresql://continuum@db:5432/models"
        monkeypatch.setenv(REGISTRY_URL_ENV, url)
        assert CloudSettings.load().registry_url == url
        assert registry_url_from_env() == url
        assert HeadPaths(Path("/state")).registry_url == url

    def test_the_cloud_variable_wins_and_an_empty_one_is_unset(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(REGISTRY_URL_ENV, "postgresql://old@db:5432/models")
        monkeypatch.setenv("CONTINUUM_CLOUD_REGISTRY_URL", "sqlite:///srv/models.sqlite3")
        assert CloudSettings.load().registry_url == "sqlite:///srv/models.sqlite3"
        monkeypatch.setenv("CONTINUUM_CLOUD_REGISTRY_URL", "")
        monkeypatch.delenv(REGISTRY_URL_ENV)
        assert CloudSettings.load().registry_url is None
        assert registry_url_from_env() is None

    def test_a_variable_without_the_prefix_is_not_read(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("REGISTRY_URL", "sqlite:///elsewhere.sqlite3")
        assert CloudSettings.load().registry_url is None
        assert registry_url_from_env() is None

    def test_a_bad_url_is_refused_naming_both_variables(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(REGISTRY_URL_ENV, "mongodb://db/models")
        with pytest.raises(ConfigError, match="CONTINUUM_CLOUD_REGISTRY_URL or "):
            CloudSettings.load()

    def test_the_paths_carry_the_settings_url_and_hide_it(self) -> None:
        settings = CloudSettings.load(
            root=Path("/state"), registry_url="postgresql://u:s3cret@db:5432/models"
        )
        paths = settings.paths()
        assert paths == HeadPaths(Path("/state"), "postgresql://u:s3cret@db:5432/models")
        assert "s3cret" not in repr(settings) and "s3cret" not in repr(paths)


class TestCrossingRay:
    def test_settings_pickle_with_the_values_the_driver_read(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CONTINUUM_CLOUD_TENANT", "acme")
        settings = CloudSettings.load(root=Path("/state"))
        monkeypatch.setenv("CONTINUUM_CLOUD_TENANT", "other")  # an actor's own environment
        assert pickle.loads(pickle.dumps(settings)) == settings


class TestSigningKey:
    def test_the_key_is_read_from_its_file(self, tmp_path: Path) -> None:
        key = tmp_path / "acme.key"
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
        assert CloudSettings.load(signing_key_file=key).signing_key() == key.read_bytes()

    def test_a_missing_key_names_the_variable(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="CONTINUUM_CLOUD_SIGNING_KEY_FILE"):
            CloudSettings.load().signing_key()
        with pytest.raises(ConfigError, match="No such file"):
            CloudSettings.load(signing_key_file=tmp_path / "none.key").signing_key()


class TestServiceIdentities:
    """Each cloud service connects as its own identity with the registry's password."""

    @pytest.fixture
    def registry(self, tmp_path: Path) -> tuple[Path, Any]:
        from cloud_head.tenants import TenantRegistry

        root = tmp_path / "tenants"
        record = TenantRegistry(root).create("acme")
        return root, record.credentials

    def test_the_fleet_connects_as_control_and_keeps_the_brokers_address(
        self, registry: tuple[Path, Any]
    ) -> None:
        root, credentials = registry
        settings = CloudSettings.load(
            tenant="acme", tenants_root=root, broker={"host": "broker.lan", "port": 8883}
        )
        broker, client_id = settings.service_broker("control")
        assert (broker.host, broker.port) == ("broker.lan", 8883)
        assert broker.username == client_id == "control@acme"
        assert broker.password == credentials.control_password

    def test_each_ingest_replica_connects_as_its_own_identity(
        self, registry: tuple[Path, Any]
    ) -> None:
        root, credentials = registry
        settings = CloudSettings.load(tenant="acme", tenants_root=root)
        broker, client_id = settings.service_broker("ingest", 3)
        assert broker.username == client_id == "ingest.3@acme"
        assert broker.password == credentials.ingest_password

    def test_without_a_registry_the_broker_settings_stay_as_given(self) -> None:
        settings = CloudSettings.load(tenant="acme", broker={"username": "dev", "password": "x"})
        broker, client_id = settings.service_broker("ingest", 1)
        assert broker == settings.broker
        assert client_id == "ingest.1@acme"

    def test_a_missing_password_file_names_the_file_and_the_fix(
        self, registry: tuple[Path, Any]
    ) -> None:
        from cloud_head.tenants import service_credentials_dir

        root, _ = registry
        missing = service_credentials_dir(root, "acme") / "control.password"
        missing.unlink()
        settings = CloudSettings.load(tenant="acme", tenants_root=root)
        with pytest.raises(ConfigError) as caught:
            settings.service_broker("control")
        assert str(missing) in str(caught.value)
        assert "continuum tenant rotate acme" in str(caught.value)


class TestServiceCertificates:
    """Where `continuum certs service` issued them, a service connects with its certificate."""

    @pytest.fixture
    def folder(self, tmp_path: Path) -> Path:
        from cloud_head.tenants import TenantRegistry, service_credentials_dir
        from continuum import pki

        root = tmp_path / "tenants"
        TenantRegistry(root).create("acme")
        folder = service_credentials_dir(root, "acme")
        pki.make_ca(tmp_path / "ca", deployment="test")
        ca = pki.load_ca(tmp_path / "ca")
        for stem, identity in (("control", "control@acme"), ("ingest.2", "ingest.2@acme")):
            key, cert = pki.sign_service(ca, identity)
            pki.write_key(key, folder / f"{stem}.key")
            pki.write_certificate(cert, folder / f"{stem}.crt", replace=False)
        return folder

    def _settings(self, folder: Path, **broker: Any) -> CloudSettings:
        return CloudSettings.load(
            tenant="acme",
            tenants_root=folder.parent.parent,
            broker={"host": "broker.lan", "port": 8883, "tls_ca": "/etc/ca.crt", **broker},
        )

    def test_control_uses_its_certificate_not_a_password(self, folder: Path) -> None:
        broker, client_id = self._settings(folder).service_broker("control")
        assert client_id == broker.username == "control@acme"
        assert (broker.tls_cert, broker.tls_key) == (folder / "control.crt", folder / "control.key")
        assert broker.password is None
        assert (broker.host, broker.port, broker.tls_ca) == (
            "broker.lan",
            8883,
            Path("/etc/ca.crt"),
        )

    def test_an_ingest_replica_keeps_the_secret_that_names_its_share_group(
        self, folder: Path
    ) -> None:
        broker, client_id = self._settings(folder).service_broker("ingest", 2)
        assert client_id == "ingest.2@acme"
        assert broker.tls_cert == folder / "ingest.2.crt"
        assert broker.password == (folder / "ingest.password").read_text().strip()

    def test_a_replica_without_a_certificate_keeps_its_password(self, folder: Path) -> None:
        broker, _ = self._settings(folder).service_broker("ingest", 5)
        assert broker.tls_cert is None and broker.tls_key is None
        assert broker.password == (folder / "ingest.password").read_text().strip()

    @pytest.mark.parametrize("gone", ["control.key", "control.crt"])
    def test_half_a_pair_names_both_files_and_the_fix(self, folder: Path, gone: str) -> None:
        (folder / gone).unlink()
        with pytest.raises(ConfigError) as caught:
            self._settings(folder).service_broker("control")
        message = str(caught.value)
        assert str(folder / "control.crt") in message and str(folder / "control.key") in message
        assert "continuum certs service --tenant acme" in message

    def test_a_certificate_on_a_broker_without_tls_says_to_set_its_ca(self, folder: Path) -> None:
        with pytest.raises(ConfigError, match="BROKER__TLS_CA"):
            self._settings(folder, tls_ca=None).service_broker("control")


class TestSealInterval:
    def test_the_signer_seals_every_second_by_default(self) -> None:
        assert CloudSettings.load().seal_interval_s == 1.0

    @pytest.mark.parametrize("interval", [0, -1, 0.01, 7200])
    def test_an_interval_out_of_bounds_is_refused_naming_its_variable(
        self, interval: float
    ) -> None:
        with pytest.raises(ConfigError, match="CONTINUUM_CLOUD_SEAL_INTERVAL_S"):
            CloudSettings.load(seal_interval_s=interval)
