"""A refusal that can be temporary never deletes data at the edge; a final one ends the
samples at the edge, counted at both ends and audited with their ids (issue 12).

The live bug: the fleet registry forgot the nodes, ingest refused their batches as
``unknown_node`` past its grace, that refusal was final (a receipt), and the agents deleted
461 samples.  Here a real agent streams over a real mosquitto to the real ingest worker; the
fleet registry does not know the node until its worker starts late, the quota is spent for
the day, or the batches are off the pipeline's class.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_head.audit import AuditAction, AuditLog
from cloud_head.fleet import FleetRegistry, FleetWorker
from cloud_head.ingest import IngestService, IngestWorker
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from cloud_head.tenants import Quotas
from continuum.embedded import EmbeddedBroker
from continuum.residency import ResidencyPolicy
from continuum.spec import PipelineSpec, load_pipeline
from continuum.wire.codec import sample_id
from continuum.wire.mqtt import BrokerSettings
from edge_agent.agent import EdgeAgent
from edge_agent.outbox import read_ledger
from tests.edge_agent_kit import (
    AgentRig,
    pattern_source,
    raw_ids,
    record_selected,
    stored_ids,
    wait_for,
    write_pipeline,
)

pytestmark = pytest.mark.integration

TENANT, PIPELINE = "acme", "inspect"
#: Every class may be stored here and processed anywhere: only the node must be known.
POLICY = """
api_version: continuum.io/v1
kind: ResidencyPolicy
classes:
  public: {}
  internal: {}
  confidential: {}
  restricted: {}
"""
STORE = {"continuum.io/tier": "cloud", "continuum.io/site": "lux-dc"}
#: The agent sends again what no receipt confirmed after this long.
RESEND_S = 1.5


class Cloud:
    """The real ingest path into a Parquet store and an audit log, on a real broker."""

    def __init__(
        self,
        tmp_path: Path,
        broker: EmbeddedBroker,
        spec: PipelineSpec,
        *,
        policy: bool = False,
        quotas: Quotas | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.tmp, self.broker = tmp_path, broker
        self.settings = BrokerSettings(host=broker.host, port=broker.port, session_expiry_s=600)
        self.store = SampleStore(tmp_path / "store")
        self.labels = LabelStore(tmp_path / "labels.db")
        self.audit_dir = tmp_path / "audit"
        self.fleet_db = tmp_path / "fleet.db"
        self.fleet_view = FleetRegistry(TENANT, self.fleet_db) if policy else None
        self.fleet_worker: FleetWorker | None = None
        self.fleet_registry: FleetRegistry | None = None
        self.service = IngestService(
            TENANT,
            [spec],
            self.store,
            self.labels,
            tmp_path / "seen.db",
            policy=ResidencyPolicy.from_yaml(POLICY) if policy else None,
            store_labels=STORE if policy else None,
            fleet=self.fleet_view,
            audit_dir=self.audit_dir,
            audit_interval_s=0.0,
            quotas=quotas,
            node_grace_s=0.5,
            clock_ns=clock_ns,
        )
        self.worker = IngestWorker(self.service, self.settings, client_id="ingest-acme-1")
        self.worker.start()

    def start_fleet(self) -> None:
        """Start the fleet registry's worker: it learns the node from its retained status."""
        self.fleet_registry = FleetRegistry(TENANT, self.fleet_db)
        self.fleet_worker = FleetWorker(self.fleet_registry, self.settings)
        self.fleet_worker.start()

    def stored_ids(self) -> set[str]:
        """The sample ids the store holds (its de-duplicating read)."""
        return stored_ids(self.store, TENANT, PIPELINE)

    def raw_ids(self) -> list[str]:
        """Every sample id row of every Parquet file, read directly (duplicates kept)."""
        return raw_ids(self.store, TENANT, PIPELINE)

    def audit(self, action: AuditAction) -> list[dict[str, Any]]:
        with AuditLog(self.audit_dir) as log:
            if not (self.audit_dir / TENANT).exists():
                return []
            return [r.details for r in log.records(TENANT, action=action)]

    def close(self) -> None:
        self.worker.stop()
        if self.fleet_worker is not None and self.fleet_registry is not None:
            self.fleet_worker.stop()
            self.fleet_registry.close()
        self.service.close()
        if self.fleet_view is not None:
            self.fleet_view.close()
        self.labels.close()


def _rig(tmp_path: Path, broker: EmbeddedBroker, node: str) -> AgentRig:
    return AgentRig(
        tmp_path, host=broker.host, port=broker.port, node=node, tenant=TENANT, pipeline=PIPELINE
    )


def _agent(rig: AgentRig, frames: int) -> EdgeAgent:
    """The node's agent: ``frames`` frames, every one selected, receipts awaited."""
    return rig.agent(
        source=pattern_source([0.0], count=frames, fps=100.0), resend_unconfirmed_s=RESEND_S
    )


def _refused_on_the_edge(agent: EdgeAgent, reason: str) -> float:
    value = agent.metrics.registry.get_sample_value(
        "continuum_edge_samples_refused_total", {"pipeline": PIPELINE, "reason": reason}
    )
    return value or 0.0


