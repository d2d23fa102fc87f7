"""Residency fails closed at the edge (issue 14, finding 7): a source that misspells a field
(``patientid`` for ``patient_id``) does not ship the raw value up.

A real agent streams over a real mosquitto; its pipeline declares ``shift`` only. What
leaves the node (every batch on the samples topic) and what waits in the outbox lack the
undeclared field, and the agent counts it by name.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from continuum import select
from continuum.embedded import EmbeddedBroker
from continuum.sources import Frame
from continuum.wire import topics
from continuum.wire.codec import decode_samples
from tests.edge_agent_kit import SHAPE, AgentRig, CloudStandIn, wait_for, write_pipeline

pytestmark = pytest.mark.integration

PIPELINE = "intake"
PATIENT = "P-SECRET-004711"


class MisspeltFormSource:
    """Frames of an intake form whose reader names the patient field ``patientid``."""

    def __init__(self, count: int = 30, fps: float = 100.0) -> None:
        self.count, self.fps = count, fps

    def __iter__(self) -> Iterator[Frame]:
        for index in range(self.count):
            time.sleep(1 / self.fps)
            yield Frame(
                tensor=np.zeros(SHAPE, np.float32),
                fields={"shift": "night", "patientid": f"{PATIENT}-{index}"},
            )


def declare_shift_only(rig: AgentRig) -> None:
    """Rewrite the rig's pipeline: every frame selected, one declared field (``shift``)."""
    path = write_pipeline(rig.folder, name=PIPELINE, tenant=rig.tenant, policy=select.random(1.0))
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["edge"]["input"]["fields"] = {"shift": "internal"}  # the pipeline's own class
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    rig.spec = path


class TestUndeclaredFieldsNeverLeaveTheNode:
    def test_a_misspelt_field_is_dropped_before_the_outbox_and_counted(
        self, tmp_path: Path, mqtt_broker: EmbeddedBroker
    ) -> None:
        tenant, frames = f"und-{uuid.uuid4().hex[:8]}", 30
        cloud = CloudStandIn(mqtt_broker.host, mqtt_broker.port, tenant)
        rig = AgentRig(
            tmp_path,
            host=mqtt_broker.host,
            port=mqtt_broker.port,
            node="ward-1",
            tenant=tenant,
            pipeline=PIPELINE,
            cloud=cloud,
        )
        declare_shift_only(rig)
        agent = rig.agent(
            source={
                "ref": f"{__name__}:MisspeltFormSource",
                "args": {"count": frames},
            }
        )
        try:
            cloud.subscribe(topics.samples(tenant, PIPELINE, "ward-1"))
            agent.start()
            rig.roll_out()
            wait_for(lambda: agent.runtimes[PIPELINE].finished, timeout_s=30.0)

            def sent() -> list[dict[str, object]]:
                return [
                    dict(record.fields)
                    for _, payload, _ in cloud.messages("/samples/")
                    for record in decode_samples(payload).records
                ]

            wait_for(lambda: len(sent()) >= frames, timeout_s=30.0)
            queued = agent.outbox.stats().samples  # kept until ingest's receipts (none here)
        finally:
            rig.stop_agents()
            cloud.close()
        assert sent() and all(fields == {"shift": "night"} for fields in sent())
        assert queued == frames
        counted = agent.metrics.registry.get_sample_value(
            "continuum_edge_fields_undeclared_dropped_total",
            {"pipeline": PIPELINE, "field": "patientid"},
        )
        assert counted == frames
        # The outbox (its database and journal) never held the value.
        on_disk = b"".join(p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file())
        assert b"night" in on_disk and PATIENT.encode() not in on_disk
