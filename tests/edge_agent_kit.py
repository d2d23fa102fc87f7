"""Test kit of the edge agent tests: tiny real ONNX models, pipeline specs, frame sources,
agent configs, a stand-in for the cloud side that publishes signed models over MQTT, and
``AgentRig``, the one set-up of a node's agent that the edge tests share.

It lives at the root of ``tests/`` so the unit and integration tests share it (imported as
``tests.edge_agent_kit``, the repository root being the working directory), and so agents can
load ``tests.edge_agent_kit:PatternSource`` by import reference like any real source.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from continuum import Pipeline, select
from continuum.select import Policy
from continuum.signing import generate_keypair, sha256_file, sign_artifact
from continuum.sources import Frame
from continuum.wire import mqtt, topics
from continuum.wire.messages import (
    SCHEMA_VERSION,
    ArtifactManifest,
    DesiredModel,
    DesiredState,
)

if TYPE_CHECKING:
    from cloud_head.store import SampleStore
    from edge_agent.agent import EdgeAgent
    from edge_agent.outbox import AppendResult, SampleEntry

SHAPE = (1, 8, 8)
CLASSES = 10


def build_model(
    path: Path, *, favour: int = 0, gain: float = 10.0, opset: int = 17, classes: int = CLASSES
) -> Path:
    """Write a real ONNX classifier: softmax(flatten(x) @ W + b), 10 classes, input (N,1,8,8).

    Every pixel adds ``gain / 64`` to the logit of class ``favour``: an all-ones frame is
    predicted ``favour`` with confidence ~1, an all-zeros frame gets the uniform 0.1.
    """
    features = math.prod(SHAPE)
    weights = np.zeros((features, classes), dtype=np.float32)
    weights[:, favour] = gain / features
    bias = np.zeros((classes,), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_score_model(path: Path, *, gain: float = 1.0, sigmoid: bool = False) -> Path:
    """Write a real ONNX scorer of SHAPE frames: one output per sample, (N, 1).

    The score is ``gain * mean(x)``, through a sigmoid of ``gain * (mean(x) - 0.5)`` with
    ``sigmoid`` (a binary model's P(positive)); plain, it serves as a regression's value
    or an anomaly score.
    """
    features = math.prod(SHAPE)
    weights = np.full((features, 1), gain / features, dtype=np.float32)
    bias = np.full((1,), -gain / 2 if sigmoid else 0.0, dtype=np.float32)
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["raw"]),
        helper.make_node("Add", ["raw", "b"], ["linear" if sigmoid else "score"]),
    ]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["linear"], ["score"]))
    graph = helper.make_graph(
        nodes,
        "scorer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_wrong_input_model(path: Path) -> Path:
    """Write a valid ONNX model whose input is (N, 3) floats: it loads but cannot serve SHAPE."""
    weights = np.ones((3, CLASSES), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "wrong",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_pipeline(
    folder: Path,
    *,
    name: str = "inspect",
    tenant: str = "acme",
    model: str = "inspector",
    policy: Policy | None = None,
    budget_kbps: float | None = None,
    max_batch: int = 8,
    max_wait_ms: float = 5.0,
    where: Mapping[str, str] | None = None,
    data_class: str = "internal",
) -> Path:
    """Declare a pipeline with the DSL and write it as YAML; return the file."""
    pipe = Pipeline(name, tenant=tenant, data_class=data_class)
    pipe.edge(
        model=model,
        backend="onnxruntime",
        shape=SHAPE,
        where=dict(where or {"continuum.io/tier": "edge"}),
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
    )
    pipe.uplink(policy or select.low_confidence(0.5), budget_kbps=budget_kbps)
    path = folder / f"{name}.yaml"
    path.write_text(pipe.spec.to_yaml(), encoding="utf-8")
    return path


class PatternSource:
    """Frames filled with ``pattern[i % len(pattern)]``; ``count`` < 0 never ends.

    ``fps`` > 0 paces the frames like a camera; ``labels`` (cycled like the pattern) are
    attached with ``label_delay_s``.  Constructor arguments are plain JSON, as the agent
    config requires.
    """

    def __init__(
        self,
        pattern: list[float],
        count: int = 10,
        fps: float = 0.0,
        labels: list[int] | list[float] | None = None,
        label_delay_s: float = 0.0,
        shape: list[int] | None = None,
    ) -> None:
        self.pattern = [float(v) for v in pattern]
        self.count = count
        self.fps = fps
        self.labels = labels
        self.label_delay_s = label_delay_s
        self.shape = tuple(shape or SHAPE)
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        start = time.monotonic()
        while (self.count < 0 or index < self.count) and not self.closed.is_set():
            if self.fps > 0:
                delay = start + index / self.fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            value = self.pattern[index % len(self.pattern)]
            label = None if self.labels is None else self.labels[index % len(self.labels)]
            yield Frame(
                tensor=np.full(self.shape, value, dtype=np.float32),
                label=label,
                label_delay_s=self.label_delay_s,
            )
            index += 1

    def close(self) -> None:
        """Stop yielding (the agent calls this at shutdown)."""
        self.closed.set()


def pattern_source(pattern: list[float], **args: Any) -> dict[str, Any]:
    """The agent-config ``source`` of a ``PatternSource`` with these (JSON) arguments."""
    return {"ref": "tests.edge_agent_kit:PatternSource", "args": {"pattern": pattern, **args}}


def write_key(folder: Path, public_pem: bytes) -> Path:
    """Write the trusted public key file."""
    path = folder / "tenant.pub.pem"
    path.write_bytes(public_pem)
    return path


def agent_config(
    folder: Path,
    *,
    spec: Path,
    key: Path,
    source: Mapping[str, Any],
    host: str = "127.0.0.1",
    port: int = 1883,
    node: str = "edge-1",
    tenant: str = "acme",
    **settings: Any,
) -> Path:
    """Write an agent config YAML with one pipeline; ``settings`` add or override fields."""
    data: dict[str, Any] = {
        "node_id": node,
        "tenant": tenant,
        "labels": {"continuum.io/tier": "edge", "continuum.io/site": "lux-1"},
        "broker": {"host": host, "port": port, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0},
        "state_dir": str(folder / "state"),
        "trusted_public_key": str(key),
        "telemetry_interval_s": 0.5,
        "pipelines": [{"spec": str(spec), "source": dict(source)}],
    }
    data.update(settings)
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def desired_for(
    artifact: Path,
    private_pem: bytes,
    *,
    model: str,
    version: str,
    chunk_size: int = 1024,
    signature: str | None = None,
) -> DesiredModel:
    """Return the signed desired-model entry for ``artifact``."""
    sha = sha256_file(artifact)
    size = artifact.stat().st_size
    return DesiredModel(
        model=model,
        version=version,
        sha256=sha,
        signature=signature or sign_artifact(private_pem, model, version, sha),
        size_bytes=size,
        chunk_size=chunk_size,
        chunks=max(1, math.ceil(size / chunk_size)),
    )


class CloudStandIn:
    """The cloud side of the tests: publishes artifacts and desired state, collects messages."""

    def __init__(
        self,
        host: str,
        port: int,
        tenant: str = "acme",
        *,
        client_id: str | None = None,
        session_expiry_s: int = 0,
        settings: mqtt.BrokerSettings | None = None,
    ) -> None:
        """Connect to ``host:port``, or as ``settings`` say (TLS, credentials) when given."""
        self.tenant = tenant
        self.settings = settings or mqtt.BrokerSettings(
            host=host, port=port, session_expiry_s=session_expiry_s
        )
        self.client = mqtt.make_client(client_id or f"cloud-standin-{id(self)}", self.settings)
        self.received: list[tuple[str, bytes, bool]] = []
        #: Topics this stand-in left a retained message on (to clear them at the end).
        self.retained_topics: set[str] = set()
        self.lock = threading.Lock()
        self.client.on_message = self._on_message
        mqtt.connect(self.client, self.settings)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.received.append((message.topic, bytes(message.payload), bool(message.retain)))

    def subscribe(self, *filters: str) -> None:
        """Subscribe at QoS 1 and give the broker a moment to confirm."""
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe([(f, 1) for f in filters])
        assert done.wait(5.0), "no SUBACK"

    def messages(self, topic_part: str) -> list[tuple[str, bytes, bool]]:
        """Return received messages whose topic contains ``topic_part``."""
        with self.lock:
            return [m for m in self.received if topic_part in m[0]]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the PUBACK."""
        mqtt.publish_and_wait(self.client, topic, payload, retain=retain, timeout_s=5.0)
        if retain:
            with self.lock:
                (self.retained_topics.add if payload else self.retained_topics.discard)(topic)

    def publish_artifact(
        self,
        artifact: Path,
        want: DesiredModel,
        *,
        tamper_chunk: int | None = None,
        cut_chunk: int | None = None,
        skip_chunks: Iterable[int] = (),
    ) -> None:
        """Publish ``artifact`` as retained chunks and manifest.

        ``tamper_chunk`` flips a byte of that chunk, ``cut_chunk`` publishes only its first
        half, ``skip_chunks`` are not published at all (an upload cut off mid-way).
        """
        data = artifact.read_bytes()
        skipped = set(skip_chunks)
        for index in range(want.chunks):
            if index in skipped:
                continue
            piece = bytearray(data[index * want.chunk_size : (index + 1) * want.chunk_size])
            if index == tamper_chunk:
                piece[len(piece) // 2] ^= 0xFF
            if index == cut_chunk:
                del piece[len(piece) // 2 :]
            topic = topics.artifact_chunk(self.tenant, want.model, want.version, index)
            self.publish(topic, bytes(piece), retain=True)
        manifest = ArtifactManifest(
            schema_version=SCHEMA_VERSION,
            **want.model_dump(exclude={"rollback"}),
        )
        self.publish(
            topics.artifact_manifest(self.tenant, want.model, want.version),
            manifest.to_payload(),
            retain=True,
        )

    def set_desired(
        self,
        node: str,
        pipelines: Mapping[str, DesiredModel],
        generation: int,
        *,
        signer: bytes,
        issued_at: float | None = None,
        validity_s: float = 3600.0,
    ) -> DesiredState:
        """Publish the node's retained desired state, signed by ``signer`` as the cloud signs
        it (``cloud_head.desired_state.signed_desired_state``); return it."""
        from cloud_head.desired_state import signed_desired_state

        state = signed_desired_state(
            signer,
            tenant=self.tenant,
            node=node,
            pipelines=pipelines,
            generation=generation,
            issued_at=time.time() if issued_at is None else issued_at,
            validity_s=validity_s,
        )
        self.publish_desired(node, state)
        return state

    def publish_desired(self, node: str, state: DesiredState) -> None:
        """Publish ``state`` as is (signed or not, for any node) on ``node``'s desired topic."""
        self.publish(topics.node_desired(self.tenant, node), state.to_payload(), retain=True)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(condition: Any, timeout_s: float = 10.0, interval_s: float = 0.05) -> Any:
    """Poll ``condition()`` until it returns something truthy; return it or fail the test."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


class AgentRig:
    """One node's agent set-up: the tenant's signing keys, the pipeline's spec, agent configs
    for a broker, the agents built from them, and signed rollouts of models to the node.

    Args:
        folder: where the key, the spec, the config, the state and the models go.
        host, port: the broker.
        broker: a whole ``broker`` section of the config instead (credentials, TLS).
        cloud: the stand-in that ``roll_out`` publishes through (None: one connected for
            each rollout, as a broker restarted since would have dropped any other).
    """

    def __init__(
        self,
        folder: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        node: str = "edge-1",
        tenant: str = "acme",
        pipeline: str = "inspect",
        broker: Mapping[str, Any] | None = None,
        cloud: CloudStandIn | None = None,
    ) -> None:
        self.folder = folder
        self.host, self.port = host, port
        self.node, self.tenant, self.pipeline = node, tenant, pipeline
        self.private, public = generate_keypair()
        self.key = write_key(folder, public)
        self.spec = write_pipeline(folder, name=pipeline, tenant=tenant)
        self.cloud = cloud
        self._broker = None if broker is None else dict(broker)
        #: Every agent ``agent`` built (``stop_agents`` stops them).
        self.agents: list[EdgeAgent] = []

    def config(self, *, source: Mapping[str, Any], **settings: Any) -> Path:
        """Write the node's agent config; ``settings`` add or override fields."""
        if self._broker is not None:
            settings.setdefault("broker", self._broker)
        return agent_config(
            self.folder,
            spec=self.spec,
            key=self.key,
            source=source,
            host=self.host,
            port=self.port,
            node=self.node,
            tenant=self.tenant,
            **settings,
        )

    def agent(self, **config: Any) -> EdgeAgent:
        """Build (not start) an agent from a fresh ``config(**config)``."""
        # Imported here: agents import this kit too (for PatternSource), from the agent.
        from edge_agent.agent import EdgeAgent
        from edge_agent.config import AgentSettings

        agent = EdgeAgent(AgentSettings.load(self.config(**config)))
        self.agents.append(agent)
        return agent

    def stop_agents(self, timeout_s: float = 5.0) -> None:
        """Stop every agent built here."""
        for agent in self.agents:
            agent.stop(timeout_s=timeout_s)

    def roll_out(
        self,
        version: str = "v1",
        generation: int = 1,
        *,
        favour: int = 0,
        signer: bytes | None = None,
        artifact: Path | None = None,
        **damage: Any,
    ) -> DesiredModel:
        """Publish a model signed by the tenant (or ``signer``) and make it the node's
        desired state: ``artifact``, or a classifier favouring class ``favour``; ``damage``
        goes to ``CloudStandIn.publish_artifact``."""
        if artifact is None:
            artifact = build_model(self.folder / f"{version}.onnx", favour=favour)
        want = desired_for(artifact, signer or self.private, model="inspector", version=version)
        cloud = self.cloud or CloudStandIn(self.host, self.port, self.tenant)
        try:
            cloud.publish_artifact(artifact, want, **damage)
            cloud.set_desired(self.node, {self.pipeline: want}, generation, signer=self.private)
        finally:
            if cloud is not self.cloud:
                cloud.close()
        return want


def record_selected(agent: EdgeAgent) -> list[int]:
    """Return the list that will hold the seqs the runtime puts into the durable outbox
    (the selected samples), as they are appended."""
    selected: list[int] = []
    append = agent.outbox.append_samples

    def recording_append(entries: Sequence[SampleEntry]) -> AppendResult:
        result = append(entries)
        selected.extend(result.kept)
        return result

    agent.outbox.append_samples = recording_append  # type: ignore[method-assign]
    return selected


def stored_ids(store: SampleStore, tenant: str, pipeline: str) -> set[str]:
    """The sample ids ``store`` holds for the pipeline (its de-duplicating read)."""
    if not store.files(tenant, pipeline):
        return set()
    table = store.read(tenant, pipeline, columns=["sample_id"])
    return {str(v) for v in table.column("sample_id").to_pylist()}


def raw_ids(store: SampleStore, tenant: str, pipeline: str) -> list[str]:
    """Every sample id row of every Parquet file of the pipeline, read directly (duplicates
    kept)."""
    import pyarrow.parquet as pq  # a cloud-side dependency; agents import this kit too

    return [
        str(v)
        for path in store.files(tenant, pipeline)
        for v in pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()
    ]
