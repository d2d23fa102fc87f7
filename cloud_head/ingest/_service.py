"""``IngestService``: one tenant's ingest, from a group of messages to their outcomes.

It assembles the rooms of ``cloud_head.ingest``: the checks (``_validation``, and
``_residency`` given a policy), the durable writes (``_writes``: ``_dedup`` and ``_quota``),
the receipts each outcome names, the counters (``_outcome``) and the audit summary
(``_audit``).  No MQTT: ``IngestWorker`` runs it on the broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_head.fleet import FleetRegistry
from cloud_head.ingest._audit import AuditSummary, Refusal
from cloud_head.ingest._dedup import Dedup
from cloud_head.ingest._outcome import (
    DeferredError,
    IngestCounts,
    Outcome,
    RejectedError,
    refused,
)
from cloud_head.ingest._quota import DailyQuota
from cloud_head.ingest._residency import NODE_GRACE_S, ResidencyCheck
from cloud_head.ingest._validation import Accepted, Decoded, check_message
from cloud_head.ingest._writes import Held, SampleWriter, Stored
from cloud_head.labelling import LabelStore
from cloud_head.seen import SeenIndex, seq_runs
from cloud_head.store import CompactionResult, SampleStore
from cloud_head.tenants import Quotas
from continuum.errors import ConfigError
from continuum.residency import ResidencyPolicy
from continuum.spec import PipelineSpec
from continuum.wire import topics

_log = logging.getLogger("cloud_head.ingest")


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
        audit_interval_s: float = 10.0,
        node_grace_s: float = NODE_GRACE_S,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        """Serve ``tenant``; ``seen_db`` is the SQLite file of sample ids already stored.

        Args:
            policy: the residency policy to enforce; None enforces none.
            store_labels: the labels of the store this service writes (needed with a policy).
            fleet: the fleet registry that knows each node's labels (needed with a policy).
            audit_dir: root of the tenant audit logs; None writes no audit records.  Ingest
                appends unsigned and holds no key: the tenant's signer seals its records.
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
        self._residency: ResidencyCheck | None = None
        if policy is not None:
            if store_labels is None or fleet is None:
                raise ConfigError(
                    "a residency policy at ingest needs store_labels (where this store is) and "
                    "the fleet registry (where each node is): pass both, or no policy"
                )
            self._residency = ResidencyCheck(
                policy,
                tenant=tenant,
                store_labels=store_labels,
                fleet=fleet,
                node_grace_s=node_grace_s,
            )
        self._lock = threading.Lock()
        self._pipelines: dict[str, PipelineSpec] = {}
        for spec in pipelines.values() if isinstance(pipelines, Mapping) else pipelines:
            self.add_pipeline(spec)
        self._counts = IngestCounts()
        self._audit = AuditSummary(
            tenant,
            audit_dir,
            interval_s=audit_interval_s,
            counts=self._counts,
        )
        self._seen = SeenIndex(seen_db)
        self._labels = labels
        self._writer = SampleWriter(
            tenant,
            store,
            Dedup(tenant, self._seen, store),
            DailyQuota(tenant, quotas, lambda since_ns: self._seen.count_since(tenant, since_ns)),
            spec_of=self._spec,
            counts=self._counts,
            clock_ns=clock_ns,
        )

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

    def _spec(self, name: str) -> PipelineSpec | None:
        with self._lock:
            return self._pipelines.get(name)

    def handle(self, topic: str, payload: bytes) -> Outcome:
        """Process one message; never raises."""
        return self.handle_many([(topic, payload)])[0]

    def handle_many(self, messages: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        """Process messages with one store write for all of them; never raises.

        Outcomes are in message order. A sample that appears twice among ``messages`` is
        stored once and counted as a duplicate the second time.
        """
        outcomes: list[Outcome | None] = [None] * len(messages)
        accepted: list[Accepted] = []
        rules: dict[int, str] = {}  # message index -> the policy rule of its refusal
        decoded: dict[int, Decoded] = {}
        # The pipelines as of the start of this group, looked up without the lock at each
        # message; a pipeline added or removed meanwhile counts from the next group.
        with self._lock:
            spec_of = dict(self._pipelines).get
        for index, (topic, payload) in enumerate(messages):
            try:
                accepted.append(
                    check_message(
                        index,
                        topic,
                        payload,
                        decoded,
                        tenant=self._tenant,
                        spec_of=spec_of,
                        residency=self._residency,
                    )
                )
            except DeferredError as later:
                outcomes[index] = Outcome("deferred", reason=later.reason, detail=later.detail)
            except RejectedError as rej:
                outcomes[index] = refused(rej.reason, rej.detail)
                rules[index] = rej.rule
            except Exception as exc:  # a bug must not stop ingest; count it and go on
                _log.exception("unexpected error checking a message on %s", topic)
                outcomes[index] = refused("internal_error", repr(exc))
        stored: Stored = {}  # pipeline -> node -> what was stored now
        held: Held = {}  # message index -> seqs over the quota
        sample_items = [a for a in accepted if a.samples is not None]
        if sample_items:
            for index, outcome in self._writer.write(sample_items, stored, held).items():
                outcomes[index] = outcome
        for item in accepted:
            if item.feedback is not None:
                outcomes[item.index] = self._store_feedback(item)
        done = [o if o is not None else Outcome("failed", detail="not processed") for o in outcomes]
        refusals = _name_receipts(messages, done, decoded, held, rules)
        self._counts.count(messages, done)
        self._audit.add(refusals, stored)
        return done

    def _store_feedback(self, item: Accepted) -> Outcome:
        batch = item.feedback
        assert batch is not None
        try:
            written = self._labels.record(self._tenant, batch, source="delayed_feedback")
        except Exception as exc:  # as for samples: nothing acknowledged, the broker redelivers
            _log.error("writing labels failed, will retry: %r", exc)
            return Outcome("failed", detail=repr(exc))
        return Outcome("labelled", labels=written)

    def stats(self) -> dict[str, Any]:
        """Return a snapshot of the counters (stored, duplicates, refused by reason, labels).

        ``rejected`` counts messages refused by reason, for good or for now; ``held`` the
        messages refused for now (acknowledged without a receipt: their nodes send them
        again), by reason; ``refused_samples`` the samples a receipt named as refused for
        good (their nodes end them), by reason; ``over_quota`` the samples the quota held.
        """
        return self._counts.snapshot()

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

    def flush_audit(self) -> None:
        """Append the pending audit summary now (also called on ``close``)."""
        self._audit.flush()

    def close(self) -> None:
        """Append the pending audit summary, close the audit log and the seen-id database."""
        self._audit.close()
        self._seen.close()

    def __enter__(self) -> IngestService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _name_receipts(
    messages: Sequence[tuple[str, bytes]],
    done: list[Outcome],
    decoded: Mapping[int, Decoded],
    held: Held,
    rules: Mapping[int, str],
) -> list[Refusal]:
    """Give each outcome that is done with for good (stored, labelled, refused for good)
    the seq ranges its receipt names, leaving out samples held by the quota; return the
    final refusals that name samples, for the audit log."""
    refusals: list[Refusal] = []
    named = [
        (index, batch)
        for index, batch in decoded.items()
        if done[index].kind in ("stored", "labelled", "rejected")
    ]  # held, deferred or failed: the node keeps them and sends them again
    spans = single_runs([batch.seqs for _, batch in named])
    for (index, batch), span in zip(named, spans, strict=True):
        outcome = done[index]
        if index in held:
            ranges = tuple(seq_runs(np.setdiff1d(batch.seqs.astype(np.int64), held[index])))
        elif span is not None:
            ranges = (span,)
        else:
            ranges = tuple(seq_runs(batch.seqs))
        done[index] = outcome.naming(
            batch.node, () if batch.labels else ranges, ranges if batch.labels else ()
        )
        if outcome.kind == "rejected" and ranges and not batch.labels:
            refusals.append(
                Refusal(
                    node=batch.node,
                    pipeline=topics.parse(messages[index][0]).pipeline,
                    reason=outcome.reason,
                    rule=rules.get(index, ""),
                    detail=outcome.detail,
                    ranges=ranges,
                )
            )
    return refusals


def single_runs(batches: Sequence[npt.NDArray[Any]]) -> list[tuple[int, int] | None]:
    """For each of ``batches`` (seqs, each within 0..MAX_SEQ), its one run (first, last)
    when its seqs are consecutive and ascending, else None (find its runs one by one).

    An edge batch's seqs are one run almost always; answering a whole group with a few
    numpy calls, instead of ``seq_runs``'s several per message, takes per-message work
    off the processing thread, which shares its interpreter with the MQTT network thread.
    """
    lengths = np.fromiter(map(len, batches), dtype=np.intp, count=len(batches))
    if not lengths.any():
        return [None] * len(batches)
    # Seqs are at most MAX_SEQ (2**63 - 1), so unsigned ones fit int64 exactly.
    values = np.concatenate(batches, dtype=np.int64, casting="unsafe")
    ends = np.cumsum(lengths)
    starts = ends - lengths
    # Positions p where values[p + 1] does not follow values[p]; a batch is one run when
    # none lies in [start, end - 1).  An empty batch is none (its indexes are clipped).
    breaks = np.flatnonzero(values[1:] - values[:-1] != 1)
    one_run = (lengths > 0) & (np.searchsorted(breaks, starts) == np.searchsorted(breaks, ends - 1))
    top = len(values) - 1
    firsts = values[np.minimum(starts, top)].tolist()
    lasts = values[np.clip(ends - 1, 0, top)].tolist()
    return [
        (first, last) if single else None
        for first, last, single in zip(firsts, lasts, one_run.tolist(), strict=True)
    ]
