"""The cloud head's metrics, exported with ``ray.util.metrics``.

Ray serves them with its own metrics (Prometheus names get a ``ray_`` prefix, counters a
``_total`` suffix), so they appear in the Ray dashboard and in ``deploy/``'s Grafana
dashboard and alerts. Services keep plain cumulative counters in their ``stats()``; a
named thread turns those snapshots into counter increments and gauge values.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

PERIOD_S = 2.0
ROLLOUT_STAGES = {"idle": 0, "canary": 1, "promoted": 2, "rolled_back": 3, "waiting": 4}


class _CumulativeCounter:
    """A Ray counter fed with cumulative values: it adds what grew since the last call."""

    def __init__(self, name: str, description: str, tag_keys: tuple[str, ...]) -> None:
        from ray.util.metrics import Counter

        self._counter = Counter(name, description=description, tag_keys=tag_keys)
        self._last: dict[tuple[tuple[str, str], ...], float] = {}

    def update(self, total: float, tags: Mapping[str, str]) -> None:
        key = tuple(sorted(tags.items()))
        grown = total - self._last.get(key, 0.0)
        if grown > 0:
            self._counter.inc(grown, tags=dict(tags))
        self._last[key] = max(total, self._last.get(key, 0.0))


class MetricsExporter:
    """Export one service's ``stats()`` snapshot periodically on a named thread."""

    def __init__(self, name: str, collect: Callable[[], None]) -> None:
        self._collect = collect
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"metrics-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PERIOD_S):
            try:
                self._collect()
            except Exception:  # metrics never take a service down
                log.debug("metrics export failed", exc_info=True)

    def stop(self) -> None:
        """Stop exporting."""
        self._stop.set()


class IngestMetrics:
    """Samples stored, duplicates dropped and messages rejected by one ingest replica."""

    def __init__(self, tenant: str, replica: int) -> None:
        from ray.util.metrics import Gauge

        self._tags = {"tenant": tenant, "replica": str(replica)}
        keys = ("tenant", "replica")
        self._stored = _CumulativeCounter(
            "continuum_ingest_samples_stored", "Samples durably written to the store", keys
        )
        self._duplicates = _CumulativeCounter(
            "continuum_ingest_duplicates", "Samples dropped as already stored", keys
        )
        self._labels = _CumulativeCounter(
            "continuum_ingest_labels_stored", "Delayed labels recorded", keys
        )
        self._rejected = _CumulativeCounter(
            "continuum_ingest_rejected",
            "Messages refused, by reason: for good, or for now (held: their nodes resend them)",
            (*keys, "reason"),
        )
        self._held = _CumulativeCounter(
            "continuum_ingest_held",
            "Messages refused for now (unknown node, quota, ...), acknowledged without a "
            "receipt so their nodes keep the samples and send them again, by reason",
            (*keys, "reason"),
        )
        self._refused_samples = _CumulativeCounter(
            "continuum_ingest_samples_refused",
            "Samples refused for good and named so in a receipt (their nodes end them), by reason",
            (*keys, "reason"),
        )
        self._queued = Gauge(
            "continuum_ingest_queue_depth", description="Messages waiting", tag_keys=keys
        )

    def update(self, stats: Mapping[str, Any]) -> None:
        """Export one ``IngestWorker.stats()`` snapshot."""
        self._stored.update(stats.get("stored", 0), self._tags)
        self._duplicates.update(stats.get("duplicates", 0), self._tags)
        self._labels.update(stats.get("labels", 0), self._tags)
        for reason, count in (stats.get("rejected") or {}).items():
            self._rejected.update(count, self._tags | {"reason": str(reason)})
        for reason, count in (stats.get("held") or {}).items():
            self._held.update(count, self._tags | {"reason": str(reason)})
        for reason, count in (stats.get("refused_samples") or {}).items():
            self._refused_samples.update(count, self._tags | {"reason": str(reason)})
        self._queued.set(float(stats.get("queued", 0)), tags=self._tags)


