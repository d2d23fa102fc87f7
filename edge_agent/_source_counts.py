"""What a frame source counts itself (frames dropped, stream failures, reconnections) and
the collector that exports it on the agent's ``/metrics``.

A source is built from the agent config without knowing its pipeline or the agent's
registry; it keeps plain counts behind ``counts()``, and the agent, which knows which
pipeline each source feeds, has them read at every scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CountingSource", "SourceCollector", "SourceCounts"]

_NS = "continuum_edge_source"


@dataclass(frozen=True, slots=True)
class SourceCounts:
    """A source's counts since it was made.

    ``dropped`` is by reason, e.g. ``backpressure`` (the consumer fell behind and the oldest
    frame went) or ``max_fps`` (over the rate cap).  ``failures`` counts failed opens and lost
    streams, ``reconnects`` streams opened again after one.
    """

    decoded: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    failures: int = 0
    reconnects: int = 0
    #: Input messages refused as malformed and skipped (a sensor gateway's bad payloads).
    malformed: int = 0


@runtime_checkable
class CountingSource(Protocol):
    """A source that counts what it decodes, drops and loses."""

    def counts(self) -> SourceCounts: ...


class SourceCollector(Collector):
    """Export the counts of each watched source, labelled with its pipeline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, CountingSource] = {}

    def watch(self, pipeline: str, source: object) -> None:
        """Export ``source``'s counts as ``pipeline``'s, if it keeps any."""
        if isinstance(source, CountingSource):
            with self._lock:
                self._sources[pipeline] = source

    def collect(self) -> Iterator[Metric]:
        """Yield the counter families, read from the sources now."""
        decoded = CounterMetricFamily(
            f"{_NS}_frames_decoded", "Frames the source decoded.", labels=["pipeline"]
        )
        dropped = CounterMetricFamily(
            f"{_NS}_frames_dropped",
            "Frames the source dropped, by reason: backpressure (inference fell behind, the "
            "oldest queued frame went) or max_fps (over the source's rate cap).",
            labels=["pipeline", "reason"],
        )
        failures = CounterMetricFamily(
            f"{_NS}_stream_failures",
            "Failed opens and lost streams of the source; each is retried after a backoff.",
            labels=["pipeline"],
        )
        reconnects = CounterMetricFamily(
            f"{_NS}_reconnects",
            "Streams the source opened again after a failure.",
            labels=["pipeline"],
        )
        malformed = CounterMetricFamily(
            f"{_NS}_messages_malformed",
            "Input messages the source refused as malformed and skipped (sensor gateway "
            "payloads that are none of the accepted forms).",
            labels=["pipeline"],
        )
        with self._lock:
            sources = list(self._sources.items())
        for pipeline, source in sources:
            counts = source.counts()
            decoded.add_metric([pipeline], counts.decoded)
            for reason, value in sorted(counts.dropped.items()):
                dropped.add_metric([pipeline, reason], value)
            failures.add_metric([pipeline], counts.failures)
            reconnects.add_metric([pipeline], counts.reconnects)
            malformed.add_metric([pipeline], counts.malformed)
        yield from (decoded, dropped, failures, reconnects, malformed)
