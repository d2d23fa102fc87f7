"""The edge agent against a real mosquitto: samples out, signed models in, bad input survived."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cloud_head.desired_state import DesiredStateBook, signed_desired_state
from continuum.embedded import EmbeddedBroker
from continuum.embedded._process import free_port
from continuum.errors import ConfigError
from continuum.signing import generate_keypair
from continuum.wire import topics
from continuum.wire.codec import decode_feedback, decode_samples
from continuum.wire.messages import (
    SCHEMA_VERSION,
    ArtifactManifest,
    DesiredState,
    NodeStatus,
    ReportedState,
    StoredReceipt,
    Telemetry,
)
from edge_agent.agent import EdgeAgent
from edge_agent.cli import main
from edge_agent.config import AgentSettings
from edge_agent.link import MAX_PACKET_BYTES
from tests.edge_agent_kit import (
    AgentRig,
    CloudStandIn,
    build_model,
    desired_for,
    pattern_source,
    wait_for,
    write_pipeline,
)
from tests.tools import assert_promtool_accepts_metrics

pytestmark = pytest.mark.integration

TENANT, PIPELINE = "acme", "inspect"
REPO = Path(__file__).resolve().parents[3]


class Rig(AgentRig):
    """The shared agent rig on the session broker, with a cloud stand-in that sees the
    tenant's topics and publishes the rollouts; agents stream a pattern at 200 fps."""

    def __init__(self, tmp_path: Path, broker: EmbeddedBroker, node: str) -> None:
        cloud = CloudStandIn(broker.host, broker.port, TENANT)
        super().__init__(
            tmp_path,
            host=broker.host,
            port=broker.port,
            node=node,
            tenant=TENANT,
            pipeline=PIPELINE,
            cloud=cloud,
        )
        self.tmp = tmp_path
        self.broker = broker
        self.cloud: CloudStandIn = cloud

    def config(
        self,
        *,
        source: Mapping[str, Any] | None = None,
        pattern: list[float] | None = None,
        count: int = -1,
        fps: float = 200.0,
        labels: list[int] | None = None,
        **settings: Any,
    ) -> Path:
        if source is None:
            source = pattern_source(
                pattern or [0.0], count=count, fps=fps, labels=labels or [0, 1], label_delay_s=0.2
            )
        # The stand-in cloud sends no receipts: the outbox lets go at the broker's PUBACK
        # (receipts are tested against the real ingest in test_edge_agent_exactly_once).
        settings.setdefault("confirm_stored", False)
        return super().config(source=source, **settings)

    def agent(self, **config: Any) -> EdgeAgent:
        """Build and start an agent."""
        agent = super().agent(**config)
        agent.start()
        return agent

    def reported(self) -> str | None:
        found = self.cloud.messages(topics.node_reported(TENANT, self.node))
        if not found or not found[-1][1]:
            return None
        entry = ReportedState.from_payload(found[-1][1]).pipelines.get(PIPELINE)
        return None if entry is None else f"{entry.version}:{entry.state}"

    def sample_versions(self) -> list[str]:
        return [
            decode_samples(p).model_version
            for _, p, _ in self.cloud.messages(f"/samples/{self.node}")
        ]

    def close(self) -> None:
        self.stop_agents()
        # Clear what this test left retained so other tests start clean.
        for topic in (
            {t for t, _, retained in self.cloud.received if retained}
            | set(self.cloud.retained_topics)
            | {
                topics.node_desired(TENANT, self.node),
                topics.node_status(TENANT, self.node),
                topics.node_reported(TENANT, self.node),
            }
        ):
            self.cloud.publish(topic, b"", retain=True)
        self.cloud.close()


@pytest.fixture
def rig(
    request: pytest.FixtureRequest, tmp_path: Path, mqtt_broker: EmbeddedBroker
) -> Iterator[Rig]:
    node = "n-" + request.node.name.lower().replace("_", "-")[5:40].strip("-")
    made = Rig(tmp_path, mqtt_broker, node)
    made.cloud.subscribe(f"ctm/{TENANT}/#")
    yield made
    made.close()


