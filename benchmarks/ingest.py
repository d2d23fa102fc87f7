"""Benchmark ingest against a hand-written durable subscriber and the transport's ceiling.

Run: ``python benchmarks/ingest.py`` (a minute or two; ``--json PATH`` writes the result).

One mosquitto on loopback.  Several publisher processes (``--publishers``, 3 by default) send
the same sample batches (``--messages`` batches of ``--per-message`` 8x8 float32 samples,
~9 KiB each at 32) at QoS 1 with up to 1,000 unacknowledged each, as edge outboxes do, all
started together.  Each round runs every case once, in turn:

- publishers: the publishers alone, to a topic nobody subscribes to: what they and the broker
  reach without a receiver, so a reader can see they are not what limits the others;
- ceiling: a bare paho subscriber at QoS 1 that only counts (automatic acks, TCP_NODELAY):
  the transport's ceiling (``mosquitto_sub -q 1`` is not installed here; this is its paho
  equivalent);
- hand-written: what a user would write by hand with the same libraries - paho with manual
  acks and TCP_NODELAY, each message decoded with numpy (``decode_sample_columns``), written
  as its own Parquet file with pyarrow, fsync'd (file and directory), then acknowledged;
- ingest: ``IngestWorker`` with a persistent session and manual acks, validating,
  de-duplicating and writing Parquet with fsync before it acknowledges (it batches);
- with ``--replicas N``: N ingest processes on one shared subscription, as ingest scales out.

Rates are samples per second from the first message received to the last one counted
(ceiling) or durably stored (hand-written, ingest); for the publishers, from the first publish
to the last PUBACK.  Verdicts are on the medians of the per-round ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _harness as harness
import numpy as np
import paho.mqtt.client as mqtt
import pyarrow as pa
import pyarrow.parquet as pq
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud_head.ingest import IngestService, IngestWorker
from cloud_head.labelling import LabelStore
from cloud_head.store import SampleStore
from continuum import select
from continuum.embedded import EmbeddedBroker
from continuum.spec import DataClass, EdgeStageSpec, PipelineSpec, TensorSchema, UplinkSpec
from continuum.wire import codec, topics
from continuum.wire.mqtt import BrokerSettings

PIPELINE = "digits"
SHAPE = (1, 8, 8)
CEILING_MIN = 0.8  # ingest / transport ceiling
HANDWRITTEN_MIN = 2.0  # ingest / hand-written durable subscriber: "wins clearly"
PUBLISHERS_MIN = 1.1  # publishers alone / ceiling: the publishers are not the bottleneck


def payloads(messages: int, per_message: int, node: str) -> list[bytes]:
    """Return ``messages`` encoded batches of ``per_message`` 8x8 float32 samples."""
    rng = np.random.default_rng(0)
    out = []
    for m in range(messages):
        records = tuple(
            codec.SampleRecord(
                seq=m * per_message + i,
                captured_at_ns=time.time_ns(),
                tensor=rng.random(SHAPE, dtype=np.float32),
                prediction=int(rng.integers(10)),
                confidence=float(rng.random()),
            )
            for i in range(per_message)
        )
        batch = codec.SampleBatch(PIPELINE, node, "v1", DataClass.INTERNAL, records)
        out.append(codec.encode_samples(batch))
    return out


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _publish(
    port: int, topic: str, node: str, messages: int, per_message: int, start: Any, out: Any
) -> None:
    """Publish the batches at QoS 1, at most 1,000 unacknowledged (runs in a child)."""
    data = payloads(messages, per_message, node)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{node}", protocol=mqtt.MQTTv5)
    client.on_socket_open = _no_delay
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    out.put(("ready", node))
    start.wait(60)
    first = time.time()
    window: list[mqtt.MQTTMessageInfo] = []
    for payload in data:
        window.append(client.publish(topic, payload, qos=1))
        if len(window) >= 1000:
            for info in window[:500]:
                info.wait_for_publish(timeout=60)
            window = window[500:]
    for info in window:
        info.wait_for_publish(timeout=60)
    out.put(("done", (first, time.time())))
    client.disconnect()
    client.loop_stop()


def publish_all(port: int, tenant: str, args: argparse.Namespace, *, nobody: bool = False) -> float:
    """Run the publishers together; return their own rate (samples/s, first publish to last
    PUBACK).  Each sends its share on its own node's topic (``nobody``: an unsubscribed one)."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    share = args.messages // args.publishers
    procs = []
    for i in range(args.publishers):
        node = f"cam-{i}-{uuid.uuid4().hex[:4]}"
        topic = f"nobody/{node}" if nobody else topics.samples(tenant, PIPELINE, node)
        procs.append(
            ctx.Process(
                target=_publish, args=(port, topic, node, share, args.per_message, start, out)
            )
        )
    for proc in procs:
        proc.start()
    for _ in procs:
        kind, _node = out.get(timeout=120)
        if kind != "ready":
            raise RuntimeError(f"a publisher said {kind!r} before it was ready")
    start.set()
    spans = [out.get(timeout=300)[1] for _ in procs]
    for proc in procs:
        proc.join(30)
        if proc.exitcode != 0:
            raise RuntimeError(f"a publisher exited with {proc.exitcode}")
    samples = float(share * args.publishers * args.per_message)
    return float(samples / (max(e for _, e in spans) - min(s for s, _ in spans)))


