"""The fleet service on a real Ray cluster and mosquitto: ``continuum fleet remove`` and the
broker connection it reports (issue 12).

The service is the ``FleetActor`` the cloud head deploys, named ``fleet`` in the tenant's
namespace; the command runs as the operator runs it, in its own process.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import ray
from paho.mqtt.enums import CallbackAPIVersion

from cloud_head.audit import AuditAction, AuditLog, default_actor
from cloud_head.paths import HeadPaths
from cloud_head.services import CLOUD_SELECTOR, FleetActor
from cloud_head.settings import CloudSettings
from cloud_head.signer import TenantSigner
from continuum.embedded import EmbeddedBroker, LocalRayCluster
from continuum.signing import generate_keypair
from continuum.wire import topics
from continuum.wire.messages import NodeStatus, Telemetry
from continuum.wire.mqtt import BrokerSettings
from tests.tools import assert_promtool_accepts_metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[3]


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.2)


class Fleet:
    """A tenant's fleet service on the cluster, a broker, and an edge publisher."""

    def __init__(self, root: Path, broker: EmbeddedBroker) -> None:
        self.tenant = f"it-{uuid.uuid4().hex[:8]}"
        self.paths = HeadPaths(root / "cloud", registry_url=None)
        self.private_pem, self.public_pem = generate_keypair()
        self.broker = broker
        self.actor = FleetActor.options(  # type: ignore[attr-defined]
            name="fleet", namespace=self.tenant, label_selector=CLOUD_SELECTOR
        ).remote(
            CloudSettings(
                tenant=self.tenant,
                root=self.paths.root,
                registry_url=None,
                broker=BrokerSettings(host=broker.host, port=broker.port),
            ),
        )
        self.edge = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{self.tenant}")
        self.edge.connect(broker.host, broker.port)
        self.edge.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.edge.publish(topic, payload, 1, retain).wait_for_publish(timeout=10)

    def join(self, node: str) -> None:
        status = NodeStatus(
            node=node,
            tenant=self.tenant,
            online=True,
            labels={"continuum.io/tier": "edge", "continuum.io/site": "lux-1"},
            agent_version="test",
            pipelines=["digits"],
            ts=time.time(),
        )
        self.publish(topics.node_status(self.tenant, node), status.to_payload(), retain=True)
        window = Telemetry(
            node=node,
            pipeline="digits",
            model_version="v1",
            window_s=5.0,
            frames=50,
            uplinked=2,
            dropped=0,
            ts=time.time(),
        )
        self.publish(topics.telemetry(self.tenant, "digits", node), window.to_payload())

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["node"]: n for n in ray.get(self.actor.nodes.remote(), timeout=30)}

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = ray.get(self.actor.stats.remote(), timeout=30)
        return result

    def close(self) -> None:
        self.edge.loop_stop()
        self.edge.disconnect()
        ray.get(self.actor.stop.remote(), timeout=30)
        ray.kill(self.actor, no_restart=True)


@pytest.fixture
def fleet(
    tmp_path: Path, private_mqtt_broker: EmbeddedBroker, ray_cluster: LocalRayCluster
) -> Iterator[Fleet]:
    made = Fleet(tmp_path, private_mqtt_broker)
    try:
        wait_for(lambda: made.stats()["connected"])
        yield made
    finally:
        made.close()