class TestSamplesReachTheCloud:
    def test_selected_samples_feedback_telemetry_and_status_arrive_decodable(
        self, rig: Rig
    ) -> None:
        agent = rig.agent(pattern=[1.0, 0.0])
        rig.roll_out("v1", 1)
        wait_for(lambda: rig.reported() == "v1:serving")
        batches = wait_for(
            lambda: (
                [decode_samples(p) for _, p, _ in rig.cloud.messages("/samples/")]
                if len(rig.cloud.messages("/samples/")) >= 3
                else None
            )
        )
        records = [r for b in batches for r in b.records]
        assert all(b.node == rig.node and b.model_version == "v1" for b in batches)
        assert all(b.data_class == "internal" for b in batches)
        assert all(r.tensor.shape == (1, 8, 8) and r.tensor.max() == 0.0 for r in records)
        ids = [b.sample_id(r) for b in batches for r in b.records]
        assert len(ids) == len(set(ids))
        feedback = wait_for(lambda: rig.cloud.messages("/feedback/"))
        items = decode_feedback(feedback[0][1]).items
        assert {seq for seq, _ in items} <= {r.seq for r in records} | {
            r.seq
            for b in (decode_samples(p) for _, p, _ in rig.cloud.messages("/samples/"))
            for r in b.records
        }
        windows = wait_for(
            lambda: [Telemetry.from_payload(p) for _, p, _ in rig.cloud.messages("/telemetry/")]
        )
        assert windows[0].model_version == "v1" and windows[0].frames > 0
        status = NodeStatus.from_payload(
            rig.cloud.messages(topics.node_status(TENANT, rig.node))[-1][1]
        )
        assert status.online and status.pipelines == [PIPELINE]
        assert "onnxruntime" in status.backends
        agent.stop(timeout_s=5.0)
        last = rig.cloud.messages(topics.node_status(TENANT, rig.node))[-1][1]
        assert NodeStatus.from_payload(last).online is False

    def test_nothing_selected_is_lost_when_the_broker_restarts(
        self, tmp_path: Path, private_mqtt_broker: EmbeddedBroker
    ) -> None:
        broker = private_mqtt_broker
        rig = Rig(tmp_path, broker, "edge-restart")
        # The cloud side holds a persistent session, as ingest does, so the broker keeps
        # what arrives for it while it is away.
        rig.cloud.close()
        rig.cloud = CloudStandIn(
            broker.host, broker.port, TENANT, client_id="ingest-1", session_expiry_s=300
        )
        try:
            rig.cloud.subscribe(f"ctm/{TENANT}/#")
            agent = rig.agent(pattern=[0.0], count=300, fps=150.0)
            rig.roll_out("v1", 1)
            wait_for(lambda: len(rig.cloud.messages("/samples/")) >= 2)
            rig.cloud.close()
            before = list(rig.cloud.received)
            broker.restart()
            time.sleep(0.5)  # the agent publishes into the broker while the cloud is away
            rig.cloud = CloudStandIn(
                broker.host, broker.port, TENANT, client_id="ingest-1", session_expiry_s=300
            )
            with rig.cloud.lock:
                rig.cloud.received[:0] = before
            wait_for(lambda: agent.runtimes[PIPELINE].finished, timeout_s=15.0)
            seen = wait_for(
                lambda: (
                    ids
                    if len(
                        ids := {
                            r.seq
                            for _, p, _ in rig.cloud.messages("/samples/")
                            for r in decode_samples(p).records
                        }
                    )
                    >= 300
                    else None
                ),
                timeout_s=15.0,
            )
            assert agent.link.connects >= 2
            assert len(seen) == 300  # every frame was selected; each arrived (dupes merged)
            assert agent.outbox.stats().samples == 0
        finally:
            rig.close()


class TestReceipts:
    def test_a_receipt_lets_the_sent_samples_go_on_the_pump_thread(self, rig: Rig) -> None:
        # The stand-in cloud plays ingest: it confirms the seqs of the samples it got.
        agent = rig.agent(pattern=[0.0], count=40, confirm_stored=True)
        rig.roll_out("v1", 1)
        confirming: set[str] = set()
        confirm = agent.outbox.confirm_samples

        def spy(ranges: Sequence[tuple[int, int]]) -> int:
            confirming.add(threading.current_thread().name)
            return confirm(ranges)

        agent.outbox.confirm_samples = spy  # type: ignore[method-assign]

        def sent_seqs() -> list[int]:
            return [
                int(seq)
                for _, payload, _ in rig.cloud.messages(f"/samples/{rig.node}")
                for seq in (r.seq for r in decode_samples(payload).records)
            ]

        wait_for(lambda: agent.runtimes[PIPELINE].finished and len(sent_seqs()) >= 1)
        wait_for(lambda: agent.outbox.stats().samples == len(set(sent_seqs())))
        seqs = sorted(set(sent_seqs()))
        receipt = StoredReceipt(node=rig.node, seqs=[(s, s) for s in seqs], ts=time.time())
        rig.cloud.publish(topics.node_stored(TENANT, rig.node), receipt.to_payload())

        wait_for(lambda: agent.outbox.stats().samples == 0)
        confirmed = f"continuum_edge_samples_confirmed_total {float(len(seqs))}"
        wait_for(lambda: confirmed in agent.metrics.render().decode())
        # Not the MQTT network thread, which also reads the PUBACKs: the uplink pump.
        assert confirming == {"ctm-uplink-" + TENANT}


