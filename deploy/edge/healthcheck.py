"""Container HEALTHCHECK for the edge agent: ask the running agent, not the broker.

``edge-agent check`` is the wrong probe here: with no agent it logs in to the broker under
the node's identity, and with one it reads this same endpoint. The container's probe reads
the agent's own ``/metrics`` and its link gauge ``continuum_edge_broker_connected``, the way
``edge-agent check`` reports a running agent's link (edge_agent/cli.py
``_running_agent_link``). Healthy means the agent answers AND holds its broker session;
a broker outage therefore marks the container unhealthy (use it for readiness and alerts,
not to restart the agent, which reconnects by itself and keeps its outbox on disk).

Standard library only (the image may run the system Python 3.10 of JetPack 6). Exit 0 when
healthy, 1 otherwise, with one line saying why and what to check.

The URL is ``$CONTINUUM_EDGE_HEALTH_URL`` (default ``http://127.0.0.1:9711/metrics``, the
``metrics_port`` of deploy/edge/agent.example.yaml): set it when the config uses another
``metrics_port``.
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9711/metrics"
GAUGE = "continuum_edge_broker_connected"


def probe(url: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Return (healthy, reason) for the agent whose metrics are served at ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            text = reply.read().decode(errors="replace")
    except (OSError, ValueError) as exc:
        return False, (
            f"unhealthy: the agent's metrics at {url} did not answer ({exc}); is the agent "
            "running with metrics_port set, and does CONTINUUM_EDGE_HEALTH_URL name that port?"
        )
    for line in text.splitlines():
        if line.startswith(GAUGE) and not line.startswith(GAUGE + "_"):
            value = line.rsplit(" ", 1)[-1].strip()
            if value in ("1", "1.0"):
                return True, f"healthy: {url} reports the broker link connected"
            return False, (
                f"unhealthy: {url} reports the broker link NOT connected ({GAUGE} {value}); "
                "the agent retries by itself: check the broker address, certificates and "
                "network (edge-agent logs)"
            )
    return False, (
        f"unhealthy: {url} answered without the {GAUGE} gauge; is it the edge agent's "
        "metrics endpoint?"
    )


def main() -> int:
    """Probe the agent named by the environment; print the reason; return the exit status."""
    healthy, reason = probe(os.environ.get("CONTINUUM_EDGE_HEALTH_URL") or DEFAULT_URL)
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
