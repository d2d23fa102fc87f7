"""Benchmark ingest end to end against a bare paho subscriber through the same mosquitto.

Run: ``python benchmarks/ingest.py`` (about 40 s). One mosquitto on loopback; a publisher
process sends the same sample batches at QoS 1 (bounded in flight, as an edge outbox does)
to two receivers in turn, round after round:

- bare: a paho subscriber at QoS 1 that only counts what arrives;
- ingest: ``IngestWorker`` with a persistent session and manual acks, validating,
  de-duplicating and writing Parquet with fsync before it acknowledges (durability on).

Both receivers are measured the same way: the same publisher, payloads (3,000 batches of
32 samples, ~9 KiB each), QoS 1 and MQTT 5 session defaults (no Receive Maximum, so the
broker keeps as many messages in flight to either as it allows); the bare subscriber
acknowledges each message as paho receives it, ingest after the group's durable write.
Rates are samples per second from the first message received to the last one counted (bare)
or durably stored (ingest).  The machine is shared, so each round measures both, back to
back, and the verdict is on the median of the per-round ratios; the target is >= 0.5.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pyarrow as pa
from paho.mqtt.enums import CallbackAPIVersion

from cloud_head.ingest import IngestService, IngestWorker
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum import select
from continuum.embedded import EmbeddedBroker
from continuum.spec import DataClass, EdgeStageSpec, PipelineSpec, TensorSchema, UplinkSpec
from continuum.wire import codec, topics
from continuum.wire.mqtt import BrokerSettings

TENANT = "bench"  # each ingest run takes its own tenant: a fresh persistent session
PIPELINE = "digits"
TARGET_RATIO = 0.5


def payloads(messages: int, per_message: int, node: str) -> list[bytes]:
    """Return ``messages`` encoded batches of ``per_message`` 8x8 float32 samples."""
    rng = np.random.default_rng(0)
    out = []
    for m in range(messages):
        records = tuple(
            codec.SampleRecord(
                seq=m * per_message + i,
                captured_at_ns=time.time_ns(),
                tensor=rng.random((1, 8, 8), dtype=np.float32),
                prediction=int(rng.integers(10)),
                confidence=float(rng.random()),
            )
            for i in range(per_message)
        )
        batch = codec.SampleBatch(PIPELINE, node, "v1", DataClass.INTERNAL, records)
        out.append(codec.encode_samples(batch))
    return out


def publish(host: str, port: int, tenant: str, node: str, messages: int, per_message: int) -> None:
    """Publish the batches at QoS 1 with at most 1,000 unacknowledged (runs in a child)."""
    data = payloads(messages, per_message, node)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{node}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    topic = topics.samples(tenant, PIPELINE, node)
    window: list[mqtt.MQTTMessageInfo] = []
    for payload in data:
        window.append(client.publish(topic, payload, qos=1))
        if len(window) >= 1000:
            for info in window[:500]:
                info.wait_for_publish(timeout=30)
            window = window[500:]
    for info in window:
        info.wait_for_publish(timeout=30)
    client.disconnect()
    client.loop_stop()


def run_publisher(
    broker: EmbeddedBroker, tenant: str, node: str, messages: int, per_message: int
) -> None:
    proc = mp.get_context("spawn").Process(
        target=publish, args=(broker.host, broker.port, tenant, node, messages, per_message)
    )
    proc.start()
    proc.join(120)
    if proc.exitcode != 0:
        raise RuntimeError(f"publisher exited with {proc.exitcode}")


def bare_rate(broker: EmbeddedBroker, messages: int, per_message: int) -> float:
    """Samples/s through a subscriber that only counts (QoS 1, automatic acks)."""
    node = f"bare-{uuid.uuid4().hex[:6]}"
    received = 0
    first: float | None = None
    last = 0.0
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal received, first, last
        now = time.perf_counter()
        first = now if first is None else first
        received += 1
        last = now
        if received == messages:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe(topics.samples(TENANT, PIPELINE, node), qos=1)
    sub.loop_start()
    time.sleep(0.3)
    run_publisher(broker, TENANT, node, messages, per_message)
    if not done.wait(60):
        raise RuntimeError(f"bare subscriber got {received} of {messages}")
    sub.disconnect()
    sub.loop_stop()
    assert first is not None
    return messages * per_message / max(last - first, 1e-9)


def _bench_spec(tenant: str) -> PipelineSpec:
    return PipelineSpec(
        name=PIPELINE,
        tenant=tenant,
        data_class="internal",
        edge=EdgeStageSpec(model="inspector", input=TensorSchema(shape=(1, 8, 8))),
        uplink=UplinkSpec(policy=select.random(0.1)),
    )


def ingest_rate(broker: EmbeddedBroker, root: Path, messages: int, per_message: int) -> float:
    """Samples/s through ``IngestWorker`` into Parquet with fsync before each ack."""
    node = "cam-1"
    tenant = f"bench-{uuid.uuid4().hex[:6]}"
    spec = _bench_spec(tenant)
    store = SampleStore(root / "store", fsync=True)
    labels = LabelStore(root / "labels.db")
    service = IngestService(tenant, [spec], store, labels, root / "seen.db")
    settings = BrokerSettings(host=broker.host, port=broker.port, session_expiry_s=600)
    worker = IngestWorker(service, settings, client_id=f"ingest-{tenant}")
    expected = messages * per_message
    # A running worker has paid pyarrow's one-time lazy imports and compute-kernel set-up
    # (~0.5 s); a run from a cold process would charge them to the first group.
    warm = SampleStore(root / "warm-up", fsync=False)
    warm.append_columns(
        tenant,
        codec.decode_sample_columns(payloads(1, 1, "warm-up")[0], dtype="float32", shape=(1, 8, 8)),
    )
    warm.flush()
    pa.Table.from_pydict({"x": [0]})
    worker.start()
    try:
        time.sleep(0.3)
        started = threading.Event()
        first: list[float] = []

        def watch_first() -> None:
            while not started.is_set():
                if service.stats()["batches"] or worker.stats()["queued"]:
                    first.append(time.perf_counter())
                    return
                time.sleep(0.001)

        watcher = threading.Thread(target=watch_first, name="bench-first", daemon=True)
        watcher.start()
        run_publisher(broker, tenant, node, messages, per_message)
        deadline = time.monotonic() + 120
        while service.stats()["stored"] < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest stored {service.stats()['stored']} of {expected}")
            time.sleep(0.005)
        last = time.perf_counter()
        started.set()
    finally:
        worker.stop()
    stored = store.count(tenant, PIPELINE)
    files = len(store.files(tenant, PIPELINE))
    service.close()
    labels.close()
    if stored != expected:
        raise RuntimeError(f"the store holds {stored} samples, expected {expected}")
    print(f"  ingest wrote {stored} samples in {files} Parquet files (fsync on)")
    return expected / max(last - first[0], 1e-9)


def _replica(
    broker_port: int,
    root: str,
    tenant: str,
    replica: int,
    stored: Any,
    first_at: Any,
    ready: Any,
    stop: Any,
) -> None:
    """One ingest replica in its own process: its own MQTT loop, GIL and service."""
    spec = _bench_spec(tenant)
    store = SampleStore(Path(root) / "store", fsync=True)
    labels = LabelStore(Path(root) / "labels.db")
    service = IngestService(tenant, [spec], store, labels, Path(root) / "seen.db")
    settings = BrokerSettings(host="127.0.0.1", port=broker_port, session_expiry_s=600)
    worker = IngestWorker(service, settings, client_id=f"ingest-{tenant}-{replica}")
    worker.start()
    while not worker.connected:
        time.sleep(0.01)
    ready.release()
    try:
        while not stop.is_set():
            if not first_at[replica] and (service.stats()["batches"] or worker.stats()["queued"]):
                first_at[replica] = time.time()  # the first message arrived (wall clock)
            stored[replica] = service.stats()["stored"]
            time.sleep(0.001)
        stored[replica] = service.stats()["stored"]
    finally:
        worker.stop()
        service.close()
        labels.close()


def scaled_ingest_rate(
    broker: EmbeddedBroker, root: Path, messages: int, per_message: int, replicas: int
) -> float:
    """Samples/s through ``replicas`` ingest processes on one shared subscription."""
    tenant = f"bench-{uuid.uuid4().hex[:6]}"
    ctx = mp.get_context("spawn")
    stored = ctx.Array("q", replicas)
    first_at = ctx.Array("d", replicas)
    ready = ctx.Semaphore(0)
    stop = ctx.Event()
    procs = [
        ctx.Process(
            target=_replica,
            args=(broker.port, str(root), tenant, i, stored, first_at, ready, stop),
            daemon=True,
        )
        for i in range(replicas)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        if not ready.acquire(timeout=60):
            raise RuntimeError("an ingest replica did not connect")
    expected = messages * per_message
    publisher = ctx.Process(
        target=publish, args=("127.0.0.1", broker.port, tenant, "cam-1", messages, per_message)
    )
    publisher.start()
    deadline = time.monotonic() + 180
    while sum(stored) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{replicas} replicas stored {sum(stored)} of {expected}")
        time.sleep(0.001)
    last = time.time()
    stop.set()
    publisher.join()
    for proc in procs:
        proc.join(30)
    count = SampleStore(root / "store").count(tenant, PIPELINE)
    if count != expected:
        raise RuntimeError(f"the store holds {count} samples, expected {expected}")
    first = min(t for t in first_at if t) if any(first_at) else last
    print(f"  {replicas} ingest replicas wrote {count} samples (fsync on)")
    return expected / max(last - first, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="batches per run")
    parser.add_argument("--per-message", type=int, default=32, help="samples per batch")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both; medians kept")
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="also measure this many ingest replicas (processes) on one shared subscription",
    )
    args = parser.parse_args()
    print(
        f"ingest benchmark: {args.messages} batches x {args.per_message} samples of 8x8 float32,"
        f" QoS 1, {args.rounds} rounds; {platform.python_version()}, {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f}"
    )
    bares: list[float] = []
    ingests: list[float] = []
    scaled: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ctm-bench-ingest-") as tmp:
        broker = EmbeddedBroker(Path(tmp) / "broker")
        broker.start()
        try:
            for r in range(args.rounds):
                bares.append(bare_rate(broker, args.messages, args.per_message))
                root = Path(tmp) / f"run-{r}"
                ingests.append(ingest_rate(broker, root, args.messages, args.per_message))
                print(
                    f"  round {r + 1}: bare {bares[-1]:10,.0f}  ingest {ingests[-1]:10,.0f}"
                    f"  ratio {ingests[-1] / bares[-1]:.2f}"
                )
                if args.replicas > 1:
                    scaled.append(
                        scaled_ingest_rate(
                            broker,
                            Path(tmp) / f"scaled-{r}",
                            args.messages,
                            args.per_message,
                            args.replicas,
                        )
                    )
                    print(
                        f"  round {r + 1}: {args.replicas} replicas {scaled[-1]:10,.0f}"
                        f"  ratio {scaled[-1] / bares[-1]:.2f}"
                    )
        finally:
            broker.stop()
    ratios = [i / b for i, b in zip(ingests, bares, strict=True)]
    ratio = statistics.median(ratios)
    verdict = "MET" if ratio >= TARGET_RATIO else "NOT MET"
    print(f"bare paho subscriber : {statistics.median(bares):12,.0f} samples/s (median)")
    print(f"ingest (durable)     : {statistics.median(ingests):12,.0f} samples/s (median)")
    print(
        f"ratio                : {ratio:12.2f}  (median of rounds, {min(ratios):.2f}..."
        f"{max(ratios):.2f}); target >= {TARGET_RATIO}: {verdict}"
    )
    if scaled:
        scaled_ratios = [s / b for s, b in zip(scaled, bares, strict=True)]
        scaled_ratio = statistics.median(scaled_ratios)
        print(
            f"ingest, {args.replicas} replicas  : {statistics.median(scaled):12,.0f} samples/s "
            f"(median); ratio {scaled_ratio:.2f} ({min(scaled_ratios):.2f}..."
            f"{max(scaled_ratios):.2f}); target >= {TARGET_RATIO}: "
            f"{'MET' if scaled_ratio >= TARGET_RATIO else 'NOT MET'}"
        )


if __name__ == "__main__":
    main()
