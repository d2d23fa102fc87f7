"""A site's data plane on real mosquittos: the site broker bridged to the central one carries
status, telemetry, desired state and receipts, never a federated pipeline's samples or labels;
the site ingest stores those at the site and sends the receipts there."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_head._site_plane import SiteBridge, SiteBroker, enrol_bridges, site_broker_files
from cloud_head._tenant_identities import read_service_password, service_credentials_dir
from cloud_head.ingest import SiteIngest
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from cloud_head.tenants import TenantRegistry
from continuum import select
from continuum.embedded import EmbeddedBroker
from continuum.spec import DataClass, EdgeStageSpec, PipelineSpec, TensorSchema, UplinkSpec
from continuum.wire import codec, identities, topics
from continuum.wire.messages import StoredReceipt
from continuum.wire.mqtt import BrokerSettings

pytestmark = pytest.mark.integration

TENANT = "medica"
PIPELINE = "screening"
SITES = {"hosp-lux": "scan-lux-a", "hosp-metz": "scan-metz-a"}
#: A value no real measurement has: found anywhere, it is a leaked sample.
CANARY = 123456.75


def _spec() -> PipelineSpec:
    return PipelineSpec(
        name=PIPELINE,
        tenant=TENANT,
        data_class="restricted",
        edge=EdgeStageSpec(model="m", input=TensorSchema(shape=(4,))),
        uplink=UplinkSpec(policy=select.random(0.1)),
    )


def _batch(node: str, seqs: range) -> bytes:
    records = tuple(
        codec.SampleRecord(
            seq=s, captured_at_ns=s, tensor=np.array([CANARY, s, 1, 2], dtype=np.float32)
        )
        for s in seqs
    )
    return codec.encode_samples(
        codec.SampleBatch(PIPELINE, node, "v1", DataClass.RESTRICTED, records)
    )


@dataclass
class Client:
    """A paho client that records what it receives."""

    settings: BrokerSettings
    got: list[tuple[str, bytes, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.settings.username or f"c-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(self.settings.username, self.settings.password)
        self.client.on_message = self._on_message
        self.client.connect(self.settings.host, self.settings.port)
        self.client.loop_start()

    def _on_message(self, client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((message.topic, bytes(message.payload), bool(message.retain)))

    def subscribe(self, filter_: str) -> None:
        self.client.subscribe(filter_, qos=1)

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _, _ in self.got]

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for _, p, _ in self.got]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


@dataclass
class Plane:
    central: EmbeddedBroker
    sites: dict[str, SiteBroker]
    nodes: dict[str, BrokerSettings]
    operator: BrokerSettings
    control: BrokerSettings
    ingest: dict[str, BrokerSettings]


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    registry = TenantRegistry(tmp_path / "tenants")
    record = registry.create(TENANT)
    assert record.credentials is not None
    nodes = {}
    for node in SITES.values():
        enrolled = registry.enroll_node(TENANT, node)
        assert enrolled.password is not None
        nodes[node] = (enrolled.username, enrolled.password)
    registry.apply_to_broker()
    bridges = [SiteBridge(TENANT, site, (node,)) for site, node in SITES.items()]
    passwd, acl, secret = enrol_bridges(
        registry.password_file, registry.acl_file, bridges, tmp_path / "central-files"
    )
    central = EmbeddedBroker(tmp_path / "central", password_file=passwd, acl_file=acl).start()
    creds = service_credentials_dir(tmp_path / "tenants", TENANT)
    here = BrokerSettings(host=central.host, port=central.port)
    sites: dict[str, SiteBroker] = {}
    try:
        for bridge in bridges:
            site_pw, site_acl = site_broker_files(
                registry.password_file, TENANT, bridge.nodes, tmp_path / bridge.site / "files"
            )
            remote = here.model_copy(
                update={"username": bridge.identity, "password": secret[bridge.identity]}
            )
            sites[bridge.site] = SiteBroker(
                tmp_path / bridge.site / "broker",
                bridge,
                remote,
                password_file=site_pw,
                acl_file=site_acl,
            ).start()
        yield Plane(
            central=central,
            sites=sites,
            nodes={
                node: BrokerSettings(
                    host="127.0.0.1", port=sites[site].port, username=u, password=p
                )
                for (site, node), (u, p) in zip(SITES.items(), nodes.values(), strict=True)
            },
            operator=here.model_copy(
                update={
                    "username": record.credentials.username,
                    "password": record.credentials.password,
                }
            ),
            control=here.model_copy(
                update={
                    "username": identities.control_identity(TENANT),
                    "password": read_service_password(creds, "control"),
                }
            ),
            ingest={
                site: BrokerSettings(
                    host="127.0.0.1",
                    port=broker.port,
                    username=identities.ingest_identity(TENANT, 0),
                    password=read_service_password(creds, "ingest"),
                )
                for site, broker in sites.items()
            },
        )
    finally:
        for broker in sites.values():
            broker.stop()
        central.stop()


def _bridged(plane: Plane, site: str) -> None:
    """Wait until ``site``'s bridge is connected (mosquitto logs it on the central broker)."""
    identity = f"bridge.{site}@{TENANT}"
    wait_for(lambda: identity in plane.central.log_path.read_text())


