"""The uplink's protocol (``UplinkPump``), thread-free: a real outbox file, a recording link
that answers publishes as the test says, and the wire codec reading what went out."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from continuum.errors import NotReadyError
from continuum.wire import topics
from continuum.wire.codec import decode_feedback, decode_samples
from continuum.wire.messages import (
    SCHEMA_VERSION,
    RefusedSeqs,
    ReportedModel,
    ReportedState,
    StoredReceipt,
    Telemetry,
)
from edge_agent.link import PublishCallback, PublishOutcome
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import FeedbackEntry, Outbox, SampleEntry
from edge_agent.uplink._pump import Ack, UplinkPump

NODE, TENANT, PIPELINE = "edge-1", "acme", "inspect"
DELIVERED = PublishOutcome(True, "Success", 100)
NOBODY = PublishOutcome(False, "no_matching_subscribers", 100)


@dataclass
class Sent:
    topic: str
    payload: bytes
    retain: bool
    on_done: PublishCallback | None


@dataclass
class RecordingLink:
    """The link as the pump sees it: connected, a window of ``slots`` publishes, and every
    publish recorded for the test to read and to answer (``answer``)."""

    slots: int = 8
    connected: bool = True
    sent: list[Sent] = field(default_factory=list)
    waiting: list[Sent] = field(default_factory=list)

    @property
    def inflight(self) -> int:
        return len(self.waiting)

    def free_slots(self) -> int:
        return self.slots - len(self.waiting)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        on_done: PublishCallback | None = None,
        force: bool = False,
    ) -> int:
        if not self.connected:
            raise NotReadyError("the MQTT link is not connected")
        if not force and self.free_slots() <= 0:
            raise NotReadyError("the MQTT in-flight window is full")
        message = Sent(topic, payload, retain, on_done)
        self.sent.append(message)
        if on_done is not None:
            self.waiting.append(message)
        return len(self.sent)

    def answer(self, outcome: PublishOutcome) -> None:
        """The broker answers the oldest publish waiting for its PUBACK."""
        message = self.waiting.pop(0)
        assert message.on_done is not None
        message.on_done(outcome)

    def on(self, part: str) -> list[Sent]:
        return [m for m in self.sent if part in m.topic]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A pump on a real outbox file, with the acks it hands over kept for ``settle_all``."""

    def __init__(self, path: Path, **outbox_options: Any) -> None:
        self.outbox = Outbox(path, max_bytes=1 << 24, ttl_s=3600.0, **outbox_options)
        self.link = RecordingLink()
        self.metrics = AgentMetrics()
        self.clock = Clock()
        self.acks: list[Ack] = []
        self.pump = UplinkPump(
            node=NODE,
            tenant=TENANT,
            outbox=self.outbox,
            publisher=self.link,
            metrics=self.metrics,
            status_payload=lambda: b"status",
            heartbeat_interval_s=30.0,
            max_records=100,
            max_bytes=1 << 20,
            handover=self.acks.append,
            clock=self.clock,
        )

    def select(self, count: int, *, data_class: str = "internal") -> list[int]:
        """Put ``count`` selected samples into the outbox; return their seqs."""
        entries = [
            SampleEntry(
                pipeline=PIPELINE,
                model_version="v1",
                data_class=data_class,
                seq=seq,
                captured_at_ns=time.time_ns(),
                tensor=np.full((4,), float(seq % 7), dtype=np.float32),
                prediction=1,
                confidence=0.5,
            )
            for seq in self.outbox.reserve_seqs(count)
        ]
        self.outbox.append_samples(entries)
        return [e.seq for e in entries]

    def answer_all(self, outcome: PublishOutcome) -> None:
        """The broker answers every waiting publish; the pump settles what it handed over."""
        while self.link.waiting:
            self.link.answer(outcome)
        while self.acks:
            self.pump.settle(self.acks.pop(0))

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path / "outbox.db")
    yield made
    made.outbox.close()


@pytest.fixture
def receipts_rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path / "outbox.db", resend_unconfirmed_s=60.0)
    yield made
    made.outbox.close()


