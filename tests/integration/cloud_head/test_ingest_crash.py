"""An ingest worker SIGKILLed mid-stream and restarted: nothing lost, nothing stored twice.

The worker runs in its own process (``_ingest_process.py``) with a persistent MQTT session;
a plain paho publisher streams sample batches at QoS 1 while the test kills the worker, so
the broker holds what it had not acknowledged and redelivers it to the restarted session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pyarrow.parquet as pq
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_head.store import SampleStore
from continuum.embedded import EmbeddedBroker
from continuum.spec import DataClass
from continuum.wire import codec, topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RUNNER = Path(__file__).with_name("_ingest_process.py")
REPO = Path(__file__).resolve().parents[3]
BATCHES = 400
PER_BATCH = 10


def make_batch(node: str, start: int) -> codec.SampleBatch:
    records = tuple(
        codec.SampleRecord(
            seq=s, captured_at_ns=s, tensor=np.full((1, 8, 8), s % 251, dtype=np.float32)
        )
        for s in range(start, start + PER_BATCH)
    )
    return codec.SampleBatch("digits", node, "v1", DataClass.CONFIDENTIAL, records)


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)


class IngestProcess:
    """The worker in a child process, which the test can SIGKILL and start again."""

    def __init__(self, root: Path, tenant: str, broker: EmbeddedBroker) -> None:
        self.args = [
            sys.executable,
            str(RUNNER),
            str(root),
            tenant,
            broker.host,
            str(broker.port),
            f"ingest-{tenant}",  # one stable client id: one persistent session
        ]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = os.environ | {"PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"ingest process did not start: {line!r}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


class Streamer(threading.Thread):
    """Publish every batch at QoS 1, as an edge outbox would, with bounded in-flight."""

    def __init__(self, broker: EmbeddedBroker, tenant: str) -> None:
        super().__init__(name="test-streamer", daemon=True)
        self.topic = topics.samples(tenant, "digits", "cam-1")
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"pub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            pending = []
            for i in range(BATCHES):
                payload = codec.encode_samples(make_batch("cam-1", i * PER_BATCH))
                pending.append(self.client.publish(self.topic, payload, qos=1))
                if len(pending) >= 50:
                    for info in pending:
                        info.wait_for_publish(timeout=10)
                    pending.clear()
                self.sent = i + 1
                time.sleep(0.002)  # a stream, not one burst: the kill lands in the middle
            for info in pending:
                info.wait_for_publish(timeout=10)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def tenant() -> str:
    return f"crash-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def ingest(
    tmp_path: Path, tenant: str, private_mqtt_broker: EmbeddedBroker
) -> Iterator[IngestProcess]:
    process = IngestProcess(tmp_path, tenant, private_mqtt_broker)
    try:
        yield process
    finally:
        process.close()


class TestIngestWorkerCrash:
    def test_worker_killed_mid_stream_restarts_with_nothing_lost_or_duplicated(
        self,
        tmp_path: Path,
        tenant: str,
        ingest: IngestProcess,
        private_mqtt_broker: EmbeddedBroker,
    ) -> None:
        store = SampleStore(tmp_path / "samples")
        ingest.start()
        streamer = Streamer(private_mqtt_broker, tenant)
        try:
            streamer.start()
            # Kill it once it has stored some of the stream but not all of it.
            wait_for(lambda: store.count(tenant, "digits") >= BATCHES * PER_BATCH // 4)
            ingest.kill()
            stored_at_kill = store.count(tenant, "digits")
            streamer.join(60)
            assert streamer.error is None, streamer.error
            assert streamer.sent == BATCHES
            assert stored_at_kill < BATCHES * PER_BATCH, "the kill came after the stream"

            ingest.start()
            wait_for(lambda: store.count(tenant, "digits") == BATCHES * PER_BATCH, 60)
            time.sleep(0.5)  # anything redelivered late would land now
        finally:
            streamer.close()

        expected = sorted(f"cam-1:{s}" for s in range(BATCHES * PER_BATCH))
        read_ids = store.read(tenant, "digits", columns=["sample_id"]).column("sample_id")
        assert sorted(read_ids.to_pylist()) == expected
        # The files themselves, not only the de-duplicating read: each id exactly once.
        raw_ids: list[str] = []
        for path in store.files(tenant, "digits"):
            raw_ids += pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()
        assert sorted(raw_ids) == expected
