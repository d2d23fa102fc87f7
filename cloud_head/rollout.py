"""Rollout of a gated model: desired state per node, a canary, an exponential ramp, rollback.

The controller is protocol logic only: it reads the fleet (who runs the pipeline, what
they report, their telemetry) and writes desired state through ``DesiredStateBook``; a
service calls ``tick()`` periodically. Every decision is returned as a ``RolloutState``
with its reason so the CLI, the demo and the audit log can show it.

A rollout goes in steps (``RampStep``): the candidate goes to the spec's canary share of the
target nodes, then to ``canary * ramp_factor``, ``canary * ramp_factor**2``... of them, and is
promoted when the next step would reach every node. Each step holds (``promote_after_s`` for
the canary, ``step_after_s`` after) and is then judged on the telemetry of the nodes that run
the candidate, by the spec's rules (``judge``): accuracy from labelled feedback windows
against the same nodes' accuracy on the current version before they switched (the canaries
are the most drifted nodes, so the other nodes would be an unfair baseline), p95 latency
against the current version on the nodes that do not run the candidate over the same time
(or, when they report none, the same nodes before they switched). It advances, rolls back
naming the rule and the figures, or waits for enough data. The nodes of every step come
from one ranking made at the canary and stored with the state, so a restart resumes the same
step on the same nodes and the next step adds the same ones.

A rollout never skips its canary because of what the fleet looks like at one moment: only
the registry says that a candidate is the pipeline's first model (no current version, and
none ever promoted), which is promoted at once. Any other candidate, when no eligible node
can take its canary (online, admitted, running the pipeline, matching its placement, and
heard from within two of its heartbeat periods), waits in stage "waiting" with the reason,
logged and audited once, while the current version keeps serving; ``tick()`` starts the
canary on the first eligible node that appears. A newer candidate given to ``begin()``
replaces a waiting one, which never ran anywhere (``PipelineController`` holds retraining
while a rollout waits or runs, so in practice it does not happen).

The book's SQLite file also keeps each pipeline's rollout state (written before the step it
announces is carried out), so a controller built again on the same file resumes a rollout in
progress and ``tick()`` finishes a step a crash interrupted.

Each step (canary start, every ramp step, promotion, rollback, an operator's promote or
rollback, the current version sent to nodes that joined) is appended to the tenant's audit
log before its state is stored and its desired state published: if the record cannot be
written (``AuditWriteError``) nothing is published and the step is tried again at the next
tick, or the operator's command fails.  Nodes the fleet refused (over the tenant's
``edge_nodes`` quota) get no desired state.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cloud_head.audit import AuditAction, AuditTrail, model_subject
from continuum.errors import ContinuumError
from continuum.wire import topics
from continuum.wire.messages import DesiredModel, DesiredState, Telemetry, chunk_layout

if TYPE_CHECKING:
    from cloud_head.fleet import FleetRegistry, NodeInfo
    from cloud_head.registry import ModelRegistry, ModelStatus, ModelVersion
    from continuum.spec import PipelineSpec, RollbackRules, RolloutSpec

log = logging.getLogger(__name__)

#: Where a rollout stands: "waiting" while a candidate has no eligible node for its canary,
#: "canary" while it is on some nodes (canary or ramp step).
Stage = Literal["idle", "waiting", "canary", "promoted", "rolled_back"]

#: What ``judge`` concludes at the end of a step's hold.
Decision = Literal["advance", "roll back", "wait"]

#: A step's accuracy decision needs at least this many labelled frames on the candidate.
MIN_LABELLED_FOR_DECISION = 40

#: A step's latency decision needs at least this many candidate windows with a p95 figure.
MIN_LATENCY_WINDOWS = 3

#: The latency baseline reads at most this many nodes that still run the current version.
MAX_LATENCY_BASELINE_NODES = 100

#: The ``DesiredStateBook`` record kind that holds a pipeline's ``RolloutState``.
ROLLOUT_RECORD = "rollout"

#: A node silent for more than this many of its heartbeat periods takes no canary, whatever
#: its last status said (the fleet registry marks it offline after as many).
STALE_AFTER_PERIODS = 2

#: Registry statuses of a version that was never promoted nor tried on any node.
_NEVER_RAN: frozenset[str] = frozenset({"registered", "rejected"})


class DesiredStateBook:
    """The desired model per node and pipeline, persisted, published retained on change.

    ``publish(topic, payload)`` must deliver retained at QoS 1 (it raises if it cannot).
    The same file keeps each pipeline's controller records (``save_record``), so the
    cloud head restarts from it with nothing lost.
    """

    def __init__(self, path: Path, tenant: str, publish: Callable[[str, bytes], None]) -> None:
        self.tenant = tenant
        self._publish = publish
        self._lock = threading.Lock()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS desired (tenant TEXT, node TEXT, generation INTEGER, "
            "pipelines TEXT, PRIMARY KEY (tenant, node))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pipeline_records (tenant TEXT, pipeline TEXT, "
            "kind TEXT, body TEXT NOT NULL, saved_at REAL NOT NULL, "
            "PRIMARY KEY (tenant, pipeline, kind))"
        )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def save_record(self, pipeline: str, kind: str, body: dict[str, Any]) -> None:
        """Durably store one JSON record of ``pipeline`` (its rollout, its bookkeeping)."""
        text = json.dumps(body, sort_keys=True)
        with self._lock:
            self._db.execute(
                "INSERT INTO pipeline_records VALUES (?,?,?,?,?) "
                "ON CONFLICT(tenant, pipeline, kind) DO UPDATE SET body=excluded.body, "
                "saved_at=excluded.saved_at",
                (self.tenant, pipeline, kind, text, time.time()),
            )

    def load_record(self, pipeline: str, kind: str) -> dict[str, Any] | None:
        """Return the record ``save_record`` stored last, or None if there is none."""
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM pipeline_records WHERE tenant=? AND pipeline=? AND kind=?",
                (self.tenant, pipeline, kind),
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def get(self, node: str) -> DesiredState | None:
        """Return the node's desired state, if any was ever set."""
        with self._lock:
            row = self._db.execute(
                "SELECT generation, pipelines FROM desired WHERE tenant=? AND node=?",
                (self.tenant, node),
            ).fetchone()
        if row is None:
            return None
        pipelines = {k: DesiredModel(**v) for k, v in json.loads(row[1]).items()}
        return DesiredState(
            node=node, pipelines=pipelines, issued_at=time.time(), generation=int(row[0])
        )

    def assign(self, node: str, pipeline: str, model: DesiredModel) -> DesiredState:
        """Set what ``node`` should serve for ``pipeline`` and publish its whole desired state."""
        with self._lock:
            row = self._db.execute(
                "SELECT generation, pipelines FROM desired WHERE tenant=? AND node=?",
                (self.tenant, node),
            ).fetchone()
            generation = 1 if row is None else int(row[0]) + 1
            pipelines = {} if row is None else json.loads(row[1])
            pipelines[pipeline] = model.model_dump(mode="json")
            state = DesiredState(
                node=node,
                pipelines={k: DesiredModel(**v) for k, v in pipelines.items()},
                issued_at=time.time(),
                generation=generation,
            )
            self._publish(topics.node_desired(self.tenant, node), state.to_payload())
            self._db.execute(
                "INSERT INTO desired VALUES (?,?,?,?) ON CONFLICT(tenant, node) DO UPDATE SET "
                "generation=excluded.generation, pipelines=excluded.pipelines",
                (self.tenant, node, generation, json.dumps(pipelines, sort_keys=True)),
            )
        return state

    def serving_target(self, node: str, pipeline: str) -> str | None:
        """Return the version ``node`` is told to serve for ``pipeline``."""
        state = self.get(node)
        if state is None or pipeline not in state.pipelines:
            return None
        return state.pipelines[pipeline].version


