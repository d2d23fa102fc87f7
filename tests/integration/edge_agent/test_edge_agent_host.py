"""A box two tenants share: one edge-agent process, one agent per tenant, on a real mosquitto
with a password and an ACL per identity (``cloud_head.tenants``), anonymous access off.

Each tenant's agent logs in as its own enrolled node identity (edge.NODE@TENANT) and
publishes under its own topic prefix; each tenant's cloud stand-in publishes as the tenant's
control identity and reads with the operator's; the tenants' metrics share one port,
labelled by tenant; a tenant whose agent cannot start is retried with backoff while the
other keeps publishing; SIGTERM stops both.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cloud_head.tenants import NodeCredentials, TenantRegistry
from continuum.embedded import EmbeddedBroker
from continuum.embedded._process import free_port
from continuum.wire import mqtt, topics
from continuum.wire.messages import NodeStatus
from edge_agent.cli import main
from edge_agent.host import AgentHost, load_configs
from tests.edge_agent_kit import AgentRig, CloudStandIn, pattern_source, wait_for
from tests.tools import assert_promtool_accepts_metrics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
TENANTS = ("acme", "medica")
#: Both tenants name their box the same: node ids are per tenant.
NODE, PIPELINE = "edge-1", "inspect"


class Tenant(AgentRig):
    """One tenant of the box: the shared agent rig with the node's own identity, the
    tenant's folder, signing key, cloud stand-in (control) and reader (operator); its agent
    selects every frame."""

    def __init__(
        self,
        name: str,
        folder: Path,
        credentials: NodeCredentials,
        broker: EmbeddedBroker,
        cloud: CloudStandIn,
        reader: CloudStandIn,
    ) -> None:
        super().__init__(
            folder,
            host=broker.host,
            port=broker.port,
            node=NODE,
            tenant=name,
            pipeline=PIPELINE,
            broker={
                "host": broker.host,
                "port": broker.port,
                "username": credentials.username,
                "password": credentials.password,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 1.0,
            },
            cloud=cloud,
        )
        self.name = name
        self.broker = broker
        self.cloud: CloudStandIn = cloud
        self.reader = reader

    def config(self, *, source: Mapping[str, Any] | None = None, **settings: Any) -> Path:
        """Write this tenant's agent config: its own credential, state dir and key."""
        if source is None:
            source = pattern_source([0.0], count=-1, fps=50.0)  # every frame is selected
        return super().config(source=source, **settings)

    def samples(self) -> int:
        """Samples messages the tenant's cloud received."""
        return len(self.reader.messages(topics.samples(self.name, PIPELINE, NODE)))


@pytest.fixture
def box(tmp_path: Path) -> Iterator[dict[str, Tenant]]:
    """A broker that knows only the two tenants' identities (each with node ``NODE``
    enrolled), and each tenant's cloud stand-in and reader."""
    registry = TenantRegistry(tmp_path / "tenants")
    credentials = {name: registry.create(name).credentials for name in TENANTS}
    nodes = {name: registry.enroll_node(name, NODE) for name in TENANTS}
    registry.apply_to_broker()  # password and ACL files written before the broker reads them
    broker = EmbeddedBroker(
        tmp_path / "broker", password_file=registry.password_file, acl_file=registry.acl_file
    ).start()
    tenants: dict[str, Tenant] = {}
    try:
        for name, creds in credentials.items():
            assert creds is not None
            folder = tmp_path / name
            folder.mkdir()
            control = mqtt.BrokerSettings(
                host=broker.host,
                port=broker.port,
                username=creds.control_username,
                password=creds.control_password,
            )
            operator = control.model_copy(
                update={"username": creds.username, "password": creds.password}
            )
            cloud = CloudStandIn(broker.host, broker.port, name, settings=control)
            reader = CloudStandIn(broker.host, broker.port, name, settings=operator)
            reader.subscribe(topics.tenant_filter(name))
            tenants[name] = Tenant(name, folder, nodes[name], broker, cloud, reader)
        yield tenants
    finally:
        for tenant in tenants.values():
            tenant.cloud.close()
            tenant.reader.close()
        broker.stop()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


