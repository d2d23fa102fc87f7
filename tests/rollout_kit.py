"""Test kit of the rollout, controller and audit tests: one tenant's real cloud stores.

``CloudRig`` holds a tenant's SQLite model registry, fleet registry, label store and signed
audit log, a Parquet sample store and a desired-state book, on a clock the test moves by
hand; it feeds the fleet the status, reported and telemetry payloads an edge agent sends.
Desired state and artifacts go out through ``publish``: retained through a real MQTT client
when the rig has one, and kept in ``published_topics`` and ``desired_states`` either way,
so unit tests read what would have been published and integration tests read it back from
the broker (``DesiredWatcher``).

It lives at the root of ``tests/`` so the unit and integration tests share it (imported as
``tests.rollout_kit``), and so a spec can name ``tests.rollout_kit:no_trainer``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_head.artifacts import retained_publisher
from cloud_head.audit import AuditAction, AuditLog, AuditRecord, AuditTrail, model_subject
from cloud_head.controller import ControllerStores, PipelineController
from cloud_head.desired_state import DesiredStateBook
from cloud_head.fleet import FleetRegistry
from cloud_head.labelling import LabelStore
from cloud_head.registry import ModelRegistry, ModelVersion
from cloud_head.rollout import MIN_LABELLED_FOR_DECISION, RolloutController
from cloud_head.signer import TenantSigner
from cloud_head.store import SampleStore
from continuum import select
from continuum.embedded import EmbeddedBroker
from continuum.labels import SITE, TIER
from continuum.signing import generate_keypair
from continuum.spec import (
    DataClass,
    EdgeStageSpec,
    PipelineSpec,
    RetrainSpec,
    RolloutSpec,
    TensorSchema,
    TriggerSpec,
    UplinkSpec,
)
from continuum.wire import codec, topics
from continuum.wire.messages import (
    DesiredState,
    NodeStatus,
    ReportedModel,
    ReportedState,
    Telemetry,
)

PIPELINE = "digits"
NODES = ("cam-1", "cam-2", "cam-3", "cam-4")
#: Labelled samples that fire the retrain trigger of ``pipeline_spec``.
TRIGGER_SAMPLES = 8
#: The audit actor of the controllers the rig builds.
SERVICE = "service:controller-digits"
#: Seconds between the capture times of the samples ``labelled_samples`` stores: 40 of them
#: span 20 holdout blocks, so the time-split holdout has some of them whatever the node.
SAMPLE_EVERY_S = 5.0
#: Canary one of four nodes, then two, then all; an accuracy drop of 0.05 rolls back.
CANARY_ROLLOUT = RolloutSpec(canary=0.25, promote_after_s=60, rollback_on_drop=0.05)


def no_trainer(config: object) -> None:  # pragma: no cover - only named by the specs
    raise RuntimeError("these tests never train")


def pipeline_spec(
    tenant: str,
    *,
    rollout: RolloutSpec = CANARY_ROLLOUT,
    retrain: bool = True,
    gpus: float = 0.0,
    trainer: str = "tests.rollout_kit:no_trainer",
    trigger: TriggerSpec | None = None,
) -> PipelineSpec:
    """Return the digits pipeline of ``tenant``: 8x8 frames on edge nodes, a canary rollout.

    With ``retrain``, ``TRIGGER_SAMPLES`` labelled samples (or ``trigger``) fire its
    retraining by ``trainer``.
    """
    return PipelineSpec(
        name=PIPELINE,
        tenant=tenant,
        data_class="internal",
        edge=EdgeStageSpec(
            model="inspector", input=TensorSchema(shape=(1, 8, 8)), where={TIER: "edge"}
        ),
        uplink=UplinkSpec(policy=select.random(0.1)),
        retrain=RetrainSpec(
            trainer=trainer,
            trigger=TriggerSpec(new_samples=TRIGGER_SAMPLES) if trigger is None else trigger,
            gpus=gpus,
        )
        if retrain
        else None,
        rollout=rollout,
    )


class Clock:
    """A clock the test moves by hand, shared by the stores, controllers and payload stamps."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class CloudRig:
    """One tenant's cloud stores and audit log, and what they published (see the module)."""

    root: Path
    tenant: str
    clock: Clock = field(default_factory=Clock)
    client: mqtt.Client | None = None
    published_topics: list[str] = field(default_factory=list)
    desired_states: list[DesiredState] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.private_key, self.public_key = generate_keypair()
        self.registry = ModelRegistry(self.root / "registry")
        self.fleet = FleetRegistry(self.tenant, self.root / "fleet.sqlite3", clock=self.clock)
        self.store = SampleStore(self.root / "store")
        self.labels = LabelStore(self.root / "labels.sqlite3")
        # As on the head: the services append unsigned, the tenant's signer holds the key and
        # seals (``seal``); the controllers ask it to sign.
        self.signer = TenantSigner(self.tenant, self.private_key)
        self.log = AuditLog(self.root / "audit")
        self._send = None if self.client is None else retained_publisher(self.client)
        self._book: DesiredStateBook | None = None
        self._opened: list[PipelineController | RolloutController] = []

    # -- what edge agents would send -------------------------------------------------------

    def node_joins(
        self, node: str, *, online: bool = True, heartbeat_s: float | None = None
    ) -> None:
        """The node's retained status, as its agent (or, offline, its last will) publishes it."""
        status = NodeStatus(
            node=node,
            tenant=self.tenant,
            online=online,
            labels={TIER: "edge", SITE: "lux-1"},
            agent_version="test",
            pipelines=[PIPELINE],
            heartbeat_s=heartbeat_s,
            ts=self.clock(),
        )
        update = self.fleet.handle(topics.node_status(self.tenant, node), status.to_payload())
        assert update.kind == "status", update

    def node_leaves(self, node: str) -> None:
        """The node's last will: its retained status, offline."""
        self.node_joins(node, online=False)

    def node_serves(self, node: str, version: ModelVersion, state: str = "serving") -> None:
        """The node reports that it runs ``version`` (or rejected or failed it)."""
        reported = ReportedState(
            node=node,
            pipelines={
                PIPELINE: ReportedModel(
                    model=version.model,
                    version=version.version,
                    sha256=version.sha256,
                    state=state,  # type: ignore[arg-type]
                )
            },
            ts=self.clock(),
        )
        update = self.fleet.handle(topics.node_reported(self.tenant, node), reported.to_payload())
        assert update.kind == "reported", update

    def telemetry(
        self,
        node: str,
        version: str,
        *,
        labelled: int,
        correct: int,
        p95_ms: float = 2.0,
        drift: float = 0.0,
    ) -> None:
        """One telemetry window of ``node`` running ``version``, stamped now."""
        window = Telemetry(
            node=node,
            pipeline=PIPELINE,
            model_version=version,
            window_s=10.0,
            frames=labelled,
            uplinked=0,
            dropped=0,
            latency_p50_ms=min(1.0, p95_ms),
            latency_p95_ms=p95_ms,
            drift_score=drift,
            labelled=labelled,
            correct=correct,
            ts=self.clock(),
        )
        update = self.fleet.handle(
            topics.telemetry(self.tenant, PIPELINE, node), window.to_payload()
        )
        assert update.kind == "telemetry", update

    def labelled_samples(
        self,
        count: int,
        labels: Sequence[int] = (),
        *,
        value: float = 0.0,
        first_seq: int = 0,
        node: str = "cam-1",
        every_s: float = SAMPLE_EVERY_S,
    ) -> None:
        """Store ``count`` samples of ``node`` labelled 0..9 in turn, then one per ``labels``.

        Every frame's pixels are ``value``; sequence numbers start at ``first_seq``; the frames
        were captured ``every_s`` apart on the edge's clock, the last one now.
        """
        values = [s % 10 for s in range(count)] + list(labels)
        last_ns = int(self.clock() * 1e9)
        step_ns = int(every_s * 1e9)
        records = tuple(
            codec.SampleRecord(
                seq=first_seq + s,
                captured_at_ns=last_ns - (len(values) - 1 - s) * step_ns,
                tensor=np.full((1, 8, 8), value, np.float32),
                label=label,
            )
            for s, label in enumerate(values)
        )
        self.store.append(
            self.tenant, codec.SampleBatch(PIPELINE, node, "v1", DataClass.INTERNAL, records)
        )
        self.store.flush()

    # -- the cloud side --------------------------------------------------------------------

    def register(
        self, tag: str, artifact: Path | None = None, *, lineage: dict[str, Any] | None = None
    ) -> ModelVersion:
        """Register a signed version of the pipeline's model (bytes of ``tag``, or a file)."""
        if artifact is None:
            artifact = self.root / f"model-{tag}.onnx"
            artifact.write_bytes(f"not really onnx: {tag}".encode() * 50)
        return self.registry.register(
            self.tenant,
            PIPELINE,
            "inspector",
            artifact,
            sign=self.signer.sign_artifact,
            parent=None,
            code_version="test",
            metrics={},
            gate={},
            lineage=lineage or {},
        )

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish retained through the client (if any); keep what was published."""
        if self._send is not None:
            self._send(topic, payload)
        self.published_topics.append(topic)
        if topics.parse(topic).kind == "desired":
            self.desired_states.append(DesiredState.from_payload(payload))

    @property
    def book(self) -> DesiredStateBook:
        """The rollouts' desired-state book (``restart_book`` closes and opens it again)."""
        if self._book is None:
            self._book = DesiredStateBook(
                self.root / "desired.sqlite3",
                self.tenant,
                self.publish,
                signer=self.signer,
            )
        return self._book

    def restart_book(self) -> None:
        """Close the book as a dying cloud head would; the next use opens the file again."""
        if self._book is not None:
            self._book.close()
            self._book = None

    def seal(self) -> None:
        """Seal the audit log as the signer actor does every ``seal_interval_s``."""
        self.signer.seal(self.log)

    def trail(self) -> AuditTrail:
        """The tenant's audit trail as the pipeline's controller service writes it."""
        return AuditTrail(self.log, self.tenant, SERVICE)

    def rollout(self, spec: PipelineSpec, *, audited: bool = True) -> RolloutController:
        """A rollout controller of ``spec`` on the rig's book (recording in the audit log)."""
        rollout = RolloutController(
            spec,
            self.registry,
            self.fleet,
            self.book,
            chunk_size=1024,
            clock=self.clock,
            audit=self.trail() if audited else None,
        )
        self._opened.append(rollout)
        return rollout

    def controller(
        self, spec: PipelineSpec, *, audited: bool = True, **options: Any
    ) -> PipelineController:
        """A pipeline controller of ``spec`` with its workdir under the rig's root."""
        controller = PipelineController(
            spec,
            ControllerStores(
                registry=self.registry,
                store=self.store,
                labels=self.labels,
                fleet=self.fleet,
                audit=self.trail() if audited else None,
            ),
            publish=self.publish,
            signer=self.signer,
            workdir=self.root / "controller",
            code_version="test",
            clock=self.clock,
            **options,
        )
        self._opened.append(controller)
        return controller

    # -- what the tests read ---------------------------------------------------------------

    def records(self, action: AuditAction | None = None) -> list[AuditRecord]:
        """The tenant's audit records, oldest first."""
        return self.log.records(self.tenant, action=action)

    def sent(self, version: str) -> list[str]:
        """The nodes that were ever told to serve ``version``."""
        return sorted(
            {s.node for s in self.desired_states if s.pipelines[PIPELINE].version == version}
        )

    def rollout_events(self, version: str) -> list[str]:
        """The ``event`` of every rollout record of ``version``, oldest first."""
        return [
            r.details["event"]
            for r in self.records(AuditAction.ROLLOUT)
            if r.subject == model_subject(PIPELINE, version)
        ]

    def close(self) -> None:
        for opened in self._opened:
            opened.close()
        self.restart_book()
        self.registry.close()
        self.fleet.close()
        self.labels.close()
        self.log.close()


