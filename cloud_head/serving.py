"""Cloud-side inference routed by sensitivity: data that may not leave a site is served there.

A tenant serves one model from several places: the central pool and on-site servers (a
hospital's own GPU box, a 5G MEC node). Each place is a ``ModelServer`` actor pinned by
label selector to the nodes it stands for. ``SensitivityRouter`` sends each request to the
first place, in the tenant's order of preference, that the residency policy lets process
that request's data class from the site it was captured at (``continuum.residency.route``):
restricted data stays on its site, confidential data in its jurisdiction, the rest may use
the central pool. A request no place may serve is refused with the rule, never sent.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from continuum.residency import Decision, ResidencyPolicy, route
from continuum.spec import DataClass

__all__ = ["Endpoint", "ModelServer", "Routed", "SensitivityRouter"]


@ray.remote(num_cpus=0)
class ModelServer:
    """One place that serves a model: ONNX Runtime on the node its label selector chose."""

    def __init__(self, model_path: str) -> None:
        from continuum.backends import open_backend

        self._backend = open_backend("onnxruntime", Path(model_path))

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, str]:
        """Return the model's outputs for ``batch`` and the id of the node that computed them."""
        outputs = np.asarray(self._backend.infer(batch))
        return outputs, ray.get_runtime_context().get_node_id()


@dataclass(frozen=True)
class Endpoint:
    """A place that serves the model: its actor and the labels of the nodes it runs on."""

    name: str
    labels: dict[str, str]
    server: Any

    @classmethod
    def start(cls, name: str, labels: dict[str, str], model_path: Path, namespace: str) -> Endpoint:
        """Start a ``ModelServer`` named ``serve-<name>`` on a node matching ``labels``."""
        server = ModelServer.options(  # type: ignore[attr-defined]
            name=f"serve-{name}", namespace=namespace, label_selector=dict(labels)
        ).remote(str(model_path))
        return cls(name, dict(labels), server)


@dataclass(frozen=True)
class Routed:
    """A served request: the outputs, where they were computed, and the decision that chose it."""

    outputs: np.ndarray
    endpoint: str
    node_id: str
    decision: Decision


class SensitivityRouter:
    """Serve each request at the first endpoint the residency policy allows for its data.

    ``endpoints`` are in order of preference (e.g. the central pool first, where capacity
    is; the on-site servers after it). Counts of requests per endpoint and of refusals are
    in ``stats()``.
    """

    def __init__(
        self, policy: ResidencyPolicy, endpoints: list[Endpoint], *, tenant: str | None = None
    ) -> None:
        if not endpoints:
            raise ValueError("a router needs at least one endpoint")
        self._policy = policy
        self._endpoints = {e.name: e for e in endpoints}
        self._labels = {e.name: e.labels for e in endpoints}
        self._tenant = tenant
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def choose(self, data_class: DataClass | str, origin_site: str | None) -> tuple[str, Decision]:
        """Return the endpoint that may serve such a request and why.

        Raises:
            PlacementError: no endpoint may; the message gives each one's refusal.
        """
        try:
            name, decision = route(
                self._policy, data_class, origin_site, self._labels, tenant=self._tenant
            )
        except Exception:
            with self._lock:
                self._counts["refused"] += 1
            raise
        return name, decision

    def infer(
        self,
        batch: np.ndarray,
        data_class: DataClass | str,
        origin_site: str | None,
        *,
        timeout_s: float = 30.0,
    ) -> Routed:
        """Serve ``batch`` (data of ``data_class`` captured at ``origin_site``) where allowed."""
        name, decision = self.choose(data_class, origin_site)
        outputs, node_id = ray.get(
            self._endpoints[name].server.infer.remote(batch), timeout=timeout_s
        )
        with self._lock:
            self._counts[name] += 1
        return Routed(outputs, name, node_id, decision)

    def stats(self) -> dict[str, int]:
        """Return requests served per endpoint, and ``refused``."""
        with self._lock:
            return dict(self._counts)
