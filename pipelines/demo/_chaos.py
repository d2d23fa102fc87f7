"""``continuum demo --chaos``: the demo attacks and faults itself while it runs.

The answer to "what happens when things break?" that a user can run in one command.  On a
schedule set from the run's duration and drift time, ``Chaos`` does what an attacker holding
one edge box of the tenant (its enrolled identity, ``CHAOS_NODE``) and an unlucky day in
production would do:

- garbage on every topic of the tenant: empty and retained messages, bytes that are no
  payload, JSON of the wrong shape, on every node's status, reported, desired and receipt
  topic, every pipeline topic and the serving model's artifact topics, sent by a plain paho
  client that is not ours; the broker takes what lands on the attacker's own topics (the
  services refuse and count it) and refuses the rest by its ACL;
- a SIGKILL of one edge agent (the supervisor restarts it, as systemd would);
- a SIGKILL of the broker (the supervisor restarts it on the same port, as its service would);
- a kill of an ingest actor (Ray restarts it);
- a 30 s cut of one site's link to the broker (``SiteLink``): its boxes keep selecting
  samples into their outboxes and send them when the link is back.

Each fault lands on the run's timeline, so the report marks it; the sample account
(``pipelines.demo._account``) then shows that nothing the edge selected was lost or stored twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHAOS_NODE",
    "CUT_SITE",
    "FAULT_KINDS",
    "LINK_CUT_S",
    "MIN_TAIL_S",
    "Chaos",
    "Fault",
    "garbage_everywhere",
    "schedule",
    "start_chaos",
]

_log = logging.getLogger(__name__)

#: The attacker's edge box: a node of the tenant, enrolled with its own identity, that runs no
#: agent; it may write its own data topics only.
CHAOS_NODE = "chaos"
#: The site whose link is cut: two boxes, not the drifted one, so the drift's recovery is
#: measured apart from the outage.
CUT_SITE = "lux-1"
#: Every kind of fault a chaos run injects, once each.
FAULT_KINDS = ("garbage", "agent_kill", "broker_kill", "ingest_kill", "link_cut")
#: How long the cut site's link stays down.
LINK_CUT_S = 30.0
#: The run must go on this long after the drift for every fault to land and be recovered from.
MIN_TAIL_S = 120.0
#: Payloads an outside client sends on every topic: empty (clears a retained message),
#: bytes that are no payload, a truncated binary header, JSON of the wrong shape.
GARBAGE: tuple[bytes, ...] = (
    b"",
    b"\xff\x00garbage\x00\xff",
    b"CTM1\x00\x00",
    b'{"node": 42, "online": "yes"}',
    b"{not json",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One planned fault: ``kind`` at ``at_s`` seconds after the cameras start."""

    at_s: float
    kind: str
    target: str
    detail: str


def schedule(*, drift_at_s: float, agent: str, site: str, ingest: str = "ingest-0") -> list[Fault]:
    """Return the faults of a chaos run, in time order.

    Garbage and the agent kill come before the drift, so the restarted agent must recover
    from a cleared desired state while serving; the broker and ingest kills fall in the
    drift's uplink burst, when most is in flight; the link cut follows while retraining.
    """
    return [
        Fault(
            at_s=round(drift_at_s * 0.4, 1),
            kind="garbage",
            target="every topic of the tenant",
            detail="empty, retained and malformed messages from an edge box of the tenant",
        ),
        Fault(at_s=round(drift_at_s * 0.7, 1), kind="agent_kill", target=agent, detail="SIGKILL"),
        Fault(
            at_s=drift_at_s + 20.0,
            kind="broker_kill",
            target="mosquitto",
            detail="SIGKILL, restarted by the supervisor",
        ),
        Fault(
            at_s=drift_at_s + 45.0,
            kind="ingest_kill",
            target=ingest,
            detail="ray.kill, restarted by Ray",
        ),
        Fault(
            at_s=drift_at_s + 60.0,
            kind="link_cut",
            target=site,
            detail=f"site link down for {LINK_CUT_S:.0f} s",
        ),
    ]


