"""The maintenance scenario's plant: its own broker on loopback and a line gateway per site.

A factory's sensor gateway (Greengrass, Node-RED, a PLC's MQTT bridge) publishes on the
plant's own broker, not on continuum's: the agent's ``SensorGatewaySource`` holds a second
connection to it.  So the demo starts a second ``EmbeddedBroker`` rather than opening a topic
on continuum's: the tenants' ACL stays what a real deployment has (a node reaches only its
own topics), and nothing the gateway publishes is visible to the cloud or the other tenant.
Each site gets one ``SimulatedGateway`` with a type-A press per agent there; the drifted
site's gateway installs the drift (``machine_b``: new type-B presses; ``sensor_ageing``) at
the run's drift onset.  Readings are paced at ``rate`` windows per second per press.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["Plant"]


class Plant:
    """The plant broker and its line gateways; ``start`` them, read ``address``, ``stop``."""

    def __init__(self, workdir: Path, sites: list[tuple[str, str, bool]], *, drift: str) -> None:
        from continuum.embedded.broker import EmbeddedBroker

        self.broker = EmbeddedBroker(workdir / "plant-broker")
        self._sites = sites
        self._drift = drift
        self.gateways: dict[str, Any] = {}

    @property
    def address(self) -> tuple[str, int]:
        """The plant broker's (host, port), as the agents' sources connect to it."""
        return self.broker.host, self.broker.port

    def start_broker(self) -> Plant:
        """Start the plant broker (before the agents, whose sources connect to it)."""
        self.broker.start()
        return self

    def start_gateways(
        self, *, rate: float, drift_at: float, label_delay_s: float, seed: int = 0
    ) -> None:
        """Start one gateway per site, publishing ``rate`` windows/s per press; the drifted
        site's gateway drifts at ``drift_at`` (wall clock)."""
        from pipelines.demo._scenarios import gateway_prefix
        from pipelines.maintenance.bearings import FS_HZ, WINDOW
        from pipelines.maintenance.gateway import SimulatedGateway

        by_site: dict[str, list[str]] = defaultdict(list)
        drifted: set[str] = set()
        for node, site, site_drifts in self._sites:
            by_site[site].append(node)
            if site_drifts:
                drifted.add(site)
        host, port = self.address
        for index, (site, nodes) in enumerate(sorted(by_site.items())):
            gateway = SimulatedGateway(
                host=host,
                port=port,
                machines=dict.fromkeys(nodes, "A"),
                prefix=gateway_prefix(site),
                speed=rate * WINDOW / FS_HZ,
                seed=seed + index,
                label_delay_s=label_delay_s,
                drift=self._drift if site in drifted else None,
                drift_after_s=max(0.0, drift_at - time.time()) if site in drifted else None,
            )
            self.gateways[site] = gateway.start()

    def stop(self) -> None:
        """Stop the gateways, then the broker; safe to call on a plant never started."""
        for gateway in self.gateways.values():
            with contextlib.suppress(Exception):
                gateway.stop()
        self.broker.stop()
