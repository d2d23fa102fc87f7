"""Run one ingest worker in its own process until killed (for the crash tests).

Usage: python -m tests.integration.cloud_head._ingest_process ROOT TENANT HOST PORT CLIENT_ID
Prints "ready" once the worker's session is up.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from cloud_head.ingest import IngestService, IngestWorker
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum import select
from continuum.spec import EdgeStageSpec, PipelineSpec, TensorSchema, UplinkSpec
from continuum.wire.mqtt import BrokerSettings


def main(root: Path, tenant: str, host: str, port: int, client_id: str) -> None:
    spec = PipelineSpec(
        name="digits",
        tenant=tenant,
        data_class="confidential",
        edge=EdgeStageSpec(model="inspector", input=TensorSchema(shape=(1, 8, 8))),
        uplink=UplinkSpec(policy=select.random(0.1)),
    )
    service = IngestService(
        tenant,
        [spec],
        SampleStore(root / "samples"),
        LabelStore(root / "labels.db"),
        root / "seen.db",
    )
    worker = IngestWorker(
        service,
        BrokerSettings(host=host, port=port, session_expiry_s=600),
        client_id=client_id,
        max_group=16,  # small groups: many write-then-ack steps for a kill to land between
    )
    worker.start()
    deadline = time.monotonic() + 20
    while not worker.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
