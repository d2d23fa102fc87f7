"""Ingest: uplinked samples and feedback from MQTT into the sample and label stores.

``IngestService`` is the protocol logic: it checks each message against the tenant, the known
pipelines and their input schema, drops samples it has already stored (sample ids kept in
SQLite), writes the store durably and records labels; it counts every refusal by reason and
never raises. The seen-id database also lists the store files whose ids it holds; a file
written before a crash could record its ids is found and adopted before that pipeline's
next write, so a redelivered message is not stored twice. ``IngestWorker`` is the thin MQTT
runner around it: a persistent MQTT 5 session
on a shared subscription, with each message acknowledged only after its durable write.

Given a residency policy, ingest enforces it again (defence in depth, DESIGN.md §6): a batch
from a node the fleet registry does not know (``unknown_node``), or whose class the store may
not hold (``policy``), is refused, as is a batch carrying a field the edge should have
dropped or hashed (``policy_field``).  Final refusals and a summary of what each flush
stored go to the tenant's audit log; the ``samples_per_day`` quota holds back samples beyond
it (``quota``).

Final and temporary refusals.  The edge outbox keeps each sample until a receipt
(``ctm/{tenant}/nodes/{node}/stored``) names it, and sends it again when none came within
its ``resend_unconfirmed_s``; so a receipt is what ends a sample at the edge, and ingest
sends one only for what is done with for good:

- *stored* (or already stored): the receipt's ``seqs``.
- *refused for good* (``FINAL_REASONS``, outcome "rejected"): a resend would be refused the
  same way, whatever changes in the fleet, the quota or the store.  The batch is malformed
  (it does not decode, or names another node, pipeline or tenant than its topic), off the
  pipeline's declared schema (``schema_mismatch``) or class (``data_class_mismatch``), empty
  or with an impossible seq, or forbidden by the residency policy (``policy``: the node may
  not process, or the store may not hold, its class; ``policy_field``: it carries a field
  the edge must drop or hash).  A batch that decoded on its own node's topic gets a receipt
  naming its seqs under ``refused`` with the reason: the node removes them from its outbox,
  counts them (``continuum_edge_samples_refused_total``) and records their ids; ingest counts
  them (``refused_samples``) and writes every such refusal with the sample ids
  (``node:first-last``) to the audit log.  A batch that did not decode cannot be named and
  gets no receipt (the node sends it again until its outbox TTL).
- *refused for now* (``TEMPORARY_REASONS``, outcome "held"): it may pass later.  The node is
  not in the fleet registry (not yet, or forgotten: ``unknown_node``) or the registry cannot
  be read (``fleet_unavailable``); the pipeline is not deployed (``unknown_pipeline``: a
  cloud head starting up); the day's ``samples_per_day`` is spent (``quota``: tomorrow it
  fits); the store cannot take the batch (``unstorable``) or ingest's checks failed
  (``internal_error``): a fix can make either pass.  The message is acknowledged to the
  broker (a redelivery loop would only burn the broker and ingest) but gets no receipt, so
  the node keeps the samples and sends them again, bounded by its outbox bytes and TTL.
  Held batches are counted by reason and logged once per reason until that reason's
  batches are stored again.  A batch of a node not known yet is first *deferred* (parked
  unacknowledged in the broker session) for ``node_grace_s``, since an agent's first
  batches can overtake its status; past the grace, or past ``_MAX_PENDING_NODES`` unknown
  nodes or ``_MAX_PARKED`` parked messages, it is held, never refused for good.
- a write that *failed* (the store or the seen index unavailable) is not acknowledged at
  all; the worker retries the group with backoff and the broker redelivers after a restart.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import numpy.typing as npt

from cloud_head._ingest_refusals import (
    FINAL_REASONS,
    POLICY_REASONS,
    TEMPORARY_REASONS,
    HeldLog,
    PendingRefusal,
    is_final,
)
from cloud_head._mqtt import BrokerConnection, RejectLog, reason_code_failed
from cloud_head.audit import AuditAction, AuditLog
from cloud_head.fleet import FleetRegistry
from cloud_head.labelling import LabelStore
from cloud_head.seen import MAX_SEQ, NodeKey, SeenIndex, seq_runs
from cloud_head.store import CompactionResult, SampleStore
from cloud_head.tenants import QuotaExceededError, Quotas
from continuum.errors import (
    ConfigError,
    InputMismatchError,
    PlacementError,
    ProtocolError,
    SpecError,
)
from continuum.labels import SITE
from continuum.residency import (
    ResidencyPolicy,
    UplinkPlan,
    ingest_allows,
    node_may_process,
    uplink_plan,
)
from continuum.spec import DataClass, PipelineSpec
from continuum.wire import codec, topics
from continuum.wire.messages import (
    MAX_RECEIPT_RANGES,
    MAX_RECEIPT_REASONS,
    RefusedSeqs,
    StoredReceipt,
    merge_seq_ranges,
)
from continuum.wire.mqtt import BrokerSettings, connect, make_client

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

__all__ = [
    "FINAL_REASONS",
    "TEMPORARY_REASONS",
    "IngestService",
    "IngestWorker",
    "Outcome",
    "OutcomeKind",
    "is_final",
]

_log = logging.getLogger(__name__)

OutcomeKind = Literal["stored", "labelled", "rejected", "held", "failed", "deferred"]

_SEEN_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    ingested_at_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, pipeline, sample_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stored_files (
    path TEXT PRIMARY KEY
) WITHOUT ROWID;
"""