def _telemetry(rig: Rig) -> list[Telemetry]:
    return [Telemetry.from_payload(p) for _, p, _ in rig.cloud.messages("/telemetry/")]


class TestUnsendableRecords:
    def test_a_label_the_wire_refuses_is_dropped_once_though_no_receipt_can_come(
        self, rig: Rig
    ) -> None:
        # A label beyond int32 cannot be encoded. Kept for a receipt as if sent, it would
        # come back every resend_unconfirmed_s, to be refused and counted again.
        agent = rig.agent(
            pattern=[0.0], count=3, labels=[2**40], confirm_stored=True, resend_unconfirmed_s=1.0
        )
        rig.roll_out("v1", 1)

        def unencodable() -> float | None:
            return agent.metrics.registry.get_sample_value(
                "continuum_edge_records_dropped_total",
                {"pipeline": PIPELINE, "reason": "unencodable"},
            )

        wait_for(lambda: unencodable() == 3)
        time.sleep(2.5)  # past resend_unconfirmed_s: nothing comes back to be refused again
        assert unencodable() == 3
        assert agent.outbox.stats().feedback == 0
        assert not rig.cloud.messages("/feedback/")


class TestFollowsSignedDesiredState:
    def test_a_new_version_is_fetched_verified_and_swapped_in(self, rig: Rig) -> None:
        agent = rig.agent(pattern=[0.0])
        rig.roll_out("v1", 1)
        wait_for(lambda: rig.reported() == "v1:serving")
        wait_for(lambda: "v1" in rig.sample_versions())
        rig.roll_out("v2", 2, favour=3)
        wait_for(lambda: rig.reported() == "v2:serving")
        wait_for(lambda: "v2" in rig.sample_versions())
        assert agent.runtimes[PIPELINE].model_version == "v2"
        models = sorted(p.name for p in (rig.tmp / "state" / "models" / PIPELINE).glob("*.onnx"))
        assert models == ["v1.onnx", "v2.onnx"]
        versions = wait_for(
            lambda: v if "v2" in (v := [w.model_version for w in _telemetry(rig)]) else None
        )
        assert versions.index("v2") > versions.index("v1")

    def test_a_tampered_artifact_is_rejected_and_the_old_model_keeps_serving(
        self, rig: Rig
    ) -> None:
        agent = rig.agent(pattern=[0.0])
        rig.roll_out("v1", 1)
        wait_for(lambda: rig.reported() == "v1:serving")
        rig.roll_out("v2", 2, tamper_chunk=0)
        wait_for(lambda: rig.reported() == "v2:rejected")
        count = len(rig.sample_versions())
        wait_for(lambda: len(rig.sample_versions()) > count + 2)
        assert set(rig.sample_versions()) == {"v1"}
        assert agent.runtimes[PIPELINE].model_version == "v1"
        assert not (rig.tmp / "state" / "models" / PIPELINE / "v2.onnx").exists()
        assert b'reason="digest_mismatch"' in agent.metrics.render()

    def test_a_wrong_signature_is_rejected_and_reported(self, rig: Rig) -> None:
        agent = rig.agent(pattern=[0.0])
        rig.roll_out("v1", 1)
        wait_for(lambda: rig.reported() == "v1:serving")
        stranger, _ = generate_keypair()
        rig.roll_out("v2", 2, signer=stranger)
        wait_for(lambda: rig.reported() == "v2:rejected")
        last = ReportedState.from_payload(
            rig.cloud.messages(topics.node_reported(TENANT, rig.node))[-1][1]
        )
        assert (last.pipelines[PIPELINE].error or "").startswith("bad_signature")
        assert agent.runtimes[PIPELINE].model_version == "v1"


