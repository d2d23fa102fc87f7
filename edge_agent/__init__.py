"""The continuum edge agent: sources -> inference -> selection -> durable outbox -> MQTT.

``EdgeAgent`` composes the parts; ``AgentSettings`` is its configuration; the
``edge-agent`` command (``edge_agent.cli:main``) runs it.  Importing this package does
not import an inference backend or paho: those load when an agent is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from continuum.sources import Frame, Source
from edge_agent.config import AgentSettings
from edge_agent.sources import load_source

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent

__all__ = ["AgentSettings", "EdgeAgent", "Frame", "Source", "load_source"]


def __getattr__(name: str) -> Any:
    if name == "EdgeAgent":
        from edge_agent.agent import EdgeAgent

        return EdgeAgent
    raise AttributeError(f"module 'edge_agent' has no attribute {name!r}")
