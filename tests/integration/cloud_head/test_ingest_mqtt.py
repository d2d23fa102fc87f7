"""Ingest over a real mosquitto: exactly-once storage, bad input survived, persistent session."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_head.fleet import FleetRegistry
from cloud_head.ingest import IngestService, IngestWorker, _worker
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum import select
from continuum.embedded import EmbeddedBroker
from continuum.residency import ResidencyPolicy
from continuum.spec import DataClass, EdgeStageSpec, PipelineSpec, TensorSchema, UplinkSpec
from continuum.wire import codec, topics
from continuum.wire.messages import (
    MAX_RECEIPT_RANGES,
    SCHEMA_VERSION,
    NodeStatus,
    StoredReceipt,
    merge_seq_ranges,
)
from continuum.wire.mqtt import BrokerSettings
from tests.edge_agent_kit import CloudStandIn

pytestmark = pytest.mark.integration


def make_spec(tenant: str) -> PipelineSpec:
    return PipelineSpec(
        name="digits",
        tenant=tenant,
        data_class="confidential",
        edge=EdgeStageSpec(model="inspector", input=TensorSchema(shape=(1, 8, 8))),
        uplink=UplinkSpec(policy=select.random(0.1)),
    )


def make_batch(seqs: range, node: str = "cam-1") -> codec.SampleBatch:
    records = tuple(
        codec.SampleRecord(seq=s, captured_at_ns=s, tensor=np.full((1, 8, 8), s, dtype=np.float32))
        for s in seqs
    )
    return codec.SampleBatch("digits", node, "v1", DataClass.CONFIDENTIAL, records)


class Publisher:
    """A plain paho publisher, as an edge box would be."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"pub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


class Rig:
    """One tenant's ingest: stores, service and worker, on its own topics."""

    def __init__(self, tmp_path: Path, broker: EmbeddedBroker) -> None:
        self.tenant = f"it-{uuid.uuid4().hex[:8]}"
        self.store = SampleStore(tmp_path / "samples")
        self.labels = LabelStore(tmp_path / "labels.db")
        self.service = IngestService(
            self.tenant, [make_spec(self.tenant)], self.store, self.labels, tmp_path / "seen.db"
        )
        self.settings = BrokerSettings(host=broker.host, port=broker.port, session_expiry_s=600)
        self.client_id = f"ingest-{self.tenant}"
        self.worker = self.new_worker()

    def new_worker(self) -> IngestWorker:
        return IngestWorker(self.service, self.settings, client_id=self.client_id)

    def topic(self, node: str = "cam-1") -> str:
        return topics.samples(self.tenant, "digits", node)

    def handled(self) -> int:
        stats = self.service.stats()
        return int(stats["batches"] + stats["rejected_total"] + stats["feedback_batches"])

    def close(self) -> None:
        self.worker.stop()
        self.service.close()
        self.labels.close()


@pytest.fixture
def rig(tmp_path: Path, mqtt_broker: EmbeddedBroker) -> Iterator[Rig]:
    rig = Rig(tmp_path, mqtt_broker)
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def publisher(mqtt_broker: EmbeddedBroker) -> Iterator[Publisher]:
    pub = Publisher(mqtt_broker)
    try:
        yield pub
    finally:
        pub.close()