@dataclass(frozen=True)
class RampStep:
    """One step of a rollout: the share of the target nodes that run the candidate, and why.

    ``index`` 0 is the canary; ``share`` is the step's share in the spec's ramp (1.0: every
    node, the promotion); ``nodes`` are all the nodes told to run the candidate in this step.
    """

    index: int
    share: float
    nodes: tuple[str, ...]
    started_at: float
    reason: str

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RampStep:
        """Rebuild a step from its ``asdict`` mapping."""
        return cls(
            index=int(record["index"]),
            share=float(record["share"]),
            nodes=tuple(record.get("nodes", ())),
            started_at=float(record["started_at"]),
            reason=str(record.get("reason", "")),
        )


@dataclass(frozen=True)
class RolloutState:
    """Where the rollout of one pipeline stands, and why.

    ``canary_nodes`` are the nodes that run the candidate at the current step (the canaries
    at step 0, more at each ramp step); ``steps`` is every step of this candidate's rollout,
    the current one last; ``order`` is the ranking the steps take their nodes from;
    ``verdict`` says what the last ``tick`` concluded at the current step (holding until
    ``decide_at``, waiting for data) and the accuracies and latencies are its figures.
    In stage "waiting" the candidate is on no node yet: ``started_at`` is when the wait
    began, ``reason`` says what it waits for, and ``baseline`` serves on meanwhile.
    """

    pipeline: str
    stage: Stage = "idle"
    candidate: str | None = None
    baseline: str | None = None
    canary_nodes: tuple[str, ...] = ()
    started_at: float = 0.0
    decided_at: float | None = None
    canary_accuracy: float | None = None
    baseline_accuracy: float | None = None
    reason: str = "no rollout yet"
    history: tuple[str, ...] = field(default=())
    steps: tuple[RampStep, ...] = field(default=())
    order: tuple[str, ...] = field(default=())
    canary_latency_p95_ms: float | None = None
    baseline_latency_p95_ms: float | None = None
    verdict: str = ""
    decide_at: float | None = None

    def to_record(self) -> dict[str, Any]:
        """Return the state as a JSON-able mapping (``from_record`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RolloutState:
        """Rebuild a state from ``to_record``'s mapping; keys it does not know are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        values["canary_nodes"] = tuple(values.get("canary_nodes", ()))
        values["history"] = tuple(values.get("history", ()))
        values["order"] = tuple(values.get("order", ()))
        values["steps"] = tuple(RampStep.from_record(s) for s in values.get("steps", ()))
        return cls(**values)


