"""The hospitals scenario's imaging stations: an edge agent per hospital, on its site's broker.

The station is the demo's ordinary agent process (``_agents``) with what makes it a
hospital's: its site's labels, the site broker as its broker, the scanner as its source
(``pipelines.hospitals.scanner.SiteScanner``) and, as the store its residency plan judges
uplink against, the site's own store: restricted data may go there (``same_site``), and
only there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.demo._agents import AgentProcess, Camera, _agent_config
from pipelines.demo._options import DemoOptions

__all__ = ["start_station"]


def start_station(
    workdir: Path,
    *,
    node: str,
    site: str,
    labels: dict[str, str],
    broker: Any,
    spec_path: Path,
    options: DemoOptions,
    drift_at: float,
    tenancy: Any,
) -> AgentProcess:
    """Write the station's config under ``workdir/edge/<node>`` and start its agent."""
    import yaml

    from continuum.embedded._process import free_port
    from pipelines.hospitals.data import DRIFT_SITE

    home = workdir / "edge" / node
    home.mkdir(parents=True)
    agent = AgentProcess(
        node=node,
        site=site,
        drifted=site == DRIFT_SITE,
        config=home / "agent.yaml",
        log=home / "agent.log",
        metrics_port=free_port(),
        tenant="medica",
        pipeline="hospital-screening",
        spec_path=spec_path,
        labels=dict(labels),
    )
    camera = Camera(
        node=node,
        site=site,
        drifted=agent.drifted,
        tenant=agent.tenant,
        pipeline=agent.pipeline,
        spec_path=spec_path,
        source={
            "ref": "pipelines.hospitals.scanner:SiteScanner",
            "args": {
                "site": site,
                "rate": options.fps,
                "seed": sum(map(ord, node)),
                "label_delay_s": options.label_delay_s,
                "drift_start_unix": drift_at,
            },
        },
    )
    config = _agent_config(agent, camera, broker, options, Path(), drift_at, tenancy)
    config["trusted_public_key"] = str(tenancy.signing_keys["medica"][1])
    # The store this agent's samples go to is its site's own (the site ingest's).
    config["residency"]["store_labels"] = dict(labels)
    agent.config.touch(mode=0o600)  # it holds the node's broker password
    agent.config.write_text(yaml.safe_dump(config, sort_keys=False))
    agent.spawn()
    return agent
