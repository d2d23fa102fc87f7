"""Embedded defaults for one machine (DESIGN.md §8): a real mosquitto and a real local Ray cluster.

Used by ``continuum demo`` and the integration tests; production runs its own broker
and Ray cluster (``deploy/``).
"""

from __future__ import annotations

from continuum.embedded.broker import (
    BrokerTLS,
    EmbeddedBroker,
    find_mosquitto,
    find_mosquitto_tool,
)
from continuum.embedded.ray_cluster import LocalRayCluster, RayNodeInfo, find_ray_cli

__all__ = [
    "BrokerTLS",
    "EmbeddedBroker",
    "LocalRayCluster",
    "RayNodeInfo",
    "find_mosquitto",
    "find_mosquitto_tool",
    "find_ray_cli",
]