@dataclass(frozen=True)
class CanaryPool:
    """The nodes that can take a canary now, and the fleet they were picked from.

    ``ready`` are the eligible nodes heard from within ``STALE_AFTER_PERIODS`` heartbeat
    periods, by name; ``matching`` counts the admitted nodes that run the pipeline and match
    its placement (``selector``); ``stale`` are those whose last status said online but that
    have been silent longer than that (a fleet view nobody has refreshed).
    """

    ready: tuple[str, ...]
    matching: int
    stale: tuple[str, ...]
    selector: str

    def wait_reason(self) -> str:
        """Say what a rollout with no canary node waits for, with the fleet's figures."""
        reason = (
            f"waiting for an eligible canary node: {len(self.ready)} of {self.matching} "
            f"nodes matching {self.selector} are online"
        )
        if self.stale:
            were = "was" if len(self.stale) == 1 else "were"
            reason += (
                f" ({_names(self.stale)} said so but {were} last heard from more than "
                f"{STALE_AFTER_PERIODS} heartbeat periods ago)"
            )
        return reason


@dataclass(frozen=True)
class StepFigures:
    """What one step measured: the candidate on its nodes against the current version."""

    labelled: int
    candidate_accuracy: float | None
    baseline_accuracy: float | None
    latency_windows: int
    candidate_p95_ms: float | None
    baseline_p95_ms: float | None
    #: Where the baseline latency came from, for people: "v1 on cam-3, cam-4".
    latency_baseline: str = "the baseline"


def ramp_schedule(rollout: RolloutSpec, nodes: int) -> list[tuple[float, int]]:
    """Return ``(share, node count)`` per step of a rollout over ``nodes`` target nodes.

    The first step is the canary (at least one node); a share that adds no node to the
    step before it is skipped; the last step has every node (the promotion).
    ``ramp_schedule(RolloutSpec(canary=0.1), 10) == [(0.1, 1), (0.2, 2), (0.4, 4),
    (0.8, 8), (1.0, 10)]``.
    """
    plan: list[tuple[float, int]] = []
    for share in rollout.ramp_shares():
        # Rounded first so that 0.7 * 10 counts 7 nodes, not 8.
        count = min(nodes, max(1, math.ceil(round(share * nodes, 9))))
        if plan and count <= plan[-1][1]:
            continue
        plan.append((share, count))
    return plan


def judge(rules: RollbackRules, figures: StepFigures) -> tuple[Decision, str]:
    """Decide a step whose hold is over: advance, roll back (naming the rule) or wait.

    A rule rolls back as soon as it has enough data and fires, even while the other rule
    still waits for data; the step advances when every rule has enough data and none fires.
    A rule without a baseline figure cannot fire.
    """
    missing: list[str] = []
    held: list[str] = []
    drop = rules.accuracy_drop
    if drop is not None:
        cand, base = figures.candidate_accuracy, figures.baseline_accuracy
        if figures.labelled < MIN_LABELLED_FOR_DECISION:
            missing.append(f"{figures.labelled} of {MIN_LABELLED_FOR_DECISION} labelled frames")
        elif cand is not None and base is not None and cand < base - drop:
            return (
                "roll back",
                f"accuracy {cand:.3f} fell more than {drop:g} below the baseline's {base:.3f} "
                f"(over {figures.labelled} labelled frames)",
            )
        else:
            held.append(
                f"accuracy {_figure(cand, '.3f')} vs baseline {_figure(base, '.3f')} "
                f"over {figures.labelled} labelled frames"
            )
    rise = rules.latency_rise
    if rise is not None:
        cand_ms, base_ms = figures.candidate_p95_ms, figures.baseline_p95_ms
        if figures.latency_windows < MIN_LATENCY_WINDOWS:
            missing.append(
                f"{figures.latency_windows} of {MIN_LATENCY_WINDOWS} windows with latency"
            )
        elif cand_ms is not None and base_ms is not None and cand_ms > base_ms * (1.0 + rise):
            return (
                "roll back",
                f"p95 latency {cand_ms:.3g} ms rose more than {rise * 100:g}% above "
                f"{figures.latency_baseline}'s {base_ms:.3g} ms "
                f"(+{_percent(cand_ms, base_ms)}, over {figures.latency_windows} windows)",
            )
        else:
            held.append(
                f"p95 latency {_figure(cand_ms, '.3g')} ms vs {_figure(base_ms, '.3g')} ms "
                f"({figures.latency_baseline})"
            )
    if missing:
        return "wait", f"not enough data yet: {', '.join(missing)}"
    return "advance", "; ".join(held)


