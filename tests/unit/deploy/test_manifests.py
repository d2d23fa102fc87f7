"""deploy/ manifests: they parse, use the label keys and metric names the code defines, and agree.

No network and no Ray cluster: files are read and checked against the project's own
definitions (``continuum.labels``, ``edge_agent.config``, ``edge_agent.metrics``), Ray's
cluster-launcher schema where Ray is installed, and promtool where it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from continuum.labels import KNOWN_KEYS, PREFIX, SITE, TIER, TIERS
from continuum.wire import topics
from continuum.wire.codec import MAX_PAYLOAD_BYTES
from edge_agent.config import ENV_PREFIX, AgentSettings
from edge_agent.metrics import AgentMetrics
from tests.tools import promtool

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
# A label key is continuum.io/<name>; continuum.io/v1 is the spec api_version, not a key.
LABEL_KEY = re.compile(r"continuum\.io/(?!v\d+\b)[A-Za-z][A-Za-z0-9._-]*")


def load_yaml(relative: str) -> Any:
    """Return the single YAML document of ``deploy/<relative>``."""
    return yaml.safe_load((DEPLOY / relative).read_text())


def unit_directives(text: str) -> dict[str, list[str]]:
    """Return the systemd unit's active ``Key=value`` lines as key -> values, in order."""
    directives: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def seconds(value: str) -> float:
    """Turn a systemd time span such as ``30s`` or ``2min`` into seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert match, f"unsupported time span {value!r}"
    return float(match.group(1)) * (60 if match.group(2) in ("min", "m") else 1)


def mosquitto_directives(relative: str) -> dict[str, list[str]]:
    """Return a mosquitto config's active directives as name -> arguments."""
    found: dict[str, list[str]] = {}
    for raw in (DEPLOY / relative).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, argument = line.partition(" ")
            found.setdefault(name, []).append(argument.strip())
    return found


def label_maps(node: Any) -> Iterator[dict[str, str]]:
    """Yield every mapping under a ``labels`` or ``nodeSelector`` key, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("labels", "nodeSelector") and isinstance(value, dict):
                yield value
            yield from label_maps(value)
    elif isinstance(node, list):
        for item in node:
            yield from label_maps(item)


def exported_edge_metric_names() -> set[str]:
    """Return every sample name the edge agent can export, children created."""
    metrics = AgentMetrics()
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        kind = family.type
        if kind == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif kind == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        elif kind == "info":
            names.add(f"{family.name}_info")
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Return the continuum metric names an expression refers to."""
    return set(re.findall(r"\b(?:ray_)?continuum_[a-z0-9_]+", expr))


class TestEveryManifestParses:
    @pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
    def test_yaml_file_is_valid_yaml_with_content(self, path: Path) -> None:
        documents = list(yaml.safe_load_all(path.read_text()))
        assert documents and all(doc is not None for doc in documents)

    def test_the_expected_manifests_exist(self) -> None:
        names = {str(p.relative_to(DEPLOY)) for p in YAML_FILES}
        assert {
            "ray/cluster.yaml",
            "kuberay/raycluster.yaml",
            "edge/agent.example.yaml",
            "prometheus/prometheus.yml",
            "prometheus/alerts.yml",
        } <= names

    def test_grafana_dashboard_is_a_json_model_with_unique_panel_ids(self) -> None:
        board = json.loads((DEPLOY / "grafana" / "continuum-dashboard.json").read_text())
        ids = [panel["id"] for panel in board["panels"]]
        assert board["uid"] and board["schemaVersion"] >= 36
        assert len(ids) == len(set(ids)) and len(ids) >= 10
        assert all(
            t["datasource"]["uid"] == "${datasource}"
            for panel in board["panels"]
            for t in panel.get("targets", [])
        )


