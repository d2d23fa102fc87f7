"""Rollout of a gated model: desired state per node, canary first, then promote or roll back.

The controller is protocol logic only: it reads the fleet (who runs the pipeline, what
they report, their telemetry) and writes desired state through ``DesiredStateBook``; a
service calls ``tick()`` periodically. Every decision is returned as a ``RolloutState``
with its reason so the CLI, the demo and the audit log can show it.

The book's SQLite file also keeps each pipeline's rollout state (written before the step it
announces is carried out), so a controller built again on the same file resumes a canary in
progress and ``tick()`` finishes a step a crash interrupted.

Each step (canary start, promotion, rollback, an operator's promote or rollback, the current
version sent to nodes that joined) is appended to the tenant's audit log before its state is
stored and its desired state published: if the record cannot be written (``AuditWriteError``)
nothing is published and the step is tried again at the next tick, or the operator's command
fails.  Nodes the fleet refused (over the tenant's ``edge_nodes`` quota) get no desired state.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cloud_head.audit import AuditAction, AuditTrail, model_subject
from continuum.wire import topics
from continuum.wire.messages import DesiredModel, DesiredState, Telemetry

if TYPE_CHECKING:
    from cloud_head.fleet import FleetRegistry
    from cloud_head.registry import ModelRegistry, ModelStatus, ModelVersion
    from continuum.spec import PipelineSpec

Stage = Literal["idle", "canary", "promoted", "rolled_back"]

#: A canary decision needs at least this many labelled frames on the candidate.
MIN_LABELLED_FOR_DECISION = 40

#: The ``DesiredStateBook`` record kind that holds a pipeline's ``RolloutState``.
ROLLOUT_RECORD = "rollout"


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
class RolloutState:
    """Where the rollout of one pipeline stands, and why."""

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
        return cls(**values)


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


class RolloutController:
    """Canary a candidate on a fraction of the pipeline's nodes, then promote or roll back."""

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
        self._chunks: dict[str, int] = {}
        saved = book.load_record(spec.name, ROLLOUT_RECORD)
        self._state = (
            RolloutState(pipeline=spec.name) if saved is None else RolloutState.from_record(saved)
        )

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

    def _choose_canaries(self, nodes: list[str]) -> tuple[str, ...]:
        """Pick the canaries: the nodes whose recent drift is highest, where a fix matters most."""
        count = max(1, math.ceil(self.spec.rollout.canary * len(nodes)))

        def drift_of(node: str) -> float:
            recent = self.fleet.telemetry(node, self.spec.name, self.clock() - 60.0)
            return max((w.drift_score for w in recent), default=0.0)

        ranked = sorted(nodes, key=lambda n: (-drift_of(n), n))
        return tuple(ranked[:count])

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

    def remember_chunks(self, version: str, chunks: int) -> None:
        """Record how many chunks a published version has (needed for desired state)."""
        self._chunks[version] = chunks

    def _assign(self, node: str, version: ModelVersion) -> None:
        chunks = self._chunks.get(version.version)
        if chunks is None:
            chunks = max(1, math.ceil(version.size_bytes / self.chunk_size))
        self.book.assign(node, self.spec.name, desired_model(version, self.chunk_size, chunks))

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
        """Start a canary of ``candidate``; with no current version it is promoted at once."""
        now = self.clock()
        current = self.registry.current(self.tenant, self.spec.name)
        nodes = self.eligible_nodes()
        if current is None or not nodes:
            return self._promote(candidate, now, "first model of the pipeline: no canary needed")
        canaries = self._choose_canaries(nodes)
        self._record(
            AuditAction.ROLLOUT,
            candidate.version,
            {
                "event": "canary",
                "nodes": list(canaries),
                "eligible_nodes": len(nodes),
                "baseline": current.version,
                "sha256": candidate.sha256,
                "canary_fraction": self.spec.rollout.canary,
            },
        )
        self.state = RolloutState(
            pipeline=self.spec.name,
            stage="canary",
            candidate=candidate.version,
            baseline=current.version,
            canary_nodes=canaries,
            started_at=now,
            reason=f"canary on {', '.join(canaries)}",
            history=(*self.state.history, f"canary {candidate.version} on {', '.join(canaries)}"),
        )
        self.registry.set_status(self.tenant, self.spec.name, candidate.version, "canary")
        for node in canaries:
            self._assign(node, candidate)
        return self.state

    def tick(self) -> RolloutState:
        """Advance a running canary: promote, roll back or keep waiting."""
        self._finish_interrupted_step()
        self.ensure_current_everywhere()
        state = self.state
        if state.stage != "canary" or state.candidate is None or state.baseline is None:
            return state
        now = self.clock()
        rollout = self.spec.rollout
        candidate = self.registry.get(self.tenant, self.spec.name, state.candidate)

        for node in state.canary_nodes:
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

        windows: list[Telemetry] = []
        before: list[Telemetry] = []
        first_served: float | None = None
        for node in state.canary_nodes:
            recent = self.fleet.telemetry(node, self.spec.name, state.started_at)
            served = [w for w in recent if w.model_version == state.candidate]
            if served:
                start = min(w.ts for w in served)
                first_served = start if first_served is None else max(first_served, start)
            windows.extend(served)
            before.extend(
                self.fleet.telemetry(
                    node, self.spec.name, state.started_at - max(rollout.promote_after_s, 30.0)
                )
            )
        if first_served is None:
            if now - state.started_at > self.serve_timeout_s:
                return self._rollback(
                    candidate,
                    now,
                    f"no canary served {state.candidate} within {self.serve_timeout_s:g} s",
                )
            return state

        canary_acc, labelled = _accuracy(windows, state.candidate)
        baseline_acc, _ = _accuracy(
            [w for w in before if w.ts <= state.started_at or w.model_version == state.baseline],
            state.baseline,
        )
        self.state = state = replace(
            state, canary_accuracy=canary_acc, baseline_accuracy=baseline_acc
        )
        if now - first_served < rollout.promote_after_s or labelled < MIN_LABELLED_FOR_DECISION:
            return state
        if (
            canary_acc is not None
            and baseline_acc is not None
            and canary_acc < baseline_acc - rollout.rollback_on_drop
        ):
            return self._rollback(
                candidate,
                now,
                f"canary accuracy {canary_acc:.3f} fell more than {rollout.rollback_on_drop:g} "
                f"below the baseline's {baseline_acc:.3f}",
            )
        held = "n/a" if canary_acc is None else f"{canary_acc:.3f}"
        base = "n/a" if baseline_acc is None else f"{baseline_acc:.3f}"
        return self._promote(
            candidate,
            now,
            f"canary held for {now - first_served:.0f} s "
            f"(accuracy {held} vs baseline {base} over {labelled} labelled frames)",
        )

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
            },
            actor=actor,
        )
        self.state = replace(
            self.state,
            stage="promoted",
            candidate=version.version,
            decided_at=now,
            reason=reason,
            history=(*self.state.history, f"promoted {version.version}: {reason}"),
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
                "restored": None if current is None else current.version,
                "canary_accuracy": self.state.canary_accuracy,
                "baseline_accuracy": self.state.baseline_accuracy,
            },
        )
        self.state = replace(
            self.state,
            stage="rolled_back",
            decided_at=now,
            reason=reason,
            history=(*self.state.history, f"rolled back {candidate.version}: {reason}"),
        )
        self.registry.set_status(self.tenant, self.spec.name, candidate.version, "rolled_back")
        if current is not None:
            for node in canaries:
                self._assign(node, current)
        return self.state