class TestRefusesForgedOrStaleDesiredState:
    """Issue 14: the desired state is signed whole and fresh; nothing else moves a node."""

    def test_bad_orders_are_refused_and_the_clouds_next_real_one_applies(
        self, rig: Rig, caplog: pytest.LogCaptureFixture
    ) -> None:
        agent = rig.agent(pattern=[0.0])
        published: list[bytes] = []

        def publish(topic: str, payload: bytes) -> None:
            published.append(payload)
            rig.cloud.publish(topic, payload, retain=True)

        # The cloud's own book signs and publishes: what it sends verifies on the node.
        book = DesiredStateBook(
            rig.tmp / "desired.sqlite3", TENANT, publish, private_key_pem=rig.private
        )
        wants = {}
        for version, favour in (("v1", 0), ("v2", 3), ("v3", 5)):
            artifact = build_model(rig.tmp / f"{version}.onnx", favour=favour)
            wants[version] = desired_for(artifact, rig.private, model="inspector", version=version)
            rig.cloud.publish_artifact(artifact, wants[version])
        book.assign(rig.node, PIPELINE, wants["v1"])
        wait_for(lambda: rig.reported() == "v1:serving")
        book.assign(rig.node, PIPELINE, wants["v2"])
        wait_for(lambda: rig.reported() == "v2:serving")
        first = DesiredState.from_payload(published[0])

        desired = topics.node_desired(TENANT, rig.node)
        stranger, _ = generate_keypair()
        now = time.time()

        def signed(signer: bytes, **fields: Any) -> DesiredState:
            return signed_desired_state(
                signer,
                tenant=fields.pop("tenant", TENANT),
                node=fields.pop("node", rig.node),
                pipelines={PIPELINE: wants["v1"]},
                generation=fields.pop("generation", 2**63 - 1),
                issued_at=fields.pop("issued_at", now),
                validity_s=3600.0,
            )

        forgeries = [
            # unsigned, with the largest generation there is
            signed(rig.private).model_copy(update={"signature": None}),
            signed(rig.private).model_copy(update={"signature": None}),  # logged once
            # a real signature on generation 3, the generation then raised to 2**63-1
            signed(rig.private, generation=3).model_copy(update={"generation": 2**63 - 1}),
            # well formed, but signed by another key
            signed(stranger),
            # the tenant's, but for another node (or another tenant's node of that name)
            signed(rig.private, node="someone-else"),
            signed(rig.private, tenant="globex"),
            # expired an hour ago; issued an hour from now
            signed(rig.private, issued_at=now - 7200.0),
            signed(rig.private, issued_at=now + 3600.0),
            # the cloud's first order, replayed after its second was taken
            first,
        ]
        expected = {
            "desired_unsigned": 2,
            "desired_bad_signature": 2,
            "desired_wrong_node": 2,
            "desired_expired": 1,
            "desired_not_yet_valid": 1,
            "desired_stale": 1,
        }
        with caplog.at_level(logging.WARNING, logger="edge_agent.model_manager._desired"):
            for forged in forgeries:
                rig.cloud.publish(desired, forged.to_payload(), retain=True)
            wait_for(lambda: agent.models.rejected_messages == expected)
        unsigned = [r for r in caplog.records if "(desired_unsigned)" in r.getMessage()]
        assert len(unsigned) == 1  # the second is only counted
        rendered = agent.metrics.render().decode()
        for reason, count in expected.items():
            line = f'continuum_edge_messages_rejected_total{{reason="{reason}"}} {count}.0'
            assert line in rendered
        count = len(rig.sample_versions())
        wait_for(lambda: len(rig.sample_versions()) > count + 2)
        assert set(rig.sample_versions()[count:]) == {"v2"}  # served v2 all along
        assert rig.reported() == "v2:serving"

        # Restarted, the node still knows the last generation it took: the replayed first
        # order, still retained, is refused again.
        rig.stop_agents()
        again = rig.agent(pattern=[0.0])
        wait_for(lambda: again.models.rejected_messages == {"desired_stale": 1})
        # Signed and fresh, but back to v1 without the cloud's rollback mark.
        second = DesiredState.from_payload(published[-1])
        downgrade = signed(rig.private, generation=second.generation + 1)
        rig.cloud.publish(desired, downgrade.to_payload(), retain=True)
        refused = {"desired_stale": 1, "desired_downgrade": 1}
        wait_for(lambda: again.models.rejected_messages == refused)
        assert again.runtimes[PIPELINE].model_version == "v2"

        # The cloud's next real desired state applies (its generation is the book's next,
        # far below the forged 2**63-1 that could not freeze the node) ...
        assert downgrade.generation < book.assign(rig.node, PIPELINE, wants["v3"]).generation
        wait_for(lambda: rig.reported() == "v3:serving")
        # ... and so does its rollback, marked as one because v2 is older than v3.
        rollback = book.assign(rig.node, PIPELINE, wants["v2"])
        assert rollback.pipelines[PIPELINE].rollback
        wait_for(lambda: rig.reported() == "v2:serving")
        wait_for(lambda: again.runtimes[PIPELINE].model_version == "v2")
        assert again.models.rejected_messages == refused
        book.close()


