"""AgentSettings: YAML plus CONTINUUM_EDGE_* overrides, relative paths, one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from continuum.errors import ConfigError
from edge_agent.config import AgentSettings
from tests.edge_agent_kit import AgentRig, pattern_source, write_pipeline


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

    def test_a_variable_that_is_not_json_is_named_with_the_form_it_takes(
        self, tmp_path: Path, valid: dict[str, object], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CONTINUUM_EDGE_LABELS", "notjson")
        with pytest.raises(ConfigError, match=r"CONTINUUM_EDGE_LABELS cannot be parsed.*JSON"):
            AgentSettings.load(_write(tmp_path, valid))

    def test_a_misspelt_variable_is_refused_as_a_misspelt_key_is(
        self, tmp_path: Path, valid: dict[str, object], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CONTINUUM_EDGE_METRIC_PORT", "9109")
        monkeypatch.setenv("CONTINUUM_EDGE_BROKER__PORT", "1884")  # a real one: accepted
        with pytest.raises(ConfigError, match=r"unknown variable.*CONTINUUM_EDGE_METRIC_PORT"):
            AgentSettings.load(_write(tmp_path, valid))
        monkeypatch.delenv("CONTINUUM_EDGE_METRIC_PORT")
        assert AgentSettings.load(_write(tmp_path, valid)).broker.port == 1884

    def test_a_key_path_that_is_a_folder_says_so(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        with pytest.raises(ConfigError, match="is a directory, not a file"):
            AgentSettings.load(_write(tmp_path, {**valid, "trusted_public_key": str(tmp_path)}))


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


class TestTheNodeConnectsAsItself:
    def test_a_username_other_than_the_nodes_identity_is_refused_naming_both_and_the_fix(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        data = {**valid, "broker": {"username": "acme", "password": "secret"}}
        with pytest.raises(ConfigError) as caught:
            AgentSettings.load(_write(tmp_path, data))
        message = str(caught.value)
        assert "'acme'" in message and "'edge.edge-1@acme'" in message
        assert "continuum node enroll acme edge-1" in message
        assert "secret" not in message

    def test_another_nodes_identity_is_refused(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        data = {**valid, "broker": {"username": "edge.edge-2@acme", "password": "x"}}
        with pytest.raises(ConfigError, match=r"'edge\.edge-2@acme'"):
            AgentSettings.load(_write(tmp_path, data))

    def test_the_nodes_identity_is_its_client_id(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        data = {**valid, "broker": {"username": "edge.edge-1@acme", "password": "x"}}
        assert AgentSettings.load(_write(tmp_path, data)).client_id() == "edge.edge-1@acme"

    def test_without_a_username_the_client_id_stays_the_stable_one(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        assert AgentSettings.load(_write(tmp_path, valid)).client_id() == "ctm-edge-acme-edge-1"


class TestOutboxShares:
    @staticmethod
    def _with_shares(valid: dict[str, object], *shares: float | None) -> dict[str, object]:
        pipelines = []
        for share in shares:
            entry: dict[str, object] = {"spec": "specs/p.yaml", "source": {"ref": "m.cam:Camera"}}
            if share is not None:
                entry["outbox_share"] = share
            pipelines.append(entry)
        return {**valid, "pipelines": pipelines, "outbox_max_bytes": 1_000_000}

    def test_without_shares_the_outbox_is_split_evenly(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        data = self._with_shares(valid, None, None, None)
        settings = AgentSettings.load(_write(tmp_path, data))
        assert settings.outbox_partition_bytes() == [333_333] * 3

    def test_a_declared_share_is_kept_and_the_rest_split_among_the_others(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        settings = AgentSettings.load(_write(tmp_path, self._with_shares(valid, None, 0.7, None)))
        assert settings.pipelines[1].outbox_share == 0.7
        assert settings.outbox_partition_bytes() == [150_000, 700_000, 150_000]

    def test_shares_that_add_up_to_one_within_rounding_are_accepted(
        self, tmp_path: Path, valid: dict[str, object]
    ) -> None:
        data = self._with_shares(valid, 0.1, 0.2, 0.7)  # 1.0000000000000002 in floats
        settings = AgentSettings.load(_write(tmp_path, data))
        assert sum(settings.outbox_partition_bytes()) <= 1_000_000

    @pytest.mark.parametrize(
        ("shares", "words"),
        [
            (
                (0.7, 0.5),
                "pipelines: the outbox_share values sum to 1.2 (pipelines.0: 0.7, "
                "pipelines.1: 0.5); they are fractions of outbox_max_bytes and must not sum "
                "above 1",
            ),
            (
                (0.6, 0.4, None),
                "pipelines: the outbox_share values sum to 1, leaving no outbox "
                "room for pipelines.2",
            ),
            ((0.0, None), "pipelines.0.outbox_share: Input should be greater than 0"),
            ((1.5,), "pipelines.0.outbox_share: Input should be less than or equal to 1"),
            ((0.0005, None), "outbox partitions below 1024 bytes (pipelines.0: 500)"),
        ],
    )
    def test_bad_shares_are_refused_with_one_clear_line(
        self,
        tmp_path: Path,
        valid: dict[str, object],
        shares: tuple[float | None, ...],
        words: str,
    ) -> None:
        with pytest.raises(ConfigError) as caught:
            AgentSettings.load(_write(tmp_path, self._with_shares(valid, *shares)))
        lines = str(caught.value).splitlines()
        assert "1 problem(s)" in lines[0] and len(lines) == 2
        assert words in lines[1]

    def test_the_agent_gives_each_pipeline_its_partition(self, tmp_path: Path) -> None:
        rig = AgentRig(tmp_path)
        count = write_pipeline(tmp_path, name="count")
        source = pattern_source([0.0])
        agent = rig.agent(
            source=source,
            outbox_max_bytes=1_000_000,
            pipelines=[
                {"spec": str(rig.spec), "source": source, "outbox_share": 0.25},
                {"spec": str(count), "source": source},
            ],
        )
        try:
            partitions = agent.outbox.stats().pipelines
        finally:
            agent.stop()
        assert {name: p.max_bytes for name, p in partitions.items()} == {
            "inspect": 250_000,
            "count": 750_000,
        }
