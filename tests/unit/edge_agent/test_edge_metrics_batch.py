"""observe_many leaves a histogram exactly as one observe per value would."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from edge_agent.metrics import observe_many

_BOUNDS = (0.0001, 0.00025, 0.001, 0.01, 1.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


class TestObserveMany:
    def test_batches_count_like_single_observations(self) -> None:
        one, many = CollectorRegistry(), CollectorRegistry()
        single = Histogram("lat", "l", ["p"], buckets=_BOUNDS, registry=one).labels("x")
        batched = Histogram("lat", "l", ["p"], buckets=_BOUNDS, registry=many).labels("x")
        rng = np.random.default_rng(3)
        for _ in range(100):
            # Values on the bounds themselves (le: a bound counts in its own bucket), beyond
            # the last finite bound, zero, and in between.
            edges = rng.choice([*_BOUNDS, 0.0, 7.5], size=int(rng.integers(0, 20)))
            values = [*edges.tolist(), *(rng.random(int(rng.integers(0, 20))) * 0.02).tolist()]
            for value in values:
                single.observe(value)
            observe_many(batched, values)
        expected, got = _samples(one), _samples(many)
        assert expected.keys() == got.keys()
        for key, value in expected.items():
            assert got[key] == value or abs(got[key] - value) < 1e-9, key
        assert expected[("lat_count", "")] > 1000

    def test_one_value_and_none(self) -> None:
        registry = CollectorRegistry()
        child = Histogram("lat", "l", ["p"], buckets=_BOUNDS, registry=registry).labels("x")
        observe_many(child, [])
        observe_many(child, [0.0002])
        samples = _samples(registry)
        assert samples[("lat_count", "")] == 1
        assert samples[("lat_bucket", "0.00025")] == 1
        assert samples[("lat_bucket", "0.0001")] == 0
