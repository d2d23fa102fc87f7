"""A regression pipeline's delayed labels go up the real link as values: a real agent, a
real broker and a real ingest that records them in the label store, where training reads
them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_head.ingest import IngestService, IngestWorker
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum import Pipeline, select, task
from continuum.embedded import EmbeddedBroker
from continuum.spec import load_pipeline
from continuum.wire.mqtt import BrokerSettings
from tests.edge_agent_kit import SHAPE, AgentRig, build_score_model, pattern_source, wait_for

pytestmark = pytest.mark.integration

TENANT, PIPELINE, NODE = "acme", "rul", "press-7"


def test_regression_values_reach_the_label_store_as_values(
    tmp_path: Path, private_mqtt_broker: EmbeddedBroker
) -> None:
    # A broker of its own: an ingest session other tests left on the shared broker would
    # take its share of the group's messages.
    mqtt_broker = private_mqtt_broker
    rig = AgentRig(
        tmp_path,
        host=mqtt_broker.host,
        port=mqtt_broker.port,
        node=NODE,
        tenant=TENANT,
        pipeline=PIPELINE,
    )
    pipe = Pipeline(PIPELINE, tenant=TENANT, data_class="internal")
    pipe.edge(model="inspector", backend="onnxruntime", shape=SHAPE, task=task.regression())
    pipe.uplink(select.random(1.0))
    pipe.rollout(rollback_on="mae rise 1.0")
    rig.spec.write_text(pipe.spec.to_yaml(), encoding="utf-8")

    store = SampleStore(tmp_path / "store")
    labels = LabelStore(tmp_path / "labels.db")
    service = IngestService(TENANT, [load_pipeline(rig.spec)], store, labels, tmp_path / "seen")
    settings = BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port)
    worker = IngestWorker(service, settings, client_id="ingest-rul-1")
    worker.start()
    source = pattern_source([0.2, 0.8], count=40, fps=50.0, labels=[2.5, 8.25], label_delay_s=0.5)
    agent = rig.agent(source=source)
    try:
        agent.start()
        rig.roll_out(artifact=build_score_model(tmp_path / "v1.onnx", gain=10.0))
        wait_for(lambda: len(labels.labels(TENANT, PIPELINE)) == 40, timeout_s=90.0)
        values = {label.label for label in labels.labels(TENANT, PIPELINE).values()}
        assert values == {2.5, 8.25}
        assert int(service.stats()["stored"]) == 40
    finally:
        agent.stop(timeout_s=5.0)
        worker.stop()
        service.close()
        labels.close()
