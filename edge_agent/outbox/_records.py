"""The outbox's records: what goes in (entries), what comes out (pending batches), what it
reports (append results, refusals, depth and age), and what each counts against its bound."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from continuum.sources import FieldValue
from continuum.wire.codec import NO_FIELDS
from continuum.wire.codec import FieldValue as WireValue

#: Bytes counted per sample on top of its tensor (row, index and metadata overhead).
SAMPLE_OVERHEAD = 96
#: Bytes counted per delayed label.
FEEDBACK_SIZE = 48


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleEntry:
    """A selected sample to keep until acknowledged; ``seq`` comes from ``reserve_seqs``.

    ``fields`` are the frame's named side values as they may leave the node (the agent's
    ``admit`` hook applies the residency plan before anything is written).
    """

    pipeline: str
    model_version: str
    data_class: str
    seq: int
    captured_at_ns: int
    tensor: np.ndarray
    prediction: int
    confidence: float
    label: int | None = None
    fields: Mapping[str, FieldValue] = field(default_factory=lambda: NO_FIELDS)

    @property
    def size_bytes(self) -> int:
        """Bytes this record counts against the outbox bound."""
        if not self.fields:
            return int(self.tensor.nbytes) + SAMPLE_OVERHEAD
        extra = sum(
            len(k) + (len(v) if isinstance(v, str | bytes) else 24) for k, v in self.fields.items()
        )
        return int(self.tensor.nbytes) + SAMPLE_OVERHEAD + extra


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackEntry:
    """A delayed label for uplinked sample ``seq``, to send once ``due_at`` (Unix s) passed.

    A class (int) or a regression's value (float).
    """

    pipeline: str
    seq: int
    label: int | float
    due_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSample:
    """A sample read back from the outbox."""

    seq: int
    captured_at_ns: int
    tensor: np.ndarray
    prediction: int
    confidence: float
    label: int | None
    fields: Mapping[str, WireValue] = field(default_factory=lambda: NO_FIELDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingSamples:
    """The next samples to send: all of one pipeline, model version and data class."""

    pipeline: str
    model_version: str
    data_class: str
    records: tuple[StoredSample, ...]

    @property
    def seqs(self) -> tuple[int, ...]:
        """The outbox keys of these records (their sample seqs)."""
        return tuple(r.seq for r in self.records)


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingFeedback:
    """The next due feedback items of one pipeline: their outbox ``ids`` and (seq, label)."""

    pipeline: str
    ids: tuple[int, ...]
    items: tuple[tuple[int, int | float], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResult:
    """What ``append_samples`` did: how many records it kept and which it had to drop."""

    appended: int
    refused: int
    evicted: int
    kept: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RefusedRange:
    """A run of consecutive samples of one pipeline that ingest refused for good, and why."""

    pipeline: str
    first_seq: int
    last_seq: int
    count: int
    reason: str
    refused_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionStats:
    """Depth, bytes, bound and age of one pipeline's records in the outbox."""

    samples: int
    feedback: int
    bytes: int
    max_bytes: int
    oldest_age_s: float
    dropped: dict[str, int]
    #: Of ``samples``: sent and acknowledged by the broker, waiting for ingest's receipt.
    samples_awaiting_receipt: int = 0
    #: Of ``feedback``: the same for delayed labels.
    feedback_awaiting_receipt: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStats:
    """Depth and age of the outbox, in all and per pipeline, for the metrics gauges."""

    samples: int
    feedback: int
    bytes: int
    oldest_age_s: float
    dropped: dict[str, int]
    pipelines: dict[str, PartitionStats] = field(default_factory=dict)