class TestBridge:
    def test_status_and_telemetry_cross_samples_and_labels_do_not(
        self, plane: Plane, tmp_path: Path
    ) -> None:
        node = SITES["hosp-lux"]
        _bridged(plane, "hosp-lux")
        watcher = Client(plane.operator)
        watcher.subscribe(topics.tenant_filter(TENANT))
        time.sleep(0.5)
        box = Client(plane.nodes[node])
        try:
            box.send(topics.node_status(TENANT, node), b'{"online": true}', retain=True)
            box.send(topics.samples(TENANT, PIPELINE, node), _batch(node, range(1, 4)))
            box.send(topics.feedback(TENANT, PIPELINE, node), b"label-of-" + node.encode())
            box.send(topics.telemetry(TENANT, PIPELINE, node), b"window")
            wait_for(lambda: topics.telemetry(TENANT, PIPELINE, node) in watcher.topics())
            time.sleep(1.0)  # anything else the bridge would forward has had its time
            seen = watcher.topics()
            assert topics.node_status(TENANT, node) in seen
            assert not [t for t in seen if "/samples/" in t or "/feedback/" in t], seen
            canary = np.float32(CANARY).tobytes()
            assert not [p for p in watcher.payloads() if canary in p]
        finally:
            box.close()
            watcher.close()
        plane.central.stop()  # its persistence file holds every retained and queued message
        assert (
            np.float32(CANARY).tobytes()
            not in (plane.central.data_dir / "mosquitto.db").read_bytes()
        )

    def test_desired_state_reaches_the_sites_node_only(self, plane: Plane) -> None:
        lux, metz = SITES["hosp-lux"], SITES["hosp-metz"]
        _bridged(plane, "hosp-lux")
        _bridged(plane, "hosp-metz")
        box = Client(plane.nodes[lux])
        box.subscribe(topics.node_desired(TENANT, lux))
        time.sleep(0.5)
        control = Client(plane.control)
        try:
            control.send(topics.node_desired(TENANT, lux), b"desired-lux", retain=True)
            control.send(topics.node_desired(TENANT, metz), b"desired-metz", retain=True)
            wait_for(lambda: b"desired-lux" in box.payloads())
            time.sleep(0.5)
            assert b"desired-metz" not in box.payloads()
        finally:
            control.close()
            box.close()
        plane.sites["hosp-lux"].stop()
        assert (
            b"desired-metz" not in (plane.sites["hosp-lux"].data_dir / "mosquitto.db").read_bytes()
        )

    def test_a_bridge_cannot_speak_for_another_sites_node(self, plane: Plane) -> None:
        """The bridge identity's ACL on the central broker names its own site's nodes only."""
        lux_bridge = plane.sites["hosp-lux"].bridge
        metz = SITES["hosp-metz"]
        rules = lux_bridge.central_acl()
        assert not [r for r in rules if metz in r]
        assert f"topic write {topics.node_status(TENANT, SITES['hosp-lux'])}" in rules
        assert not [r for r in rules if "/samples/" in r or "/feedback/" in r]


class TestSiteIngest:
    def test_stores_at_the_site_and_sends_the_receipt_there(
        self, plane: Plane, tmp_path: Path
    ) -> None:
        node = SITES["hosp-metz"]
        root = tmp_path / "hosp-metz" / "data"
        ingest = SiteIngest(
            TENANT,
            [_spec()],
            samples=SampleStore(root / "samples"),
            labels=LabelStore(root / "labels.db"),
            state_dir=root / "state",
            broker=plane.ingest["hosp-metz"],
            client_id=identities.ingest_identity(TENANT, 0),
        ).start()
        box = Client(plane.nodes[node])
        box.subscribe(topics.node_stored(TENANT, node))
        time.sleep(0.5)
        try:
            box.send(topics.samples(TENANT, PIPELINE, node), _batch(node, range(1, 6)))
            box.send(topics.samples(TENANT, PIPELINE, node), _batch(node, range(1, 6)))
            wait_for(lambda: len(box.payloads()) >= 2)
            receipts = [StoredReceipt.from_payload(p) for p in box.payloads()]
            assert all(r.seqs == [(1, 5)] for r in receipts), receipts
            table = SampleStore(root / "samples").read(TENANT, PIPELINE)
            assert table.num_rows == 5  # the resend is stored once
            assert ingest.stats()["stored"] == 5
        finally:
            box.close()
            ingest.stop()