def _figure(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _percent(value: float, base: float) -> str:
    return "inf%" if base <= 0 else f"{(value / base - 1.0) * 100:.0f}%"


def desired_model(version: ModelVersion, chunk_size: int, chunks: int) -> DesiredModel:
    """Return the desired-state entry that tells a node to fetch and serve ``version``."""
    return DesiredModel(
        model=version.model,
        version=version.version,
        sha256=version.sha256,
        signature=version.signature,
        size_bytes=version.size_bytes,
        chunk_size=chunk_size,
        chunks=chunks,
    )


def _accuracy(windows: Sequence[Telemetry], version: str) -> tuple[float | None, int]:
    labelled = sum(w.labelled for w in windows if w.model_version == version)
    correct = sum(w.correct for w in windows if w.model_version == version)
    return (correct / labelled if labelled else None), labelled


def _p95(windows: Sequence[Telemetry]) -> tuple[float | None, int]:
    """Return the median of the windows' p95 latencies (robust to one slow window), and n."""
    figures = [w.latency_p95_ms for w in windows if w.latency_p95_ms is not None]
    return (statistics.median(figures) if figures else None), len(figures)


class RolloutController:
    """Canary a candidate, ramp it up step by step to every node, or roll it back."""

    def __init__(
        self,
        spec: PipelineSpec,
        registry: ModelRegistry,
        fleet: FleetRegistry,
        book: DesiredStateBook,
        *,
        chunk_size: int,
        clock: Callable[[], float] = time.time,
        serve_timeout_s: float = 120.0,
        audit: AuditTrail | None = None,
    ) -> None:
        self.spec = spec
        self.audit = audit
        self.tenant = spec.tenant
        self.registry = registry
        self.fleet = fleet
        self.book = book
        self.chunk_size = chunk_size
        self.clock = clock
        self.serve_timeout_s = serve_timeout_s
        saved = book.load_record(spec.name, ROLLOUT_RECORD)
        state = (
            RolloutState(pipeline=spec.name) if saved is None else RolloutState.from_record(saved)
        )
        if state.stage == "canary" and not state.steps:
            # Stored before rollouts had steps: its canary is step 0 of the spec's ramp.
            canary = RampStep(0, spec.rollout.canary, state.canary_nodes, state.started_at, "")
            state = replace(state, steps=(replace(canary, reason=state.reason),))
            state = replace(state, order=state.canary_nodes)
        self._state = state

    @property
    def state(self) -> RolloutState:
        """Where the rollout stands; every change is stored in the book before it is kept."""
        return self._state

    @state.setter
    def state(self, value: RolloutState) -> None:
        if value != self._state:
            self.book.save_record(self.spec.name, ROLLOUT_RECORD, value.to_record())
        self._state = value

    # -- fleet view ----------------------------------------------------------------------

    def eligible_nodes(self) -> list[str]:
        """Online nodes that run this pipeline and match its edge placement, sorted by name.

        A node the fleet refused (over the tenant's ``edge_nodes`` quota) is never eligible.
        """
        nodes = self.fleet.nodes(self.spec.edge.where)
        return sorted(
            n.node
            for n in nodes
            if n.online and n.refused is None and self.spec.name in n.pipelines
        )

    def canary_pool(self) -> CanaryPool:
        """Return the nodes that can take a canary now: eligible and heard from recently.

        An eligible node silent for more than ``STALE_AFTER_PERIODS`` of its heartbeat periods
        is left out even though its last status said online: this process reads the fleet's
        file, which goes stale when nobody keeps it (the fleet service down or cut off), and
        a canary on a node that cannot hear it would only time out and roll back.
        """
        now = self.clock()
        matching = [
            n
            for n in self.fleet.nodes(self.spec.edge.where)
            if n.refused is None and self.spec.name in n.pipelines
        ]
        ready: list[str] = []
        stale: list[str] = []
        for node in matching:
            if node.online:
                silent = now - node.last_seen > STALE_AFTER_PERIODS * self._period(node)
                (stale if silent else ready).append(node.node)
        return CanaryPool(
            ready=tuple(ready),
            matching=len(matching),
            stale=tuple(stale),
            selector=str(self.spec.edge.where),
        )

    def _period(self, node: NodeInfo) -> float:
        """The node's heartbeat period: as its status states it, else the fleet's default."""
        stated = None if node.status is None else node.status.heartbeat_s
        return self.fleet.heartbeat_interval_s if stated is None else stated

    def _ranked(self, nodes: list[str]) -> list[str]:
        """Rank the nodes for the ramp: highest recent drift first (where a fix matters most)."""

        def drift_of(node: str) -> float:
            recent = self.fleet.telemetry(node, self.spec.name, self.clock() - 60.0)
            return max((w.drift_score for w in recent), default=0.0)

        return sorted(nodes, key=lambda n: (-drift_of(n), n))

    def plan(self) -> list[dict[str, float | int]]:
        """Return the ramp over today's eligible nodes: share and node count of every step."""
        schedule = ramp_schedule(self.spec.rollout, len(self.eligible_nodes()))
        return [{"share": share, "nodes": count} for share, count in schedule]

    # -- actions -------------------------------------------------------------------------

    def _record(
        self,
        action: AuditAction,
        version: str,
        details: dict[str, Any],
        *,
        actor: str | None = None,
    ) -> None:
        """Append the step to the audit log before it is carried out (raises if it cannot)."""
        if self.audit is not None:
            self.audit.record(
                action,
                model_subject(self.spec.name, version),
                {"pipeline": self.spec.name, "version": version} | details,
                actor=actor,
            )

    def _assign(self, node: str, version: ModelVersion) -> None:
        # The layout publish_artifact gave the version's manifest: the same function of size.
        chunk_size, chunks = chunk_layout(version.size_bytes, self.chunk_size)
        self.book.assign(node, self.spec.name, desired_model(version, chunk_size, chunks))

    def ensure_current_everywhere(self) -> list[str]:
        """Tell every eligible node that is not a running canary to serve the current version.

        Returns the nodes that were assigned: new nodes joining the fleet, and nodes whose
        assignment a crash left behind (a promotion or a rollback cut short).
        """
        current = self.registry.current(self.tenant, self.spec.name)
        if current is None:
            return []
        canaries = set(self.state.canary_nodes) if self.state.stage == "canary" else set()
        assigned = [
            node
            for node in self.eligible_nodes()
            if node not in canaries
            and self.book.serving_target(node, self.spec.name) != current.version
        ]
        if assigned:
            self._record(
                AuditAction.ROLLOUT,
                current.version,
                {
                    "event": "assign",
                    "nodes": assigned,
                    "reason": "the current version, to nodes that do not serve it yet",
                },
            )
        for node in assigned:
            self._assign(node, current)
        return assigned

    def _finish_interrupted_step(self) -> None:
        """Carry out the registry side of the stored state, in case a crash cut it short.

        The state is stored before its step runs, so after a restart the registry may lag
        behind it; each call here is a no-op when it does not.
        """
        state = self.state
        if state.candidate is None:
            return
        current = self.registry.current(self.tenant, self.spec.name)
        current_version = None if current is None else current.version
        if state.stage == "promoted" and current_version != state.candidate:
            self.registry.set_current(self.tenant, self.spec.name, state.candidate, state.reason)
            return
        wanted: ModelStatus
        if state.stage == "canary":
            wanted = "canary"
        elif state.stage == "rolled_back":
            wanted = "rolled_back"
        else:
            return
        candidate = self.registry.get(self.tenant, self.spec.name, state.candidate)
        if candidate.status != wanted:
            self.registry.set_status(self.tenant, self.spec.name, state.candidate, wanted)
        if state.stage == "canary":
            for node in state.canary_nodes:
                if self.book.serving_target(node, self.spec.name) != state.candidate:
                    self._assign(node, candidate)

    def begin(self, candidate: ModelVersion) -> RolloutState:
        """Start the rollout of ``candidate``: a canary, or a wait for a node that can take it.

        Only the pipeline's first model (``is_first_model``: a fact of the registry, never of
        the fleet view) is promoted at once. A newer candidate replaces one that is waiting.

        Raises:
            ContinuumError: the registry has no current version although one was promoted
                before (its record was lost): there is no baseline to canary against.
            AuditWriteError: the step could not be recorded, so it was not carried out.
        """
        now = self.clock()
        current = self.registry.current(self.tenant, self.spec.name)
        if current is None:
            if self.is_first_model(candidate):
                return self._promote(
                    candidate, now, "first model of the pipeline: no canary needed"
                )
            raise ContinuumError(
                f"pipeline {self.spec.name!r} of tenant {self.tenant!r} has no current model "
                f"version in the registry, yet versions were promoted or tried before: "
                f"{candidate.version} has no baseline to canary against; make a version "
                f"current with `continuum models promote VERSION --pipeline {self.spec.name}`"
            )
        state = self.state
        if state.stage == "waiting" and state.candidate == candidate.version:
            return state
        if state.stage == "waiting" and state.candidate is not None:
            self._supersede(state.candidate, candidate.version)
        pool = self.canary_pool()
        if not pool.ready:
            return self._wait(candidate, current, now, pool)
        return self._start_canary(candidate, current, now, list(pool.ready))

    def is_first_model(self, candidate: ModelVersion) -> bool:
        """Return whether ``candidate`` is its pipeline's first model, by the registry alone.

        It is when the pipeline has no current version and no other version was ever
        promoted or tried on nodes (all are "registered" or "rejected"): a pipeline whose
        current version was rolled back, or whose fleet looks empty, still has a model.
        """
        if self.registry.current(self.tenant, self.spec.name) is not None:
            return False
        return all(
            v.status in _NEVER_RAN
            for v in self.registry.list(self.tenant, self.spec.name)
            if v.version != candidate.version
        )

    def _supersede(self, waiting: str, newer: str) -> None:
        """Drop the waiting candidate for a newer one (it never ran on any node)."""
        reason = f"{newer} arrived while {waiting} waited for a canary node"
        self._record(AuditAction.ROLLOUT, waiting, {"event": "superseded", "by": newer})
        log.info("rollout of %s: %s replaces %s: %s", self.spec.name, newer, waiting, reason)
        self.state = replace(
            self.state, history=(*self.state.history, f"{waiting} superseded: {reason}")
        )

    def _wait(
        self, candidate: ModelVersion, current: ModelVersion, now: float, pool: CanaryPool
    ) -> RolloutState:
        """Hold ``candidate`` until a node can take its canary; the current version serves on."""
        reason = pool.wait_reason()
        self._record(
            AuditAction.ROLLOUT,
            candidate.version,
            {
                "event": "waiting",
                "reason": reason,
                "baseline": current.version,
                "sha256": candidate.sha256,
                "selector": dict(self.spec.edge.where.root),
                "matching_nodes": pool.matching,
                "stale_nodes": list(pool.stale),
            },
        )
        log.warning(
            "rollout of %s %s does not start: %s; %s keeps serving and the canary starts on "
            "the first eligible node",
            self.spec.name,
            candidate.version,
            reason,
            current.version,
        )
        self.state = RolloutState(
            pipeline=self.spec.name,
            stage="waiting",
            candidate=candidate.version,
            baseline=current.version,
            started_at=now,
            reason=reason,
            history=(*self.state.history, f"{candidate.version} waits: {reason}"),
        )
        return self.state

    def _end_wait(self) -> RolloutState:
        """Start the waiting candidate's canary if a node can take it now; else keep waiting.

        The reason follows the fleet (how many nodes match, which are stale) without a log
        line each tick: the wait was logged when it began and its end is logged once.
        """
        state = self.state
        assert state.candidate is not None
        current = self.registry.current(self.tenant, self.spec.name)
        if current is None:  # the registry lost it since: nothing to canary against
            return state
        pool = self.canary_pool()
        if not pool.ready:
            reason = pool.wait_reason()
            if reason != state.reason:
                self.state = replace(state, reason=reason)
            return self.state
        now = self.clock()
        candidate = self.registry.get(self.tenant, self.spec.name, state.candidate)
        log.info(
            "rollout of %s %s: %s can take the canary after %.0f s of waiting",
            self.spec.name,
            candidate.version,
            _names(pool.ready),
            now - state.started_at,
        )
        return self._start_canary(
            candidate, current, now, list(pool.ready), waited_s=now - state.started_at
        )

    def _start_canary(
        self,
        candidate: ModelVersion,
        current: ModelVersion,
        now: float,
        nodes: list[str],
        *,
        waited_s: float | None = None,
    ) -> RolloutState:
        """Put ``candidate`` on the first step of its ramp over ``nodes``, most drifted first."""
        plan = ramp_schedule(self.spec.rollout, len(nodes))
        share, count = plan[0]
        ranked = self._ranked(nodes)
        canaries = tuple(ranked[:count])
        details: dict[str, Any] = {
            "event": "canary",
            "nodes": list(canaries),
            "eligible_nodes": len(nodes),
            "baseline": current.version,
            "sha256": candidate.sha256,
            "canary_fraction": self.spec.rollout.canary,
            "ramp": [{"share": s, "nodes": c} for s, c in plan],
        }
        reason = f"canary on {', '.join(canaries)}"
        if waited_s is not None:
            details["waited_s"] = round(waited_s, 3)
            reason += f" after waiting {waited_s:.0f} s for an eligible node"
        self._record(AuditAction.ROLLOUT, candidate.version, details)
        self.state = RolloutState(
            pipeline=self.spec.name,
            stage="canary",
            candidate=candidate.version,
            baseline=current.version,
            canary_nodes=canaries,
            started_at=now,
            reason=reason,
            history=(*self.state.history, f"canary {candidate.version} on {', '.join(canaries)}"),
            steps=(RampStep(0, share, canaries, now, reason),),
            order=tuple(ranked),
        )
        self.registry.set_status(self.tenant, self.spec.name, candidate.version, "canary")
        for node in canaries:
            self._assign(node, candidate)
        return self.state

    def tick(self) -> RolloutState:
        """Advance a running rollout by its current step: next step, promotion, rollback or wait.

        A waiting rollout starts its canary as soon as a node can take it.
        """
        self._finish_interrupted_step()
        if self.state.stage == "waiting":
            self._end_wait()
            self.ensure_current_everywhere()
            return self.state
        self.ensure_current_everywhere()
        state = self.state
        if (
            state.stage != "canary"
            or state.candidate is None
            or state.baseline is None
            or not state.steps
        ):
            return state
        now = self.clock()
        rollout = self.spec.rollout
        step = state.steps[-1]
        label = "canary" if step.index == 0 else f"step {step.index} ({step.share:.0%})"
        candidate = self.registry.get(self.tenant, self.spec.name, state.candidate)

        for node in step.nodes:
            reported = self.fleet.reported_model(node, self.spec.name)
            if (
                reported is not None
                and reported.version == state.candidate
                and reported.state in ("rejected", "failed")
            ):
                return self._rollback(
                    candidate,
                    now,
                    f"{node} {reported.state} the candidate: {reported.error or 'no reason given'}",
                )

        earlier = set(state.steps[-2].nodes) if len(state.steps) > 1 else set()
        added = [n for n in step.nodes if n not in earlier]
        windows: list[Telemetry] = []
        first_served: float | None = None
        for node in step.nodes:
            served = self.fleet.telemetry(
                node, self.spec.name, step.started_at, model_version=state.candidate
            )
            if served and node in added:
                start = min(w.ts for w in served)
                first_served = start if first_served is None else max(first_served, start)
            windows.extend(served)
        if first_served is None:
            if now - step.started_at > self.serve_timeout_s:
                return self._rollback(
                    candidate,
                    now,
                    f"{label}: no node of it served {state.candidate} within "
                    f"{self.serve_timeout_s:g} s",
                )
            self.state = replace(
                state,
                verdict=f"waiting for {_names(added)} to serve {state.candidate}",
                decide_at=None,
            )
            return self.state

        figures = self._figures(state, state.candidate, state.baseline, windows)
        hold = rollout.promote_after_s if step.index == 0 else rollout.step_after_s
        self.state = state = replace(
            state,
            canary_accuracy=figures.candidate_accuracy,
            baseline_accuracy=figures.baseline_accuracy,
            canary_latency_p95_ms=figures.candidate_p95_ms,
            baseline_latency_p95_ms=figures.baseline_p95_ms,
            decide_at=first_served + hold,
        )
        if now - first_served < hold:
            self.state = replace(state, verdict=f"holding {hold:g} s without regression")
            return self.state
        decision, text = judge(rollout.rules, figures)
        if decision == "roll back":
            return self._rollback(candidate, now, f"{label}: {text}")
        if decision == "wait":
            self.state = replace(state, verdict=text)
            return self.state
        return self._advance(
            candidate, now, f"{label} held for {now - first_served:.0f} s ({text})"
        )

    def _figures(
        self, state: RolloutState, candidate: str, baseline: str, windows: list[Telemetry]
    ) -> StepFigures:
        """Measure a step: the candidate's windows against the current version's.

        Accuracy is compared with the same nodes on the current version before each switched
        (the canaries are the most drifted nodes; the others would flatter the baseline);
        latency with the nodes still on the current version over the step, or, when they
        report no latency, with the same nodes before they switched.
        """
        step = state.steps[-1]
        lookback = max(self.spec.rollout.promote_after_s, 30.0)
        switched: dict[str, float] = {}
        for earlier in state.steps:
            for node in earlier.nodes:
                switched.setdefault(node, earlier.started_at)
        before: list[Telemetry] = []
        for node in step.nodes:
            before.extend(
                self.fleet.telemetry(
                    node,
                    self.spec.name,
                    switched.get(node, step.started_at) - lookback,
                    model_version=baseline,
                )
            )
        alongside: list[Telemetry] = []
        if self.spec.rollout.rollback_on_latency_rise is not None:
            running = set(step.nodes)
            others = [n for n in self.eligible_nodes() if n not in running]
        else:
            others = []  # no latency rule: the fleet need not be read for it
        for node in others[:MAX_LATENCY_BASELINE_NODES]:
            alongside.extend(
                self.fleet.telemetry(node, self.spec.name, step.started_at, model_version=baseline)
            )
        candidate_acc, labelled = _accuracy(windows, candidate)
        baseline_acc, _ = _accuracy(before, baseline)
        candidate_p95, latency_windows = _p95(windows)
        baseline_p95, _ = _p95(alongside)
        reporting = sorted({w.node for w in alongside if w.latency_p95_ms is not None})
        source = f"{baseline} on {_names(reporting)}"
        if baseline_p95 is None:
            baseline_p95, _ = _p95(before)
            source = f"{baseline} on the same nodes before they switched"
        return StepFigures(
            labelled=labelled,
            candidate_accuracy=candidate_acc,
            baseline_accuracy=baseline_acc,
            latency_windows=latency_windows,
            candidate_p95_ms=candidate_p95,
            baseline_p95_ms=baseline_p95,
            latency_baseline=source,
        )

    def _advance(self, candidate: ModelVersion, now: float, reason: str) -> RolloutState:
        """Go to the ramp's next step, or promote when that step would reach every node."""
        state = self.state
        step = state.steps[-1]
        nodes = self.eligible_nodes()
        following = [
            (share, count)
            for share, count in ramp_schedule(self.spec.rollout, len(nodes))
            if share > step.share and count > len(step.nodes)
        ]
        if not following or following[0][1] >= len(nodes):
            return self._promote(candidate, now, reason)
        share, count = following[0]
        eligible = set(nodes)
        order = [n for n in state.order if n in eligible]
        order += sorted(eligible.difference(state.order))  # joined since the canary
        chosen = list(step.nodes)
        for node in order:
            if len(chosen) >= count:
                break
            if node not in chosen:
                chosen.append(node)
        added = chosen[len(step.nodes) :]
        index = step.index + 1
        self._record(
            AuditAction.ROLLOUT,
            candidate.version,
            {
                "event": "ramp",
                "step": index,
                "share": share,
                "nodes": chosen,
                "added": added,
                "eligible_nodes": len(nodes),
                "reason": reason,
                "baseline": state.baseline,
                "canary_accuracy": state.canary_accuracy,
                "baseline_accuracy": state.baseline_accuracy,
                "canary_latency_p95_ms": state.canary_latency_p95_ms,
                "baseline_latency_p95_ms": state.baseline_latency_p95_ms,
            },
        )
        self.state = replace(
            state,
            canary_nodes=tuple(chosen),
            reason=reason,
            verdict="",
            decide_at=None,
            steps=(*state.steps, RampStep(index, share, tuple(chosen), now, reason)),
            history=(
                *state.history,
                f"step {index} {candidate.version} at {share:.0%} (+{', '.join(added)}): {reason}",
            ),
        )
        for node in added:
            self._assign(node, candidate)
        return self.state

    def rollback_to(
        self,
        version: ModelVersion,
        reason: str,
        *,
        actor: str | None = None,
        action: Literal["promote", "rollback"] = "promote",
    ) -> RolloutState:
        """Make ``version`` current everywhere at once, ending any canary (an operator's call).

        ``actor`` is who asked (``user@host``); ``action`` is what they called it, recorded
        as a rollout or a rollback.
        """
        return self._promote(
            version,
            self.clock(),
            f"set by operator: {reason}",
            actor=actor,
            audit_action=AuditAction.ROLLBACK if action == "rollback" else AuditAction.ROLLOUT,
            event=f"manual {action}",
        )

    def _promote(
        self,
        version: ModelVersion,
        now: float,
        reason: str,
        *,
        actor: str | None = None,
        audit_action: AuditAction = AuditAction.ROLLOUT,
        event: str = "promote",
    ) -> RolloutState:
        previous = self.registry.current(self.tenant, self.spec.name)
        nodes = self.eligible_nodes()
        self._record(
            audit_action,
            version.version,
            {
                "event": event,
                "reason": reason,
                "previous": None if previous is None else previous.version,
                "sha256": version.sha256,
                "nodes": nodes,
                "canary_accuracy": self.state.canary_accuracy,
                "baseline_accuracy": self.state.baseline_accuracy,
                "canary_latency_p95_ms": self.state.canary_latency_p95_ms,
                "baseline_latency_p95_ms": self.state.baseline_latency_p95_ms,
            },
            actor=actor,
        )
        state = self.state
        ramping = state.stage == "canary" and state.candidate == version.version
        final = RampStep(len(state.steps) if ramping else 0, 1.0, tuple(nodes), now, reason)
        history = state.history
        if state.stage == "waiting" and state.candidate != version.version:
            history = (
                *history,
                f"{state.candidate} no longer waits: {version.version} was promoted",
            )
        self.state = replace(
            state,
            stage="promoted",
            candidate=version.version,
            decided_at=now,
            reason=reason,
            verdict="",
            decide_at=None,
            steps=(*state.steps, final) if ramping else (final,),
            history=(*history, f"promoted {version.version}: {reason}"),
        )
        self.registry.set_current(self.tenant, self.spec.name, version.version, reason)
        for node in nodes:
            self._assign(node, version)
        return self.state

    def _rollback(self, candidate: ModelVersion, now: float, reason: str) -> RolloutState:
        canaries = self.state.canary_nodes
        current = self.registry.current(self.tenant, self.spec.name)
        self._record(
            AuditAction.ROLLBACK,
            candidate.version,
            {
                "event": "automatic rollback",
                "reason": reason,
                "canary_nodes": list(canaries),
                "step": self.state.steps[-1].index if self.state.steps else 0,
                "restored": None if current is None else current.version,
                "canary_accuracy": self.state.canary_accuracy,
                "baseline_accuracy": self.state.baseline_accuracy,
                "canary_latency_p95_ms": self.state.canary_latency_p95_ms,
                "baseline_latency_p95_ms": self.state.baseline_latency_p95_ms,
            },
        )
        self.state = replace(
            self.state,
            stage="rolled_back",
            decided_at=now,
            reason=reason,
            verdict="",
            decide_at=None,
            history=(*self.state.history, f"rolled back {candidate.version}: {reason}"),
        )
        self.registry.set_status(self.tenant, self.spec.name, candidate.version, "rolled_back")
        if current is not None:
            for node in canaries:
                self._assign(node, current)
        return self.state


def _names(nodes: Sequence[str], most: int = 3) -> str:
    """Return up to ``most`` node names, and how many more: ``cam-1, cam-2 and 5 more``."""
    shown = ", ".join(nodes[:most])
    return shown if len(nodes) <= most else f"{shown} and {len(nodes) - most} more"