class TestLabelKeysAreTheOnesContinuumDefines:
    @pytest.mark.parametrize(
        "path",
        sorted(p for p in DEPLOY.rglob("*") if p.is_file()),
        ids=lambda p: str(p.relative_to(DEPLOY)),
    )
    def test_every_continuum_io_key_mentioned_is_known(self, path: Path) -> None:
        used = set(LABEL_KEY.findall(path.read_text(errors="replace")))
        assert used <= KNOWN_KEYS, f"unknown keys {sorted(used - KNOWN_KEYS)}"

    @pytest.mark.parametrize(
        "relative", ["ray/cluster.yaml", "kuberay/raycluster.yaml", "edge/agent.example.yaml"]
    )
    def test_label_maps_use_known_keys_and_tiers(self, relative: str) -> None:
        maps = [m for m in label_maps(load_yaml(relative)) if any(PREFIX in k for k in m)]
        assert maps, f"{relative} sets no continuum.io labels"
        for labels in maps:
            ours = {k for k in labels if k.startswith(PREFIX)}
            assert ours <= KNOWN_KEYS
            if TIER in labels:
                assert labels[TIER] in TIERS

    def test_ray_launcher_has_cloud_head_gpu_pool_and_labelled_edge_type(self) -> None:
        cluster = load_yaml("ray/cluster.yaml")
        types = cluster["available_node_types"]
        assert types[cluster["head_node_type"]]["labels"][TIER] == "cloud"
        gpu = [t for t in types.values() if "GPU" in t["resources"]]
        assert any(t["labels"][TIER] == "cloud" for t in gpu)
        edge = [t for t in types.values() if t["labels"][TIER] == "edge"]
        assert edge and all(t["labels"].get(SITE) for t in edge)

    def test_kuberay_labels_are_group_fields_not_ray_start_params(self) -> None:
        cluster = load_yaml("kuberay/raycluster.yaml")
        spec = cluster["spec"]
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
        assert all("labels" not in g.get("rayStartParams", {}) for g in groups)
        assert all(g["labels"][TIER] in TIERS for g in groups)

    def test_kuberay_edge_group_is_pinned_to_edge_nodes_of_its_site(self) -> None:
        workers = load_yaml("kuberay/raycluster.yaml")["spec"]["workerGroupSpecs"]
        edge = [g for g in workers if g["labels"][TIER] == "edge"]
        assert edge
        for group in edge:
            pod = group["template"]["spec"]
            assert pod["nodeSelector"][TIER] == "edge"
            assert pod["nodeSelector"][SITE] == group["labels"][SITE]
            assert {"key": TIER, "operator": "Equal", "value": "edge", "effect": "NoSchedule"} in (
                pod["tolerations"]
            )


class TestRayTokenAuthIsExplicitEverywhere:
    def test_every_launcher_ray_command_sets_the_auth_mode(self) -> None:
        cluster = load_yaml("ray/cluster.yaml")
        commands = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
        ray_commands = [c for c in commands if "ray st" in c]
        assert ray_commands and all("RAY_AUTH_MODE=token ray " in c for c in ray_commands)

    def test_every_kuberay_container_gets_mode_and_token(self) -> None:
        spec = load_yaml("kuberay/raycluster.yaml")["spec"]
        pods = [spec["headGroupSpec"]["template"]] + [
            g["template"] for g in spec["workerGroupSpecs"]
        ]
        env_lists = [c["env"] for p in pods for c in p["spec"]["containers"]]
        env_lists.append(spec["autoscalerOptions"]["env"])
        for env in env_lists:
            names = {e["name"]: e for e in env}
            assert names["RAY_AUTH_MODE"]["value"] == "token"
            assert "secretKeyRef" in names["RAY_AUTH_TOKEN"]["valueFrom"]

    def test_launcher_file_satisfies_rays_own_schema(self) -> None:
        spec = importlib.util.find_spec("ray")
        assert spec is not None and spec.submodule_search_locations, (
            "ray is not installed: pip install -e '.[dev]' (scripts/bootstrap.sh test does it)"
        )
        schema_path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
        jsonschema.validate(load_yaml("ray/cluster.yaml"), json.loads(schema_path.read_text()))