class TestTenantsShareOneProcess:
    def test_each_tenant_publishes_as_itself_and_their_metrics_share_one_port(
        self, box: dict[str, Tenant]
    ) -> None:
        port = free_port()
        configs = [
            t.config(metrics_port=port, metrics_host="127.0.0.1", shutdown_timeout_s=5.0)
            for t in box.values()
        ]
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run"]
            + [arg for config in configs for arg in ("--config", str(config))],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            for tenant in box.values():
                tenant.roll_out()
            for tenant in box.values():
                wait_for(lambda t=tenant: t.samples() >= 3, timeout_s=30.0)
            text = wait_for(
                lambda: (
                    t
                    if all(f'tenant="{name}"' in (t := _scrape(port)) for name in TENANTS)
                    and "continuum_edge_frames_total" in t
                    else None
                ),
                timeout_s=15.0,
            )
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            raw, _ = process.communicate(timeout=20.0)
            took = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        output = raw.decode()
        assert process.returncode == 0, output[-4000:]
        assert "Traceback" not in output
        assert took < 10.0  # both drained in parallel, each within its 5 s
        broker_log = box["acme"].broker.log_path.read_text(errors="replace")
        for name in TENANTS:
            # Its own MQTT session, logged in as its own identity, which is its client id too;
            # its samples under its prefix.
            identity = f"edge.{NODE}@{name}"
            assert f"as {identity} (p5, c0, k30, u'{identity}')" in broker_log
            last = box[name].reader.messages(topics.node_status(name, NODE))[-1][1]
            assert NodeStatus.from_payload(last).online is False
            assert f'continuum_edge_frames_total{{pipeline="inspect",tenant="{name}"}}' in text
        assert text.count("# TYPE continuum_edge_frames_total counter") == 1
        assert_promtool_accepts_metrics(text)  # Prometheus' own linter, as a scraper judges
        # Every line logged from an agent's own threads names the tenant in the thread name.
        threads = set(re.findall(r" \[(ctm-[^\]]+)\] ", output))
        assert threads, output[-4000:]
        assert all(any(name in thread for name in TENANTS) for thread in threads), threads
        for name in TENANTS:
            assert any(name in thread for thread in threads), threads

    def test_a_tenant_whose_agent_fails_is_restarted_while_the_other_keeps_publishing(
        self, box: dict[str, Tenant]
    ) -> None:
        acme, medica = box["acme"], box["medica"]
        with socket.socket() as squatter:  # another process holds medica's metrics port
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            port = squatter.getsockname()[1]
            settings = load_configs(
                [acme.config(), medica.config(metrics_port=port, metrics_host="127.0.0.1")]
            )
            host = AgentHost(settings, restart_min_s=0.2, restart_max_s=1.0)
            try:
                host.start()
                acme.roll_out()
                medica.roll_out()
                wait_for(lambda: acme.samples() >= 3, timeout_s=30.0)
                wait_for(lambda: host.failures["medica"] >= 3, timeout_s=15.0)
                during = acme.samples()
                wait_for(lambda: acme.samples() >= during + 3, timeout_s=15.0)
                assert medica.samples() == 0
                squatter.close()  # the port is free again: the next restart comes up
                wait_for(lambda: medica.samples() >= 3, timeout_s=30.0)
                failures = host.failures
                agents = host.agents
            finally:
                host.stop()
        assert failures["acme"] == 0
        assert agents["medica"] is not None and agents["medica"].metrics_port == port
        assert all(agent is None for agent in host.agents.values())


class TestCheckingSeveralConfigs:
    def test_each_config_is_checked_and_its_lines_carry_its_tenant(
        self, box: dict[str, Tenant], capsys: pytest.CaptureFixture[str]
    ) -> None:
        configs = [str(t.config()) for t in box.values()]
        args = ["check", "--config", configs[0], "--config", configs[1], "--timeout", "5"]
        assert main(args) == 0
        out = capsys.readouterr().out
        for name in TENANTS:
            assert f"{name}: [ok] broker: " in out
            assert f"{name}: [ok] config: node '{NODE}' of tenant '{name}'" in out
        box["medica"].key.write_text("not a key\n", encoding="utf-8")
        assert main(args) == 1
        out = capsys.readouterr().out
        assert "medica: [FAIL] trusted key:" in out
        assert "acme: [ok] trusted key:" in out
