"""``EdgeAgent``: the composition root of the edge daemon.

It wires config, durable outbox, MQTT link, uplink pump, model manager and one runtime per
pipeline, starts them in an order that never loses data, and stops them in the reverse
order within a bound: stop taking frames, finish the frames in hand, flush what the link
takes, mark the node offline, close the outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from continuum import signing
from continuum.backends import open_backend
from continuum.errors import ArtifactError, ConfigError, ProtocolError, SpecError
from continuum.residency import UplinkPlan, load_policy, uplink_plan
from continuum.sources import Source
from continuum.spec import PipelineSpec, load_pipeline
from continuum.wire import topics
from continuum.wire.messages import SCHEMA_VERSION, NodeStatus, StoredReceipt, Telemetry
from edge_agent import capabilities
from edge_agent._instance import StateLock
from edge_agent.config import AgentSettings
from edge_agent.link import MqttLink
from edge_agent.metrics import AgentMetrics
from edge_agent.model_manager import BackendOpener, ModelManager, ServingModel
from edge_agent.outbox import Outbox
from edge_agent.runtime import PipelineRuntime
from edge_agent.sources import load_source
from edge_agent.uplink import ResidencyGate, Uplink

__all__ = ["EdgeAgent", "load_pipelines", "residency_plans"]

log = logging.getLogger(__name__)


def load_pipelines(settings: AgentSettings) -> list[PipelineSpec]:
    """Load and check every pipeline of ``settings`` against this node.

    Raises:
        ConfigError: one line per problem: a spec that does not load, a tenant that is not
            the node's, a duplicate name, or an edge stage whose ``where`` this node's
            labels do not satisfy (it would run data where the pipeline forbids).
    """
    problems: list[str] = []
    specs: list[PipelineSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(settings.pipelines):
        where = f"pipelines.{index}.spec ({entry.spec})"
        try:
            spec = load_pipeline(entry.spec)
        except SpecError as exc:
            problems.append(f"  {where}: {exc}")
            continue
        if spec.tenant != settings.tenant:
            problems.append(
                f"  {where}: pipeline {spec.name!r} belongs to tenant {spec.tenant!r}, "
                f"this node to {settings.tenant!r}"
            )
        if spec.name in seen:
            problems.append(f"  {where}: pipeline {spec.name!r} is listed twice")
        seen.add(spec.name)
        if not spec.edge.where.matches(settings.labels):
            problems.append(
                f"  {where}: this node's labels {settings.labels} do not satisfy the edge "
                f"stage's where={spec.edge.where.root} (fix the node labels or run the "
                "pipeline on a node that matches)"
            )
        specs.append(spec)
    if problems:
        raise ConfigError("the pipelines cannot run on this node:\n" + "\n".join(problems))
    return specs


def residency_plans(
    settings: AgentSettings, specs: list[PipelineSpec]
) -> tuple[dict[str, UplinkPlan | None], bytes | None]:
    """Return each pipeline's uplink plan from this node to the store, and the hashing salt.

    Without a ``residency`` section every plan is None (fields pass unchanged), unless a
    pipeline declares fields above its own data class: then nothing shows they may leave,
    so the agent refuses to start (fail closed).

    Raises:
        ConfigError: such a pipeline without a policy, or an unreadable policy or salt.
    """
    residency = settings.residency
    if residency is None:
        problems = []
        for spec in specs:
            above = {
                name: data_class.value
                for name, data_class in spec.edge.input.fields.items()
                if data_class.rank > spec.data_class.rank
            }
            if above:
                listed = ", ".join(f"{n} ({c})" for n, c in above.items())
                problems.append(
                    f"  pipeline {spec.name!r} ({spec.data_class.value}) declares fields above "
                    f"its class: {listed}"
                )
        if problems:
            raise ConfigError(
                "uplink cannot start: no residency policy shows where these fields may go:\n"
                + "\n".join(problems)
                + "\n  fix: add a `residency:` section (policy, store_labels, salt_file) to "
                "the agent config, see deploy/edge/agent.example.yaml"
            )
        return {spec.name: None for spec in specs}, None
    try:
        policy = load_policy(residency.policy)
        salt = residency.salt_file.read_bytes()
    except (SpecError, OSError) as exc:
        raise ConfigError(f"residency: {exc}") from exc
    plans: dict[str, UplinkPlan | None] = {}
    for spec in specs:
        plan = uplink_plan(policy, spec, settings.labels, residency.store_labels)
        reasons = "; ".join(d.reason for d in plan.decisions if d.reason)
        log.info("pipeline %s: uplink plan: %s (%s)", spec.name, plan.describe(), reasons)
        plans[spec.name] = plan
    return plans, salt


def load_sources(settings: AgentSettings, specs: list[PipelineSpec]) -> dict[str, Source]:
    """Return each pipeline's frame source, by pipeline name.

    Raises:
        ConfigError: naming every source that cannot be loaded.
    """
    sources: dict[str, Source] = {}
    problems = []
    for index, (entry, spec) in enumerate(zip(settings.pipelines, specs, strict=True)):
        try:
            source = load_source(entry.source.ref, entry.source.args)
            # A source that knows the tensor shape it makes (a sensor gateway's channels x
            # window) refuses a pipeline declaring another, naming both, before the first frame.
            check = getattr(source, "check_input_shape", None)
            if callable(check):
                check(tuple(spec.edge.input.shape))
            sources[spec.name] = source
        except ConfigError as exc:
            problems.append(f"  pipelines.{index}.source: {exc}")
    if problems:
        raise ConfigError("the frame sources cannot start:\n" + "\n".join(problems))
    return sources


def read_public_key(path: Path) -> bytes:
    """Return the PEM at ``path`` if it holds an Ed25519 public key; else raise ConfigError."""
    try:
        pem = path.read_bytes()
        signing.load_public_key(pem)
    except OSError as exc:
        raise ConfigError(f"trusted_public_key: cannot read {path}: {exc}") from exc
    except ArtifactError as exc:
        raise ConfigError(f"trusted_public_key: {path}: {exc}") from exc
    return pem


class EdgeAgent:
    """The edge daemon: runs the configured pipelines and keeps their models current.

    ``EdgeAgent(settings)`` validates everything it can without the network (specs,
    sources, key, state dir) and raises ``ConfigError`` naming the problems; ``start`` then
    brings it up and ``stop`` (or ``run`` until ``request_stop``) brings it down.
    """

    def __init__(
        self, settings: AgentSettings, *, backend_opener: BackendOpener = open_backend
    ) -> None:
        self.settings = settings
        self.node = settings.node_id
        self.tenant = settings.tenant
        self._public_key = read_public_key(settings.trusted_public_key)
        self._specs = load_pipelines(settings)
        sources = load_sources(settings, self._specs)
        try:
            settings.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"state_dir: cannot create {settings.state_dir}: {exc}") from exc
        self._lock = StateLock(settings.state_dir)
        plans, salt = residency_plans(settings, self._specs)
        self._caps = capabilities.probe()
        self.metrics = AgentMetrics()
        for name, source in sources.items():
            self.metrics.watch_source(name, source)  # a source's own counts (video drops)
        self.gate = ResidencyGate(
            plans,
            declared={spec.name: spec.edge.input.fields for spec in self._specs},
            salt=salt,
            metrics=self.metrics,
        )
        self.outbox = self._open_outbox()
        self._status_topic = topics.node_status(self.tenant, self.node)
        self._stored_topic = topics.node_stored(self.tenant, self.node)
        self._receipt_warned: set[str] = set()
        self.link = self._open_link()
        self.uplink = Uplink(
            node=self.node,
            tenant=self.tenant,
            outbox=self.outbox,
            link=self.link,
            metrics=self.metrics,
            status_payload=lambda: self._status(online=True),
            heartbeat_interval_s=settings.heartbeat_interval_s,
            max_records=settings.uplink_batch_max_records,
            max_bytes=settings.uplink_batch_max_bytes,
        )
        self.runtimes: dict[str, PipelineRuntime] = {
            spec.name: PipelineRuntime(
                spec=spec,
                node=self.node,
                source=sources[spec.name],
                outbox=self.outbox,
                metrics=self.metrics,
                on_telemetry=self._on_telemetry,
                on_enqueued=self.uplink.wake,
                telemetry_interval_s=settings.telemetry_interval_s,
                batches_in_flight=settings.inference_replicas,
            )
            for spec in self._specs
        }
        self.models = self._open_models(backend_opener)
        self._stop_requested = threading.Event()
        self._started = False
        self._stopped = False
        self.metrics_port: int | None = None

    def _open_outbox(self) -> Outbox:
        """The durable outbox, one partition per pipeline, behind the residency gate."""
        settings = self.settings
        return Outbox(
            settings.state_dir / "outbox.sqlite3",
            max_bytes=settings.outbox_max_bytes,
            partitions={
                spec.name: size
                for spec, size in zip(self._specs, settings.outbox_partition_bytes(), strict=True)
            },
            ttl_s=settings.outbox_ttl_s,
            full_policy=settings.outbox_full_policy,
            block_timeout_s=settings.outbox_block_timeout_s,
            synchronous=settings.outbox_synchronous,
            resend_unconfirmed_s=settings.resend_unconfirmed_s if settings.confirm_stored else None,
            on_drop=self._on_drop,
            admit=self.gate.admit,
        )

    def _open_link(self) -> MqttLink:
        """The MQTT link (not connected yet); closes the outbox if it cannot be set up."""
        try:
            return MqttLink(
                client_id=self.settings.client_id(),
                broker=self.settings.broker,
                will=(self._status_topic, self._status(online=False)),
                max_inflight=self.settings.max_inflight,
                on_message=self._on_message,
                on_connect=self._on_connect,
            )
        except (OSError, ValueError) as exc:  # unreadable TLS files, bad TLS settings
            self.outbox.close()
            raise ConfigError(f"broker: cannot set up the MQTT client: {exc}") from exc

    def _open_models(self, backend_opener: BackendOpener) -> ModelManager:
        """The model manager, reporting through the uplink and counting in the metrics."""
        settings = self.settings
        return ModelManager(
            node=self.node,
            tenant=self.tenant,
            state_dir=settings.state_dir,
            public_key_pem=self._public_key,
            pipelines={spec.name: spec for spec in self._specs},
            link=self.link,
            on_model=self._on_model,
            on_report=self.uplink.set_reported,
            on_reject=lambda p, reason: self.metrics.model_rejected.labels(p, reason).inc(),
            on_message_rejected=lambda reason: self.metrics.rejected_messages.labels(reason).inc(),
            keep_versions=settings.keep_versions,
            inference_threads=settings.inference_threads,
            inference_replicas=settings.inference_replicas,
            backend_opener=backend_opener,
            is_connected=lambda: self.link.connected,
            stall_s=settings.artifact_stall_s,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bring the agent up: metrics, saved models, runtimes, uplink, model manager, link."""
        if self._started:
            return
        self._lock.acquire()  # before anything runs: one agent per state directory
        self._started = True
        if self.settings.metrics_port:
            try:
                self.metrics_port = self.metrics.serve(
                    self.settings.metrics_port, self.settings.metrics_host
                )
            except OSError as exc:
                raise ConfigError(
                    f"metrics_port: cannot listen on {self.settings.metrics_host}:"
                    f"{self.settings.metrics_port}: {exc}"
                ) from exc
            log.info(
                "metrics on http://%s:%d/metrics", self.settings.metrics_host, self.metrics_port
            )
        for model in self.models.restore().values():
            self._on_model(model)
        self.uplink.set_reported(self.models.reported_state())
        for runtime in self.runtimes.values():
            runtime.start()
        self.uplink.start()
        self.models.start()
        if self.settings.confirm_stored:
            self.link.subscribe([self._stored_topic])
        self.link.start()
        log.info(
            "edge agent %s/%s up: pipelines %s, backends %s, broker %s:%d",
            self.tenant,
            self.node,
            ", ".join(self.runtimes),
            ", ".join(self._caps.backends) or "none",
            self.settings.broker.host,
            self.settings.broker.port,
        )

    def request_stop(self) -> None:
        """Ask ``run`` to stop (safe from signal handlers and other threads)."""
        self._stop_requested.set()

    def run(self) -> None:
        """Start, serve until ``request_stop``, then stop within ``shutdown_timeout_s``."""
        try:
            self.start()
            while not self._stop_requested.wait(1.0):
                pass
        finally:
            self.stop()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Drain, flush and shut down within ``timeout_s`` (default: shutdown_timeout_s).

        Returns whether everything drained and flushed in time; unsent records stay in the
        outbox for the next start either way.
        """
        if self._stopped:
            return True
        self._stopped = True
        budget = self.settings.shutdown_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        clean = True
        for runtime in self.runtimes.values():
            runtime.stop()
        for name, runtime in self.runtimes.items():
            # Half the budget for the frames in hand, the rest for the link.
            if not runtime.join(max(0.0, (deadline - time.monotonic()) / 2)):
                log.warning("pipeline %s did not drain in time", name)
                clean = False
        self.models.stop(timeout_s=max(0.1, min(2.0, deadline - time.monotonic())))
        if self._started:
            clean = self.uplink.stop(max(0.0, deadline - time.monotonic() - 0.5)) and clean
            self.link.stop(
                timeout_s=max(0.5, deadline - time.monotonic()),
                final=(self._status_topic, self._status(online=False)),
            )
        for runtime in self.runtimes.values():
            runtime.close()
        self.outbox.close()
        self.metrics.close()
        self._lock.release()
        log.info(
            "edge agent %s/%s stopped (%s)",
            self.tenant,
            self.node,
            "clean" if clean else "bound reached",
        )
        return clean

    def __enter__(self) -> EdgeAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- wiring ----------------------------------------------------------------------------

    def _status(self, *, online: bool) -> bytes:
        return NodeStatus(
            schema_version=SCHEMA_VERSION,
            node=self.node,
            tenant=self.tenant,
            online=online,
            labels=dict(self.settings.labels),
            backends=list(self._caps.backends),
            gpu=self._caps.gpu,
            tensorrt_version=self._caps.tensorrt_version,
            agent_version=capabilities.agent_version(),
            pipelines=[spec.name for spec in self._specs],
            heartbeat_s=self.settings.heartbeat_interval_s,
            ts=time.time(),
        ).to_payload()

    def _on_connect(self, session_present: bool) -> None:
        if self.link.connects > 1:
            self.metrics.reconnects.inc()
        self.uplink.connected()

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == self._stored_topic:
            self._on_receipt(payload)
        else:
            self.models.offer(topic, payload, retained)

    def _on_receipt(self, payload: bytes) -> None:
        """Check ingest's receipt and hand it to the uplink pump, which applies it to the
        outbox (this is the network thread); count bad receipts."""
        try:
            receipt = StoredReceipt.from_payload(payload)
            if receipt.node != self.node:
                raise ProtocolError(
                    f"receipt for node {receipt.node!r} on the topic of {self.node!r}",
                    reason="node_mismatch",
                )
        except ProtocolError as exc:
            self.metrics.rejected_messages.labels(f"receipt_{exc.reason}").inc()
            if exc.reason not in self._receipt_warned:
                self._receipt_warned.add(exc.reason)
                log.warning("receipt rejected (further ones are only counted): %s", exc)
            return
        self.uplink.queue_receipt(receipt)

    def _on_model(self, model: ServingModel) -> None:
        self.runtimes[model.pipeline].swap_model(model)

    def _on_telemetry(self, message: Telemetry) -> None:
        self.uplink.queue_telemetry(message)

    def _on_drop(self, pipeline: str, reason: str, count: int) -> None:
        self.metrics.dropped.labels(pipeline, reason).inc(count)