class TestSamplesGoOut:
    def test_pending_samples_go_out_as_one_decodable_batch_on_their_topic(self, rig: Rig) -> None:
        seqs = rig.select(3)
        rig.pump.send_samples()
        (message,) = rig.link.sent
        assert message.topic == topics.samples(TENANT, PIPELINE, NODE)
        assert not message.retain
        batch = decode_samples(message.payload)
        assert (batch.node, batch.pipeline, batch.model_version) == (NODE, PIPELINE, "v1")
        assert [r.seq for r in batch.records] == seqs
        assert rig.sample("continuum_edge_messages_published_total", kind="samples") == 1
        rig.pump.send_samples()  # leased until the broker answers: not sent twice
        assert len(rig.link.sent) == 1

    def test_a_full_in_flight_window_stops_the_pump(self, rig: Rig) -> None:
        rig.link.slots = 2
        rig.select(1)
        rig.pump.send_samples()
        assert len(rig.link.sent) == 1
        rig.select(2)
        rig.pump.send_samples()
        assert rig.link.inflight == 2 and len(rig.link.sent) == 2
        rig.select(1)
        rig.pump.send_samples()  # the window is full
        assert len(rig.link.sent) == 2

    def test_a_puback_deletes_the_samples_without_receipts(self, rig: Rig) -> None:
        rig.select(3)
        rig.pump.send_samples()
        assert rig.acks == []  # nothing answered yet
        rig.answer_all(DELIVERED)
        assert rig.outbox.stats().samples == 0
        assert rig.sample("continuum_edge_messages_acked_total", kind="samples") == 1
        assert rig.sample("continuum_edge_uplink_bytes_total", kind="samples") == 100

    def test_a_link_that_drops_mid_publish_gets_the_samples_again(self, rig: Rig) -> None:
        seqs = rig.select(2)
        rig.link.connected = False
        with pytest.raises(NotReadyError):
            rig.pump.send_samples()
        rig.link.connected = True
        rig.pump.send_samples()
        assert [r.seq for r in decode_samples(rig.link.sent[-1].payload).records] == seqs


class TestReceipts:
    def test_with_receipts_a_puback_keeps_the_samples_until_ingest_confirms(
        self, receipts_rig: Rig
    ) -> None:
        rig = receipts_rig
        seqs = rig.select(3)
        rig.pump.send_samples()
        rig.answer_all(DELIVERED)
        part = rig.outbox.stats().pipelines[PIPELINE]
        assert (part.samples, part.samples_awaiting_receipt) == (3, 3)
        rig.pump.apply_receipt(_receipt(seqs=[(seqs[0], seqs[-1])]))
        assert rig.outbox.stats().samples == 0
        assert rig.sample("continuum_edge_samples_confirmed_total") == 3
        assert rig.sample("continuum_edge_receipts_total") == 1

    def test_samples_refused_for_good_end_counted_recorded_and_logged_once(
        self, receipts_rig: Rig, caplog: pytest.LogCaptureFixture
    ) -> None:
        rig = receipts_rig
        seqs = rig.select(4)
        rig.pump.send_samples()
        rig.answer_all(DELIVERED)
        refusal = RefusedSeqs(reason="policy", seqs=[(seqs[0], seqs[1]), (seqs[3], seqs[3])])
        with caplog.at_level(logging.WARNING, logger="edge_agent.uplink"):
            rig.pump.apply_receipt(_receipt(seqs=[(seqs[2], seqs[2])], refused=[refusal]))
        assert rig.outbox.stats().samples == 0
        assert [(r.first_seq, r.last_seq, r.reason) for r in rig.outbox.refused()] == [
            (seqs[0], seqs[1], "policy"),
            (seqs[3], seqs[3], "policy"),
        ]
        refused = rig.sample(
            "continuum_edge_samples_refused_total", pipeline=PIPELINE, reason="policy"
        )
        assert refused == 3
        (line,) = [r.getMessage() for r in caplog.records]
        assert f"{NODE}:{seqs[0]}-{seqs[1]}" in line and f"{NODE}:{seqs[3]}" in line

    def test_a_receipt_for_samples_never_sent_ends_none(self, receipts_rig: Rig) -> None:
        rig = receipts_rig
        seqs = rig.select(2)
        rig.pump.apply_receipt(_receipt(seqs=[(seqs[0], seqs[-1])]))
        assert rig.outbox.stats().samples == 2


class TestNobodyListening:
    def test_samples_routed_nowhere_are_kept_and_held_back_a_while(self, rig: Rig) -> None:
        seqs = rig.select(2)
        rig.pump.send_samples()
        rig.answer_all(NOBODY)
        assert rig.outbox.stats().samples == 2
        failed = rig.sample(
            "continuum_edge_messages_not_acked_total", kind="samples", reason=NOBODY.reason
        )
        assert failed == 1
        assert rig.pump.held("samples") and not rig.pump.held("feedback")
        rig.pump.send_samples()
        assert len(rig.link.sent) == 1  # held back
        rig.clock.now += 1.0  # the first hold is at most _HOLD_MIN_S
        rig.pump.send_samples()
        assert len(rig.link.sent) == 2
        assert [r.seq for r in decode_samples(rig.link.sent[-1].payload).records] == seqs

    def test_the_hold_grows_while_nobody_listens_and_ends_with_a_delivery(
        self, rig: Rig, caplog: pytest.LogCaptureFixture
    ) -> None:
        rig.select(1)
        with caplog.at_level(logging.WARNING, logger="edge_agent.uplink"):
            for _ in range(3):
                rig.clock.now += 60.0
                rig.pump.send_samples()
                rig.answer_all(NOBODY)
            rig.clock.now += 1.0  # the third hold is at least 2 s (jittered 2..4 s)
            assert rig.pump.held("samples")
            rig.clock.now += 3.0
            rig.pump.send_samples()
            rig.answer_all(DELIVERED)
        assert rig.outbox.stats().samples == 0 and not rig.pump.held("samples")
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2, messages  # once when it started, once when it ended
        assert "no subscriber" in messages[0] and "recovered" in messages[1]

    def test_telemetry_nobody_listens_to_is_not_kept_or_held(self, rig: Rig) -> None:
        rig.pump.send_telemetry(_telemetry())
        (message,) = rig.link.sent
        assert message.topic == topics.telemetry(TENANT, PIPELINE, NODE)
        rig.answer_all(NOBODY)
        assert not rig.pump.held("telemetry") and not rig.pump.held("samples")


