"""The cloud teacher as the cloud head runs it: a named Ray actor beside ingest and the fleet.

A pipeline whose labels come from a teacher gets a ``teacher-<pipeline>`` actor at deploy.
It waits, and says so, until the teacher model is registered; then it labels the stored
samples with the registered model's current version.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from cloud_head.audit import AuditAction, AuditLog
from cloud_head.labelling import LabelStore
from cloud_head.services import CloudHead, HeadPaths
from cloud_head.store import SampleStore
from continuum import select
from continuum.embedded import EmbeddedBroker
from continuum.signing import generate_keypair, sign
from continuum.spec import (
    DataClass,
    EdgeStageSpec,
    LabelSpec,
    PipelineSpec,
    TensorSchema,
    UplinkSpec,
)
from continuum.wire.codec import SampleBatch, SampleRecord
from continuum.wire.mqtt import BrokerSettings
from pipelines.digits.data import load_splits
from pipelines.digits.train import Recipe, fit, save

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

N = 60


def teacher_spec(tenant: str) -> PipelineSpec:
    return PipelineSpec(
        name="forms",
        tenant=tenant,
        data_class=DataClass.INTERNAL,
        edge=EdgeStageSpec(model="digits-cnn", input=TensorSchema(shape=(1, 8, 8))),
        uplink=UplinkSpec(policy=select.low_confidence(0.9)),
        label=LabelSpec(source="teacher", teacher_model="inspector-large"),
    )


def test_the_teacher_actor_waits_for_its_model_then_labels_the_store(
    tmp_path: Path, mqtt_broker: EmbeddedBroker, ray_cluster: Any
) -> None:
    tenant = f"lab-{uuid.uuid4().hex[:6]}"
    spec = teacher_spec(tenant)
    paths = HeadPaths(tmp_path / "cloud")
    splits = load_splits()
    store = SampleStore(paths.store)
    records = tuple(
        SampleRecord(seq=i, captured_at_ns=i + 1, tensor=splits.stream_x[i].astype(np.float32))
        for i in range(N)
    )
    store.append(tenant, SampleBatch(spec.name, "cam-1", "v1", DataClass.INTERNAL, records))
    store.flush()
    private_pem, public_pem = generate_keypair()
    head = CloudHead.deploy(
        tenant,
        [spec],
        paths,
        BrokerSettings(host=mqtt_broker.host, port=mqtt_broker.port),
        private_pem,
        code_version="test",
    )
    try:
        # The signer seals, within seal_interval_s, what a keyless service appends.
        assert ray.get_actor("signer", namespace=tenant) is not None
        with AuditLog(paths.audit) as log:
            record = log.append(tenant, AuditAction.GATE, f"{spec.name}/v0", actor="service:x")
        deadline = time.monotonic() + 30
        while ray.get(head.signer.stats.remote(), timeout=30)["sealed_seq"] != record.seq:
            assert time.monotonic() < deadline, "the signer did not seal within 30 s"
            time.sleep(0.2)
        with AuditLog(paths.audit) as log:
            sealed = log.verify(tenant, public_key_pem=public_pem)
        assert sealed.ok and sealed.signature_checked and sealed.unsealed == 0, sealed.reason

        teacher = head.teachers[spec.name]
        assert ray.get_actor(f"teacher-{spec.name}", namespace=tenant) is not None
        waiting = ray.get(teacher.run_once.remote(), timeout=60)
        assert "inspector-large" in waiting["state"] and waiting["version"] is None

        model = fit(splits.train_x, splits.train_y, recipe=Recipe(epochs=30))
        _, onnx_path = save(model, tmp_path / "teacher")
        registry = paths.open_registry()
        try:
            version = registry.register(
                tenant,
                "inspector-large",
                "inspector-large",
                onnx_path,
                sign=lambda m, v, digest: sign(private_pem, f"{m}:{v}:{digest}".encode()),
                parent=None,
                code_version="test",
                metrics={},
                gate={},
                lineage={},
            )
            registry.set_current(tenant, "inspector-large", version.version, "teacher for forms")
        finally:
            registry.close()

        done = ray.get(teacher.run_once.remote(), timeout=60)
        assert done["version"] == version.version and done["proposed"] == N
        with LabelStore(paths.labels_db) as labels:
            recorded = labels.labels(tenant, spec.name)
        assert 0 < len(recorded) == done["labelled"]
        assert all(label.source == "teacher" for label in recorded.values())
        truth = {f"cam-1:{i}": int(splits.stream_y[i]) for i in range(N)}
        correct = sum(label.label == truth[sid] for sid, label in recorded.items())
        assert correct / len(recorded) >= 0.9
    finally:
        head.stop(timeout_s=20)
