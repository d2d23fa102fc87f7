"""Device health on the agent's ``/metrics``: process, host, GPU and build-info series.

A real agent on the session's mosquitto is scraped over HTTP and promtool judges the text;
the sysfs readers are pointed at fixture trees laid out as Linux and a Jetson lay them out,
since this machine has no thermal zone and no GPU.
"""

from __future__ import annotations

import importlib.util
import urllib.request
from importlib import metadata
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from continuum.embedded import EmbeddedBroker
from continuum.embedded._process import free_port
from edge_agent._health import HealthCollector, build_versions
from tests.edge_agent_kit import AgentRig, pattern_source, wait_for
from tests.tools import assert_promtool_accepts_metrics


def _render(collector: HealthCollector) -> str:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    return generate_latest(registry).decode()


class TestARunningAgentsMetrics:
    def test_process_host_and_build_series_are_served_and_pass_promtool(
        self, tmp_path: Path, mqtt_broker: EmbeddedBroker
    ) -> None:
        rig = AgentRig(tmp_path, host=mqtt_broker.host, port=mqtt_broker.port, node="health-1")
        port = free_port()
        agent = rig.agent(
            source=pattern_source([0.0], fps=50.0),
            metrics_port=port,
            metrics_host="127.0.0.1",
            confirm_stored=False,
        )
        agent.start()
        try:

            def scrape() -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return str(r.read().decode())

            text = wait_for(
                lambda: t if "continuum_edge_broker_connected 1.0" in (t := scrape()) else None
            )
        finally:
            rig.stop_agents()
        for series in (
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
            'continuum_edge_host_load_average{period="1m"} ',
            'continuum_edge_host_load_average{period="15m"} ',
            "continuum_edge_host_memory_total_bytes ",
            "continuum_edge_host_memory_available_bytes ",
        ):
            assert f"\n{series}" in text, series
        version = metadata.version("continuum")
        assert f'version="{version}"' in text
        assert "# TYPE continuum_edge_gpu_utilization_ratio gauge" in text
        assert_promtool_accepts_metrics(text)


class TestHostReadings:
    def test_thermal_zones_are_labelled_by_zone_and_type_and_broken_ones_skipped(
        self, tmp_path: Path
    ) -> None:
        for name, kind, temp in (
            ("thermal_zone0", "CPU-therm", "45500"),
            ("thermal_zone1", "GPU-therm", "43000"),
            ("thermal_zone2", "PMIC-Die", ""),  # a sensor that is off reads nothing
        ):
            (tmp_path / name).mkdir()
            (tmp_path / name / "type").write_text(kind + "\n")
            (tmp_path / name / "temp").write_text(temp + "\n")
        text = _render(HealthCollector(thermal_root=tmp_path, gpu_load_files=()))
        assert (
            'continuum_edge_host_temperature_celsius{type="CPU-therm",zone="thermal_zone0"} 45.5'
            in text
        )
        assert 'type="GPU-therm",zone="thermal_zone1"} 43.0' in text
        assert "PMIC-Die" not in text
        assert_promtool_accepts_metrics(text)

    def test_meminfo_kib_become_bytes(self, tmp_path: Path) -> None:
        meminfo = tmp_path / "meminfo"
        meminfo.write_text("MemTotal:        8000 kB\nMemFree: 1 kB\nMemAvailable:    2000 kB\n")
        text = _render(HealthCollector(meminfo=meminfo, gpu_load_files=()))
        assert "continuum_edge_host_memory_total_bytes 8.192e+06" in text
        assert "continuum_edge_host_memory_available_bytes 2.048e+06" in text

    def test_absent_sources_give_families_without_samples_not_errors(self, tmp_path: Path) -> None:
        text = _render(
            HealthCollector(
                thermal_root=tmp_path / "none",
                meminfo=tmp_path / "none" / "meminfo",
                gpu_load_files=(tmp_path / "none" / "load",),
            )
        )
        samples = [line for line in text.splitlines() if not line.startswith("#")]
        names = {line.split("{")[0].split(" ")[0] for line in samples}
        assert names <= {"continuum_edge_build_info", "continuum_edge_host_load_average"}
        assert "# TYPE continuum_edge_host_temperature_celsius gauge" in text
        assert_promtool_accepts_metrics(text)

    def test_a_jetsons_gpu_load_per_mille_is_a_ratio(self, tmp_path: Path) -> None:
        load = tmp_path / "load"
        load.write_text("731\n")
        text = _render(HealthCollector(gpu_load_files=(tmp_path / "absent", load)))
        assert 'continuum_edge_gpu_utilization_ratio{gpu="0",name="jetson"} 0.731' in text


class TestBuildInfo:
    def test_versions_of_what_is_installed_and_none_for_the_rest(self) -> None:
        versions = build_versions()
        assert versions["version"] == metadata.version("continuum")
        assert versions["onnxruntime"] == metadata.version("onnxruntime")
        assert set(versions) == {"version", "python", "onnxruntime", "tensorrt"}
        if importlib.util.find_spec("tensorrt") is None:
            assert versions["tensorrt"] == "none"
