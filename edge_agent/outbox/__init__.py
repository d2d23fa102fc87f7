"""The durable outbox: selected samples and their delayed labels wait here until they are
safely in the cloud.

One SQLite database in WAL mode under the agent's state dir.  A record is deleted only
after its PUBACK (``ack_*``), or, with ``resend_unconfirmed_s``, only after ingest's receipt
says it is stored (``confirm_*``); a crash before that resends it, and ingest de-duplicates
samples by sample id and records a label again in place, so delivery is at-least-once end
to end and exactly-once in the store.

The rooms, each a private module:

- ``_db``: the schema, its migrations, the durability choice (``synchronous``) and write
  transactions;
- ``_seqs``: sample seqs from a hi/lo allocator in the same database (never repeated);
- ``_partitions``: the byte bound, partitioned by pipeline (one pipeline's backlog never
  evicts or blocks another's records), and the byte totals kept in memory;
- ``_samples`` and ``_feedback``: appending under the full policy, leasing out, acks;
- ``_receipts``: ingest's receipts (stored, refused for good, labels recorded);
- ``_upkeep``: expiry, reclaiming pages, stats;
- ``_ledger``: where every selected sample went, readable from the file alone
  (``read_ledger``), even after a crash;
- ``_checkpoint``: WAL checkpoints on a thread of their own, never inside a commit;
- ``_episodes``: drops logged once when they start and once when they end.
"""

from __future__ import annotations

from edge_agent.outbox._core import FullPolicy
from edge_agent.outbox._feedback import FeedbackQueue
from edge_agent.outbox._ledger import OutboxLedger, read_ledger
from edge_agent.outbox._receipts import MAX_REFUSED_ROWS, Receipts
from edge_agent.outbox._records import (
    AppendResult,
    FeedbackEntry,
    OutboxStats,
    PartitionStats,
    PendingFeedback,
    PendingSamples,
    RefusedRange,
    SampleEntry,
    StoredSample,
)
from edge_agent.outbox._samples import SampleQueue
from edge_agent.outbox._upkeep import Upkeep

__all__ = [
    "MAX_REFUSED_ROWS",
    "AppendResult",
    "FeedbackEntry",
    "FullPolicy",
    "Outbox",
    "OutboxLedger",
    "OutboxStats",
    "PartitionStats",
    "PendingFeedback",
    "PendingSamples",
    "RefusedRange",
    "SampleEntry",
    "StoredSample",
    "read_ledger",
]


class Outbox(SampleQueue, FeedbackQueue, Receipts, Upkeep):
    """Durable FIFO of samples and feedback, bounded by bytes per pipeline and by age.

    Thread-safe: the runtime threads append, the uplink thread reads, acks, confirms and
    maintains.  Records handed out by ``next_*`` are leased (in memory)
    until ``ack_*`` deletes them (or marks them sent, with receipts) or ``release_*`` makes
    them eligible again; a reopened outbox has no leases, so everything not acknowledged is
    sent again.

    Args:
        path: the database file (its folder is created).
        max_bytes: bound on stored records; beyond it ``full_policy`` applies.
        partitions: pipeline -> the byte bound of its records (see
            ``AgentSettings.outbox_partition_bytes``), adding up to at most ``max_bytes``.
            None: all pipelines share ``max_bytes`` (tools and tests of one pipeline).
            Records of a pipeline not listed, left by an earlier configuration, are still
            sent or expire, but new ones are refused with ``ValueError``.
        ttl_s: records older than this are dropped by ``expire``.
        resend_unconfirmed_s: with a value, a record the broker acknowledged stays until
            ingest's receipt (``confirm_*``) and is sent again when none came this long
            after its PUBACK; None deletes it at the PUBACK.
        full_policy: what happens when a pipeline's records would outgrow its bound, which
            never touches another pipeline's records: ``drop_oldest`` evicts its oldest
            unleased samples, ``drop_newest`` refuses what does not fit, ``block`` waits up
            to ``block_timeout_s`` for acks to free space and then refuses.
        synchronous: SQLite synchronous mode, "normal" or "full" (see ``_db``).
        on_drop: called with (pipeline, reason, count) whenever records are dropped;
            reasons are "full_newest", "full_oldest" and "expired".
        admit: called with every batch of entries before it is written; returns what may
            be written (the agent's residency gate: what may not leave never touches disk).
        clock: Unix time in seconds (tests pass a fake one).

    Raises:
        ConfigError: a bound is not positive, the partitions do not fit ``max_bytes``, or
            the file cannot be opened as an outbox (corrupt, or from a newer agent).
    """

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