class TestExactlyOnce:
    def test_valid_samples_are_stored_once_and_garbage_is_counted(
        self, rig: Rig, publisher: Publisher
    ) -> None:
        rig.worker.start()
        wait_for(lambda: rig.worker.connected)
        first, second = make_batch(range(0, 10)), make_batch(range(5, 15))
        messages = [
            (rig.topic(), codec.encode_samples(first)),
            (rig.topic(), b"\x00garbage\xff" * 10),
            (rig.topic(), codec.encode_samples(first)),  # a resend after a lost PUBACK
            (rig.topic("cam-2"), codec.encode_samples(first)),  # node_mismatch
            (rig.topic(), codec.encode_samples(second)),  # overlaps the first
            (rig.topic(), b""),
        ]
        for topic, payload in messages:
            publisher.send(topic, payload)
        wait_for(lambda: rig.handled() == len(messages))
        stats = rig.service.stats()
        assert stats["stored"] == 15
        assert stats["duplicates"] == 15
        assert stats["rejected"] == {"bad_magic": 1, "node_mismatch": 1, "truncated": 1}
        table = rig.store.read(rig.tenant, "digits")
        assert sorted(table.column("seq").to_pylist()) == list(range(15))
        assert len(rig.store.files(rig.tenant, "digits")) >= 1
        # The worker kept running through the garbage.
        publisher.send(rig.topic(), codec.encode_samples(make_batch(range(15, 20))))
        wait_for(lambda: rig.store.count(rig.tenant, "digits") == 20)
        assert rig.worker.stats()["connected"]

    def test_feedback_is_recorded_as_labels(self, rig: Rig, publisher: Publisher) -> None:
        rig.worker.start()
        wait_for(lambda: rig.worker.connected)  # subscribed: a new session gets no backlog
        feedback = codec.FeedbackBatch("digits", "cam-1", ((1, 4), (2, 5)))
        publisher.send(
            topics.feedback(rig.tenant, "digits", "cam-1"), codec.encode_feedback(feedback)
        )
        wait_for(lambda: rig.labels.count(rig.tenant, "digits") == 2)
        assert rig.service.stats()["labels"] == 2


class TestReceipts:
    def test_labels_are_confirmed_apart_from_samples_in_receipts_of_bounded_size(
        self, rig: Rig, publisher: Publisher, mqtt_broker: EmbeddedBroker
    ) -> None:
        node = "cam-1"
        listener = CloudStandIn(mqtt_broker.host, mqtt_broker.port, rig.tenant)
        try:
            listener.subscribe(topics.node_stored(rig.tenant, node))
            rig.worker.start()
            wait_for(lambda: rig.worker.connected)
            # Every other seq: one range per label, one more than a receipt may carry.
            items = tuple((2 * i, i % 10) for i in range(MAX_RECEIPT_RANGES + 1))
            feedback = codec.FeedbackBatch("digits", node, items)
            publisher.send(
                topics.feedback(rig.tenant, "digits", node), codec.encode_feedback(feedback)
            )
            publisher.send(rig.topic(node), codec.encode_samples(make_batch(range(100, 105))))

            def receipts() -> list[StoredReceipt]:
                return [StoredReceipt.from_payload(m[1]) for m in listener.messages("/stored")]

            wait_for(
                lambda: (
                    sum(len(r.labels) for r in receipts()) == len(items)
                    and any(r.seqs for r in receipts())
                )
            )
            got = receipts()
        finally:
            listener.close()
        assert {r.node for r in got} == {node}
        assert all(len(r.labels) <= MAX_RECEIPT_RANGES for r in got)
        # Apart: an agent from before label receipts must still take its samples' receipts.
        assert not any(r.seqs and r.labels for r in got)
        labelled = merge_seq_ranges(span for r in got for span in r.labels)
        assert labelled == [(seq, seq) for seq, _ in items]
        assert merge_seq_ranges(span for r in got for span in r.seqs) == [(100, 104)]
        assert rig.labels.count(rig.tenant, "digits") == len(items)