class TestTruncatedTransfers:
    """An artifact that is not whole on the broker is rejected like a tampered one."""

    def _roll_out_truncated(self, rig: Rig, version: str, **damage: object) -> EdgeAgent:
        agent = rig.agent(pattern=[0.0], artifact_stall_s=0.3)
        rig.roll_out("v1", 1)
        wait_for(lambda: rig.reported() == "v1:serving")
        want = rig.roll_out(version, 2, favour=3, **damage)
        assert want.chunks == 3  # chunk 2, the last one, is the one damaged
        wait_for(lambda: rig.reported() == f"{version}:rejected")
        last = ReportedState.from_payload(
            rig.cloud.messages(topics.node_reported(TENANT, rig.node))[-1][1]
        )
        assert (last.pipelines[PIPELINE].error or "").startswith("truncated_transfer")
        count = len(rig.sample_versions())
        wait_for(lambda: len(rig.sample_versions()) > count + 2)
        assert set(rig.sample_versions()) == {"v1"}
        assert agent.runtimes[PIPELINE].model_version == "v1"
        assert not (rig.tmp / "state" / "models" / PIPELINE / f"{version}.onnx").exists()
        assert b'reason="truncated_transfer"' in agent.metrics.render()
        return agent

    def test_an_upload_cut_off_before_its_last_chunk_is_rejected_after_asking_again(
        self, rig: Rig
    ) -> None:
        # The manifest promises one chunk more than the broker holds.
        self._roll_out_truncated(rig, "v2-cut-off", skip_chunks=[2])

    def test_a_chunk_cut_short_on_the_broker_is_rejected_at_once(self, rig: Rig) -> None:
        agent = self._roll_out_truncated(rig, "v2-cut-short", cut_chunk=2)
        assert agent.models.rejected_messages.get("bad_chunk") == 1