#: Errors of a write that say the data cannot be stored (a resend would fail the same way),
#: as opposed to the store being unavailable (OSError and the rest: retried).
_DATA_ERRORS: Final = (ValueError, TypeError, OverflowError)
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
_AUDIT_ACTOR: Final = "service:ingest"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ingest did with one message.

    ``kind`` is "stored" (a sample batch; ``stored`` new samples, ``duplicates`` already
    there, ``over_quota`` held back by the quota, to come again), "labelled" (a feedback
    batch; ``labels`` recorded), "rejected" (refused for good, counted under ``reason``, one
    of ``FINAL_REASONS``; acknowledge it, a resend cannot fix it), "held" (refused for now,
    under a reason of ``TEMPORARY_REASONS``; acknowledge it but send no receipt, so the node
    keeps the samples and sends them again), "failed" (the durable write failed; do not
    acknowledge, retry) or "deferred" (it cannot be judged yet — its node's status has not
    reached the fleet registry; hold it unacknowledged and offer it again).
    """

    kind: OutcomeKind
    stored: int = 0
    duplicates: int = 0
    labels: int = 0
    reason: str = ""
    detail: str = ""
    over_quota: int = 0
    #: For a batch that is done with (stored, duplicate, labelled or refused for good): its
    #: node and the inclusive ranges of its seqs, for the receipt the node's outbox awaits,
    #: in ``seq_ranges`` for a sample batch (stored, or refused under ``reason`` when
    #: "rejected"; never the samples held back by the quota) and in ``label_ranges`` for a
    #: feedback batch (the labels of those samples); not part of what the outcome is: left
    #: out of equality.
    node: str = dataclasses.field(default="", compare=False)
    seq_ranges: tuple[tuple[int, int], ...] = dataclasses.field(default=(), compare=False)
    label_ranges: tuple[tuple[int, int], ...] = dataclasses.field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.kind == "rejected" and not is_final(self.reason):
            raise ValueError(
                f"a refusal for {self.reason!r} may pass later: its outcome is 'held', not "
                "'rejected' (see FINAL_REASONS)"
            )

    @property
    def ack(self) -> bool:
        """Whether the message may be acknowledged to the broker."""
        return self.kind not in ("failed", "deferred")


@dataclass(slots=True)
class _Accepted:
    """A message that passed every check, waiting for the durable write."""

    index: int
    samples: codec.SampleColumns | None = None
    feedback: codec.FeedbackBatch | None = None


@dataclass(frozen=True, slots=True)
class _Decoded:
    """A batch that decoded on its own node's topic: what its receipt will name, whatever
    becomes of it (``labels``: a feedback batch, whose seqs are those of labelled samples)."""

    node: str
    seqs: npt.NDArray[Any]
    labels: bool = False


@functools.cache
def _dtype(name: str) -> np.dtype[Any]:
    return np.dtype(name)


def _highest(seqs: npt.NDArray[Any]) -> int:
    """The highest of a batch's seqs, -1 for none (a receipt can name only 0..MAX_SEQ)."""
    return int(seqs.max()) if len(seqs) else -1


def _refused(reason: str, detail: str, *, duplicates: int = 0, over_quota: int = 0) -> Outcome:
    """The outcome of a refusal: "rejected" for good, or "held" for now (see the module
    docstring and ``FINAL_REASONS``)."""
    kind: OutcomeKind = "rejected" if is_final(reason) else "held"
    return Outcome(kind, reason=reason, detail=detail, duplicates=duplicates, over_quota=over_quota)


@dataclass(frozen=True, slots=True)
class _SeqSpan:
    """The seqs of one node's samples stored by one flush: lowest, highest, how many."""

    low: int
    high: int
    count: int

    @classmethod
    def of(cls, seqs: npt.NDArray[Any]) -> _SeqSpan:
        return cls(int(seqs.min()), int(seqs.max()), len(seqs))


class _DeferredError(Exception):
    """The message cannot be judged yet; offer it again shortly."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _RejectedError(Exception):
    def __init__(self, reason: str, detail: str, *, rule: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.rule = rule


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A final refusal of one batch, for the audit log: whose, why, and its seq ranges."""

    node: str
    pipeline: str
    reason: str
    rule: str
    detail: str
    ranges: tuple[tuple[int, int], ...]


