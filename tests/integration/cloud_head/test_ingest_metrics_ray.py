"""Ingest's refusal counters as Ray exports them: held (for now) and refused for good, by
reason, next to the existing rejected counter (issue 12)."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
import ray

from cloud_head.metrics import IngestMetrics
from cloud_head.services import CLOUD_SELECTOR
from continuum.embedded import LocalRayCluster
from tests.tools import assert_promtool_accepts_metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Ray's own camelCase labels (promtool flags them on all of Ray's metrics alike).
_RAY_LABEL = re.compile(r'\b[A-Z][A-Za-z]*="[^"]*",?')


@ray.remote(num_cpus=0)
class _Replica:
    """Holds an ingest replica's metrics in a Ray worker, as the ingest actor does."""

    def __init__(self, tenant: str) -> None:
        self._metrics = IngestMetrics(tenant, 0)

    def update(self, stats: Mapping[str, Any]) -> None:
        self._metrics.update(stats)


def _ours(cluster: LocalRayCluster, tenant: str) -> str:
    """The ``ray_continuum_ingest_`` metrics of ``tenant`` on the head, less Ray's labels."""
    port = cluster.nodes[0].metrics_export_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    name = re.compile(r"^(# (HELP|TYPE) )?ray_continuum_ingest_")
    lines = [line for line in text.splitlines() if name.match(line)]
    return "\n".join(
        line if line.startswith("#") else _RAY_LABEL.sub("", line)
        for line in lines
        if line.startswith("#") or f'tenant="{tenant}"' in line
    )


def _value(text: str, name: str, reason: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


class TestRefusalCounters:
    def test_held_and_refused_samples_are_exported_by_reason(
        self, ray_cluster: LocalRayCluster
    ) -> None:
        tenant = f"m-{uuid.uuid4().hex[:8]}"
        # On the head, as the ingest actor is placed.
        replica = _Replica.options(label_selector=CLOUD_SELECTOR).remote(tenant)  # type: ignore[attr-defined]
        stats = {
            "stored": 10,
            "rejected": {"unknown_node": 3, "policy_field": 1},
            "held": {"unknown_node": 3},
            "refused_samples": {"policy_field": 4},
        }
        ray.get(replica.update.remote(stats))
        deadline = time.monotonic() + 60
        while True:
            text = _ours(ray_cluster, tenant)
            held = _value(text, "ray_continuum_ingest_held_total", "unknown_node")
            refused = _value(text, "ray_continuum_ingest_samples_refused_total", "policy_field")
            if (held, refused) == (3.0, 4.0) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert (held, refused) == (3.0, 4.0)
        assert _value(text, "ray_continuum_ingest_rejected_total", "unknown_node") == 3.0
        assert_promtool_accepts_metrics(text + "\n")
        ray.kill(replica)