def fleet_cli(
    cluster: LocalRayCluster, fleet: Fleet, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``continuum fleet ...`` as the operator does, in a process of its own."""
    token = cluster.token_path
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "continuum.cli",
            "fleet",
            *args,
            "--tenant",
            fleet.tenant,
            "--root",
            str(fleet.paths.root),
            "--address",
            cluster.address,
            "--ray-token",
            str(token) if token is not None else "none",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def retained(broker: EmbeddedBroker, topic: str, wait_s: float = 1.0) -> list[bytes]:
    """Return what the broker replays on ``topic`` to a new subscriber."""
    got: list[bytes] = []
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:6]}")
    probe.on_message = lambda c, u, m: got.append(bytes(m.payload))
    probe.connect(broker.host, broker.port)
    probe.loop_start()
    try:
        probe.subscribe(topic, 1)
        time.sleep(wait_s)
    finally:
        probe.loop_stop()
        probe.disconnect()
    return got


class TestFleetRemove:
    def test_remove_deletes_the_node_records_it_and_clears_its_retained_status(
        self, fleet: Fleet, ray_cluster: LocalRayCluster
    ) -> None:
        for node in ("cam-1", "cam-2"):
            fleet.join(node)
        wait_for(
            lambda: all(n["telemetry"] for n in fleet.nodes().values()) and len(fleet.nodes()) == 2
        )

        refused = fleet_cli(ray_cluster, fleet, "remove", "cam-1")  # no --yes
        assert refused.returncode == 2 and "--yes" in refused.stderr
        unknown = fleet_cli(ray_cluster, fleet, "remove", "cam-9", "--yes")
        assert unknown.returncode == 1 and "has no node 'cam-9'" in unknown.stderr
        assert len(fleet.nodes()) == 2

        done = fleet_cli(ray_cluster, fleet, "remove", "cam-1", "--yes", "--reason", "scrapped")
        assert done.returncode == 0, done.stderr
        assert "removed node cam-1" in done.stdout and "1 telemetry window(s)" in done.stdout

        assert list(fleet.nodes()) == ["cam-2"]
        assert ray.get(fleet.actor.telemetry.remote("cam-1", "digits"), timeout=30) == []
        with AuditLog(fleet.paths.audit) as log:
            [record] = log.records(fleet.tenant, action=AuditAction.NODE_REMOVED)
            assert record.subject == "node/cam-1"
            assert record.actor == default_actor()
            assert record.details["reason"] == "scrapped"
            assert record.details["labels"]["continuum.io/site"] == "lux-1"
            # The fleet holds no key: its record waits for the tenant's signer to seal it.
            assert "no seal" in log.verify(fleet.tenant, public_key_pem=fleet.public_pem).reason
            TenantSigner(fleet.tenant, fleet.private_pem).seal(log)
            verified = log.verify(fleet.tenant, public_key_pem=fleet.public_pem)
            assert verified.ok and verified.signature_checked
        assert retained(fleet.broker, topics.node_status(fleet.tenant, "cam-1")) == []
        assert len(retained(fleet.broker, topics.node_status(fleet.tenant, "cam-2"), 0.3)) == 1
        # The clear came back to the fleet about a node it no longer knows: not a rejection.
        wait_for(lambda: fleet.stats()["cleared"] == 2)
        assert fleet.stats()["rejected"] == {}


def scrape(cluster: LocalRayCluster, name: str, tenant: str) -> float | None:
    """Return the value of metric ``name`` for ``tenant``'s fleet on the head, or None."""
    port = cluster.nodes[0].metrics_export_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        ours = f'tenant="{tenant}"' in line and 'service="fleet"' in line
        if line.startswith(name + "{") and ours:
            return float(line.rsplit(" ", 1)[1])
    return None


#: The labels Ray puts on every metric it exports (``Component``, ``NodeAddress``,
#: ``SessionName``, ``Version``, ``WorkerId``): camelCase, which promtool flags on all of Ray's
#: metrics alike, so they are left out of the lint of ours.
_RAY_LABEL = re.compile(r'\b[A-Z][A-Za-z]*="[^"]*",?')


def exposition(cluster: LocalRayCluster, prefix: str) -> str:
    """Return the head's metrics named ``prefix...`` with HELP and TYPE, less Ray's own labels."""
    port = cluster.nodes[0].metrics_export_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    name = re.compile(rf"^(# (HELP|TYPE) )?{prefix}")
    ours = [line for line in text.splitlines() if name.match(line)]
    lines = (line if line.startswith("#") else _RAY_LABEL.sub("", line) for line in ours)
    return "\n".join(lines) + "\n"


class TestBrokerConnectionMetric:
    def test_a_killed_broker_shows_as_disconnected_in_stats_and_metrics(
        self, fleet: Fleet, ray_cluster: LocalRayCluster
    ) -> None:
        connected = "ray_continuum_cloud_broker_connected"
        disconnects = "ray_continuum_cloud_broker_disconnects_total"
        wait_for(lambda: scrape(ray_cluster, connected, fleet.tenant) == 1.0, 60)

        killed_at = time.time()
        fleet.broker.kill()
        wait_for(lambda: not fleet.stats()["connected"])
        stats = fleet.stats()
        assert killed_at - 0.5 <= stats["disconnected_since"] <= killed_at + 2.0
        wait_for(lambda: scrape(ray_cluster, connected, fleet.tenant) == 0.0, 60)
        wait_for(lambda: scrape(ray_cluster, disconnects, fleet.tenant) == 1.0, 60)
        assert_promtool_accepts_metrics(exposition(ray_cluster, "ray_continuum_cloud_broker_"))

        fleet.broker.restart()
        wait_for(lambda: fleet.stats()["connected"], 60)
        assert fleet.stats()["disconnected_since"] is None
        wait_for(lambda: scrape(ray_cluster, connected, fleet.tenant) == 1.0, 60)


class TestTheServiceChecksTheCredentialItself:
    """The Ray token reaches the fleet actor without the CLI: the actor checks the operator
    credential against the registry it was started with (``authorize_operator``)."""

    def test_a_removal_without_the_tenants_credential_is_refused_by_the_service(
        self, tmp_path: Path, private_mqtt_broker: EmbeddedBroker, ray_cluster: LocalRayCluster
    ) -> None:
        from cloud_head.tenants import TenantRegistry
        from continuum.errors import AccessDeniedError, NotFoundError

        tenant = f"it-{uuid.uuid4().hex[:8]}"
        registry = TenantRegistry(tmp_path / "tenants")
        credentials = registry.create(tenant).credentials
        other = registry.create(f"{tenant}-x").credentials
        assert credentials is not None and other is not None
        paths = HeadPaths(tmp_path / "cloud", registry_url=None)
        broker = private_mqtt_broker
        actor = FleetActor.options(  # type: ignore[attr-defined]
            name="fleet", namespace=tenant, label_selector=CLOUD_SELECTOR
        ).remote(
            CloudSettings(
                tenant=tenant,
                root=paths.root,
                registry_url=None,
                tenants_root=registry.root,
                broker=BrokerSettings(host=broker.host, port=broker.port),
            )
        )
        try:
            # As anyone holding the Ray token would: straight to the actor, no CLI.
            handle = ray.get_actor("fleet", namespace=tenant)
            for given in (None, "guess", other.password):
                with pytest.raises(ray.exceptions.RayTaskError) as refused:
                    ray.get(handle.remove.remote("cam-1", "x", given, "mallory@far"), timeout=30)
                assert isinstance(refused.value.cause, AccessDeniedError), given
            with pytest.raises(ray.exceptions.RayTaskError) as passed:
                ray.get(
                    handle.remove.remote("cam-1", "x", credentials.password, "alice@ops"),
                    timeout=30,
                )
            assert isinstance(passed.value.cause, NotFoundError)  # authorised; no such node
        finally:
            ray.get(actor.stop.remote(), timeout=30)
            ray.kill(actor, no_restart=True)