def connected_client(broker: EmbeddedBroker, name: str) -> mqtt.Client:
    """Return a client connected to ``broker``, as a controller service connects."""
    from continuum.wire.mqtt import BrokerSettings, connect, make_client

    settings = BrokerSettings(host=broker.host, port=broker.port)
    client = make_client(name, settings)
    connect(client, settings)
    return client


def serve_v1(
    rig: CloudRig,
    rollout: RolloutController | PipelineController,
    nodes: Sequence[str] = NODES,
) -> ModelVersion:
    """Join the nodes, promote v1 everywhere and give it a window of 95%-accurate telemetry."""
    for node in nodes:
        rig.node_joins(node)
    v1 = rig.register("v1")
    controller = rollout.rollout if isinstance(rollout, PipelineController) else rollout
    assert controller.begin(v1).stage == "promoted"
    for node in nodes:
        rig.node_serves(node, v1)
        rig.telemetry(node, "v1", labelled=100, correct=95)
    rig.clock.advance(10)
    return v1


def canary_reports(rig: CloudRig, canary: str, version: ModelVersion, accuracy: float) -> None:
    """The canary serves ``version`` and sends enough labelled windows for a decision."""
    rig.node_serves(canary, version)
    per_window = MIN_LABELLED_FOR_DECISION
    for _ in range(3):
        rig.telemetry(
            canary, version.version, labelled=per_window, correct=round(per_window * accuracy)
        )
        rig.clock.advance(30)


class DesiredWatcher:
    """A plain paho subscriber to every node's retained desired state."""

    def __init__(self, broker: EmbeddedBroker, tenant: str) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, DesiredState] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"watch-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topics.nodes_filter(tenant, "desired"), qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        state = DesiredState.from_payload(bytes(msg.payload))
        with self._lock:
            self._latest[state.node] = state

    def latest(self, node: str) -> DesiredState | None:
        """The node's desired state as the broker last sent it."""
        with self._lock:
            return self._latest.get(node)

    def version(self, node: str) -> str | None:
        state = self.latest(node)
        return None if state is None else state.pipelines[PIPELINE].version

    def wait_for(self, expected: dict[str, str], timeout_s: float = 10.0) -> None:
        wait_for(lambda: all(self.version(n) == v for n, v in expected.items()), timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)