class TestBadInputOnTheWire:
    def test_a_message_over_the_agents_packet_limit_is_dropped_by_the_broker(
        self, rig: Rig
    ) -> None:
        agent = rig.agent(pattern=[0.0])
        wait_for(lambda: rig.cloud.messages(topics.node_status(TENANT, rig.node)))
        desired = topics.node_desired(TENANT, rig.node)
        # The agent's CONNECT caps packets at an artifact chunk: the broker never sends it
        # this (nor makes it read it into memory), and sends what follows as usual.
        rig.cloud.publish(desired, b"x" * (MAX_PACKET_BYTES + 1))
        rig.cloud.publish(desired, b"\x00\x01garbage")
        wait_for(lambda: sum(agent.models.rejected_messages.values()) >= 1)
        time.sleep(0.5)
        assert agent.models.rejected_messages == {"desired_invalid_json": 1}

    def test_garbage_on_the_desired_topic_is_counted_and_the_agent_keeps_running(
        self, rig: Rig
    ) -> None:
        agent = rig.agent(pattern=[0.0])
        # The status is published after the subscriptions: once it is here, they are active.
        wait_for(lambda: rig.cloud.messages(topics.node_status(TENANT, rig.node)))
        desired = topics.node_desired(TENANT, rig.node)
        for garbage in (b"\x00\x01garbage", b"[]", b'{"node": 5}', b"{" * 5000):
            rig.cloud.publish(desired, garbage)
        wait_for(lambda: sum(agent.models.rejected_messages.values()) == 4)
        rendered = agent.metrics.render()
        assert b'continuum_edge_messages_rejected_total{reason="desired_invalid_json"}' in rendered
        rig.roll_out("v1", 1)
        wait_for(lambda: rig.reported() == "v1:serving")
        wait_for(lambda: rig.sample_versions())

    def test_garbage_on_every_subscribed_topic_is_counted_and_the_fetch_still_completes(
        self, rig: Rig
    ) -> None:
        agent = rig.agent(pattern=[0.0], confirm_stored=True)  # receipts subscribed too
        rig.roll_out("v1", 1)
        wait_for(lambda: rig.reported() == "v1:serving")
        artifact = build_model(rig.tmp / "v3.onnx", favour=3)
        want = desired_for(artifact, rig.private, model="inspector", version="v3-garbage")
        rig.cloud.set_desired(rig.node, {PIPELINE: want}, 2, signer=rig.private)  # upload later
        # "fetching" is reported after the SUBSCRIBE went out, so the broker routes to us.
        wait_for(lambda: rig.reported() == "v3-garbage:fetching")
        desired = topics.node_desired(TENANT, rig.node)
        manifest = topics.artifact_manifest(TENANT, "inspector", "v3-garbage")
        chunks = [
            topics.artifact_chunk(TENANT, "inspector", "v3-garbage", i) for i in range(want.chunks)
        ]
        stored = topics.node_stored(TENANT, rig.node)  # ingest's receipts
        subscribed = agent.link.subscriptions()
        assert sorted(subscribed) == sorted([desired, manifest, *chunks, stored])
        before = agent.models.rejected_messages
        for topic in subscribed:
            rig.cloud.publish(topic, b"\x00\xffgarbage")
        foreign = ArtifactManifest(
            schema_version=SCHEMA_VERSION,
            **{**want.model_dump(exclude={"rollback"}), "sha256": "0" * 64},
        )
        rig.cloud.publish(manifest, foreign.to_payload())
        rig.cloud.publish(manifest, b'{"model": "inspector"}')
        for node, generation in ((rig.node, 1), ("someone-else", 3)):
            stale_or_foreign = signed_desired_state(
                rig.private,
                tenant=TENANT,
                node=node,
                pipelines={PIPELINE: want},
                generation=generation,
                issued_at=time.time(),
            )
            rig.cloud.publish(desired, stale_or_foreign.to_payload())
        expected = {
            "desired_invalid_json": 1,
            "desired_stale": 1,
            "desired_wrong_node": 1,
            "manifest_invalid_json": 1,
            "manifest_schema": 1,
            "manifest_mismatch": 1,
            "bad_chunk": want.chunks,
        }

        def added() -> dict[str, int]:
            now = agent.models.rejected_messages
            return {k: v - before.get(k, 0) for k, v in now.items() if v > before.get(k, 0)}

        wait_for(lambda: all(added().get(k, 0) >= n for k, n in expected.items()))
        assert {k: added().get(k, 0) for k in expected} == expected
        receipt_garbage = (
            'continuum_edge_messages_rejected_total{reason="receipt_invalid_json"} 1.0'
        )
        wait_for(lambda: receipt_garbage in agent.metrics.render().decode())
        rendered = agent.metrics.render().decode()
        for reason in expected:
            assert f'continuum_edge_messages_rejected_total{{reason="{reason}"}}' in rendered
        # Still serving the old model, and the fetch goes on once the real upload arrives.
        count = len(rig.sample_versions())
        wait_for(lambda: len(rig.sample_versions()) > count + 2)
        assert set(rig.sample_versions()) == {"v1"}
        assert rig.reported() == "v3-garbage:fetching"
        rig.cloud.publish_artifact(artifact, want)
        wait_for(lambda: rig.reported() == "v3-garbage:serving")
        wait_for(lambda: "v3-garbage" in rig.sample_versions())
        assert agent.runtimes[PIPELINE].model_version == "v3-garbage"