class TestPersistentSession:
    def test_samples_sent_while_ingest_is_down_arrive_when_it_returns(
        self, rig: Rig, publisher: Publisher
    ) -> None:
        rig.worker.start()
        wait_for(lambda: rig.worker.connected)
        publisher.send(rig.topic(), codec.encode_samples(make_batch(range(0, 5))))
        wait_for(lambda: rig.store.count(rig.tenant, "digits") == 5)
        rig.worker.stop()
        for start in range(5, 30, 5):
            publisher.send(rig.topic(), codec.encode_samples(make_batch(range(start, start + 5))))
        assert rig.store.count(rig.tenant, "digits") == 5
        rig.worker = rig.new_worker()
        rig.worker.start()
        wait_for(lambda: rig.store.count(rig.tenant, "digits") == 30)
        assert rig.service.stats()["duplicates"] == 0

    def test_ingest_reconnects_after_a_broker_restart(
        self, tmp_path: Path, private_mqtt_broker: EmbeddedBroker
    ) -> None:
        rig = Rig(tmp_path, private_mqtt_broker)
        try:
            rig.worker.start()
            wait_for(lambda: rig.worker.connected)
            assert rig.worker.stats()["disconnected_since"] is None
            killed_at = time.time()
            private_mqtt_broker.kill()
            wait_for(lambda: not rig.worker.connected)
            stats = rig.worker.stats()  # the head says it lost the broker, and since when
            assert stats["disconnects"] == 1
            assert killed_at - 0.5 <= stats["disconnected_since"] <= killed_at + 2.0
            private_mqtt_broker.start()
            wait_for(lambda: rig.worker.connected, timeout_s=30)
            assert rig.worker.stats()["disconnected_since"] is None
            pub = Publisher(private_mqtt_broker)
            try:
                pub.send(rig.topic(), codec.encode_samples(make_batch(range(3))))
            finally:
                pub.close()
            wait_for(lambda: rig.store.count(rig.tenant, "digits") == 3)
        finally:
            rig.close()


class TestUnknownNodes:
    """Batches of a node the fleet does not know yet are parked unacknowledged for its
    grace; each holds one of the broker's in-flight slots for ingest's session."""

    def test_unknown_nodes_never_stall_the_batches_of_a_known_one(
        self, tmp_path: Path, private_mqtt_broker: EmbeddedBroker
    ) -> None:
        # Without a cap on parked messages, the 20 unknown nodes' batches parked first fill
        # mosquitto's in-flight window and the known node's batch waits out their grace.
        tenant = f"it-{uuid.uuid4().hex[:8]}"
        fleet = FleetRegistry(tenant, tmp_path / "fleet.db")
        status = NodeStatus(
            schema_version=SCHEMA_VERSION,
            node="cam-known",
            tenant=tenant,
            online=True,
            labels={"continuum.io/tier": "edge"},
            agent_version="test",
            ts=time.time(),
        )
        assert fleet.handle(topics.node_status(tenant, "cam-known"), status.to_payload()).kind
        labels = LabelStore(tmp_path / "labels.db")
        store = SampleStore(tmp_path / "samples")
        service = IngestService(
            tenant,
            [make_spec(tenant)],
            store,
            labels,
            tmp_path / "seen.db",
            policy=ResidencyPolicy.from_yaml(
                "classes: {public: {}, internal: {}, confidential: {}, restricted: {}}"
            ),
            store_labels={"continuum.io/tier": "cloud"},
            fleet=fleet,
            node_grace_s=60.0,
        )
        settings = BrokerSettings(host=private_mqtt_broker.host, port=private_mqtt_broker.port)
        worker = IngestWorker(service, settings, client_id=f"ingest-{tenant}")
        publisher = Publisher(private_mqtt_broker)
        try:
            worker.start()
            wait_for(lambda: worker.connected)
            # More unknown nodes than mosquitto's default 20 in-flight messages per client.
            for i in range(25):
                node = f"cam-new-{i}"
                batch = codec.encode_samples(make_batch(range(1), node=node))
                publisher.send(topics.samples(tenant, "digits", node), batch)
            known = codec.encode_samples(make_batch(range(5), node="cam-known"))
            publisher.send(topics.samples(tenant, "digits", "cam-known"), known)
            wait_for(lambda: store.count(tenant, "digits") == 5, timeout_s=10.0)
            # Past the parking room the rest were held: acknowledged, with no receipt.
            assert worker.stats()["unparked"] == 25 - _worker._MAX_PARKED
            assert service.stats()["rejected_total"] == 0
        finally:
            publisher.close()
            worker.stop()
            service.close()
            labels.close()
            fleet.close()
