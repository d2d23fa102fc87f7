"""AgentSettings: YAML plus CONTINUUM_EDGE_* overrides, relative paths, one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from continuum.errors import ConfigError
from edge_agent.config import AgentSettings


def _write(folder: Path, data: object) -> Path:
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def valid(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "p.yaml").write_text("name: p\n", encoding="utf-8")
    (tmp_path / "key.pem").write_text("not checked here\n", encoding="utf-8")
    return {
        "node_id": "edge-1",
        "tenant": "acme",
        "labels": {"continuum.io/tier": "edge"},
        "broker": {"host": "broker.local", "port": 8883},
        "state_dir": "state",
        "trusted_public_key": "key.pem",
        "pipelines": [{"spec": "specs/p.yaml", "source": {"ref": "m.cam:Camera", "args": {}}}],
    }


class TestLoadingAValidFile:
    def test_relative_paths_are_taken_from_the_files_folder(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        settings = AgentSettings.load(_write(tmp_path, valid))
        assert settings.state_dir == tmp_path / "state"
        assert settings.trusted_public_key == tmp_path / "key.pem"
        assert settings.pipelines[0].spec == tmp_path / "specs" / "p.yaml"
        assert settings.pipelines[0].source.ref == "m.cam:Camera"

    def test_defaults_are_bounded_and_sensible(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        settings = AgentSettings.load(_write(tmp_path, valid))
        assert settings.metrics_port == 0
        assert settings.outbox_full_policy == "drop_oldest"
        assert settings.broker.port == 8883
        assert settings.broker.keepalive_s == 30
        assert settings.keep_versions >= 1

    def test_environment_overrides_one_nested_field_and_keeps_the_rest(
        self, tmp_path: Path, valid: dict[str, object], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CONTINUUM_EDGE_BROKER__PORT", "1884")
        monkeypatch.setenv("CONTINUUM_EDGE_METRICS_PORT", "9109")
        settings = AgentSettings.load(_write(tmp_path, valid))
        assert settings.broker.port == 1884
        assert settings.broker.host == "broker.local"
        assert settings.metrics_port == 9109

    def test_a_bad_environment_value_is_a_config_error(
        self, tmp_path: Path, valid: dict[str, object], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CONTINUUM_EDGE_MAX_INFLIGHT", "lots")
        with pytest.raises(ConfigError, match="max_inflight"):
            AgentSettings.load(_write(tmp_path, valid))


class TestInvalidConfig:
    def test_lists_one_line_per_problem(self, tmp_path: Path, valid: dict[str, object]) -> None:
        data = dict(valid)
        del data["node_id"]
        data["broker"] = {"port": 70000}
        data["outbox_full_policy"] = "panic"
        data["colour"] = "blue"
        with pytest.raises(ConfigError) as caught:
            AgentSettings.load(_write(tmp_path, data))
        lines = str(caught.value).splitlines()
        assert "4 problem(s)" in lines[0]
        body = "\n".join(lines[1:])
        assert "node_id: required setting is missing" in body
        assert "CONTINUUM_EDGE_NODE_ID" in body
        assert "broker.port:" in body and "70000" in body
        assert "outbox_full_policy:" in body
        assert "colour: unknown setting" in body
        assert len(lines) == 5

    def test_names_must_be_topic_levels(self, tmp_path: Path, valid: dict[str, object]) -> None:
        with pytest.raises(ConfigError, match="node_id: invalid node name 'Edge/1'"):
            AgentSettings.load(_write(tmp_path, {**valid, "node_id": "Edge/1"}))

    def test_label_keys_need_a_domain(self, tmp_path: Path, valid: dict[str, object]) -> None:
        with pytest.raises(ConfigError, match=r"continuum\.io/tier"):
            AgentSettings.load(_write(tmp_path, {**valid, "labels": {"tier": "edge"}}))

    def test_missing_files_are_named(self, tmp_path: Path, valid: dict[str, object]) -> None:
        data = {**valid, "trusted_public_key": "nope.pem"}
        data["pipelines"] = [{"spec": "missing.py", "source": {"ref": "m:C"}}]
        with pytest.raises(ConfigError) as caught:
            AgentSettings.load(_write(tmp_path, data))
        assert "nope.pem" in str(caught.value)
        assert "missing.py" in str(caught.value)

    def test_a_source_ref_must_be_module_colon_name(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        data = {**valid, "pipelines": [{"spec": "specs/p.yaml", "source": {"ref": "m.Camera"}}]}
        with pytest.raises(ConfigError, match=r"pipelines\.0\.source\.ref"):
            AgentSettings.load(_write(tmp_path, data))

    def test_tls_certificate_without_key_is_refused(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        (tmp_path / "ca.pem").write_text("x", encoding="utf-8")
        (tmp_path / "cert.pem").write_text("x", encoding="utf-8")
        data = {**valid, "broker": {"tls_ca": "ca.pem", "tls_cert": "cert.pem"}}
        with pytest.raises(ConfigError, match="tls_cert and tls_key"):
            AgentSettings.load(_write(tmp_path, data))

    def test_a_password_never_shows_in_the_error(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        data = {**valid, "broker": {"password": "hunter2-secret"}}
        with pytest.raises(ConfigError) as caught:
            AgentSettings.load(_write(tmp_path, data))
        assert "hunter2-secret" not in str(caught.value)

    def test_a_file_that_is_not_yaml_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "agent.yaml"
        path.write_text("node_id: [unclosed\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="not valid YAML"):
            AgentSettings.load(path)

    def test_a_file_that_is_a_list_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="must be a mapping"):
            AgentSettings.load(_write(tmp_path, ["node_id"]))

    def test_a_missing_file_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            AgentSettings.load(tmp_path / "absent.yaml")