class IngestService:
    """Validate, de-duplicate and durably store the samples and labels of one tenant."""

    def __init__(
        self,
        tenant: str,
        pipelines: Mapping[str, PipelineSpec] | Iterable[PipelineSpec],
        store: SampleStore,
        labels: LabelStore,
        seen_db: str | Path,
        *,
        policy: ResidencyPolicy | None = None,
        store_labels: Mapping[str, str] | None = None,
        fleet: FleetRegistry | None = None,
        audit_dir: str | Path | None = None,
        quotas: Quotas | None = None,
        audit_signing_key: bytes | None = None,
        audit_interval_s: float = 10.0,
        node_grace_s: float = NODE_GRACE_S,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        """Serve ``tenant``; ``seen_db`` is the SQLite file of sample ids already stored.

        Args:
            policy: the residency policy to enforce; None enforces none.
            store_labels: the labels of the store this service writes (needed with a policy).
            fleet: the fleet registry that knows each node's labels (needed with a policy).
            audit_dir: root of the tenant audit logs; None writes no audit records.
            audit_signing_key: the tenant's Ed25519 private key PEM: the log's head is
                signed after each append, as the controller signs it.
            audit_interval_s: how often the summary of stored samples and refusals is
                appended (0: after every flush).
            quotas: the tenant's quotas; ``samples_per_day`` is enforced when given.
            node_grace_s: how long batches of a node the fleet registry does not know are
                deferred (parked unacknowledged) before they are held as ``unknown_node``
                (acknowledged without a receipt: the node sends them again).

        Raises:
            ConfigError: a policy without ``store_labels`` or ``fleet``.
        """
        self._tenant = topics.check_name(tenant, "tenant")
        if policy is not None and (store_labels is None or fleet is None):
            raise ConfigError(
                "a residency policy at ingest needs store_labels (where this store is) and the "
                "fleet registry (where each node is): pass both, or no policy"
            )
        self._policy = policy
        self._store_labels = dict(store_labels or {})
        self._fleet = fleet
        self._labels_cache: dict[str, tuple[dict[str, str] | None, float]] = {}
        self._node_grace_s = node_grace_s
        self._unknown_since: dict[str, float] = {}  # node -> when ingest first missed it
        self._plans: dict[tuple[int, tuple[tuple[str, str], ...]], UplinkPlan] = {}
        self._processing: dict[
            tuple[str, str, tuple[tuple[str, str], ...]], PlacementError | None
        ] = {}
        self._audit = (
            AuditLog(
                audit_dir,
                signing_keys=None if audit_signing_key is None else {tenant: audit_signing_key},
            )
            if audit_dir is not None
            else None
        )
        self._audit_interval_s = audit_interval_s
        self._audit_written_at = time.monotonic()
        # (node, reason) -> its refusal records not yet appended, the last one still open
        self._pending_refusals: dict[tuple[str, str], list[PendingRefusal]] = {}
        self._pending_stored: dict[str, dict[str, tuple[int, int, int]]] = {}
        self._quotas = quotas
        self._quota_day = ""
        self._quota_used = 0
        self._quota_logged_day = ""
        self._store = store
        self._labels = labels
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._pipelines: dict[str, PipelineSpec] = {}
        specs = pipelines.values() if isinstance(pipelines, Mapping) else pipelines
        for spec in specs:
            self.add_pipeline(spec)
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()  # messages refused, for good or for now
        self._held: Counter[str] = Counter()  # messages refused for now
        self._refused_samples: Counter[str] = Counter()  # samples ended by a final refusal
        self._reject_log = RejectLog(_log)
        self._held_log = HeldLog(_log)
        self._ignored_fields: set[tuple[str, str]] = set()
        self._audit_failing = False
        self._seen = SeenIndex(seen_db)
        self._adopted: set[str] = set()  # pipelines whose unrecorded files were adopted

    @property
    def tenant(self) -> str:
        """The tenant this service ingests for."""
        return self._tenant

    def add_pipeline(self, spec: PipelineSpec) -> None:
        """Accept samples of ``spec`` from now on (replacing an earlier spec of that name)."""
        if spec.tenant != self._tenant:
            raise ConfigError(
                f"pipeline {spec.name!r} belongs to tenant {spec.tenant!r}, not {self._tenant!r}:"
                " give each tenant its own ingest service"
            )
        with self._lock:
            self._pipelines[spec.name] = spec

    def remove_pipeline(self, name: str) -> None:
        """Reject samples of pipeline ``name`` from now on (as unknown_pipeline)."""
        with self._lock:
            self._pipelines.pop(name, None)

    def handle(self, topic: str, payload: bytes) -> Outcome:
        """Process one message; never raises."""
        return self.handle_many([(topic, payload)])[0]

    def handle_many(self, messages: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        """Process messages with one store write for all of them; never raises.

        Outcomes are in message order. A sample that appears twice among ``messages`` is
        stored once and counted as a duplicate the second time.
        """
        outcomes: list[Outcome | None] = [None] * len(messages)
        accepted: list[_Accepted] = []
        rules: dict[int, str] = {}  # message index -> the policy rule of its refusal
        decoded: dict[int, _Decoded] = {}
        for index, (topic, payload) in enumerate(messages):
            try:
                accepted.append(self._check(index, topic, payload, decoded))
            except _DeferredError as later:
                outcomes[index] = Outcome("deferred", reason=later.reason, detail=later.detail)
            except _RejectedError as rej:
                outcomes[index] = _refused(rej.reason, rej.detail)
                rules[index] = rej.rule
            except Exception as exc:  # a bug must not stop ingest; count it and go on
                _log.exception("unexpected error checking a message on %s", topic)
                outcomes[index] = _refused("internal_error", repr(exc))
        sample_items = [a for a in accepted if a.samples is not None]
        feedback_items = [a for a in accepted if a.feedback is not None]
        stored: dict[str, dict[str, _SeqSpan]] = {}  # pipeline -> node -> what was stored now
        held: dict[int, npt.NDArray[np.int64]] = {}  # message index -> seqs over the quota
        if sample_items:
            for index, outcome in self._store_samples(sample_items, stored, held).items():
                outcomes[index] = outcome
        for item in feedback_items:
            outcomes[item.index] = self._store_feedback(item)
        done = [o if o is not None else Outcome("failed", detail="not processed") for o in outcomes]
        refusals = self._name_receipts(messages, done, decoded, held, rules)
        self._count(messages, done)
        self._write_audit(refusals, stored)
        return done

    def _name_receipts(
        self,
        messages: Sequence[tuple[str, bytes]],
        done: list[Outcome],
        decoded: Mapping[int, _Decoded],
        held: Mapping[int, npt.NDArray[np.int64]],
        rules: Mapping[int, str],
    ) -> list[_Refusal]:
        """Give each outcome that is done with for good (stored, labelled, refused for
        good) the seq ranges its receipt names, leaving out samples held by the quota;
        return the final refusals that name samples, for the audit log."""
        refusals: list[_Refusal] = []
        for index, batch in decoded.items():
            outcome = done[index]
            if outcome.kind not in ("stored", "labelled", "rejected"):
                continue  # held, deferred or failed: the node keeps them and sends them again
            seqs = batch.seqs
            if index in held:
                seqs = np.setdiff1d(seqs.astype(np.int64), held[index])
            ranges = tuple(seq_runs(seqs))
            done[index] = dataclasses.replace(
                outcome,
                node=batch.node,
                seq_ranges=() if batch.labels else ranges,
                label_ranges=ranges if batch.labels else (),
            )
            if outcome.kind == "rejected" and ranges and not batch.labels:
                pipeline = topics.parse(messages[index][0]).pipeline
                rule = rules.get(index, "")
                refusals.append(
                    _Refusal(batch.node, pipeline, outcome.reason, rule, outcome.detail, ranges)
                )
        return refusals

    def stats(self) -> dict[str, Any]:
        """Return a snapshot of the counters (stored, duplicates, refused by reason, labels).

        ``rejected`` counts messages refused by reason, for good or for now; ``held`` the
        messages refused for now (acknowledged without a receipt: their nodes send them
        again), by reason; ``refused_samples`` the samples a receipt named as refused for
        good (their nodes end them), by reason; ``over_quota`` the samples the quota held.
        """
        with self._lock:
            return {
                "stored": self._counts["stored"],
                "duplicates": self._counts["duplicates"],
                "labels": self._counts["labels"],
                "batches": self._counts["batches"],
                "feedback_batches": self._counts["feedback_batches"],
                "failed": self._counts["failed"],
                "rejected": dict(self._rejected),
                "rejected_total": sum(self._rejected.values()),
                "held": dict(self._held),
                "refused_samples": dict(self._refused_samples),
                "over_quota": self._counts["over_quota"],
                "fields_ignored": self._counts["fields_ignored"],
                "deferred": self._counts["deferred"],
                "audit_failed": self._counts["audit_failed"],
            }

    def is_seen(self, pipeline: str, sample_id: str) -> bool:
        """Return whether ``sample_id`` (``"node:seq"``) of ``pipeline`` has been stored."""
        return self._seen.contains(self._tenant, pipeline, sample_id)

    def note_compaction(self, result: CompactionResult) -> None:
        """Tell the seen index that a compaction merged recorded files into ``result.path``.

        Without it, the merged file looks like one written before a crash could record it,
        and every start would read it back.
        """
        if result.path is not None:
            self._seen.replace_files(result.replaced, result.path)

    def prune_seen(self, older_than_ns: int) -> int:
        """Forget the runs of sample seqs stored before ``older_than_ns``; return how many.

        Only prune what is older than anything an edge outbox could still resend; the
        store's de-duplicating read still hides a late resend, but it would take space.
        """
        return self._seen.prune(self._tenant, older_than_ns)

    def close(self) -> None:
        """Append the pending audit summary, close the seen-id database and the audit log."""
        self.flush_audit()
        self._seen.close()
        if self._audit is not None:
            self._audit.close()

    def __enter__(self) -> IngestService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- checks ----------------------------------------------------------------------------

    def _check(
        self,
        index: int,
        topic: str,
        payload: bytes,
        decoded: dict[int, _Decoded],
    ) -> _Accepted:
        """Return the message ready to store, or raise why not; a batch that decoded on its
        own node's topic goes into ``decoded`` (its receipt, whatever comes next)."""
        try:
            parsed = topics.parse(topic)
        except ProtocolError as exc:
            raise _RejectedError(exc.reason, str(exc)) from exc
        if parsed.tenant != self._tenant:
            raise _RejectedError(
                "wrong_tenant", f"topic of tenant {parsed.tenant!r}, this is {self._tenant!r}"
            )
        if parsed.kind not in ("samples", "feedback"):
            raise _RejectedError("unexpected_topic", f"ingest does not take {parsed.kind} messages")
        with self._lock:
            spec = self._pipelines.get(parsed.pipeline)
        if spec is None:
            raise _RejectedError("unknown_pipeline", f"no pipeline {parsed.pipeline!r} is deployed")
        try:
            batch: codec.SampleColumns | codec.SampleBatch | codec.FeedbackBatch
            if parsed.kind == "samples":
                schema = spec.edge.input
                try:
                    batch = codec.decode_sample_columns(
                        payload, dtype=schema.dtype, shape=tuple(schema.shape)
                    )
                except InputMismatchError:
                    # A tensor off the schema: decode the records so the checks below run in
                    # their usual order and the schema check names the first such sample.
                    batch = codec.decode_samples(payload)
            else:
                batch = codec.decode_feedback(payload)
        except ProtocolError as exc:
            raise _RejectedError(exc.reason, str(exc)) from exc
        if batch.node != parsed.node:
            raise _RejectedError(
                "node_mismatch", f"batch of node {batch.node!r} on the topic of {parsed.node!r}"
            )
        if batch.pipeline != parsed.pipeline:
            raise _RejectedError(
                "pipeline_mismatch",
                f"batch of pipeline {batch.pipeline!r} on the topic of {parsed.pipeline!r}",
            )
        if isinstance(batch, codec.FeedbackBatch):
            labelled = np.fromiter((seq for seq, _ in batch.items), dtype=np.uint64)
            if 0 <= _highest(labelled) <= MAX_SEQ:
                decoded[index] = _Decoded(batch.node, labelled, labels=True)
            return _Accepted(index, feedback=batch)
        seqs = (
            batch.seq
            if isinstance(batch, codec.SampleColumns)
            else np.fromiter((r.seq for r in batch.records), dtype=np.uint64)
        )
        highest = _highest(seqs)
        if 0 <= highest <= MAX_SEQ:
            decoded[index] = _Decoded(batch.node, seqs)
        if batch.data_class.rank > spec.data_class.rank:
            raise _RejectedError(
                "data_class_mismatch",
                f"batch is {batch.data_class.value}, pipeline {spec.name!r} stores at most "
                f"{spec.data_class.value}",
            )
        if isinstance(batch, codec.SampleBatch):
            self._check_schema(spec, batch)
            raise AssertionError("a batch decoded off its schema passed the schema check")
        if len(batch) == 0:
            raise _RejectedError("empty_batch", "the batch holds no samples; send none instead")
        if highest > MAX_SEQ:
            raise _RejectedError(
                "bad_seq",
                f"sample seq {highest} is beyond the store's range (below 2**63); "
                "seqs come from the edge outbox's allocator, which stays far below it",
            )
        if self._policy is not None:
            self._check_policy(self._policy, spec, batch)
        return _Accepted(index, samples=batch)

    def _check_policy(
        self, policy: ResidencyPolicy, spec: PipelineSpec, batch: codec.SampleColumns
    ) -> None:
        """Reject a batch the policy forbids here, or one with a field the edge should have
        dropped or hashed (the edge applies the same plan; this catches a forged or
        misconfigured sender).
        """
        labels = self._node_labels(batch.node)
        if labels is None:
            self._defer_unknown(batch.node)
            raise _RejectedError(
                "unknown_node",
                f"node {batch.node!r} is not in the fleet registry, so where its data comes "
                "from is not known (the node publishes its labels in its status when it "
                "connects; check it is enrolled and online)",
                rule="ingest",
            )
        data_class = max(batch.data_class, spec.data_class, key=lambda c: c.rank)
        decision = ingest_allows(
            policy, data_class, labels, self._store_labels, tenant=self._tenant
        )
        if not decision.allowed:
            raise _RejectedError(
                "policy", f"node {batch.node!r}: {decision.reason}", rule=decision.rule
            )
        refused = self._processing_refusal(policy, data_class, batch.node, labels)
        if refused is not None:
            raise _RejectedError("policy", str(refused), rule=refused.rule or "ingest")
        plan = self._plan(policy, spec, labels)
        if plan.keep_at_edge:
            refusal = next((d for d in plan.decisions if not d.allowed), None)
            why = refusal.reason if refusal is not None else plan.describe()
            raise _RejectedError(
                "policy",
                f"samples of {spec.name!r} from node {batch.node!r} must stay on the edge: {why}",
                rule=refusal.rule if refusal is not None else "uplink",
            )
        if (not plan.dropped and not plan.hashed) or batch.fields is None:
            return
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
                rule = next(
                    (d.rule for d in plan.decisions if f"field {name} " in d.reason), "uplink"
                )
                raise _RejectedError(
                    "policy_field",
                    f"sample {codec.sample_id(batch.node, int(batch.seq[row]))} carries field "
                    f"{name!r} ({classes[name].value}) {problem} (rule {rule})",
                    rule=rule,
                )

    def _defer_unknown(self, node: str) -> None:
        """Raise ``_DeferredError`` while ``node`` is within its grace; return once it is over.

        The grace starts at the node's first batch and is not renewed: the batches of a
        node that never sends its status are held (``unknown_node``, no receipt) after
        ``node_grace_s`` whatever it keeps sending, and stored when it is known again.
        """
        now = time.monotonic()
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
            raise _DeferredError(
                "unknown_node", f"node {node!r} has no status in the fleet registry yet"
            )

    def _node_labels(self, node: str) -> dict[str, str] | None:
        """Return ``node``'s labels from the fleet registry, or None if it never sent them."""
        now = time.monotonic()
        cached = self._labels_cache.get(node)
        if cached is not None and cached[1] > now:
            return cached[0]
        assert self._fleet is not None
        try:
            info = self._fleet.get(node)
        except Exception as exc:  # where the node is cannot be known now: hold, not refuse
            raise _RejectedError(
                "fleet_unavailable", f"the fleet registry cannot be read: {exc!r}"
            ) from exc
        labels = info.labels if info is not None and info.status is not None else None
        if labels is not None:
            self._unknown_since.pop(node, None)
        ttl = _LABELS_TTL_S if labels is not None else _UNKNOWN_TTL_S
        if len(self._labels_cache) > 100_000:  # forged node names must not grow it forever
            self._labels_cache.clear()
        self._labels_cache[node] = (labels, now + ttl)
        return labels

    def _processing_refusal(
        self,
        policy: ResidencyPolicy,
        data_class: DataClass,
        node: str,
        labels: Mapping[str, str],
    ) -> PlacementError | None:
        """Return why ``node`` may not have processed ``data_class`` data, or None.

        The edge stage ran on the sending node: a node outside the class's processing rule
        (deploy would have refused to place the stage there) is a breach, not a sender.
        """
        key = (data_class.value, node, tuple(sorted(labels.items())))
        if key in self._processing:
            return self._processing[key]
        try:
            node_may_process(
                policy,
                data_class,
                node,
                labels,
                origin_site=labels.get(SITE),
                tenant=self._tenant,
            )
            refusal = None
        except (PlacementError, SpecError) as exc:
            refusal = (
                exc
                if isinstance(exc, PlacementError)
                else PlacementError(f"node {node}'s labels cannot be checked: {exc}", rule="ingest")
            )
        if len(self._processing) > 10_000:
            self._processing.clear()
        self._processing[key] = refusal
        return refusal

    def _plan(
        self, policy: ResidencyPolicy, spec: PipelineSpec, labels: Mapping[str, str]
    ) -> UplinkPlan:
        key = (id(spec), tuple(sorted(labels.items())))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 10_000:
                self._plans.clear()
            plan = self._plans[key] = uplink_plan(policy, spec, labels, self._store_labels)
        return plan

    @staticmethod
    def _check_schema(spec: PipelineSpec, batch: codec.SampleBatch) -> None:
        schema = spec.edge.input
        want_shape = tuple(schema.shape)
        want_dtype = _dtype(schema.dtype)  # comparing dtypes is cheap; dtype.name is not
        for record in batch.records:
            tensor = record.tensor
            if tensor.shape != want_shape or tensor.dtype != want_dtype:
                raise _RejectedError(
                    "schema_mismatch",
                    f"sample {batch.sample_id(record)}: expected {schema.dtype}"
                    f"{list(want_shape)}, got {tensor.dtype.name}{list(tensor.shape)}",
                )

    # -- durable writes --------------------------------------------------------------------

    def _store_samples(
        self,
        items: list[_Accepted],
        stored: dict[str, dict[str, _SeqSpan]],
        held: dict[int, npt.NDArray[np.int64]],
    ) -> dict[int, Outcome]:
        """De-duplicate, append, flush once, then record the ids; map message index -> outcome.

        ``stored`` receives pipeline -> node -> the seqs written, once durable; ``held``
        message index -> the seqs the ``samples_per_day`` quota held back (they get no
        receipt: the node sends them again, and one day they fit).

        The order is what makes a crash safe: the Parquet files are written and fsynced
        (file, then directory) before the ids are committed to the seen database, and the
        messages are acknowledged only after both.  The seen database runs in WAL mode with
        ``synchronous=NORMAL``: a power cut can lose its last commits, but never a file
        they describe, and a file whose path has no ``stored_files`` row is adopted (its ids
        read back from the file) before that pipeline's next write, so a redelivered or
        resent sample is still found there.
        """
        now_ns = self._clock_ns()
        room = self._quota_room(now_ns)
        quota_used = 0
        written: dict[str, dict[str, _SeqSpan]] = {}
        outcomes: dict[int, Outcome] = {}
        new_seqs: dict[NodeKey, list[npt.NDArray[np.int64]]] = {}
        try:
            seqs_of = [item.samples.seq.astype(np.int64) for item in items if item.samples]
            by_node: dict[NodeKey, list[npt.NDArray[np.int64]]] = {}
            for item, seqs in zip(items, seqs_of, strict=True):
                assert item.samples is not None
                by_node.setdefault((item.samples.pipeline, item.samples.node), []).append(seqs)
            # One look-up per node for the whole group; seqs stored by an earlier message of
            # this group count as seen for the later ones.
            # None: no seq of the node's messages here is stored or repeated (the usual
            # case), so every sample is new and none needs a look-up of its own.
            seen: dict[NodeKey, set[int] | None] = {}
            for key, parts in by_node.items():
                if key[0] not in self._adopted:
                    self._adopt_unrecorded_files(key[0], now_ns)
                    self._adopted.add(key[0])
                seqs = parts[0] if len(parts) == 1 else np.concatenate(parts)
                found = self._seen.stored(self._tenant, key, seqs)
                # An edge batch's seqs ascend, so repeats are rare: skip sorting when they do.
                ascending = bool((seqs[1:] > seqs[:-1]).all())
                repeated = not ascending and len(np.unique(seqs)) != len(seqs)
                seen[key] = set(seqs[found].tolist()) if found.any() or repeated else None
            for item, seqs in zip(items, seqs_of, strict=True):
                batch = item.samples
                assert batch is not None
                key = (batch.pipeline, batch.node)
                taken = seen[key]
                fresh: list[int] | range
                if taken is None:
                    fresh = range(len(seqs))
                else:
                    fresh = []
                    for row, seq in enumerate(seqs.tolist()):
                        if seq not in taken:
                            taken.add(seq)
                            fresh.append(row)
                over = 0
                if room is not None and len(fresh) > room - quota_used:
                    keep = max(0, room - quota_used)
                    over = len(fresh) - keep
                    held[item.index] = seqs[np.asarray(fresh[keep:], dtype=np.intp)]
                    fresh = fresh[:keep]
                quota_used += len(fresh)
                if fresh:
                    new = batch if len(fresh) == len(seqs) else batch.take(list(fresh))
                    new = self._declared_fields(new)
                    self._store.append_columns(self._tenant, new, ingested_at_ns=now_ns)
                    new_seqs.setdefault(key, []).append(
                        seqs if len(fresh) == len(seqs) else seqs[np.asarray(fresh, dtype=np.intp)]
                    )
                duplicates = len(seqs) - len(fresh) - over
                if over and not fresh:
                    outcomes[item.index] = _refused(
                        "quota",
                        f"{over} sample(s) over the samples_per_day quota",
                        duplicates=duplicates,
                        over_quota=over,
                    )
                else:
                    outcomes[item.index] = Outcome(
                        "stored",
                        stored=len(fresh),
                        duplicates=duplicates,
                        over_quota=over,
                        detail=f"{over} sample(s) over the samples_per_day quota" if over else "",
                    )
            paths = self._store.flush()
        except Exception as exc:
            # Nothing is acknowledged, so the broker redelivers; drop the rows not yet written
            # and adopt the files that were, so the redelivery does not store them again.
            self._store.discard()
            self._adopt_quietly(now_ns)
            for item in items:
                held.pop(item.index, None)
            if isinstance(exc, _DATA_ERRORS):
                return self._isolate_unstorable(items, stored, held, exc)
            _log.error("writing the sample store failed, will retry: %r", exc)
            return {item.index: Outcome("failed", detail=repr(exc)) for item in items}
        fresh_seqs = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in new_seqs.items()}
        for (pipeline, node), values in fresh_seqs.items():
            written.setdefault(pipeline, {})[node] = _SeqSpan.of(values)
        try:
            self._seen.record(self._tenant, fresh_seqs, now_ns, paths)
        except sqlite3.Error as exc:
            # The samples are durable, so acknowledging is safe; the next write adopts the
            # unrecorded files before it de-duplicates, so a resend is not stored again.
            self._adopted.clear()
            _log.error("recording stored sample ids failed: %r", exc)
        self._quota_used += quota_used
        stored.update(written)
        return outcomes

    def _isolate_unstorable(
        self,
        items: list[_Accepted],
        stored: dict[str, dict[str, _SeqSpan]],
        held: dict[int, npt.NDArray[np.int64]],
        exc: Exception,
    ) -> dict[int, Outcome]:
        """Store the messages of a group one by one after the group failed on its data.

        A message the store cannot take is held (``unstorable``: acknowledged without a
        receipt, so its node keeps the samples and sends them again, until a fixed store
        takes them) instead of failing, and so holding back, every message grouped with it.
        """
        if len(items) > 1:
            outcomes: dict[int, Outcome] = {}
            for item in items:
                outcomes.update(self._store_samples([item], stored, held))
            return outcomes
        _log.error("the sample store cannot take a batch; holding it back: %r", exc)
        return {items[0].index: _refused("unstorable", repr(exc))}

    def _declared_fields(self, batch: codec.SampleColumns) -> codec.SampleColumns:
        """Return ``batch`` with only the fields its pipeline's schema declares.

        The store's columns are the schema's fields; an undeclared name (a source's extra,
        or a typo) is counted and logged once instead of growing a column per name.
        """
        if batch.fields is None:
            return batch
        pipeline = batch.pipeline
        with self._lock:
            spec = self._pipelines.get(pipeline)
        declared = spec.edge.input.fields if spec is not None else {}
        out = []
        changed = False
        for fields in batch.fields:
            extra = [name for name in fields if name not in declared]
            if not extra:
                out.append(fields)
                continue
            changed = True
            with self._lock:
                self._counts["fields_ignored"] += len(extra)
            for name in extra:
                if (pipeline, name) not in self._ignored_fields:
                    self._ignored_fields.add((pipeline, name))
                    _log.warning(
                        "pipeline %s: field %r is not in its input schema; not stored "
                        "(declare it in edge.input.fields to keep it)",
                        pipeline,
                        name,
                    )
            out.append({k: v for k, v in fields.items() if k in declared})
        return dataclasses.replace(batch, fields=tuple(out)) if changed else batch

    def _quota_room(self, now_ns: int) -> int | None:
        """Return how many more samples today's ``samples_per_day`` quota allows (None: any)."""
        quotas = self._quotas
        if quotas is None:
            return None
        day = datetime.fromtimestamp(now_ns / 1e9, tz=UTC).strftime("%Y-%m-%d")
        if day != self._quota_day:
            # Once per day: what this tenant stored today so far (other replicas, restarts).
            start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
            count = self._seen.count_since(self._tenant, int(start * 1e9))
            self._quota_day, self._quota_used = day, count
        try:
            quotas.check(self._tenant, "samples_per_day", self._quota_used, 1)
        except QuotaExceededError as exc:
            if self._quota_logged_day != day:
                self._quota_logged_day = day
                _log.warning(
                    "%s; samples beyond it are held back today (reason quota): their nodes "
                    "keep them and send them again",
                    exc,
                )
            return 0
        return max(0, int(quotas.samples_per_day) - self._quota_used)

    def _write_audit(
        self, refusals: list[_Refusal], stored: Mapping[str, Mapping[str, _SeqSpan]]
    ) -> None:
        """Fold this flush's final refusals and stored samples into the pending audit
        summary, and append the summary once ``audit_interval_s`` has passed since the last.

        One record per (node, reason) and per pipeline per interval, whatever the message
        rate, so a flood cannot bloat the log; a refusal record names the ids of the samples
        it ended as ranges, at most ``MAX_AUDIT_RANGES`` of them (more take more records);
        every stored id is also in the seen database.  A failure to write is logged and
        counted; it never fails the flush, whose samples are already durable (or, refused
        for good, were never going to be), and the summary stays pending for the next try.
        """
        if self._audit is None:
            return
        for refusal in refusals:
            self._fold_refusal(refusal)
        for pipeline, nodes in stored.items():
            into = self._pending_stored.setdefault(pipeline, {})
            for node, span in nodes.items():
                low, high, count = into.get(node, (span.low, span.high, 0))
                into[node] = (min(low, span.low), max(high, span.high), count + span.count)
        if time.monotonic() - self._audit_written_at >= self._audit_interval_s:
            self.flush_audit()

    def _fold_refusal(self, refusal: _Refusal) -> None:
        records = self._pending_refusals.setdefault((refusal.node, refusal.reason), [])
        rest, new_batch = list(refusal.ranges), True
        while rest:
            if not records or records[-1].full:
                records.append(
                    PendingRefusal(refusal.node, refusal.reason, refusal.rule, refusal.detail)
                )
            rest = records[-1].add(refusal.pipeline, rest, new_batch=new_batch)
            new_batch = False

    def flush_audit(self) -> None:
        """Append the pending audit summary now (also called on ``close``).

        Each record leaves the pending summary as it is appended, so after a failure the
        next flush appends only what was not written.
        """
        audit = self._audit
        if audit is None or (not self._pending_refusals and not self._pending_stored):
            return
        self._audit_written_at = time.monotonic()
        try:
            for key in sorted(self._pending_refusals):
                records = self._pending_refusals[key]
                while records:
                    details = records[0].details()
                    action = (
                        AuditAction.POLICY_REFUSAL
                        if records[0].reason in POLICY_REASONS
                        else AuditAction.INGEST_REFUSAL
                    )
                    audit.append(self._tenant, action, key[0], details, actor=_AUDIT_ACTOR)
                    records.pop(0)
                del self._pending_refusals[key]
            for pipeline in sorted(self._pending_stored):
                summary = {
                    node: {"first_seq": low, "last_seq": high, "count": count}
                    for node, (low, high, count) in sorted(self._pending_stored[pipeline].items())
                }
                details = {
                    "pipeline": pipeline,
                    "nodes": summary,
                    "samples": sum(v["count"] for v in summary.values()),
                }
                audit.append(
                    self._tenant,
                    AuditAction.UPLINK_BATCH,
                    pipeline,
                    details,
                    actor=_AUDIT_ACTOR,
                )
                del self._pending_stored[pipeline]
        except Exception as exc:  # the log's storage failed; the flushes stand
            with self._lock:
                self._counts["audit_failed"] += 1
            if not self._audit_failing:
                self._audit_failing = True
                _log.error("writing the audit log failed: %r (logged once until it recovers)", exc)
            return
        if self._audit_failing:
            self._audit_failing = False
            _log.warning("writing the audit log recovered")

    def _store_feedback(self, item: _Accepted) -> Outcome:
        batch = item.feedback
        assert batch is not None
        try:
            written = self._labels.record(self._tenant, batch, source="delayed_feedback")
        except Exception as exc:  # as for samples: nothing acknowledged, the broker redelivers
            _log.error("writing labels failed, will retry: %r", exc)
            return Outcome("failed", detail=repr(exc))
        return Outcome("labelled", labels=written)

    def _adopt_unrecorded_files(self, pipeline: str, now_ns: int) -> int:
        """Record the seqs of store files no seen-index commit covers (a crash came between).

        Returns the number of files adopted.
        """
        paths = self._store.files(self._tenant, pipeline)
        known = self._seen.recorded_files()
        unrecorded = [p for p in paths if p not in known]
        self._adopt(unrecorded, now_ns)
        if unrecorded:
            _log.warning(
                "adopted %d store file(s) of %s written before a crash recorded their ids",
                len(unrecorded),
                pipeline,
            )
        return len(unrecorded)

    def _adopt(self, paths: Sequence[str], now_ns: int) -> None:
        seqs: dict[NodeKey, list[npt.NDArray[np.int64]]] = {}
        for path in paths:
            for key, values in self._store.file_seqs(path).items():
                seqs.setdefault(key, []).append(values)
        self._seen.record(
            self._tenant,
            {key: np.concatenate(v) for key, v in seqs.items()},
            now_ns,
            paths,
            known_new=False,
        )

    def _adopt_quietly(self, now_ns: int) -> None:
        try:
            self._adopt(self._store.flush(), now_ns)
        except Exception as exc:  # the next write adopts them (see _adopted) or reads dedup
            self._adopted.clear()
            _log.error("recording the files of a failed write failed: %r", exc)

    def _count(self, messages: Sequence[tuple[str, bytes]], outcomes: list[Outcome]) -> None:
        with self._lock:
            for outcome in outcomes:
                self._counts["over_quota"] += outcome.over_quota
                if outcome.kind == "stored":
                    self._counts["batches"] += 1
                    self._counts["stored"] += outcome.stored
                    self._counts["duplicates"] += outcome.duplicates
                elif outcome.kind == "labelled":
                    self._counts["feedback_batches"] += 1
                    self._counts["labels"] += outcome.labels
                elif outcome.kind in ("rejected", "held"):
                    self._rejected[outcome.reason] += 1
                    self._counts["duplicates"] += outcome.duplicates
                    if outcome.kind == "held":
                        self._held[outcome.reason] += 1
                    else:
                        self._refused_samples[outcome.reason] += sum(
                            last - first + 1 for first, last in outcome.seq_ranges
                        )
                elif outcome.kind == "deferred":
                    self._counts["deferred"] += 1
                else:
                    self._counts["failed"] += 1
        for (topic, _), outcome in zip(messages, outcomes, strict=True):
            if outcome.kind == "rejected":
                self._reject_log.reject(outcome.reason, topic, outcome.detail)
            elif outcome.kind == "held" or outcome.over_quota:
                self._held_log.held(outcome.reason or "quota", topic, outcome.detail)
            elif outcome.kind in ("stored", "labelled"):
                self._held_log.stored(topic)


#: How soon parked (deferred) messages are offered again when nothing else arrives.
_PARK_RETRY_S: Final = 0.5
#: Most messages parked unacknowledged at once.  Each holds one of the broker's in-flight
#: slots for this session (mosquitto's max_inflight_messages: 20 by default, as in the
#: embedded broker; 100 in deploy/mosquitto), and with all of them held the broker delivers
#: nothing more: past this, a deferred message is held instead (acknowledged without a
#: receipt; its node sends it again), so unknown nodes cannot stall every other node.
_MAX_PARKED: Final = 10


class _Stop:
    """Queue sentinel that ends the processing thread."""


_Message = tuple[str, bytes, int, int]  # topic, payload, mid, qos


@dataclass(slots=True)
class _Receipt:
    """The seq ranges of one node's samples and of its labels that one processed group is
    done with: the ``StoredReceipt`` fields ``seqs``, ``labels`` and ``refused`` (reason ->
    seq ranges) before merging."""

    seqs: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    labels: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    refused: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)


