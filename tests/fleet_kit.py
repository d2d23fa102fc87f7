"""What the fleet registry's unit tests share: a clock they move and a node's status payload."""

from __future__ import annotations

from continuum.wire.messages import NodeStatus


class Clock:
    """A clock the test moves: the registry's ``clock`` reads ``now``."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def node_status(
    node: str,
    *,
    tenant: str = "acme",
    ts: float = 900.0,
    online: bool = True,
    site: str = "lux-1",
    heartbeat_s: float | None = None,
) -> bytes:
    """Return the retained status payload an edge agent at ``site`` publishes."""
    return NodeStatus(
        node=node,
        tenant=tenant,
        online=online,
        labels={"continuum.io/tier": "edge", "continuum.io/site": site},
        backends=["onnxruntime"],
        gpu=None,
        tensorrt_version=None,
        agent_version="0.1.0",
        pipelines=["digits"],
        heartbeat_s=heartbeat_s,
        ts=ts,
    ).to_payload()