class FleetMetrics:
    """Nodes known and online, per tenant, and whether the registry is behind its heartbeats."""

    def __init__(self, tenant: str) -> None:
        from ray.util.metrics import Gauge

        self._tags = {"tenant": tenant}
        self._online = Gauge(
            "continuum_fleet_nodes_online", description="Nodes online", tag_keys=("tenant",)
        )
        self._known = Gauge(
            "continuum_fleet_nodes", description="Nodes ever seen", tag_keys=("tenant",)
        )
        self._behind = Gauge(
            "continuum_fleet_registry_behind",
            description="1 while the registry handles heartbeats late and withholds offline "
            "verdicts by silence, else 0",
            tag_keys=("tenant",),
        )
        self._lag = Gauge(
            "continuum_fleet_heartbeat_lag_seconds",
            description="Median age of the heartbeats the registry handled in its last tick",
            tag_keys=("tenant",),
        )

    def update(
        self, nodes: int, online: int, *, behind: bool = False, lag_s: float | None = None
    ) -> None:
        """Export the node counts and the registry's backlog."""
        self._known.set(float(nodes), tags=self._tags)
        self._online.set(float(online), tags=self._tags)
        self._behind.set(1.0 if behind else 0.0, tags=self._tags)
        if lag_s is not None:
            self._lag.set(lag_s, tags=self._tags)


class ControllerMetrics:
    """Training runs, rollout stage and rollbacks of one pipeline."""

    def __init__(self, tenant: str, pipeline: str) -> None:
        from ray.util.metrics import Gauge

        self._tags = {"tenant": tenant, "pipeline": pipeline}
        keys = ("tenant", "pipeline")
        self._trainings = _CumulativeCounter(
            "continuum_training_runs", "Retraining runs, by outcome", (*keys, "outcome")
        )
        self._rollbacks = _CumulativeCounter(
            "continuum_rollout_rollbacks", "Candidates rolled back", keys
        )
        self._stage = Gauge(
            "continuum_rollout_stage",
            description="Rollout stage: 0 idle, 1 canary, 2 promoted, 3 rolled back",
            tag_keys=keys,
        )
        self._labelled = Gauge(
            "continuum_labelled_samples", description="Labelled samples stored", tag_keys=keys
        )
        # Federated retraining (``status()["federated"]``): what a platform team watches
        # when sites train where their data stays: rounds done, sites that did not answer,
        # and updates whose norm was out of bounds (a broken or poisoned site).
        self._federated = {
            name: _CumulativeCounter(f"continuum_federated_{name}", description, keys)
            for name, description in _FEDERATED_COUNTERS.items()
        }

    def update(self, status: Mapping[str, Any]) -> None:
        """Export one ``PipelineController.status()`` snapshot."""
        outcomes: dict[str, int] = {}
        for record in status.get("trainings", []):
            outcome = str(record.get("outcome", "")).split(":")[0] or "unknown"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        for outcome, count in outcomes.items():
            self._trainings.update(count, self._tags | {"outcome": outcome})
        rollout = status.get("rollout", {})
        history = rollout.get("history", ())
        self._rollbacks.update(sum(1 for h in history if h.startswith("rolled back")), self._tags)
        self._stage.set(float(ROLLOUT_STAGES.get(rollout.get("stage", ""), -1)), tags=self._tags)
        self._labelled.set(float(status.get("labelled_samples", 0)), tags=self._tags)
        federated = status.get("federated") or {}
        for name, counter in self._federated.items():
            counter.update(float(federated.get(name, 0)), self._tags)


#: The federated trainer's counters (``cloud_head.federated.rounds``) and what each counts.
_FEDERATED_COUNTERS = {
    "rounds": "Federated rounds aggregated",
    "skipped": "Sites left out of a round: no answer within the round timeout, or an error",
    "clipped": "Site updates over the norm bound, scaled down to it (on_outlier clip)",
    "excluded": "Site updates over the norm bound, left out of the round (on_outlier exclude)",
    "quorum_waits": "Times a round waited and asked again: fewer sites answered than its quorum",
}


class BrokerConnectionMetrics:
    """Whether one cloud service's MQTT session is up, and how often it was lost.

    ``continuum_cloud_broker_connected`` (1 up, 0 down) makes a dead broker visible on the
    cloud side, where the fleet would otherwise only show its nodes going offline;
    ``continuum_cloud_broker_disconnects`` counts the losses. ``service`` is the actor name
    (``fleet``, ``ingest-0``).
    """

    def __init__(self, tenant: str, service: str) -> None:
        from ray.util.metrics import Gauge

        self._tags = {"tenant": tenant, "service": service}
        keys = ("tenant", "service")
        self._connected = Gauge(
            "continuum_cloud_broker_connected",
            description="1 while the service's MQTT session is up, 0 while it is down",
            tag_keys=keys,
        )
        self._disconnects = _CumulativeCounter(
            "continuum_cloud_broker_disconnects", "MQTT sessions lost to the broker", keys
        )

    def update(self, stats: Mapping[str, Any]) -> None:
        """Export the ``connected`` and ``disconnects`` of a service's ``stats()``."""
        self._connected.set(1.0 if stats.get("connected") else 0.0, tags=self._tags)
        self._disconnects.update(stats.get("disconnects", 0), self._tags)