class TestCommandLine:
    def test_check_probes_the_broker_and_backends(
        self, rig: Rig, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = rig.config(pattern=[0.0])
        assert main(["check", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        assert "[ok] broker:" in out and "[ok] backends: " in out and "onnxruntime" in out
        assert "[ok] pipeline inspect:" in out

    def test_check_fails_when_the_broker_is_unreachable(
        self, rig: Rig, capsys: pytest.CaptureFixture[str]
    ) -> None:
        config = rig.config(pattern=[0.0], broker={"host": "127.0.0.1", "port": 1})
        assert main(["check", "--config", str(config), "--timeout", "2"]) == 1
        assert "[FAIL] broker:" in capsys.readouterr().out

    def test_one_agent_per_state_dir_and_check_leaves_a_running_agent_alone(
        self, rig: Rig, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # The broker binds the client id to the node's identity: a second agent, or a check
        # logging in as the node, would take the running agent's session over.
        port = free_port()
        agent = rig.agent(pattern=[0.0], metrics_port=port, metrics_host="127.0.0.1")
        metrics = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: "continuum_edge_broker_connected 1.0" in _get(metrics), timeout_s=15)
        config = rig.folder / "agent.yaml"
        twin = EdgeAgent(AgentSettings.load(config))
        with pytest.raises(ConfigError, match=rf"another edge agent \(pid {os.getpid()}\)"):
            twin.start()
        twin.stop()
        assert main(["check", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        assert "[ok] broker:" in out and "not probed" in out and "it reports connected" in out
        assert agent.link.connects == 1
        agent.stop()
        assert main(["check", "--config", str(config)]) == 0  # nobody runs: probed again
        out = capsys.readouterr().out
        assert "MQTT 5 session accepted" in out and "not probed" not in out

    def test_sigterm_drains_flushes_and_exits_zero(self, rig: Rig) -> None:
        config = rig.config(pattern=[0.0], shutdown_timeout_s=5.0)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            rig.roll_out("v1", 1)
            wait_for(lambda: rig.reported() == "v1:serving", timeout_s=15.0)
            wait_for(lambda: rig.sample_versions())
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            raw, _ = process.communicate(timeout=10.0)
            took = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        output = raw.decode()
        code = process.returncode
        assert code == 0, output
        assert took < 7.0
        assert "Traceback" not in output
        last = rig.cloud.messages(topics.node_status(TENANT, rig.node))[-1][1]
        assert NodeStatus.from_payload(last).online is False


class TestPipelinesAreIndependent:
    def test_a_source_that_ends_stops_its_pipeline_and_the_others_keep_serving(
        self, rig: Rig
    ) -> None:
        other = write_pipeline(rig.tmp, name="count", tenant=TENANT)
        finite = pattern_source([0.0], count=5)
        endless = pattern_source([0.0], count=-1, fps=100.0)
        agent = rig.agent(
            pipelines=[
                {"spec": str(rig.spec), "source": finite},
                {"spec": str(other), "source": endless},
            ],
        )
        artifact = build_model(rig.tmp / "v1.onnx")
        want = desired_for(artifact, rig.private, model="inspector", version="v1")
        rig.cloud.publish_artifact(artifact, want)
        rig.cloud.set_desired(rig.node, {PIPELINE: want, "count": want}, 1, signer=rig.private)
        wait_for(lambda: agent.runtimes[PIPELINE].finished)
        assert not agent.runtimes["count"].finished
        before = len(rig.cloud.messages("/pipelines/count/samples/"))
        wait_for(lambda: len(rig.cloud.messages("/pipelines/count/samples/")) > before + 3)
        finished = [
            Telemetry.from_payload(p)
            for _, p, _ in rig.cloud.messages(f"/pipelines/{PIPELINE}/telemetry/")
        ]
        assert sum(w.frames for w in finished) == 5


class TestMetricsEndpoint:
    def test_the_agent_serves_its_metrics_over_http(self, rig: Rig) -> None:
        port = free_port()
        agent = rig.agent(pattern=[0.0], metrics_port=port, metrics_host="127.0.0.1")
        rig.roll_out("v1", 1)
        wait_for(lambda: rig.sample_versions())

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return str(reply.read().decode())

        text = wait_for(
            lambda: t if "continuum_edge_messages_acked_total" in (t := scrape()) else None
        )
        assert agent.metrics_port == port
        assert 'continuum_edge_frames_total{pipeline="inspect"}' in text
        assert 'continuum_edge_model_info{model="inspector",pipeline="inspect"' in text
        assert "continuum_edge_inference_latency_seconds_bucket" in text
        assert "continuum_edge_outbox_depth" in text
        assert_promtool_accepts_metrics(text)  # Prometheus' own linter, as a scraper judges


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())
