"""Ingest's durable writes of sample batches: de-duplicate, take the quota, append, flush once.

The order is what makes a crash safe: the Parquet files are written and fsynced (file, then
directory) before the ids are committed to the seen index, and the messages are
acknowledged only after both.  The seen index runs in WAL mode with ``synchronous=NORMAL``:
a power cut can lose its last commits, but never a file they describe, and a file whose
path has no ``stored_files`` row is adopted (its ids read back from the file) before that
pipeline's next write, so a redelivered or resent sample is still found there.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from cloud_head.ingest._audit import SeqSpan
from cloud_head.ingest._dedup import Dedup, fresh_rows
from cloud_head.ingest._outcome import IngestCounts, Outcome, refused
from cloud_head.ingest._quota import DailyQuota, QuotaGrant
from cloud_head.ingest._validation import Accepted
from cloud_head.seen import NodeKey
from cloud_head.store import SampleStore
from continuum.spec import PipelineSpec
from continuum.wire import codec

_log = logging.getLogger("cloud_head.ingest")

#: Errors of a write that say the data cannot be stored (a resend would fail the same way),
#: as opposed to the store being unavailable (OSError and the rest: retried).
_DATA_ERRORS: Final = (ValueError, TypeError, OverflowError)

#: pipeline -> node -> the seqs one write stored
Stored = dict[str, dict[str, SeqSpan]]
#: message index -> the seqs of its samples the quota held back
Held = dict[int, npt.NDArray[np.int64]]


class SampleWriter:
    """Store the sample batches of one group with one flush, each sample once."""

    def __init__(
        self,
        tenant: str,
        store: SampleStore,
        dedup: Dedup,
        quota: DailyQuota,
        *,
        spec_of: Callable[[str], PipelineSpec | None],
        counts: IngestCounts,
        clock_ns: Callable[[], int],
    ) -> None:
        self._tenant = tenant
        self._store = store
        self._dedup = dedup
        self._quota = quota
        self._spec_of = spec_of
        self._counts = counts
        self._clock_ns = clock_ns
        self._ignored_fields: set[tuple[str, str]] = set()  # (pipeline, field) logged

    def write(self, items: list[Accepted], stored: Stored, held: Held) -> dict[int, Outcome]:
        """De-duplicate, append, flush once, then record the ids; map message index -> outcome.

        ``stored`` receives pipeline -> node -> the seqs written, once durable; ``held``
        message index -> the seqs the ``samples_per_day`` quota held back (they get no
        receipt: the node sends them again, and one day they fit).
        """
        now_ns = self._clock_ns()
        grant = self._quota.grant(now_ns)
        outcomes: dict[int, Outcome] = {}
        new_seqs: dict[NodeKey, list[npt.NDArray[np.int64]]] = {}
        try:
            batches = [item.samples for item in items if item.samples is not None]
            seqs_of = [batch.seq.astype(np.int64) for batch in batches]
            by_node: dict[NodeKey, list[npt.NDArray[np.int64]]] = {}
            for batch, seqs in zip(batches, seqs_of, strict=True):
                by_node.setdefault((batch.pipeline, batch.node), []).append(seqs)
            # Seqs stored by an earlier message of this group count as seen for later ones.
            taken = self._dedup.taken(by_node, now_ns)
            for item, batch, seqs in zip(items, batches, seqs_of, strict=True):
                key = (batch.pipeline, batch.node)
                outcomes[item.index] = self._append(
                    item.index, batch, seqs, taken[key], grant, held, new_seqs, now_ns
                )
            paths = self._store.flush()
        except Exception as exc:
            # Nothing is acknowledged, so the broker redelivers; drop the rows not yet written
            # and adopt the files that were, so the redelivery does not store them again.
            self._store.discard()
            self._dedup.adopt_failed_write(now_ns)
            for item in items:
                held.pop(item.index, None)
            if isinstance(exc, _DATA_ERRORS):
                return self._isolate_unstorable(items, stored, held, exc)
            _log.error("writing the sample store failed, will retry: %r", exc)
            return {item.index: Outcome("failed", detail=repr(exc)) for item in items}
        fresh = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in new_seqs.items()}
        self._dedup.record(fresh, now_ns, paths)
        self._quota.spend(grant)
        for (pipeline, node), values in fresh.items():
            stored.setdefault(pipeline, {})[node] = SeqSpan.of(values)
        return outcomes

    def _append(
        self,
        index: int,
        batch: codec.SampleColumns,
        seqs: npt.NDArray[np.int64],
        taken: set[int] | None,
        grant: QuotaGrant,
        held: Held,
        new_seqs: dict[NodeKey, list[npt.NDArray[np.int64]]],
        now_ns: int,
    ) -> Outcome:
        """Append the new samples of one message that fit the quota (not flushed yet)."""
        fresh = fresh_rows(seqs, taken)
        keep = grant.take(len(fresh))
        over = len(fresh) - keep
        if over:
            held[index] = seqs[np.asarray(fresh[keep:], dtype=np.intp)]
            fresh = fresh[:keep]
        if fresh:
            whole = len(fresh) == len(seqs)
            new = self._declared_fields(batch if whole else batch.take(list(fresh)))
            self._store.append_columns(self._tenant, new, ingested_at_ns=now_ns)
            new_seqs.setdefault((batch.pipeline, batch.node), []).append(
                seqs if whole else seqs[np.asarray(fresh, dtype=np.intp)]
            )
        duplicates = len(seqs) - len(fresh) - over
        quota_detail = f"{over} sample(s) over the samples_per_day quota"
        if over and not fresh:
            return refused("quota", quota_detail, duplicates=duplicates, over_quota=over)
        return Outcome(
            "stored",
            stored=len(fresh),
            duplicates=duplicates,
            over_quota=over,
            detail=quota_detail if over else "",
        )

    def _isolate_unstorable(
        self, items: list[Accepted], stored: Stored, held: Held, exc: Exception
    ) -> dict[int, Outcome]:
        """Store the messages of a group one by one after the group failed on its data.

        A message the store cannot take is held (``unstorable``: acknowledged without a
        receipt, so its node keeps the samples and sends them again, until a fixed store
        takes them) instead of failing, and so holding back, every message grouped with it.
        """
        if len(items) > 1:
            outcomes: dict[int, Outcome] = {}
            for item in items:
                outcomes.update(self.write([item], stored, held))
            return outcomes
        _log.error("the sample store cannot take a batch; holding it back: %r", exc)
        return {items[0].index: refused("unstorable", repr(exc))}

    def _declared_fields(self, batch: codec.SampleColumns) -> codec.SampleColumns:
        """Return ``batch`` with only the fields its pipeline's schema declares.

        The store's columns are the schema's fields; an undeclared name (a source's extra,
        or a typo) is counted and logged once instead of growing a column per name.
        """
        if batch.fields is None:
            return batch
        pipeline = batch.pipeline
        spec = self._spec_of(pipeline)
        declared = spec.edge.input.fields if spec is not None else {}
        out = []
        changed = False
        for fields in batch.fields:
            extra = [name for name in fields if name not in declared]
            if not extra:
                out.append(fields)
                continue
            changed = True
            self._counts.add("fields_ignored", len(extra))
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