class TestEdgeFilesAgree:
    @pytest.fixture
    def example_settings(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AgentSettings:
        """Load agent.example.yaml with its files replaced by existing temp files."""
        for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
            monkeypatch.delenv(name)
        data = load_yaml("edge/agent.example.yaml")

        def stand_in(name: str) -> str:
            path = tmp_path / name
            path.write_text("stand-in")
            return str(path)

        for key in ("tls_ca", "tls_cert", "tls_key"):
            if data["broker"].get(key):
                data["broker"][key] = stand_in(key)
        data["trusted_public_key"] = stand_in("signing.pub")
        for index, pipeline in enumerate(data["pipelines"]):
            pipeline["spec"] = stand_in(f"pipeline-{index}.yaml")
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump(data))
        return AgentSettings.load(config)

    def test_example_config_is_a_valid_agent_settings(
        self, example_settings: AgentSettings
    ) -> None:
        assert example_settings.tenant == "acme"
        assert example_settings.labels[TIER] == "edge"
        assert example_settings.broker.port == 8883

    def test_unit_state_directory_is_the_configured_state_dir(
        self, example_settings: AgentSettings
    ) -> None:
        unit = unit_directives((DEPLOY / "edge" / "edge-agent.service").read_text())
        state = Path("/var/lib") / unit["StateDirectory"][0]
        assert example_settings.state_dir == state
        assert str(state) in unit["ReadWritePaths"]

    def test_systemd_stop_timeout_outlasts_the_agents_drain(
        self, example_settings: AgentSettings
    ) -> None:
        unit = unit_directives((DEPLOY / "edge" / "edge-agent.service").read_text())
        stop = seconds(unit["TimeoutStopSec"][0])
        default = AgentSettings.model_fields["shutdown_timeout_s"].default
        assert stop > example_settings.shutdown_timeout_s and stop > default
        assert unit["KillSignal"] == ["SIGTERM"]

    def test_unit_is_hardened(self) -> None:
        unit = unit_directives((DEPLOY / "edge" / "edge-agent.service").read_text())
        expected = {
            "User": "continuum",
            "Restart": "always",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "CapabilityBoundingSet": "",
            "DevicePolicy": "closed",
        }
        assert {k: unit[k][0] for k in expected} == expected
        assert "@system-service" in unit["SystemCallFilter"]
        assert unit["EnvironmentFile"] and unit["StartLimitBurst"]

    def test_metrics_port_is_the_one_exposed_and_scraped(
        self, example_settings: AgentSettings
    ) -> None:
        port = example_settings.metrics_port
        containerfile = (DEPLOY / "edge" / "Containerfile").read_text()
        assert re.search(rf"^EXPOSE {port}$", containerfile, re.MULTILINE)
        targets = load_yaml("prometheus/targets/example-edge-site.yml")
        assert all(t.endswith(f":{port}") for group in targets for t in group["targets"])

    def test_container_installs_only_the_edge_extras_as_non_root(self) -> None:
        # The edge and its camera decoder (PyAV): never the cloud side (torch, Ray).
        containerfile = (DEPLOY / "edge" / "Containerfile").read_text()
        assert "python:3.11-slim" in containerfile
        assert "[edge,video]" in containerfile and "cloud" not in re.findall(
            r"\[([a-z,]+)\]", containerfile
        )
        users = re.findall(r"^USER (\S+)", containerfile, re.MULTILINE)
        assert users and not users[-1].startswith(("root", "0"))


