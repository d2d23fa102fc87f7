"""Ingest's second residency check (defence in depth, DESIGN.md §6) and what it remembers.

The edge applies the same uplink plan; this catches a forged or misconfigured sender.  A
batch is refused when its node is not known (held, ``unknown_node``, after a grace), may
not have processed its class, or sends to a store that may not hold it (``policy``), or
when it carries a field the plan drops, or raw where it hashes (``policy_field``).

Each check reads the fleet registry or evaluates the policy, so the answers are kept in
``LruCache`` maps bounded in size (and, for a node's labels, in age): forged node names
cannot grow them, and a full map forgets its least recently used entry, not everything.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from enum import Enum
from typing import Final, Generic, Literal, TypeVar

from cloud_head.fleet import FleetRegistry
from cloud_head.ingest._outcome import DeferredError, RejectedError
from continuum.errors import PlacementError, SpecError
from continuum.labels import SITE
from continuum.residency import (
    ResidencyPolicy,
    UplinkPlan,
    ingest_allows,
    node_may_process,
    uplink_plan,
)
from continuum.spec import DataClass, PipelineSpec
from continuum.wire import codec

#: What ``continuum.residency.hash_field`` makes: the only form a hashed field may arrive in.
_HASHED_VALUE: Final = re.compile(r"hmac-sha256:[0-9a-f]{64}")
#: How long a node's labels from the fleet registry are trusted before they are read again.
_LABELS_TTL_S: Final = 5.0
#: How long an unknown node stays unknown before the registry is asked again (a flood of
#: batches from an unknown node must not read the registry once per batch).
_UNKNOWN_TTL_S: Final = 0.5
#: How long batches of a node the fleet registry does not know yet are held back, not
#: rejected: an agent's first batches can overtake its status on the way to the registry.
NODE_GRACE_S: Final = 15.0
#: At most this many unknown nodes are waited for at once; batches of more are held at once
#: (acknowledged without a receipt: the node sends them again), so made-up node names
#: cannot make ingest hold an unbounded backlog.
_MAX_PENDING_NODES: Final = 64
#: Nodes whose labels are remembered (forged node names must not grow the map forever).
_MAX_LABELLED_NODES: Final = 100_000
#: Decisions remembered per kind (a node's right to process a class, a plan per labels).
_MAX_DECISIONS: Final = 10_000

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Missing(Enum):
    """What ``LruCache.get`` returns for a key it does not hold (a value may be None)."""

    MISSING = "missing"


MISSING: Final = Missing.MISSING


class LruCache(Generic[K, V]):
    """A map of at most ``max_entries``, each entry optionally expiring ``ttl_s`` after it
    was put; when full, putting a new key forgets the least recently used one.

    Not thread-safe: ingest checks one group at a time.
    """

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError(f"an LruCache holds at least one entry, not {max_entries}")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()  # value, expires at

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | Literal[Missing.MISSING]:
        """Return the value of ``key``, or ``MISSING`` if it was never put, expired or was
        forgotten to make room."""
        entry = self._entries.get(key)
        if entry is None:
            return MISSING
        value, expires_at = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return MISSING
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, *, ttl_s: float | None = None) -> None:
        """Remember ``value`` for ``key`` (for ``ttl_s`` seconds; None: until forgotten)."""
        expires_at = float("inf") if ttl_s is None else self._clock() + ttl_s
        self._entries[key] = (value, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


_Labels = tuple[tuple[str, str], ...]


class ResidencyCheck:
    """Refuse a sample batch the residency policy forbids at this store."""

    def __init__(
        self,
        policy: ResidencyPolicy,
        *,
        tenant: str,
        store_labels: Mapping[str, str],
        fleet: FleetRegistry,
        node_grace_s: float = NODE_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Check against ``policy`` for ``tenant`` at the store labelled ``store_labels``,
        where ``fleet`` knows each node's labels; a node not known yet is deferred for
        ``node_grace_s`` before its batches are held."""
        self._policy = policy
        self._tenant = tenant
        self._store_labels = dict(store_labels)
        self._fleet = fleet
        self._node_grace_s = node_grace_s
        self._clock = clock
        self._labels: LruCache[str, dict[str, str] | None] = LruCache(
            _MAX_LABELLED_NODES, clock=clock
        )
        self._unknown_since: dict[str, float] = {}  # node -> when ingest first missed it
        # (id(spec), labels) -> (spec, plan): holding the spec keeps its id from being reused
        self._plans: LruCache[tuple[int, _Labels], tuple[PipelineSpec, UplinkPlan]] = LruCache(
            _MAX_DECISIONS
        )
        self._processing: LruCache[tuple[str, str, _Labels], PlacementError | None] = LruCache(
            _MAX_DECISIONS
        )

    def check(self, spec: PipelineSpec, batch: codec.SampleColumns) -> None:
        """Return if the policy lets ``batch`` of ``spec`` be stored here; raise why not.

        Raises:
            RejectedError: ``policy``, ``policy_field`` (for good), or ``unknown_node``,
                ``fleet_unavailable`` (for now).
            DeferredError: the node is not known yet, within its grace.
        """
        labels = self.node_labels(batch.node)
        if labels is None:
            self._defer_unknown(batch.node)
            raise RejectedError(
                "unknown_node",
                f"node {batch.node!r} is not in the fleet registry, so where its data comes "
                "from is not known (the node publishes its labels in its status when it "
                "connects; check it is enrolled and online)",
                rule="ingest",
            )
        data_class = max(batch.data_class, spec.data_class, key=lambda c: c.rank)
        decision = ingest_allows(
            self._policy, data_class, labels, self._store_labels, tenant=self._tenant
        )
        if not decision.allowed:
            raise RejectedError(
                "policy", f"node {batch.node!r}: {decision.reason}", rule=decision.rule
            )
        refused = self._processing_refusal(data_class, batch.node, labels)
        if refused is not None:
            raise RejectedError("policy", str(refused), rule=refused.rule or "ingest")
        plan = self._plan(spec, labels)
        if plan.keep_at_edge:
            refusal = next((d for d in plan.decisions if not d.allowed), None)
            why = refusal.reason if refusal is not None else plan.describe()
            raise RejectedError(
                "policy",
                f"samples of {spec.name!r} from node {batch.node!r} must stay on the edge: {why}",
                rule=refusal.rule if refusal is not None else "uplink",
            )
        if (plan.dropped or plan.hashed) and batch.fields is not None:
            _check_fields(spec, batch, plan)

    def _defer_unknown(self, node: str) -> None:
        """Raise ``DeferredError`` while ``node`` is within its grace; return once it is over.

        The grace starts at the node's first batch and is not renewed: the batches of a
        node that never sends its status are held (``unknown_node``, no receipt) after
        ``node_grace_s`` whatever it keeps sending, and stored when it is known again.
        """
        now = self._clock()
        since = self._unknown_since.get(node)
        if since is None:
            if len(self._unknown_since) >= _MAX_PENDING_NODES:
                horizon = 2 * self._node_grace_s
                expired = [n for n, t in self._unknown_since.items() if now - t > horizon]
                for name in expired:
                    del self._unknown_since[name]
            if len(self._unknown_since) >= _MAX_PENDING_NODES:
                return
            since = self._unknown_since[node] = now
        if now - since < self._node_grace_s:
            raise DeferredError(
                "unknown_node", f"node {node!r} has no status in the fleet registry yet"
            )

    def node_labels(self, node: str) -> dict[str, str] | None:
        """Return ``node``'s labels from the fleet registry, or None if it never sent them."""
        cached = self._labels.get(node)
        if cached is not MISSING:
            return cached
        try:
            info = self._fleet.get(node)
        except Exception as exc:  # where the node is cannot be known now: hold, not refuse
            raise RejectedError(
                "fleet_unavailable", f"the fleet registry cannot be read: {exc!r}"
            ) from exc
        labels = info.labels if info is not None and info.status is not None else None
        if labels is not None:
            self._unknown_since.pop(node, None)
        ttl_s = _LABELS_TTL_S if labels is not None else _UNKNOWN_TTL_S
        self._labels.put(node, labels, ttl_s=ttl_s)
        return labels

    def _processing_refusal(
        self, data_class: DataClass, node: str, labels: Mapping[str, str]
    ) -> PlacementError | None:
        """Return why ``node`` may not have processed ``data_class`` data, or None.

        The edge stage ran on the sending node: a node outside the class's processing rule
        (deploy would have refused to place the stage there) is a breach, not a sender.
        """
        key = (data_class.value, node, tuple(sorted(labels.items())))
        cached = self._processing.get(key)
        if cached is not MISSING:
            return cached
        refusal: PlacementError | None = None
        try:
            node_may_process(
                self._policy,
                data_class,
                node,
                labels,
                origin_site=labels.get(SITE),
                tenant=self._tenant,
            )
        except PlacementError as exc:
            refusal = exc
        except SpecError as exc:
            refusal = PlacementError(
                f"node {node}'s labels cannot be checked: {exc}", rule="ingest"
            )
        self._processing.put(key, refusal)
        return refusal

    def _plan(self, spec: PipelineSpec, labels: Mapping[str, str]) -> UplinkPlan:
        """Return the uplink plan of ``spec`` for a node labelled ``labels``."""
        key = (id(spec), tuple(sorted(labels.items())))
        cached = self._plans.get(key)
        if cached is not MISSING and cached[0] is spec:
            return cached[1]
        plan = uplink_plan(self._policy, spec, labels, self._store_labels)
        self._plans.put(key, (spec, plan))
        return plan


def _check_fields(spec: PipelineSpec, batch: codec.SampleColumns, plan: UplinkPlan) -> None:
    """Raise ``RejectedError`` (policy_field) for the first field the edge should have
    dropped, or sent raw where the plan hashes it; the refusal names the field's rule."""
    assert batch.fields is not None
    classes = spec.edge.input.fields
    for row, fields in enumerate(batch.fields):
        for name, value in fields.items():
            if name in plan.dropped:
                problem = "which the store may not hold; the edge must drop it"
            elif name in plan.hashed and not (
                isinstance(value, str) and _HASHED_VALUE.fullmatch(value)
            ):
                problem = "raw; the policy says it must arrive hashed (hash_field)"
            else:
                continue
            decided = plan.field_decision(name)
            rule = decided.rule if decided is not None else "uplink"
            raise RejectedError(
                "policy_field",
                f"sample {codec.sample_id(batch.node, int(batch.seq[row]))} carries field "
                f"{name!r} ({classes[name].value}) {problem} (rule {rule})",
                rule=rule,
            )
