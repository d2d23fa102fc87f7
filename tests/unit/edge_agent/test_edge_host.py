"""A shared box: configs that cannot share a process are refused, and tenants' metrics merge."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from continuum.errors import ConfigError, NotReadyError
from continuum.signing import generate_keypair
from edge_agent.cli import main
from edge_agent.host import AgentHost, load_configs
from edge_agent.metrics import AgentMetrics, TenantMetrics
from tests.edge_agent_kit import agent_config, pattern_source, write_key, write_pipeline
from tests.tools import assert_promtool_accepts_metrics


def tenant_config(
    root: Path,
    tenant: str,
    *,
    folder_name: str | None = None,
    spec_tenant: str | None = None,
    **settings: Any,
) -> Path:
    """Write one tenant's config, pipeline and key under ``root/tenant``; return the file."""
    folder = root / (folder_name or tenant)
    folder.mkdir()
    return agent_config(
        folder,
        spec=write_pipeline(folder, tenant=spec_tenant or tenant),
        key=write_key(folder, generate_keypair()[1]),
        source=pattern_source([0.0]),
        tenant=tenant,
        **settings,
    )


class TestConfigsThatCannotShareAProcess:
    @pytest.mark.parametrize("command", ["run", "check"])
    def test_the_same_tenant_twice_exits_2_naming_both_files(
        self, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        first = tenant_config(tmp_path, "acme")
        second = tenant_config(tmp_path, "acme", folder_name="acme-2")
        assert main([command, "--config", str(first), "--config", str(second)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            "edge-agent: the edge agent configs cannot share one process:",
            f"  tenant 'acme' is configured more than once ({first}, {second}); one process "
            "runs one agent per tenant",
        ]

    def test_the_same_state_dir_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        shared = tmp_path / "state"
        acme = tenant_config(tmp_path, "acme", state_dir=str(shared))
        medica = tenant_config(tmp_path, "medica", state_dir=str(shared))
        assert main(["run", "--config", str(acme), "--config", str(medica)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2
        assert f"use the same state_dir {shared}; each tenant needs its own" in err[1]

    def test_a_state_dir_inside_another_is_refused(self, tmp_path: Path) -> None:
        acme = tenant_config(tmp_path, "acme", state_dir=str(tmp_path / "state"))
        medica = tenant_config(tmp_path, "medica", state_dir=str(tmp_path / "state" / "medica"))
        with pytest.raises(ConfigError) as caught:
            load_configs([acme, medica])
        lines = str(caught.value).splitlines()
        assert len(lines) == 2
        assert f"state_dir {tmp_path / 'state' / 'medica'} is inside state_dir" in lines[1]

    def test_a_tenant_logging_in_as_another_identity_than_its_node_is_refused(
        self, tmp_path: Path
    ) -> None:
        broker = {"host": "127.0.0.1", "port": 1883, "username": "edge", "password": "x"}
        acme = tenant_config(tmp_path, "acme", broker=broker)
        medica = tenant_config(tmp_path, "medica")
        with pytest.raises(ConfigError, match=r"connects as its own identity 'edge\.edge-1@acme'"):
            load_configs([acme, medica])

    def test_a_shared_metrics_port_on_two_addresses_is_refused(self, tmp_path: Path) -> None:
        acme = tenant_config(tmp_path, "acme", metrics_port=9711, metrics_host="127.0.0.1")
        medica = tenant_config(tmp_path, "medica", metrics_port=9711, metrics_host="0.0.0.0")
        with pytest.raises(ConfigError, match="share metrics_port 9711 on different metrics_host"):
            load_configs([acme, medica])

    def test_every_problem_of_every_file_is_listed(self, tmp_path: Path) -> None:
        acme = tenant_config(tmp_path, "acme")
        broken = tmp_path / "broken.yaml"
        broken.write_text("node_id: Edge_1\n", encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            load_configs([acme, broken, tmp_path / "absent.yaml"])
        message = str(caught.value)
        assert f"invalid edge agent config ({broken})" in message and "node_id:" in message
        assert "cannot read edge agent config" in message

    def test_node_ids_may_repeat_across_tenants(self, tmp_path: Path) -> None:
        acme = tenant_config(tmp_path, "acme", node="edge-1")
        medica = tenant_config(tmp_path, "medica", node="edge-1")
        assert [s.tenant for s in load_configs([acme, medica])] == ["acme", "medica"]

    def test_environment_overrides_are_called_out_as_applying_to_every_tenant(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        monkeypatch.setenv("CONTINUUM_EDGE_TELEMETRY_INTERVAL_S", "5")
        paths = [tenant_config(tmp_path, t) for t in ("acme", "medica")]
        with caplog.at_level(logging.WARNING, logger="edge_agent.host"):
            settings = load_configs(paths)
        assert [s.telemetry_interval_s for s in settings] == [5.0, 5.0]
        [record] = caplog.records
        assert "CONTINUUM_EDGE_TELEMETRY_INTERVAL_S apply to every config" in record.getMessage()
        assert "(acme, medica)" in record.getMessage()

    def test_an_agent_that_cannot_be_built_names_its_tenant_and_exits_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        acme = tenant_config(tmp_path, "acme")
        medica = tenant_config(tmp_path, "medica", spec_tenant="acme")  # acme's pipeline
        assert main(["run", "--config", str(acme), "--config", str(medica)]) == 2
        err = capsys.readouterr().err
        assert "edge-agent: tenant 'medica': the pipelines cannot run on this node" in err
        assert "belongs to tenant 'acme', this node to 'medica'" in err

    def test_a_host_stopped_before_it_started_closes_every_agent_it_built(
        self, tmp_path: Path
    ) -> None:
        settings = load_configs([tenant_config(tmp_path, t) for t in ("acme", "medica")])
        host = AgentHost(settings)
        built = host.agents
        host.stop()
        for agent in built.values():
            assert agent is not None
            with pytest.raises(NotReadyError, match="is closed"):
                agent.outbox.stats()

    def test_the_host_refuses_the_same_tenant_twice_too(self, tmp_path: Path) -> None:
        settings = load_configs([tenant_config(tmp_path, "acme")])
        with pytest.raises(ConfigError, match="tenant 'acme' is configured more than once"):
            AgentHost([settings[0], settings[0]])


def _metrics(frames: int, rejected: int) -> AgentMetrics:
    metrics = AgentMetrics()
    metrics.frames.labels("inspect").inc(frames)
    metrics.frames_rejected.labels("inspect", "bad_input").inc(rejected)
    metrics.inference_latency.labels("inspect").observe(0.002)
    metrics.model.labels("inspect").info({"model": "inspector", "version": "v1", "sha256": "ab"})
    metrics.outbox_bytes.labels("inspect").set(352)
    metrics.connected.set(1)
    return metrics


class TestMergedMetrics:
    def render(self, *agents: tuple[str, AgentMetrics]) -> str:
        registry = CollectorRegistry()
        registry.register(TenantMetrics(lambda: [(t, m.registry) for t, m in agents]))
        return generate_latest(registry).decode()

    def test_every_sample_carries_its_tenant(self) -> None:
        text = self.render(("acme", _metrics(5, 1)), ("medica", _metrics(7, 0)))
        assert 'continuum_edge_frames_total{pipeline="inspect",tenant="acme"} 5.0' in text
        assert 'continuum_edge_frames_total{pipeline="inspect",tenant="medica"} 7.0' in text
        assert 'continuum_edge_broker_connected{tenant="medica"} 1.0' in text
        assert 'continuum_edge_model_info{model="inspector",pipeline="inspect",' in text
        assert 'le="0.0025",pipeline="inspect",tenant="acme"} 1.0' in text

    def test_each_family_is_described_once(self) -> None:
        text = self.render(("acme", _metrics(5, 1)), ("medica", _metrics(7, 0)))
        help_lines = [line for line in text.splitlines() if line.startswith("# HELP ")]
        type_lines = [line for line in text.splitlines() if line.startswith("# TYPE ")]
        assert len(help_lines) == len(set(help_lines)) == len(type_lines) == len(set(type_lines))
        assert text.count("# TYPE continuum_edge_frames_total counter") == 1

    def test_an_agent_that_is_not_running_shows_nothing(self) -> None:
        text = self.render(("acme", _metrics(5, 1)))
        assert 'tenant="medica"' not in text and 'tenant="acme"' in text

    def test_the_merged_text_passes_promtool(self) -> None:
        text = self.render(("acme", _metrics(5, 1)), ("medica", _metrics(7, 0)))
        assert_promtool_accepts_metrics(text)