class TestBrokerConfigs:
    def test_production_listener_requires_client_certificates(self) -> None:
        conf = mosquitto_directives("mosquitto/mosquitto.conf")
        assert conf["listener"] == ["8883"]
        assert conf["require_certificate"] == ["true"]
        assert conf["use_identity_as_username"] == ["true"]
        assert conf["allow_anonymous"] == ["false"]
        assert conf["persistence"] == ["true"] and conf["acl_file"]

    @pytest.mark.parametrize(
        "relative", ["mosquitto/mosquitto.conf", "mosquitto/mosquitto.dev.conf"]
    )
    def test_packet_limit_admits_the_largest_sample_batch(self, relative: str) -> None:
        conf = mosquitto_directives(relative)
        assert int(conf["max_packet_size"][0]) > MAX_PAYLOAD_BYTES
        assert int(conf["max_queued_messages"][0]) > 0

    def test_dev_broker_listens_on_loopback_only(self) -> None:
        conf = mosquitto_directives("mosquitto/mosquitto.dev.conf")
        assert all(arg.split()[1] == "127.0.0.1" for arg in conf["listener"])
        assert conf["allow_anonymous"] == ["false"]

    def test_example_acl_is_what_the_tenant_registry_generates(self) -> None:
        # One source: the example is acl_text's output for tenant acme with node cam-1.
        from cloud_head._tenant_broker import acl_text
        from cloud_head.tenants import NodeRecord

        cam_1 = NodeRecord(tenant="acme", node="cam-1", method="certificate", enrolled_at=0.0)
        generated = acl_text(["acme"], [cam_1])

        def rules(text: str) -> list[str]:
            return [line for line in text.splitlines() if line and not line.startswith("#")]

        assert rules((DEPLOY / "mosquitto" / "acl.example").read_text()) == rules(generated)
        acl = mosquitto_directives("mosquitto/acl.example")
        assert "pattern" not in acl  # per identity, never a rule every username matches
        assert f"write {topics.node_status('acme', 'cam-1')}" in acl["topic"]

    @pytest.mark.parametrize(
        "relative", ["mosquitto/mosquitto.conf", "mosquitto/mosquitto.dev.conf"]
    )
    def test_client_ids_are_bound_to_identities_on_the_listener(self, relative: str) -> None:
        # A listener setting in mosquitto 2.0: before the listener line it is ignored.
        lines = [line.strip() for line in (DEPLOY / relative).read_text().splitlines()]
        listener = max(i for i, line in enumerate(lines) if line.startswith("listener "))
        assert "use_username_as_clientid true" in lines[listener:]


class TestMetricNamesExist:
    def _expressions(self) -> list[str]:
        board = json.loads((DEPLOY / "grafana" / "continuum-dashboard.json").read_text())
        exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
        exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
        rules = load_yaml("prometheus/alerts.yml")
        exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
        return exprs

    def test_edge_metrics_in_dashboard_and_alerts_are_exported_by_the_agent(self) -> None:
        used = {n for e in self._expressions() for n in promql_metric_names(e)}
        edge = {n for n in used if n.startswith("continuum_edge_")}
        assert edge and edge <= exported_edge_metric_names()

    def test_cloud_metrics_in_dashboard_and_alerts_are_documented(self) -> None:
        used = {n for e in self._expressions() for n in promql_metric_names(e)}
        cloud = {n for n in used if n.startswith("ray_")}
        readme = (DEPLOY / "README.md").read_text()
        assert cloud and all(f"`{name}`" in readme for name in cloud)