class TestTemporaryRefusalsKeepTheSamples:
    def test_a_node_the_fleet_does_not_know_past_the_grace_loses_nothing(
        self, tmp_path: Path, private_mqtt_broker: EmbeddedBroker
    ) -> None:
        node, frames = "edge-unknown", 200
        rig = _rig(tmp_path, private_mqtt_broker, node)
        cloud = Cloud(tmp_path, private_mqtt_broker, load_pipeline(rig.spec), policy=True)
        agent = _agent(rig, frames)
        selected = record_selected(agent)
        try:
            agent.start()
            rig.roll_out()
            wait_for(lambda: agent.runtimes[PIPELINE].finished, timeout_s=30.0)
            # Past the grace, and sent again meanwhile: held, never refused for good.
            wait_for(
                lambda: cloud.service.stats()["held"].get("unknown_node", 0) >= 2, timeout_s=30.0
            )
            time.sleep(2 * RESEND_S)  # resends come and are held again
            assert cloud.stored_ids() == set()
            assert agent.outbox.stats().samples == frames  # every sample kept at the edge
            assert cloud.service.stats()["refused_samples"] == {}

            cloud.start_fleet()  # the fleet learns the node (as from its next heartbeat)
            expected = {sample_id(node, seq) for seq in selected}
            wait_for(lambda: cloud.stored_ids() == expected, timeout_s=60.0, interval_s=0.5)
            wait_for(lambda: agent.outbox.stats().samples == 0, timeout_s=30.0)
        finally:
            agent.stop(timeout_s=5.0)
            cloud.close()
        assert len(selected) == frames
        raw = cloud.raw_ids()
        assert len(raw) == len(set(raw)) == frames  # 0 lost, 0 duplicated
        assert _refused_on_the_edge(agent, "unknown_node") == 0.0
        ledger = read_ledger(agent.outbox.path)  # as the demo's account reads it
        assert (ledger.refused, ledger.waiting) == ({}, {})
        assert cloud.audit(AuditAction.POLICY_REFUSAL) == []

    def test_samples_over_the_daily_quota_are_kept_and_stored_the_next_day(
        self, tmp_path: Path, private_mqtt_broker: EmbeddedBroker
    ) -> None:
        node, frames, quota = "edge-quota", 90, 50
        now = {"ns": time.time_ns()}
        rig = _rig(tmp_path, private_mqtt_broker, node)
        cloud = Cloud(
            tmp_path,
            private_mqtt_broker,
            load_pipeline(rig.spec),
            quotas=Quotas(samples_per_day=quota),
            clock_ns=lambda: now["ns"],
        )
        agent = _agent(rig, frames)
        selected = record_selected(agent)
        try:
            agent.start()
            rig.roll_out()
            wait_for(lambda: agent.runtimes[PIPELINE].finished, timeout_s=30.0)
            wait_for(lambda: cloud.service.stats()["over_quota"] >= frames - quota)
            time.sleep(2 * RESEND_S)  # resends come and are held again
            assert len(cloud.stored_ids()) == quota
            wait_for(lambda: agent.outbox.stats().samples == frames - quota, timeout_s=10.0)
            assert cloud.service.stats()["held"].get("quota", 0) >= 1

            now["ns"] += 86_400 * 10**9  # the next day: the resends fit
            expected = {sample_id(node, seq) for seq in selected}
            wait_for(lambda: cloud.stored_ids() == expected, timeout_s=60.0, interval_s=0.5)
            wait_for(lambda: agent.outbox.stats().samples == 0, timeout_s=30.0)
        finally:
            agent.stop(timeout_s=5.0)
            cloud.close()
        raw = cloud.raw_ids()
        assert len(raw) == len(set(raw)) == frames  # 0 lost, 0 duplicated
        assert _refused_on_the_edge(agent, "quota") == 0.0


class TestFinalRefusalsEndTheSamples:
    def test_a_batch_off_the_pipelines_class_ends_counted_at_both_ends_and_audited(
        self, tmp_path: Path, private_mqtt_broker: EmbeddedBroker
    ) -> None:
        node, frames = "edge-class", 60
        # The agent's pipeline says internal; the cloud's stores at most public.
        rig = _rig(tmp_path, private_mqtt_broker, node)
        cloud_dir = tmp_path / "cloud"
        cloud_dir.mkdir()
        cloud_spec = load_pipeline(
            write_pipeline(cloud_dir, name=PIPELINE, tenant=TENANT, data_class="public")
        )
        cloud = Cloud(tmp_path, private_mqtt_broker, cloud_spec)
        agent = _agent(rig, frames)
        selected = record_selected(agent)
        try:
            agent.start()
            rig.roll_out()
            wait_for(lambda: agent.runtimes[PIPELINE].finished, timeout_s=30.0)
            wait_for(lambda: agent.outbox.stats().samples == 0, timeout_s=30.0)
            refused_ranges = agent.outbox.refused()
        finally:
            agent.stop(timeout_s=5.0)
            cloud.close()
        assert len(selected) == frames
        assert cloud.stored_ids() == set()
        # Counted on the edge, listed in its outbox by seq and reason ...
        assert _refused_on_the_edge(agent, "data_class_mismatch") == frames
        on_edge = {
            seq
            for r in refused_ranges
            for seq in range(r.first_seq, r.last_seq + 1)
            if r.reason == "data_class_mismatch"
        }
        assert on_edge == set(selected)
        ledger = read_ledger(agent.outbox.path)  # as the demo's account reads it, after
        assert ledger.refused == {PIPELINE: dict.fromkeys(selected, "data_class_mismatch")}
        assert ledger.waiting == {}
        # ... counted by ingest, and in the audit log with every sample id.
        assert cloud.service.stats()["refused_samples"] == {"data_class_mismatch": frames}
        records = cloud.audit(AuditAction.INGEST_REFUSAL)
        audited = set()
        for record in records:
            assert (record["node"], record["reason"], record["final"]) == (
                node,
                "data_class_mismatch",
                True,
            )
            for ids in record["sample_ids"]:
                first, _, last = ids.removeprefix(f"{node}:").partition("-")
                audited |= set(range(int(first), int(last or first) + 1))
        assert audited == set(selected)