class IngestWorker:
    """Run an ``IngestService`` on MQTT: shared subscription, persistent session, late acks.

    Messages are handled on a named processing thread in groups (whatever has arrived, up to
    ``max_group``) so one store write covers many messages; each is acknowledged only after
    its group was written. A failed write is retried with capped exponential backoff, never
    acknowledged early; a deferred message (its node not known yet) is parked, still
    unacknowledged, and offered again with the next group or after ``_PARK_RETRY_S``, so
    it holds up nothing else. On ``stop`` unacknowledged messages stay with the broker,
    which redelivers them to the session when it comes back.
    """

    def __init__(
        self,
        service: IngestService,
        broker: BrokerSettings,
        *,
        client_id: str | None = None,
        share_group: str = topics.INGEST_SHARE_GROUP,
        max_group: int = 1024,
        retry_max_s: float = 30.0,
    ) -> None:
        """Prepare a worker; give each replica its own stable ``client_id`` (its session)."""
        self._service = service
        self._broker = broker
        self._client_id = client_id or f"ctm-ingest-{service.tenant}"
        self._filters = [
            topics.shared(topics.pipeline_filter(service.tenant, "samples"), share_group),
            topics.shared(topics.pipeline_filter(service.tenant, "feedback"), share_group),
        ]
        self._max_group = max_group
        self._retry_max_s = retry_max_s
        self._queue: queue.Queue[_Message | _Stop] = queue.Queue()
        self._stopping = threading.Event()
        # connected, disconnected_since, disconnects; the loss and recovery logged once each.
        self._link = BrokerConnection(_log, f"ingest {self._client_id}")
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None
        self._counts: Counter[str] = Counter()
        self._parked: list[_Message] = []

    @property
    def connected(self) -> bool:
        """Whether the MQTT session is up and subscribed."""
        return self._link.connected

    def start(self) -> None:
        """Connect, subscribe and start processing; raises NotReadyError if the broker is down."""
        if self._client is not None:
            raise RuntimeError("the ingest worker is already running")
        self._stopping.clear()
        client = make_client(self._client_id, self._broker, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._thread = threading.Thread(
            target=self._process_loop, name=f"ingest-{self._service.tenant}", daemon=True
        )
        self._thread.start()
        self._client = client  # before connecting: the processor acks through it
        try:
            connect(client, self._broker)
        except BaseException:
            self._client = None
            self._queue.put(_Stop())
            self._thread.join()
            self._thread = None
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the group in hand, acknowledge it and disconnect; the session persists."""
        self._stopping.set()
        self._queue.put(_Stop())
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                _log.error("ingest processing thread did not stop within %.1f s", timeout_s)
            self._thread = None
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._link.down("stopped", expected=True)
        # Messages queued after the stop are unacknowledged; the broker redelivers them.
        while not self._queue.empty():
            self._queue.get_nowait()

    def stats(self) -> dict[str, Any]:
        """Return the service counters plus the connection state and queue depth."""
        snapshot = self._service.stats()
        snapshot.update(self._link.stats())  # connected, disconnected_since, disconnects
        snapshot["queued"] = self._queue.qsize()
        snapshot["acked"] = self._counts["acked"]
        snapshot["retries"] = self._counts["retries"]
        snapshot["unparked"] = self._counts["unparked"]
        return snapshot

    def __enter__(self) -> IngestWorker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code_failed(reason_code):
            _log.warning("broker refused the ingest session: %s", reason_code)
            return
        client.subscribe([(f, 1) for f in self._filters])
        _log.info(
            "ingest %s connected (session present: %s)",
            self._client_id,
            getattr(flags, "session_present", None),
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, props: Any
    ) -> None:
        """Count the worker as connected once the broker granted its subscriptions."""
        refused = [str(code) for code in reason_codes if reason_code_failed(code)]
        if refused:
            _log.error(
                "broker refused ingest's subscriptions %s (%s): check the ACL lets user %r read %s",
                self._filters,
                ", ".join(refused),
                self._broker.username,
                self._filters,
            )
            return
        self._link.up()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any
    ) -> None:
        self._link.down(reason_code, expected=self._stopping.is_set())

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put((message.topic, bytes(message.payload), message.mid, message.qos))

    # -- processing thread -----------------------------------------------------------------

    def _process_loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=_PARK_RETRY_S if self._parked else None)
            except queue.Empty:
                self._process([])  # only the parked messages, offered again
                continue
            if isinstance(first, _Stop):
                return
            group = [first]
            stop_after = False
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Stop):
                    stop_after = True
                    break
                group.append(item)
            self._process(group)
            if stop_after:
                return

    def _process(self, group: list[_Message]) -> None:
        group = [*self._parked, *group]
        self._parked = []
        pending = list(range(len(group)))
        delay = 0.1
        failing = False
        done: list[int] = []
        receipts: dict[str, _Receipt] = {}  # node -> the seqs of its samples and labels done with
        while True:
            outcomes = self._service.handle_many([(group[i][0], group[i][1]) for i in pending])
            failed = []
            for i, outcome in zip(pending, outcomes, strict=True):
                if outcome.kind == "deferred" and len(self._parked) < _MAX_PARKED:
                    self._parked.append(group[i])
                elif outcome.ack or outcome.kind == "deferred":
                    # A deferred message past the parking room is held: acknowledged with
                    # no receipt, as any refusal for now.
                    if outcome.kind == "deferred":
                        self._counts["unparked"] += 1
                    done.append(i)
                    if outcome.seq_ranges or outcome.label_ranges:
                        receipt = receipts.setdefault(outcome.node, _Receipt())
                        into = (
                            receipt.refused.setdefault(outcome.reason, [])
                            if outcome.kind == "rejected"
                            else receipt.seqs
                        )
                        into.extend(outcome.seq_ranges)
                        receipt.labels.extend(outcome.label_ranges)
                else:
                    failed.append(i)
            pending = failed
            if not pending:
                break
            if not failing:
                _log.error("ingest write failed; retrying with backoff, nothing is acked")
                failing = True
            self._counts["retries"] += 1
            if self._stopping.wait(delay):
                return  # unacknowledged: the broker redelivers the whole group later
            delay = min(delay * 2, self._retry_max_s)
        if failing:
            _log.warning("ingest writes recovered")
        client = self._client
        for i in sorted(done):
            _topic, _payload, mid, qos = group[i]
            if client is not None and qos > 0:
                client.ack(mid, qos)
            self._counts["acked"] += 1
        if client is not None:
            self._send_receipts(client, receipts)

    def _send_receipts(self, client: mqtt.Client, receipts: dict[str, _Receipt]) -> None:
        """Tell each node which of its samples are stored or refused for good, and which of
        its labels are recorded (QoS 1).

        A receipt lost on the way only costs a resend: the node sends the samples or labels
        again after its ``resend_unconfirmed_s``, ingest finds the samples stored (records
        the labels again in place, refuses them again) and confirms again.  Samples stored,
        labels and refusals go in receipts of their own: an agent from before label (or
        refusal) receipts refuses a receipt naming them, and must still get its samples'
        receipts.
        """
        now = time.time()
        for node, done in receipts.items():
            topic = topics.node_stored(self._service.tenant, node)
            for field, ranges in (("seqs", done.seqs), ("labels", done.labels)):
                merged = merge_seq_ranges(ranges)
                for start in range(0, len(merged), MAX_RECEIPT_RANGES):
                    chunk = merged[start : start + MAX_RECEIPT_RANGES]
                    self._publish_receipt(
                        client,
                        topic,
                        StoredReceipt.model_validate({"node": node, field: chunk, "ts": now}),
                    )
            for receipt in _refusal_receipts(node, done.refused, now):
                self._publish_receipt(client, topic, receipt)

    def _publish_receipt(self, client: mqtt.Client, topic: str, receipt: StoredReceipt) -> None:
        if client.publish(topic, receipt.to_payload(), qos=1).rc == 0:  # MQTT_ERR_SUCCESS
            self._counts["receipts"] += 1


def _refusal_receipts(
    node: str, refused: Mapping[str, list[tuple[int, int]]], ts: float
) -> list[StoredReceipt]:
    """Receipts naming ``refused`` (reason -> seq ranges), each within the receipt's bounds
    on ranges and reasons."""
    receipts: list[StoredReceipt] = []
    entries: list[RefusedSeqs] = []
    room = MAX_RECEIPT_RANGES
    for reason, ranges in sorted(refused.items()):
        merged = merge_seq_ranges(ranges)
        while merged:
            if room == 0 or len(entries) == MAX_RECEIPT_REASONS:
                receipts.append(StoredReceipt(node=node, refused=entries, ts=ts))
                entries, room = [], MAX_RECEIPT_RANGES
            chunk, merged = merged[:room], merged[room:]
            entries.append(RefusedSeqs(reason=reason, seqs=chunk))
            room -= len(chunk)
    if entries:
        receipts.append(StoredReceipt(node=node, refused=entries, ts=ts))
    return receipts