class TestPromtoolAcceptsTheMonitoringFiles:
    def test_config_and_target_files_check(self, tmp_path: Path) -> None:
        shutil.copytree(DEPLOY / "prometheus", tmp_path, dirs_exist_ok=True)
        shutil.copy(
            tmp_path / "targets" / "example-edge-site.yml", tmp_path / "targets" / "edge-lux-1.yml"
        )
        run = subprocess.run(
            [promtool(), "check", "config", "prometheus.yml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stdout + run.stderr

    def test_alert_rule_unit_tests_pass(self) -> None:
        run = subprocess.run(
            [promtool(), "test", "rules", "alerts.test.yml"],
            cwd=DEPLOY / "prometheus",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stdout + run.stderr

    def test_dashboard_queries_are_valid_promql(self, tmp_path: Path) -> None:
        board = json.loads((DEPLOY / "grafana" / "continuum-dashboard.json").read_text())
        exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
        exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
        rules = [
            {
                "record": f"dashboard:query_{i}",
                "expr": re.sub(r"\$\w+", ".*", e.replace("$__rate_interval", "1m")),
            }
            for i, e in enumerate(exprs)
        ]
        path = tmp_path / "dashboard-rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        run = subprocess.run(
            [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """The tenant-cluster example as kubectl's own kustomize renders it."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (its kustomize renders the overlay)")
    run = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "tenant-clusters" / "acme")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


class TestTenantsThatDistrustEachOtherGetAClusterEach:
    """deploy/tenant-clusters/: a RayCluster per tenant, in its own namespace, fenced off.

    Ray namespaces are not a security boundary, so the example renders the whole cluster
    into the tenant's Kubernetes namespace, where its Ray token is that namespace's Secret,
    and a NetworkPolicy admits only that namespace's pods.  Rendered with kubectl's own
    kustomize where kubectl is installed.
    """

    def test_every_object_lives_in_the_tenants_own_namespace(
        self, rendered: list[dict[str, Any]]
    ) -> None:
        kinds = {d["kind"] for d in rendered}
        assert {"RayCluster", "NetworkPolicy"} <= kinds
        assert {d["metadata"]["namespace"] for d in rendered} == {"continuum-acme"}
        assert all(d["metadata"]["labels"]["continuum.io/tenant"] == "acme" for d in rendered)

    def test_only_the_tenants_own_pods_reach_its_cluster(
        self, rendered: list[dict[str, Any]]
    ) -> None:
        (policy,) = [d for d in rendered if d["kind"] == "NetworkPolicy"]
        spec = policy["spec"]
        assert spec["podSelector"] == {} and spec["policyTypes"] == ["Ingress"]
        # Only a podSelector, no namespaceSelector: peers from this namespace alone.
        assert spec["ingress"] == [{"from": [{"podSelector": {}}]}]

    def test_the_ray_token_is_the_namespaces_own_secret(
        self, rendered: list[dict[str, Any]]
    ) -> None:
        (cluster,) = [d for d in rendered if d["kind"] == "RayCluster"]
        refs = re.findall(r"'secretKeyRef': \{[^}]*\}", str(cluster))
        assert refs and all("continuum-ray-auth" in r and "namespace" not in r for r in refs)


class TestEveryAlertAndPanelIsCovered:
    """Issue 16: promtool unit tests for every alert, and panels only on series that exist."""

    def test_every_alert_has_a_case_that_fires_and_one_that_does_not(self) -> None:
        rules = load_yaml("prometheus/alerts.yml")
        alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
        cases = [
            case
            for test in load_yaml("prometheus/alerts.test.yml")["tests"]
            for case in test.get("alert_rule_test", [])
        ]
        fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
        quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
        assert alerts, "alerts.yml has no alert"
        assert not alerts - fires, f"add a firing case to alerts.test.yml for {alerts - fires}"
        assert not alerts - quiet, (
            f"add a case with exp_alerts: [] to alerts.test.yml for {alerts - quiet}"
        )
        assert not (fires | quiet) - alerts, "alerts.test.yml tests alerts that no longer exist"

    def test_device_health_and_issue_16_panels_are_on_the_dashboard(self) -> None:
        board = json.loads((DEPLOY / "grafana" / "continuum-dashboard.json").read_text())
        used = {
            n
            for p in board["panels"]
            for t in p.get("targets", [])
            for n in re.findall(
                r"\b[a-z_]+(?:_total|_bytes|_ratio|_celsius|_info|_average)\b", t["expr"]
            )
        }
        assert {
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "continuum_edge_host_load_average",
            "continuum_edge_host_memory_available_bytes",
            "continuum_edge_host_temperature_celsius",
            "continuum_edge_gpu_utilization_ratio",
            "continuum_edge_build_info",
            "continuum_edge_source_failures_total",
            "continuum_edge_fields_dropped_total",
            "continuum_edge_fields_hashed_total",
            "continuum_edge_samples_kept_at_edge_total",
            "continuum_edge_model_swaps_total",
            "continuum_edge_broker_reconnects_total",
        } <= used

    def test_process_metrics_on_the_dashboard_are_exported_by_the_agent(self) -> None:
        board = json.loads((DEPLOY / "grafana" / "continuum-dashboard.json").read_text())
        used = {
            n
            for p in board["panels"]
            for t in p.get("targets", [])
            for n in re.findall(r"\bprocess_[a-z_]+", t["expr"])
        }
        assert used <= exported_edge_metric_names()
