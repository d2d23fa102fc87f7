"""Residency end to end over a real mosquitto: restricted fields never reach the Parquet store.

An edge agent streams frames carrying an IBAN (restricted: dropped at the edge) and an
operator name (confidential: hashed at the edge) to a store in another jurisdiction; then a
plain paho client, not our code, forges what a broken or hostile sender could send.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pyarrow.parquet as pq
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_head.audit import AuditAction, AuditLog
from cloud_head.fleet import FleetRegistry, FleetWorker
from cloud_head.ingest import IngestService, IngestWorker
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum import Pipeline, select
from continuum.embedded import EmbeddedBroker
from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER
from continuum.residency import ResidencyPolicy, hash_field
from continuum.signing import generate_keypair
from continuum.sources import Frame
from continuum.spec import DataClass, PipelineSpec
from continuum.wire import codec, topics
from continuum.wire.messages import SCHEMA_VERSION, NodeStatus
from continuum.wire.mqtt import BrokerSettings
from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentSettings
from tests.edge_agent_kit import (
    SHAPE,
    CloudStandIn,
    agent_config,
    build_model,
    desired_for,
    wait_for,
    write_key,
)

pytestmark = pytest.mark.integration

PIPELINE = "payments"
IBAN = "LU28-0019-4006-4475-0000"
OPERATOR = "Operator-Zoe-Quinn"
SALT = b"tenant-salt-0123456789abcdef"
POLICY = """
api_version: continuum.io/v1
kind: ResidencyPolicy
classes:
  public: {}
  internal: {country: [LU, DE]}
  confidential: {jurisdiction: [LU], field_action: hash}
  restricted: {same_site: true, field_action: drop}
"""
EDGE = {TIER: "edge", SITE: "lux-1", COUNTRY: "LU", JURISDICTION: "LU"}
STORE = {TIER: "cloud", SITE: "fra-dc", COUNTRY: "DE", JURISDICTION: "DE"}


class PaymentSource:
    """Frames of a payment terminal: every one carries an IBAN and the operator's name."""

    def __init__(self, count: int = 40, fps: float = 100.0) -> None:
        self.count, self.fps = count, fps

    def __iter__(self) -> Iterator[Frame]:
        for index in range(self.count):
            time.sleep(1 / self.fps)
            yield Frame(
                tensor=np.zeros(SHAPE, np.float32),
                fields={"iban": IBAN, "operator": OPERATOR, "amount": 12.5 + index},
            )