def expected(args: argparse.Namespace) -> int:
    """Batches that one run sends (each publisher's share, rounded down)."""
    return int(args.messages // args.publishers * args.publishers)


class Counter:
    """First and last arrival times and a count, updated from one callback thread."""

    def __init__(self, goal: int) -> None:
        self.goal, self.count = goal, 0
        self.first: float | None = None
        self.last = 0.0
        self.done = threading.Event()

    def tick(self) -> None:
        now = time.time()
        self.first = now if self.first is None else self.first
        self.count += 1
        self.last = now
        if self.count >= self.goal:
            self.done.set()

    def rate(self, samples: int, what: str, timeout_s: float = 120.0) -> float:
        if not self.done.wait(timeout_s) or self.first is None:
            raise RuntimeError(f"{what} got {self.count} of {self.goal} messages")
        return samples / max(self.last - self.first, 1e-9)


class CpuWindow:
    """This process's CPU time from the first publish to the last sample received or stored.

    Set-up (the store, the warm-up write, connecting) and tear-down (closing, the store's
    read-back count) are left out, so each receiver is charged for receiving alone.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self.used_s = 0.0

    def start(self) -> None:
        self._start = time.process_time()

    def stop(self) -> None:
        self.used_s = time.process_time() - self._start


#: The window of the run under way (cases run one at a time in this process).
RECEIVING = CpuWindow()


def _subscriber(
    port: int, tenant: str, on_message: Callable[..., None], *, manual_ack: bool
) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"sub-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.on_socket_open = _no_delay
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(topics.pipeline_filter(tenant, "samples"), qos=1)
    if not subscribed.wait(30):
        raise RuntimeError("the broker did not acknowledge the subscription")
    return client


def ceiling_rate(broker: EmbeddedBroker, args: argparse.Namespace) -> float:
    """Samples/s through a subscriber that only counts (QoS 1, automatic acks)."""
    tenant = f"ceil-{uuid.uuid4().hex[:6]}"
    counter = Counter(expected(args))
    client = _subscriber(broker.port, tenant, lambda *a: counter.tick(), manual_ack=False)
    try:
        RECEIVING.start()
        publish_all(broker.port, tenant, args)
        rate = counter.rate(expected(args) * args.per_message, "the bare subscriber")
        RECEIVING.stop()
        return rate
    finally:
        client.disconnect()
        client.loop_stop()


def handwritten_rate(broker: EmbeddedBroker, root: Path, args: argparse.Namespace) -> float:
    """Samples/s through a hand-written durable subscriber: decode, Parquet, fsync, ack."""
    tenant = f"hand-{uuid.uuid4().hex[:6]}"
    out = root / tenant
    out.mkdir(parents=True)
    directory = os.open(out, os.O_RDONLY)
    counter = Counter(expected(args))

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        cols = codec.decode_sample_columns(bytes(msg.payload), dtype=np.float32, shape=SHAPE)
        flat = pa.array(cols.tensors.reshape(-1))
        table = pa.table(
            {
                "node": pa.array([cols.node] * len(cols)),
                "seq": cols.seq,
                "captured_at_ns": cols.captured_at_ns,
                "prediction": cols.prediction,
                "confidence": cols.confidence,
                "tensor": pa.FixedSizeListArray.from_arrays(flat, int(np.prod(SHAPE))),
            }
        )
        with open(out / f"{counter.count:07d}.parquet", "wb") as file:
            pq.write_table(table, file)
            file.flush()
            os.fsync(file.fileno())
        os.fsync(directory)
        client.ack(msg.mid, msg.qos)
        counter.tick()

    client = _subscriber(broker.port, tenant, on_message, manual_ack=True)
    try:
        RECEIVING.start()
        publish_all(broker.port, tenant, args)
        rate = counter.rate(expected(args) * args.per_message, "the hand-written subscriber")
        RECEIVING.stop()
        return rate
    finally:
        client.disconnect()
        client.loop_stop()
        os.close(directory)


def _bench_spec(tenant: str) -> PipelineSpec:
    return PipelineSpec(
        name=PIPELINE,
        tenant=tenant,
        data_class="internal",
        edge=EdgeStageSpec(model="inspector", input=TensorSchema(shape=SHAPE)),
        uplink=UplinkSpec(policy=select.random(0.1)),
    )


def ingest_rate(broker: EmbeddedBroker, root: Path, args: argparse.Namespace) -> float:
    """Samples/s through ``IngestWorker`` into Parquet with fsync before each ack."""
    tenant = f"ing-{uuid.uuid4().hex[:6]}"
    base = root / tenant
    store = SampleStore(base / "store", fsync=True)
    labels = LabelStore(base / "labels.db")
    service = IngestService(tenant, [_bench_spec(tenant)], store, labels, base / "seen.db")
    settings = BrokerSettings(host=broker.host, port=broker.port, session_expiry_s=600)
    worker = IngestWorker(service, settings, client_id=f"ingest-{tenant}")
    goal = expected(args) * args.per_message
    # A running worker has paid pyarrow's one-time lazy imports and compute-kernel set-up
    # (~0.5 s); a run from a cold process would charge them to the first group.
    warm = SampleStore(base / "warm-up", fsync=False)
    warm.append_columns(
        tenant,
        codec.decode_sample_columns(payloads(1, 1, "warm-up")[0], dtype="float32", shape=SHAPE),
    )
    warm.flush()
    worker.start()
    first: list[float] = []
    stop = threading.Event()

    def watch_first() -> None:
        while not stop.is_set():
            if service.stats()["batches"] or worker.stats()["queued"]:
                first.append(time.time())
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=watch_first, name="bench-first", daemon=True)
    try:
        while not worker.connected:
            time.sleep(0.01)
        watcher.start()
        RECEIVING.start()
        publish_all(broker.port, tenant, args)
        deadline = time.monotonic() + 120
        while service.stats()["stored"] < goal:
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest stored {service.stats()['stored']} of {goal}")
            time.sleep(0.002)
        last = time.time()
        RECEIVING.stop()
    finally:
        stop.set()
        worker.stop()
    stored = store.count(tenant, PIPELINE)
    service.close()
    labels.close()
    if stored != goal or not first:
        raise RuntimeError(f"the store holds {stored} samples, expected {goal}")
    return float(goal / max(last - first[0], 1e-9))


def _replica(
    port: int,
    root: str,
    tenant: str,
    replica: int,
    stored: Any,
    first_at: Any,
    ready: Any,
    stop: Any,
) -> None:
    """One ingest replica in its own process: its own MQTT loop, GIL and service."""
    store = SampleStore(Path(root) / "store", fsync=True)
    labels = LabelStore(Path(root) / "labels.db")
    service = IngestService(tenant, [_bench_spec(tenant)], store, labels, Path(root) / "seen.db")
    settings = BrokerSettings(host="127.0.0.1", port=port, session_expiry_s=600)
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


def replicas_rate(broker: EmbeddedBroker, root: Path, args: argparse.Namespace) -> float:
    """Samples/s through ``--replicas`` ingest processes on one shared subscription."""
    tenant = f"rep-{uuid.uuid4().hex[:6]}"
    base = root / tenant
    ctx = mp.get_context("spawn")
    n = args.replicas
    stored: Any = ctx.Array("q", n)
    first_at: Any = ctx.Array("d", n)
    ready, stop = ctx.Semaphore(0), ctx.Event()
    procs = [
        ctx.Process(
            target=_replica,
            args=(broker.port, str(base), tenant, i, stored, first_at, ready, stop),
            daemon=True,
        )
        for i in range(n)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise RuntimeError("an ingest replica did not connect")
        publish_all(broker.port, tenant, args)
        goal = expected(args) * args.per_message
        deadline = time.monotonic() + 120
        while sum(stored) < goal:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} replicas stored {sum(stored)} of {goal}")
            time.sleep(0.002)
        last = time.time()
    finally:
        stop.set()
        for proc in procs:
            proc.join(30)
    count = SampleStore(base / "store").count(tenant, PIPELINE)
    if count != goal:
        raise RuntimeError(f"the store holds {count} samples, expected {goal}")
    first = min((t for t in first_at if t), default=last)
    return float(goal / max(last - first, 1e-9))


def receiver_cpu(
    into: dict[str, list[float]], name: str, args: argparse.Namespace, run: Callable[[], float]
) -> Callable[[], float]:
    """Wrap ``run`` to note this process's CPU per sample (us) while it received
    (``RECEIVING``: from the first publish to the last sample in)."""

    def measured() -> float:
        rate = run()
        used = RECEIVING.used_s
        into.setdefault(name, []).append(1e6 * used / (expected(args) * args.per_message))
        return rate

    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="batches per run")
    parser.add_argument("--per-message", type=int, default=32, help="samples per batch")
    parser.add_argument("--publishers", type=int, default=3, help="publisher processes")
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="also measure this many ingest processes on one shared subscription (0: not)",
    )
    harness.add_arguments(parser, rounds=5)
    args = parser.parse_args()
    if args.messages < args.publishers or args.per_message < 1 or args.publishers < 1:
        parser.error("need --publishers >= 1, --messages >= --publishers, --per-message >= 1")
    with tempfile.TemporaryDirectory(prefix="ctm-bench-ingest-") as tmp:
        root = Path(tmp)
        report = harness.Report("ingest", paths=[root])
        print(
            f"{expected(args)} batches x {args.per_message} samples of 8x8 float32 per run, "
            f"{args.publishers} publisher processes, QoS 1, {args.rounds} rounds; the "
            "hand-written subscriber and ingest fsync on the filesystem above"
        )
        broker = EmbeddedBroker(root / "broker")
        broker.start()
        try:
            cpu: dict[str, list[float]] = {}
            cases: dict[str, Callable[[], float]] = {
                "publishers alone": lambda: publish_all(broker.port, "none", args, nobody=True),
                "ceiling (bare paho, QoS 1)": receiver_cpu(
                    cpu, "ceiling", args, lambda: ceiling_rate(broker, args)
                ),
                "hand-written durable": receiver_cpu(
                    cpu, "hand-written", args, lambda: handwritten_rate(broker, root, args)
                ),
                "ingest (durable)": receiver_cpu(
                    cpu, "ingest", args, lambda: ingest_rate(broker, root, args)
                ),
            }
            if args.replicas > 1:
                cases[f"ingest, {args.replicas} replicas"] = lambda: replicas_rate(
                    broker, root, args
                )
            values = harness.alternate(
                cases,
                args.rounds,
                on_round=lambda r, v: print(
                    f"  round {r + 1}: " + "  ".join(f"{k} {x:,.0f}" for k, x in v.items()),
                    flush=True,
                ),
            )
        finally:
            broker.stop()
        for name, vals in values.items():
            report.case(name, vals, "samples/s")
        for name, vals in cpu.items():
            report.case(f"{name} receiver CPU", vals, "us/sample")
        print(
            "\nthe receiver's own CPU per sample (this process, all its threads; median): "
            + ", ".join(f"{k} {statistics.median(v):.1f} us" for k, v in cpu.items())
            + ". A receiver whose CPU per sample times its rate nears one core is bound by "
            "its own Python; one far below it waits on fsync or the broker."
        )
        ingest = values["ingest (durable)"]
        ceiling = values["ceiling (bare paho, QoS 1)"]
        report.verdict(
            harness.at_least("ingest / ceiling", harness.ratios(ingest, ceiling), CEILING_MIN, "x")
        )
        report.verdict(
            harness.at_least(
                "ingest / hand-written durable",
                harness.ratios(ingest, values["hand-written durable"]),
                HANDWRITTEN_MIN,
                "x",
            )
        )
        if args.replicas > 1:
            scaled = values[f"ingest, {args.replicas} replicas"]
            report.verdict(
                harness.at_least(
                    f"ingest, {args.replicas} replicas / ceiling",
                    harness.ratios(scaled, ceiling),
                    CEILING_MIN,
                    "x",
                )
            )
        report.verdict(
            harness.at_least(
                "publishers alone / ceiling (publishers not the limit)",
                harness.ratios(values["publishers alone"], ceiling),
                PUBLISHERS_MIN,
                "x",
            )
        )
        report.finish(args.json)


if __name__ == "__main__":
    main()
