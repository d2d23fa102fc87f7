"""Cloud-side inference routed by sensitivity, on the real Ray cluster.

The session cluster is the demo's topology: the head is the central pool in Frankfurt, the
worker an edge site in Luxembourg. Under the demo's residency policy, internal data may be
served centrally, confidential data only in Luxembourg and restricted data only on the
site it was captured at; the test checks which node actually computed each answer.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from cloud_head.serving import Endpoint, SensitivityRouter
from continuum.errors import PlacementError
from continuum.residency import load_policy
from pipelines.demo._tenants import CLOUD_LABELS, EDGE_NODE_LABELS, policy_path
from tests.edge_agent_kit import build_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def node_ids() -> dict[str, str]:
    """Return the node id of the head (central) and of the edge worker."""
    out = {}
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if node.get("Alive"):
            tier = (node.get("Labels") or {}).get("continuum.io/tier")
            out[str(tier)] = str(node["NodeID"])
    return out


def test_each_request_is_served_where_its_data_may_be_processed(
    tmp_path: Path, ray_cluster: Any
) -> None:
    model = build_model(tmp_path / "model.onnx", favour=4)
    namespace = ray.get_runtime_context().namespace
    suffix = uuid.uuid4().hex[:6]
    endpoints = [
        Endpoint.start(f"central-{suffix}", CLOUD_LABELS, model, namespace),
        Endpoint.start(f"lux1-{suffix}", EDGE_NODE_LABELS, model, namespace),
    ]
    router = SensitivityRouter(load_policy(policy_path()), endpoints)
    nodes = node_ids()
    batch = np.ones((2, 1, 8, 8), dtype=np.float32)
    try:
        internal = router.infer(batch, "internal", "lux-1")
        assert internal.endpoint == f"central-{suffix}" and internal.node_id == nodes["cloud"]
        assert internal.outputs.shape == (2, 10) and int(internal.outputs[0].argmax()) == 4

        confidential = router.infer(batch, "confidential", "lux-1")
        assert confidential.endpoint == f"lux1-{suffix}"
        assert confidential.node_id == nodes["edge"]
        assert "confidential.jurisdiction" in confidential.decision.rule

        restricted = router.infer(batch, "restricted", "lux-1")
        assert restricted.node_id == nodes["edge"]

        with pytest.raises(PlacementError, match=r"restricted\.same_site") as refused:
            router.infer(batch, "restricted", "lux-7")
        assert f"central-{suffix}" in str(refused.value) and f"lux1-{suffix}" in str(refused.value)
        assert router.stats() == {f"central-{suffix}": 1, f"lux1-{suffix}": 2, "refused": 1}
    finally:
        for endpoint in endpoints:
            ray.kill(endpoint.server)