class TestDelayedLabels:
    def test_due_labels_go_out_and_later_ones_wait(self, rig: Rig) -> None:
        now = time.time()
        rig.outbox.append_feedback(
            [
                FeedbackEntry(pipeline=PIPELINE, seq=5, label=2, due_at=now - 1.0),
                FeedbackEntry(pipeline=PIPELINE, seq=6, label=3, due_at=now + 3600.0),
            ]
        )
        rig.pump.send_feedback()
        (message,) = rig.link.sent
        assert message.topic == topics.feedback(TENANT, PIPELINE, NODE)
        assert decode_feedback(message.payload).items == ((5, 2),)
        rig.answer_all(DELIVERED)
        assert rig.outbox.stats().feedback == 1
        assert rig.pump.outbox_idle()  # only a label that falls due later is left
        rig.select(1)
        assert not rig.pump.outbox_idle()


class TestRecordsTheWireRefuses:
    def test_samples_the_codec_refuses_are_dropped_once_and_counted(self, rig: Rig) -> None:
        rig.select(2, data_class="no-such-class")
        rig.pump.send_samples()
        assert rig.link.sent == []
        assert rig.outbox.stats().samples == 0
        dropped = rig.sample(
            "continuum_edge_records_dropped_total", pipeline=PIPELINE, reason="unencodable"
        )
        assert dropped == 2

    def test_a_label_the_codec_refuses_is_dropped_and_the_next_goes_out(self, rig: Rig) -> None:
        now = time.time()
        rig.outbox.append_feedback(
            [FeedbackEntry(pipeline=PIPELINE, seq=7, label=2**40, due_at=now - 1.0)]
        )
        rig.pump.send_feedback()
        assert rig.link.sent == [] and rig.outbox.stats().feedback == 0
        rig.outbox.append_feedback(
            [FeedbackEntry(pipeline=PIPELINE, seq=8, label=1, due_at=now - 1.0)]
        )
        rig.pump.send_feedback()
        assert decode_feedback(rig.link.sent[-1].payload).items == ((8, 1),)


class TestNodeState:
    def test_the_status_is_retained_and_repeated_once_per_heartbeat(self, rig: Rig) -> None:
        rig.pump.send_status()
        rig.pump.send_status()
        status = rig.link.on("/status")
        assert len(status) == 1 and status[0].retain and status[0].payload == b"status"
        assert status[0].topic == topics.node_status(TENANT, NODE)
        rig.clock.now += 30.0
        rig.pump.send_status()
        assert len(rig.link.on("/status")) == 2
        rig.pump.status_now()  # the link reconnected
        rig.pump.send_status()
        assert len(rig.link.on("/status")) == 3

    def test_the_reported_state_is_retained(self, rig: Rig) -> None:
        state = ReportedState(
            schema_version=SCHEMA_VERSION,
            node=NODE,
            pipelines={
                PIPELINE: ReportedModel(
                    model="inspector", version="v1", sha256="0" * 64, state="serving"
                )
            },
            ts=time.time(),
        )
        rig.pump.send_reported(state)
        (message,) = rig.link.on("/reported")
        assert message.retain and ReportedState.from_payload(message.payload) == state


class TestUpkeep:
    def test_the_gauges_show_the_outbox_and_the_link(self, rig: Rig) -> None:
        rig.select(3)
        rig.pump.maintain()
        depth = rig.sample("continuum_edge_outbox_depth", pipeline=PIPELINE, kind="samples")
        assert depth == 3
        assert rig.sample("continuum_edge_broker_connected") == 1.0


def _receipt(
    *, seqs: list[tuple[int, int]], refused: list[RefusedSeqs] | None = None
) -> StoredReceipt:
    return StoredReceipt(
        schema_version=SCHEMA_VERSION, node=NODE, seqs=seqs, refused=refused or [], ts=time.time()
    )


def _telemetry() -> Telemetry:
    return Telemetry(
        schema_version=SCHEMA_VERSION,
        node=NODE,
        pipeline=PIPELINE,
        model_version="v1",
        window_s=1.0,
        frames=1,
        uplinked=0,
        dropped=0,
        latency_p50_ms=None,
        latency_p95_ms=None,
        mean_confidence=None,
        drift_score=0.0,
        drifted=False,
        labelled=0,
        correct=0,
        ts=time.time(),
    )
