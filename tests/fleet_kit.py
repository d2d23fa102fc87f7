"""What the fleet registry's unit tests share: a clock they move and a node's status payload."""

from __future__ import annotations

from tests.fleet_simulator import sim_status


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
    status = sim_status(tenant, node, online=online, heartbeat_s=heartbeat_s)
    labels = {"continuum.io/tier": "edge", "continuum.io/site": site}
    return status.model_copy(update={"labels": labels, "ts": ts}).to_payload()
