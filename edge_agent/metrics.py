"""The agent's Prometheus metrics: one private registry per agent, served on ``metrics_port``.

A private registry (not prometheus_client's global one) keeps two agents in one process
(tests, a multi-tenant box) from mixing their numbers; ``TenantMetrics`` merges several
agents' registries into one endpoint, each sample labelled with its tenant.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric

from edge_agent._health import HealthCollector
from edge_agent._source_counts import SourceCollector

__all__ = ["AgentMetrics", "MetricsEndpoint", "TenantMetrics", "observe_many"]

_NS = "continuum_edge"
#: Edge inference on small models takes tens of microseconds to tens of milliseconds.
_LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class AgentMetrics:
    """Every metric the edge agent exports, registered in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.inference_latency = Histogram(
            f"{_NS}_inference_latency_seconds",
            "Per-frame latency from arrival at the agent to the model's result.",
            ["pipeline"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.frames = Counter(f"{_NS}_frames", "Frames inferred.", ["pipeline"], registry=r)
        self.frames_rejected = Counter(
            f"{_NS}_frames_rejected",
            "Frames not inferred, by reason (bad_input, preprocess_error, inference_error).",
            ["pipeline", "reason"],
            registry=r,
        )
        self.source_failures = Counter(
            f"{_NS}_source_failures",
            "Times a pipeline's frame source failed; each is iterated again after a backoff.",
            ["pipeline"],
            registry=r,
        )
        self.batch_size = Histogram(
            f"{_NS}_batch_size",
            "Frames per inference batch.",
            ["pipeline"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.selected = Counter(
            f"{_NS}_samples_selected",
            "Samples the uplink policy selected.",
            ["pipeline"],
            registry=r,
        )
        self.budget_dropped = Counter(
            f"{_NS}_samples_over_budget",
            "Selected samples not uplinked because the bandwidth budget was spent.",
            ["pipeline"],
            registry=r,
        )
        self.kept_at_edge = Counter(
            f"{_NS}_samples_kept_at_edge",
            "Selected samples the residency plan keeps on this node (never queued or sent).",
            ["pipeline"],
            registry=r,
        )
        self.fields_dropped = Counter(
            f"{_NS}_fields_dropped",
            "Sample fields removed before queueing, by reason: residency (the store may not "
            "hold their class), too_large, too_many or bad_text (the wire cannot carry them).",
            ["pipeline", "reason"],
            registry=r,
        )
        self.fields_undeclared_dropped = Counter(
            f"{_NS}_fields_undeclared_dropped",
            "Sample fields removed before queueing because the pipeline's input schema does "
            "not declare them (residency fails closed), by field name; past 32 names per "
            'pipeline the rest are counted as field="(other)".',
            ["pipeline", "field"],
            registry=r,
        )
        self.fields_hashed = Counter(
            f"{_NS}_fields_hashed",
            "Sample fields pseudonymised (HMAC-SHA256 with the tenant's salt) before queueing.",
            ["pipeline"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            f"{_NS}_outbox_depth",
            "Records waiting in the outbox, by pipeline and kind.",
            ["pipeline", "kind"],
            registry=r,
        )
        self.outbox_awaiting_receipt = Gauge(
            f"{_NS}_outbox_awaiting_receipt",
            "Records in the outbox that the broker acknowledged and that wait for ingest's "
            "receipt, by pipeline and kind (counted in the outbox depth too).",
            ["pipeline", "kind"],
            registry=r,
        )
        self.outbox_bytes = Gauge(
            f"{_NS}_outbox_bytes",
            "Bytes held by the pipeline's outbox partition.",
            ["pipeline"],
            registry=r,
        )
        self.outbox_max_bytes = Gauge(
            f"{_NS}_outbox_max_bytes",
            "Bound of the pipeline's outbox partition (its share of outbox_max_bytes).",
            ["pipeline"],
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            f"{_NS}_outbox_oldest_age_seconds",
            "Age of the pipeline's oldest outbox record.",
            ["pipeline"],
            registry=r,
        )
        self.published = Counter(
            f"{_NS}_messages_published",
            "QoS 1 messages handed to the broker, by kind.",
            ["kind"],
            registry=r,
        )
        self.acked = Counter(
            f"{_NS}_messages_acked",
            "Messages the broker acknowledged (PUBACK with success), by kind.",
            ["kind"],
            registry=r,
        )
        self.publish_failed = Counter(
            f"{_NS}_messages_not_acked",
            "Messages the broker refused or did not route (retried later), by kind and reason.",
            ["kind", "reason"],
            registry=r,
        )
        self.dropped = Counter(
            f"{_NS}_records_dropped",
            "Outbox records dropped without being sent, by pipeline and reason.",
            ["pipeline", "reason"],
            registry=r,
        )
        self.uplink_bytes = Counter(
            f"{_NS}_uplink_bytes",
            "Payload bytes acknowledged by the broker, by kind.",
            ["kind"],
            registry=r,
        )
        self.drift_score = Gauge(
            f"{_NS}_drift_score",
            "Largest latest score of the pipeline's drift detectors (each on its own scale).",
            ["pipeline"],
            registry=r,
        )
        self.drifted = Gauge(
            f"{_NS}_drifted",
            "1 while any of the pipeline's drift detectors reports drift.",
            ["pipeline"],
            registry=r,
        )
        # Per detector: ``signal`` is outputs, inputs or labels; ``detector`` its declaration.
        self.drift_signal_score = Gauge(
            f"{_NS}_drift_signal_score",
            "Latest score of one drift detector: PSI, KS statistic D, or error-rate rise.",
            ["pipeline", "signal", "detector"],
            registry=r,
        )
        self.drift_signal_drifted = Gauge(
            f"{_NS}_drift_signal_drifted",
            "1 while this drift detector reports drift.",
            ["pipeline", "signal", "detector"],
            registry=r,
        )
        self.model = Info(
            f"{_NS}_model", "The model version each pipeline serves.", ["pipeline"], registry=r
        )
        self.model_swaps = Counter(
            f"{_NS}_model_swaps", "Models swapped in.", ["pipeline"], registry=r
        )
        self.model_rejected = Counter(
            f"{_NS}_models_rejected",
            "Model versions rejected (digest, signature, load), by reason.",
            ["pipeline", "reason"],
            registry=r,
        )
        self.connected = Gauge(f"{_NS}_broker_connected", "1 while connected.", registry=r)
        self.reconnects = Counter(
            f"{_NS}_broker_reconnects", "Successful connections after the first.", registry=r
        )
        self.receipts = Counter(
            f"{_NS}_receipts",
            "Receipts from ingest applied to the outbox (samples stored or refused for good, "
            "delayed labels recorded).",
            registry=r,
        )
        self.confirmed = Counter(
            f"{_NS}_samples_confirmed",
            "Samples the outbox let go on ingest's receipt that they are stored.",
            registry=r,
        )
        self.samples_refused = Counter(
            f"{_NS}_samples_refused",
            "Samples the outbox let go on ingest's receipt that it refused them for good "
            "(malformed, off the schema or class, forbidden by the policy), by pipeline and "
            "reason; Outbox.refused() lists their seqs.  A refusal that may pass later gets no "
            "receipt: those samples stay and are sent again.",
            ["pipeline", "reason"],
            registry=r,
        )
        self.labels_confirmed = Counter(
            f"{_NS}_labels_confirmed",
            "Delayed labels the outbox let go on ingest's receipt.",
            registry=r,
        )
        self.rejected_messages = Counter(
            f"{_NS}_messages_rejected",
            "Incoming messages rejected (malformed, stale, unexpected), by reason.",
            ["reason"],
            registry=r,
        )
        # Device health, read at each scrape: process_* (CPU, memory, fds, start time; Linux
        # only, nothing elsewhere) and the host, GPU and build-info families of _health.
        ProcessCollector(registry=r)
        r.register(HealthCollector())
        # Counts the sources keep themselves (frames dropped, stream failures), read at each
        # scrape: continuum_edge_source_*; see watch_source.
        self._sources = SourceCollector()
        r.register(self._sources)
        self._endpoint: MetricsEndpoint | None = None

    def watch_source(self, pipeline: str, source: object) -> None:
        """Export the counts of ``pipeline``'s source, if it keeps any (``counts()``)."""
        self._sources.watch(pipeline, source)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``host:port`` in a daemon thread; return the bound port."""
        self._endpoint = MetricsEndpoint(self.registry, port, host)
        return self._endpoint.port

    def render(self) -> bytes:
        """Return the current metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Stop the HTTP endpoint, if serving."""
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None


class MetricsEndpoint:
    """``/metrics`` of ``registry`` on ``host:port``, served by a daemon thread.

    Raises:
        OSError: the address cannot be bound (in use, not local).
    """

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> None:
        server, thread = start_http_server(port, addr=host, registry=registry)
        thread.name = "ctm-edge-metrics"
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port = int(server.server_port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


class TenantMetrics:
    """A collector that re-emits several agents' registries as one, with a ``tenant`` label.

    Tenants on a shared box (``edge_agent.host``) that set the same ``metrics_port`` get one
    endpoint: each metric family appears once (one HELP and TYPE line) and holds every
    tenant's samples, told apart by ``tenant``, so a scrape stays valid exposition text.

    Args:
        registries: returns (tenant, registry) of the agents running now; called at every
            scrape, so an agent that was restarted shows its new registry.
    """

    def __init__(self, registries: Callable[[], Iterable[tuple[str, CollectorRegistry]]]) -> None:
        self._registries = registries

    def collect(self) -> Iterator[Metric]:
        """Yield each metric family once, with the samples of every tenant."""
        merged: dict[str, Metric] = {}
        for tenant, registry in self._registries():
            for family in registry.collect():
                into = merged.get(family.name)
                if into is None:
                    into = Metric(family.name, family.documentation, family.type, family.unit)
                    merged[family.name] = into
                into.samples.extend(
                    sample._replace(labels={"tenant": tenant, **sample.labels})
                    for sample in family.samples
                )
        yield from merged.values()


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """Observe every value of ``values`` on a histogram child, a batch at a time.

    ``Histogram.observe`` takes a lock and walks the buckets per value: for a micro-batch of
    32 frames that is 32 lock round trips on the inference thread.  Here the values are
    bucketed at once (``le`` semantics: a value goes to the first bound it does not exceed)
    and each touched bucket and the sum are added to once, the same counts ``observe``
    would leave.  One value, or a histogram without the internals this relies on, goes
    through ``observe``.
    """
    count = len(values)
    if count == 0:
        return
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if count == 1 or buckets is None or bounds is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    array = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(np.asarray(bounds, dtype=np.float64), array, side="left")
    for bucket, hits in enumerate(np.bincount(index, minlength=len(bounds)).tolist()):
        if hits:
            buckets[bucket].inc(hits)
    total.inc(float(array.sum()))
