"""A pipeline controller's federated counters as Ray exports them: rounds, skipped sites,
clipped and excluded updates, quorum waits (``status()["federated"]``)."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
import ray

from cloud_head.metrics import ControllerMetrics
from cloud_head.services import CLOUD_SELECTOR
from continuum.embedded import LocalRayCluster
from tests.tools import assert_promtool_accepts_metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: Ray's own camelCase labels (promtool flags them on all of Ray's metrics alike).
_RAY_LABEL = re.compile(r'\b[A-Z][A-Za-z]*="[^"]*",?')


@ray.remote(num_cpus=0)
class _Controller:
    """Holds a pipeline's controller metrics in a Ray worker, as the controller actor does."""

    def __init__(self, tenant: str) -> None:
        self._metrics = ControllerMetrics(tenant, "hospitals")

    def update(self, status: Mapping[str, Any]) -> None:
        self._metrics.update(status)


def _federated(cluster: LocalRayCluster, tenant: str) -> dict[str, float]:
    """The ``ray_continuum_federated_*_total`` values of ``tenant`` on the head, linted."""
    port = cluster.nodes[0].metrics_export_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    name = re.compile(r"^(# (HELP|TYPE) )?ray_continuum_federated_")
    lines = [
        line if line.startswith("#") else _RAY_LABEL.sub("", line)
        for line in text.splitlines()
        if name.match(line) and (line.startswith("#") or f'tenant="{tenant}"' in line)
    ]
    assert_promtool_accepts_metrics("\n".join(lines) + "\n")
    values = {}
    for line in lines:
        if not line.startswith("#"):
            metric, value = line.rsplit(" ", 1)
            values[metric.split("{")[0]] = float(value)
    return values


def test_the_federated_counters_are_exported_and_only_grow(ray_cluster: LocalRayCluster) -> None:
    tenant = f"f-{uuid.uuid4().hex[:8]}"
    controller = _Controller.options(label_selector=CLOUD_SELECTOR).remote(tenant)  # type: ignore[attr-defined]
    counters = {"rounds": 6, "skipped": 2, "clipped": 1, "excluded": 3, "quorum_waits": 4}
    status = {"trainings": [], "rollout": {}, "federated": {"sites": ["a", "b"], **counters}}
    ray.get(controller.update.remote(status))
    # A snapshot with a smaller count (a trainer made anew) never makes a counter go back.
    ray.get(controller.update.remote(status | {"federated": {"rounds": 2}}))
    want = {f"ray_continuum_federated_{name}_total": float(n) for name, n in counters.items()}
    deadline = time.monotonic() + 60
    got = _federated(ray_cluster, tenant)
    while got != want and time.monotonic() < deadline:
        time.sleep(1.0)
        got = _federated(ray_cluster, tenant)
    assert got == want
    ray.kill(controller)