def garbage_everywhere(
    settings: Any,
    tenant: str,
    nodes: list[str],
    pipelines: list[str],
    artifacts: list[tuple[str, str]],
    *,
    timeout_s: float = 10.0,
) -> dict[str, int]:
    """Publish ``GARBAGE`` on every topic of ``tenant`` with a plain paho client.

    ``settings`` (``BrokerSettings``) carries the attacker's credential: on a broker that
    knows the tenants, an enrolled node of the tenant (an insider holding one edge box), whose
    own topics are among the targets; on an anonymous broker, none.  Each payload goes once
    plain and once retained, at QoS 1, so the broker confirms it took each one.
    ``artifacts`` are (model, version) pairs whose manifest and first chunk are attacked too.

    Returns:
        How many messages the broker took, and how many it refused (ACL).
    """
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from continuum.wire import topics

    targets: list[str] = []
    for node in [*nodes, "ghost-node"]:
        targets += [
            topics.node_status(tenant, node),
            topics.node_reported(tenant, node),
            topics.node_desired(tenant, node),
            topics.node_stored(tenant, node),
        ]
        for pipeline in pipelines:
            targets += [
                topics.samples(tenant, pipeline, node),
                topics.telemetry(tenant, pipeline, node),
                topics.feedback(tenant, pipeline, node),
            ]
    for model, version in artifacts:
        targets += [
            topics.artifact_manifest(tenant, model, version),
            topics.artifact_chunk(tenant, model, version, 0),
        ]
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        # The broker binds the client id to an identity; an anonymous one keeps a fresh id.
        client_id=settings.username or f"chaos-{tenant}-{int(time.time())}",
        protocol=paho.MQTTv5,
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    acked = threading.Semaphore(0)
    refused = 0

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal refused
        if getattr(reason, "is_failure", False):
            refused += 1
        acked.release()

    client.on_publish = on_publish
    client.connect(settings.host, settings.port, keepalive=30)
    client.loop_start()
    sent = 0
    try:
        for topic in targets:
            for payload in GARBAGE:
                for retain in (False, True):
                    client.publish(topic, payload, qos=1, retain=retain)
                    sent += 1
        deadline = time.monotonic() + timeout_s
        confirmed = 0
        while confirmed < sent and acked.acquire(timeout=max(0.0, deadline - time.monotonic())):
            confirmed += 1
    finally:
        client.disconnect()
        client.loop_stop()
    return {"topics": len(targets), "sent": sent, "confirmed": confirmed, "refused": refused}