def write_spec(folder: Path, tenant: str) -> PipelineSpec:
    pipe = Pipeline(PIPELINE, tenant=tenant, data_class="internal")
    pipe.edge(model="scorer", backend="onnxruntime", shape=SHAPE, where={TIER: "edge"})
    pipe.uplink(select.random(1.0))
    data = pipe.spec.model_dump(mode="json")
    data["edge"]["input"]["fields"] = {
        "iban": "restricted",
        "operator": "confidential",
        "amount": "internal",
    }
    spec = PipelineSpec.from_dict(data)
    (folder / f"{PIPELINE}.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    return spec


def status(tenant: str, node: str, labels: dict[str, str]) -> bytes:
    return NodeStatus(
        schema_version=SCHEMA_VERSION,
        node=node,
        tenant=tenant,
        online=True,
        labels=labels,
        backends=[],
        agent_version="forged",
        pipelines=[PIPELINE],
        ts=time.time(),
    ).to_payload()


def forged(node: str, seq: int, **fields: str) -> bytes:
    record = codec.SampleRecord(
        seq=seq, captured_at_ns=seq, tensor=np.zeros(SHAPE, np.float32), fields=fields
    )
    return codec.encode_samples(
        codec.SampleBatch(PIPELINE, node, "v1", DataClass.INTERNAL, (record,))
    )


class TestRestrictedFieldsNeverReachTheStore:
    def test_edge_drops_and_hashes_and_ingest_refuses_forgeries(
        self, tmp_path: Path, mqtt_broker: EmbeddedBroker
    ) -> None:
        tenant = f"res-{uuid.uuid4().hex[:8]}"
        spec = write_spec(tmp_path, tenant)
        settings = BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port)
        fleet_registry = FleetRegistry(tenant, tmp_path / "state" / "fleet.db")
        fleet = FleetWorker(fleet_registry, settings)
        store = SampleStore(tmp_path / "store")
        labels = LabelStore(tmp_path / "labels.db")
        audit_dir = tmp_path / "audit"
        service = IngestService(
            tenant,
            [spec],
            store,
            labels,
            tmp_path / "seen.db",
            policy=ResidencyPolicy.from_yaml(POLICY),
            store_labels=STORE,
            fleet=FleetRegistry(tenant, tmp_path / "state" / "fleet.db"),
            audit_dir=audit_dir,
            audit_interval_s=0.0,
        )
        ingest = IngestWorker(service, settings, client_id=f"ingest-{tenant}")
        (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
        (tmp_path / "salt").write_bytes(SALT)
        private, public = generate_keypair()
        config = agent_config(
            tmp_path,
            spec=tmp_path / f"{PIPELINE}.yaml",
            key=write_key(tmp_path, public),
            source={
                "ref": "tests.integration.cloud_head.test_residency_mqtt:PaymentSource",
                "args": {"count": 40},
            },
            host=mqtt_broker.host,
            port=mqtt_broker.port,
            node="cam-lux-1",
            tenant=tenant,
            labels=EDGE,
            residency={"policy": "policy.yaml", "store_labels": STORE, "salt_file": "salt"},
        )
        cloud = CloudStandIn(mqtt_broker.host, mqtt_broker.port, tenant)
        forger = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        agent: EdgeAgent | None = None
        try:
            fleet.start()
            ingest.start()
            wait_for(lambda: ingest.connected and fleet.connected)
            agent = EdgeAgent(AgentSettings.load(config))
            agent.start()
            # Ingest knows a node from its status; the model rolls out once it is known.
            wait_for(lambda: fleet_registry.get("cam-lux-1") is not None)
            artifact = build_model(tmp_path / "v1.onnx")
            want = desired_for(artifact, private, model="scorer", version="v1")
            cloud.publish_artifact(artifact, want)
            cloud.set_desired("cam-lux-1", {PIPELINE: want}, 1, signer=private)
            wait_for(lambda: service.stats()["stored"] >= 40, timeout_s=30.0)

            # A plain paho client forges a raw IBAN from a known node, and a batch from a
            # node labelled in a jurisdiction the policy does not allow.
            forger.connect(mqtt_broker.host, mqtt_broker.port)
            forger.loop_start()
            for node, labels_of in (
                ("cam-lux-2", {**EDGE, SITE: "lux-2"}),
                ("cam-us", {TIER: "edge", SITE: "iad-1", COUNTRY: "US", JURISDICTION: "US"}),
            ):
                info = forger.publish(
                    topics.node_status(tenant, node), status(tenant, node, labels_of), 1, True
                )
                info.wait_for_publish(5)
            wait_for(lambda: fleet_registry.get("cam-us") is not None)
            wait_for(lambda: fleet_registry.get("cam-lux-2") is not None)
            stored_before = service.stats()["stored"]
            for node, payload in (
                ("cam-lux-2", forged("cam-lux-2", 1, iban=IBAN)),
                ("cam-us", forged("cam-us", 1)),
            ):
                info = forger.publish(topics.samples(tenant, PIPELINE, node), payload, 1)
                info.wait_for_publish(5)
            wait_for(lambda: service.stats()["rejected_total"] >= 2)
            stats = service.stats()
            assert stats["rejected"] == {"policy_field": 1, "policy": 1}
            assert stats["stored"] == stored_before
            assert ingest.connected
            # The worker keeps going: a well-formed batch of the known node is stored.
            good = forged("cam-lux-2", 2, operator=hash_field("operator", "x", salt=SALT))
            forger.publish(topics.samples(tenant, PIPELINE, "cam-lux-2"), good, 1).wait_for_publish(
                5
            )
            wait_for(lambda: service.stats()["stored"] == stored_before + 1)
        finally:
            if agent is not None:
                agent.stop(timeout_s=5.0)
            for node in ("cam-lux-2", "cam-us", "cam-lux-1"):
                forger.publish(topics.node_status(tenant, node), b"", 1, True)
            for topic in cloud.retained_topics | {topics.node_desired(tenant, "cam-lux-1")}:
                cloud.publish(topic, b"", retain=True)
            forger.disconnect()
            forger.loop_stop()
            cloud.close()
            ingest.stop()
            fleet.stop()
            service.close()
            labels.close()

        files = store.files(tenant, PIPELINE)
        assert files
        table = store.read(tenant, PIPELINE)
        assert "field_iban" not in table.column_names
        for path in files:
            assert "field_iban" not in pq.read_schema(path).names
        expected = hash_field("operator", OPERATOR, salt=SALT)
        edge_rows = [
            v
            for v, n in zip(
                table.column("field_operator").to_pylist(),
                table.column("node").to_pylist(),
                strict=True,
            )
            if n == "cam-lux-1"
        ]
        assert edge_rows and set(edge_rows) == {expected}
        assert table.column("field_amount").to_pylist()[0] == "12.5"
        raw = b"".join(Path(p).read_bytes() for p in files)
        assert IBAN.encode() not in raw
        assert OPERATOR.encode() not in raw
        assert b"cam-us" not in raw
        with AuditLog(audit_dir) as log:
            refusals = log.records(tenant, action=AuditAction.POLICY_REFUSAL)
            uplinked = log.records(tenant, action=AuditAction.UPLINK_BATCH)
            assert log.verify(tenant).ok
        assert {(r.details["node"], r.details["reason"]) for r in refusals} == {
            ("cam-lux-2", "policy_field"),
            ("cam-us", "policy"),
        }
        counted = sum(r.details["nodes"].get("cam-lux-1", {}).get("count", 0) for r in uplinked)
        assert counted == 40


class TestANodeWhoseStatusIsLate:
    def test_its_batches_wait_unacknowledged_and_are_stored_once_it_is_known(
        self, tmp_path: Path, mqtt_broker: EmbeddedBroker
    ) -> None:
        """An agent's first batches can overtake its status: none may be lost (DESIGN §7.1)."""
        tenant = f"late-{uuid.uuid4().hex[:8]}"
        spec = write_spec(tmp_path, tenant)
        settings = BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port)
        fleet_registry = FleetRegistry(tenant, tmp_path / "state" / "fleet.db")
        fleet = FleetWorker(fleet_registry, settings)
        labels = LabelStore(tmp_path / "labels.db")
        service = IngestService(
            tenant,
            [spec],
            SampleStore(tmp_path / "store"),
            labels,
            tmp_path / "seen.db",
            policy=ResidencyPolicy.from_yaml(POLICY),
            store_labels=STORE,
            fleet=FleetRegistry(tenant, tmp_path / "state" / "fleet.db"),
            node_grace_s=60.0,
        )
        ingest = IngestWorker(service, settings, client_id=f"ingest-{tenant}")
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        try:
            fleet.start()
            ingest.start()
            wait_for(lambda: ingest.connected and fleet.connected)
            sender.connect(mqtt_broker.host, mqtt_broker.port)
            sender.loop_start()
            for seq in range(5):
                sender.publish(
                    topics.samples(tenant, PIPELINE, "cam-late"), forged("cam-late", seq), 1
                ).wait_for_publish(5)
            wait_for(lambda: service.stats()["deferred"] >= 5)
            time.sleep(1.0)  # offered again meanwhile, still unknown
            assert service.stats()["stored"] == 0 and service.stats()["rejected_total"] == 0

            sender.publish(
                topics.node_status(tenant, "cam-late"), status(tenant, "cam-late", EDGE), 1, True
            ).wait_for_publish(5)
            wait_for(lambda: service.stats()["stored"] == 5, timeout_s=20.0)
            assert service.stats()["rejected_total"] == 0
            assert service.is_seen(PIPELINE, codec.sample_id("cam-late", 4))
        finally:
            sender.loop_stop()
            sender.disconnect()
            ingest.stop()
            fleet.stop()
            service.close()
            labels.close()
            fleet_registry.close()
