"""The demo's edge: one ``edge-agent`` process per camera, their configs and their supervisor.

Each agent gets a home under ``<workdir>/edge/<node>`` with its config (it holds the node's
own broker password, so it is owner-only), its state and its log; a ``Supervisor`` restarts a
crashed agent (and the embedded broker) as systemd's ``Restart=on-failure`` would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continuum.embedded.supervisor import Supervisor, SupervisorEvent
from pipelines.demo._options import TENANT, DemoOptions, Timeline

__all__ = ["AgentProcess", "collect_telemetry", "sites", "start_agent", "stop_agents", "supervise"]


@dataclass(kw_only=True)
class AgentProcess:
    """One edge-agent process of the demo."""

    node: str
    site: str
    drifted: bool
    config: Path
    log: Path
    metrics_port: int
    tenant: str = TENANT
    pipeline: str = ""
    spec_path: Path = Path()
    labels: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """Start (or start again) the agent process on its config; its log is appended."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def outbox(self) -> Path:
        """The agent's durable outbox (under the state dir its config names)."""
        return self.config.parent / "state" / "outbox.sqlite3"

    @property
    def metrics_url(self) -> str:
        """Where Prometheus scrapes the agent."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def is_running(self) -> bool:
        """Whether the agent process runs."""
        return self.process is not None and self.process.poll() is None

    def describe_exit(self) -> str:
        """Say how the process ended, for the supervisor's log."""
        code = None if self.process is None else self.process.returncode
        if code is not None and code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"


def sites(count: int, scenario: str = "digits") -> list[tuple[str, str, bool]]:
    """Return (node, site, drifted) per agent of ``scenario``, the drifted one last (digits:
    all at lux-1 but the last, alone at lux-2)."""
    from pipelines.demo._scenarios import scenario_named

    return scenario_named(scenario).sites(count)


@dataclass(frozen=True, kw_only=True)
class Camera:
    """Where one agent stands and what its camera does."""

    node: str
    site: str
    drifted: bool
    tenant: str
    pipeline: str
    spec_path: Path
    fields: dict[str, str] | None = None
    #: The agent config's ``source`` entry (ref and args); None: the digits camera.
    source: dict[str, Any] | None = None


def start_agent(
    workdir: Path,
    camera: Camera,
    *,
    broker: Any,
    options: DemoOptions,
    public_key: Path,
    drift_at: float,
    tenancy: Any,
) -> AgentProcess:
    """Write the agent's config under ``workdir/edge/<node>`` and start its process.

    ``broker`` carries the node's own identity (``tenancy.broker_for_node``); ``tenancy``
    gives the residency policy and the tenant's field-hashing salt.
    """
    import yaml

    from continuum.embedded._process import free_port
    from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER

    home = workdir / "edge" / camera.node
    home.mkdir(parents=True)
    labels = {TIER: "edge", SITE: camera.site, COUNTRY: "LU", JURISDICTION: "LU"}
    agent = AgentProcess(
        node=camera.node,
        site=camera.site,
        drifted=camera.drifted,
        config=home / "agent.yaml",
        log=home / "agent.log",
        metrics_port=free_port(),
        tenant=camera.tenant,
        pipeline=camera.pipeline,
        spec_path=camera.spec_path,
        labels=labels,
    )
    config = _agent_config(agent, camera, broker, options, public_key, drift_at, tenancy)
    agent.config.touch(mode=0o600)  # it holds the node's broker password
    agent.config.write_text(yaml.safe_dump(config, sort_keys=False))
    agent.spawn()
    return agent


def _agent_config(
    agent: AgentProcess,
    camera: Camera,
    broker: Any,
    options: DemoOptions,
    public_key: Path,
    drift_at: float,
    tenancy: Any,
) -> dict[str, Any]:
    """Return the agent's config: its broker, its source (the camera's own, or the digits
    camera), the tenant's policy."""
    connection: dict[str, Any] = {"host": broker.host, "port": broker.port}
    if broker.username is not None:
        connection |= {"username": broker.username, "password": broker.password}
    source = camera.source
    if source is None:
        camera_args = {
            "fps": options.fps,
            "seed": sum(map(ord, agent.node)),
            "label_delay_s": options.label_delay_s,
            "drift_kind": options.drift if camera.drifted else None,
            "drift_start_unix": drift_at,
            **({"fields": camera.fields} if camera.fields else {}),
        }
        source = {"ref": "pipelines.digits.camera:DigitsCamera", "args": camera_args}
    return {
        "node_id": agent.node,
        "tenant": agent.tenant,
        "labels": agent.labels,
        "broker": connection,
        "state_dir": str(agent.config.parent / "state"),
        "trusted_public_key": str(public_key),
        "telemetry_interval_s": 2.0,
        "metrics_host": "127.0.0.1",
        "metrics_port": agent.metrics_port,
        "pipelines": [{"spec": str(camera.spec_path), "source": source}],
        # The tenant's policy: the agent drops or hashes what may not leave the site.
        "residency": {
            "policy": str(tenancy.policy),
            "store_labels": tenancy.store_labels,
            "salt_file": str(tenancy.salts[agent.tenant]),
        },
    }


def supervise(
    agents: list[AgentProcess], broker: Any, timeline: Timeline, console: Any
) -> Supervisor:
    """Restart crashed agents (and the embedded broker) with backoff, noting each on the
    timeline, as systemd's ``Restart=on-failure`` and the broker's service would."""

    def on_event(event: SupervisorEvent) -> None:
        timeline.event(event.kind, service=event.service, detail=event.detail)
        colour = "green" if event.kind == "restarted" else "yellow"
        delay = f"; restart in {event.delay_s:.1f} s" if event.kind != "restarted" else ""
        console.print(
            f"[{colour}]supervisor: {event.service} {event.kind}: {event.detail}{delay}[/]"
        )

    supervisor = Supervisor(on_event)
    for agent in agents:
        supervisor.watch(
            f"edge agent {agent.node}",
            alive=agent.is_running,
            restart=agent.spawn,
            describe_exit=agent.describe_exit,
        )
    if broker is not None:
        supervisor.watch(
            "mosquitto",
            alive=lambda: broker.running,
            restart=broker.start,
            describe_exit=lambda: "is not running",
        )
    return supervisor.start()


def stop_agents(agents: list[AgentProcess], timeout_s: float = 20.0) -> None:
    """Stop every agent with SIGTERM (its outbox flushes), SIGKILL those still up at the end."""
    for agent in agents:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for agent in agents:
        if agent.process is None:
            continue
        try:
            agent.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            agent.process.kill()
            agent.process.wait()


def collect_telemetry(head: Any, agents: list[AgentProcess]) -> dict[str, list[dict[str, Any]]]:
    """Return each agent's telemetry windows as the tenant's fleet service kept them."""
    import ray

    refs = {a.node: head.fleet.telemetry.remote(a.node, a.pipeline, 0.0) for a in agents}
    out: dict[str, list[dict[str, Any]]] = {}
    for node, ref in refs.items():
        try:
            out[node] = ray.get(ref, timeout=30)
        except Exception:
            out[node] = []
    return out
