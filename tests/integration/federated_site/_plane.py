"""What the site data plane's tests share: a tenant with a node at each of two hospitals, a
central broker with the bridges' identities, a bridged broker per site, and a recording
MQTT client."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_head._site_plane import SiteBridge, SiteBroker, enrol_bridges, site_broker_files
from cloud_head._tenant_identities import read_service_password, service_credentials_dir
from cloud_head.tenants import TenantRegistry
from continuum import select
from continuum.embedded import EmbeddedBroker
from continuum.spec import DataClass, EdgeStageSpec, PipelineSpec, TensorSchema, UplinkSpec
from continuum.wire import codec, identities
from continuum.wire.mqtt import BrokerSettings

TENANT = "medica"
PIPELINE = "screening"
SITES = {"hosp-lux": "scan-lux-a", "hosp-metz": "scan-metz-a"}
#: A value no real measurement has: found anywhere, it is a leaked sample.
CANARY = 123456.75


def make_spec() -> PipelineSpec:
    return PipelineSpec(
        name=PIPELINE,
        tenant=TENANT,
        data_class="restricted",
        edge=EdgeStageSpec(model="m", input=TensorSchema(shape=(4,))),
        uplink=UplinkSpec(policy=select.random(0.1)),
    )


def make_batch(node: str, seqs: range) -> bytes:
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


def make_plane(tmp_path: Path) -> Iterator[Plane]:
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