class Chaos:
    """Carry out ``faults`` on a thread, each at its time after the cameras start.

    ``actions`` maps a fault kind to what does it (given the fault's target), so the
    schedule stays apart from the demo's processes; each outcome goes to ``on_fault``.
    """

    def __init__(
        self,
        faults: list[Fault],
        actions: dict[str, Callable[[str], dict[str, Any]]],
        *,
        start_at: float,
        on_fault: Callable[[Fault, dict[str, Any]], None],
    ) -> None:
        """Prepare the run; ``start_at`` is the Unix time the cameras started."""
        missing = sorted({f.kind for f in faults} - set(actions))
        if missing:
            raise ValueError(f"no action for fault kinds {missing}")
        self._faults = sorted(faults, key=lambda f: f.at_s)
        self._actions = actions
        self._start_at = start_at
        self._on_fault = on_fault
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.done: list[tuple[Fault, dict[str, Any]]] = []

    def start(self) -> Chaos:
        """Start carrying out the schedule; return self."""
        self._thread = threading.Thread(target=self._run, name="ctm-chaos", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop before the next fault (one under way finishes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60.0)

    def _run(self) -> None:
        for fault in self._faults:
            if self._stop.wait(max(0.0, self._start_at + fault.at_s - time.time())):
                return
            started = time.time()
            try:
                outcome = self._actions[fault.kind](fault.target)
                outcome.setdefault("ok", True)
            except Exception as exc:  # a fault that could not be injected is reported, not fatal
                _log.exception("chaos: %s on %s failed", fault.kind, fault.target)
                outcome = {"ok": False, "error": repr(exc)}
            outcome["at"] = started
            self.done.append((fault, outcome))
            with contextlib.suppress(Exception):
                self._on_fault(fault, outcome)


def start_chaos(
    options: Any,
    timeline: Any,
    console: Any,
    *,
    heads: dict[str, Any],
    spec: Any,
    agents: list[Any],
    attacker: Any,
    embedded_broker: Any,
    links: dict[str, Any],
) -> Chaos:
    """Start the chaos schedule of a demo run against the tenant of ``spec``.

    ``agents`` are the tenant's agent processes (the first is killed), ``attacker`` the
    broker settings of the tenant's ``CHAOS_NODE`` (its own identity), ``links`` the cut
    site's ``SiteLink``.
    """
    import os
    import signal

    import ray

    head = heads[spec.tenant]
    victim = agents[0]

    def garbage(target: str) -> dict[str, Any]:
        # The attack is on a running fleet: on a loaded machine the agents may still be
        # fetching their first model, and garbage over its retained chunks would keep them
        # from ever serving one (until a new version is published; see the note).
        waited = _wait_until_serving(head, spec.name, [a.node for a in agents])
        current = ray.get(head.controllers[spec.name].status.remote(), timeout=30).get("current")
        artifacts = [(spec.edge.model, current)] if current else []
        nodes = [a.node for a in agents] + [CHAOS_NODE]
        outcome = garbage_everywhere(attacker, spec.tenant, nodes, [spec.name], artifacts)
        return {**outcome, "waited_for_serving_s": round(waited, 1)}

    def agent_kill(target: str) -> dict[str, Any]:
        process = victim.process
        if process is None or process.poll() is not None:
            return {"ok": False, "error": f"{target} was not running"}
        os.kill(process.pid, signal.SIGKILL)
        return {"pid": process.pid}

    def broker_kill(target: str) -> dict[str, Any]:
        if embedded_broker is None:
            return {"ok": False, "error": "the broker is not the demo's own: not killed"}
        pid = embedded_broker.pid
        embedded_broker.kill()
        return {"pid": pid}

    def ingest_kill(target: str) -> dict[str, Any]:
        ray.kill(head.ingest[0], no_restart=False)
        return {"restart": "by Ray (max_restarts=-1)"}

    def link_cut(target: str) -> dict[str, Any]:
        return {"reset_connections": links[target].cut(LINK_CUT_S), "seconds": LINK_CUT_S}

    def on_fault(fault: Fault, outcome: dict[str, Any]) -> None:
        timeline.event("fault", kind=fault.kind, target=fault.target, **outcome)
        colour = "magenta" if outcome.get("ok") else "red"
        console.print(f"[{colour}]chaos: {fault.kind} on {fault.target}: {outcome}[/]")

    faults = schedule(drift_at_s=options.drift_at_s, agent=victim.node, site=CUT_SITE)
    return Chaos(
        faults,
        {
            "garbage": garbage,
            "agent_kill": agent_kill,
            "broker_kill": broker_kill,
            "ingest_kill": ingest_kill,
            "link_cut": link_cut,
        },
        start_at=timeline.stream_start,
        on_fault=on_fault,
    ).start()


def _wait_until_serving(
    head: Any, pipeline: str, nodes: list[str], timeout_s: float = 120.0
) -> float:
    """Wait until every node reports a model serving ``pipeline``; return the seconds waited."""
    import ray

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        reported = {
            n["node"]: ((n.get("reported") or {}).get("pipelines") or {}).get(pipeline) or {}
            for n in ray.get(head.fleet.nodes.remote(), timeout=30)
        }
        if all(reported.get(node, {}).get("state") == "serving" for node in nodes):
            break
        time.sleep(1.0)
    return time.monotonic() - started
