"""The JSON control messages of DESIGN.md §5: node status, desired and reported state,
telemetry and artifact manifests, as frozen pydantic models with bounded fields.

Both sides encode with ``to_payload()`` and decode with ``from_payload()``, which parses the
JSON strictly (no "5" for 5) and raises ``ProtocolError`` naming every bad field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from typing_extensions import Self

from continuum.errors import ProtocolError
from continuum.wire.topics import check_name

#: The message schema this build writes and the newest it reads.
SCHEMA_VERSION: Final = 1
#: Largest control message accepted; real ones are a few KiB.
MAX_MESSAGE_BYTES: Final = 1024 * 1024
#: Largest model artifact a manifest may describe.
MAX_ARTIFACT_BYTES: Final = 16 * 1024**3
#: Largest artifact chunk (one MQTT message).
MAX_CHUNK_BYTES: Final = 16 * 1024**2
#: Most chunks one artifact may have: an agent subscribes to each chunk it lacks, so a
#: manifest naming millions would tie up its link (a 4 GiB artifact in 64 KiB chunks has
#: this many; a larger one takes larger chunks, see ``chunk_layout``).
MAX_CHUNKS: Final = 65_536
_MAX_PIPELINES: Final = 256
_MAX_INT: Final = 2**63 - 1
#: Seq ranges in one stored receipt (ingest sends more receipts when it has more).
MAX_RECEIPT_RANGES: Final = 4096
_MAX_ERRORS_SHOWN: Final = 5


def _named(what: str) -> AfterValidator:
    return AfterValidator(lambda value: check_name(value, what))


NodeName = Annotated[str, _named("node")]
TenantName = Annotated[str, _named("tenant")]
PipelineName = Annotated[str, _named("pipeline")]
ModelName = Annotated[str, _named("model")]
VersionName = Annotated[str, _named("version")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
#: An Ed25519 signature (64 bytes) as lowercase hex.
SignatureHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")]
ShortText = Annotated[str, StringConstraints(max_length=128)]
Count = Annotated[int, Field(ge=0, le=_MAX_INT)]
Timestamp = Annotated[float, Field(ge=0.0, description="Unix time in seconds.")]
Milliseconds = Annotated[float, Field(ge=0.0, le=3.6e6)]


class _WireModel(BaseModel):
    """A frozen, closed, finite model that travels as UTF-8 JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    def to_payload(self) -> bytes:
        """Return this message as a UTF-8 JSON payload."""
        return self.model_dump_json().encode()

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        """Parse a JSON payload strictly.

        Raises:
            ProtocolError: ``reason`` is "too_large", "invalid_json" or "schema"; the message
                names the bad fields.
        """
        if len(data) > MAX_MESSAGE_BYTES:
            raise ProtocolError(
                f"{cls.__name__} payload of {len(data)} bytes exceeds MAX_MESSAGE_BYTES "
                f"({MAX_MESSAGE_BYTES})",
                reason="too_large",
            )
        try:
            return cls.model_validate_json(data, strict=True)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            if any(error["type"] == "json_invalid" for error in errors):
                raise ProtocolError(
                    f"{cls.__name__} payload is not valid JSON: {errors[0]['msg']}",
                    reason="invalid_json",
                ) from exc
            problems = [
                f"{'.'.join(map(str, error['loc'])) or '(message)'}: {error['msg']}"
                for error in errors[:_MAX_ERRORS_SHOWN]
            ]
            more = len(errors) - len(problems)
            raise ProtocolError(
                f"invalid {cls.__name__} payload: {'; '.join(problems)}"
                + (f" (and {more} more)" if more else ""),
                reason="schema",
            ) from exc


class _Message(_WireModel):
    """A top-level message: carries the schema version it was written with."""

    schema_version: int = Field(
        SCHEMA_VERSION,
        ge=1,
        le=SCHEMA_VERSION,
        description="Schema of this message; newer ones are rejected, not half-read.",
    )


class NodeStatus(_Message):
    """Retained status of an edge node: who it is, what it can run, whether it is online."""

    node: NodeName
    tenant: TenantName
    online: bool
    labels: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=253)],
        Annotated[str, StringConstraints(max_length=253)],
    ] = Field(default_factory=dict, max_length=64)
    backends: list[Annotated[str, StringConstraints(min_length=1, max_length=32)]] = Field(
        default_factory=list, max_length=16
    )
    gpu: ShortText | None = None
    tensorrt_version: ShortText | None = None
    agent_version: ShortText
    pipelines: list[PipelineName] = Field(default_factory=list, max_length=_MAX_PIPELINES)
    heartbeat_s: float | None = Field(
        default=None,
        ge=1.0,
        le=3600.0,
        description="How often the node re-publishes this status; the fleet registry marks it "
        "offline after two periods of silence (None: the registry's default period).",
    )
    ts: Timestamp  # last: the fleet registry spots a heartbeat by everything before it


def chunk_layout(size_bytes: int, chunk_size: int) -> tuple[int, int]:
    """Return ``(chunk_size, chunks)`` for an artifact of ``size_bytes``: chunks of the
    ``chunk_size`` asked for, or larger ones where that would make more than ``MAX_CHUNKS``.

    The publisher of an artifact and the rollout that points nodes at it both call this, so
    the desired state and the manifest describe the same chunks.
    """
    size = max(chunk_size, math.ceil(size_bytes / MAX_CHUNKS))
    return size, max(1, math.ceil(size_bytes / size))


class _ArtifactRef(_WireModel):
    """Which artifact, how to check it and how it is chunked."""

    model: ModelName
    version: VersionName
    sha256: Sha256Hex
    signature: SignatureHex
    size_bytes: int = Field(ge=1, le=MAX_ARTIFACT_BYTES)
    chunk_size: int = Field(ge=1, le=MAX_CHUNK_BYTES)
    chunks: int = Field(ge=1, le=MAX_CHUNKS)

    @model_validator(mode="after")
    def _chunks_cover_size(self) -> Self:
        expected = math.ceil(self.size_bytes / self.chunk_size)
        if self.chunks != expected:
            raise ValueError(
                f"chunks is {self.chunks} but size_bytes {self.size_bytes} in chunks of "
                f"chunk_size {self.chunk_size} makes {expected}"
            )
        return self


class DesiredModel(_ArtifactRef):
    """The model version one pipeline on a node should serve.

    ``rollback`` (covered by the desired state's signature) lets the node go to an older
    version than the one it serves (``version_order``); without it the node refuses to, so
    a validly signed but old order cannot take a node back.
    """

    rollback: bool = False


def version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """Return a sort key that orders version names naturally: ``v9`` before ``v10``.

    The registry names versions ``v1``, ``v2``, ...; the cloud and the agent both judge
    "older" with this key (the cloud to mark a rollback, the agent to refuse a downgrade
    that is not marked one).
    """
    parts = re.split(r"(\d+)", version)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts)


class ArtifactManifest(_ArtifactRef, _Message):
    """Retained manifest of one model artifact; its chunks follow on their own topics."""


#: The desired state's own schema (the other messages keep ``SCHEMA_VERSION``): 2 is signed
#: by the tenant's release key over tenant, node, generation, issue time and expiry. A
#: schema-1 desired state (unsigned) is refused by agents of this build, and one of schema 2
#: by older agents: cloud and agents move to it together.
DESIRED_SCHEMA_VERSION: Final = 2


class DesiredState(_Message):
    """Retained desired state of one node (device-shadow style), written and signed by the
    cloud.

    The whole document is signed (``continuum.signing.desired_message``), not only each
    artifact: an agent takes it only when the signature is the tenant's, it names this
    tenant and node, ``issued_at <= now <= expires_at`` (give or take its clock-skew
    allowance), and ``generation`` is above the last it applied.  ``signature`` is optional
    in the schema so that an unsigned document is refused as unsigned, by name.
    """

    schema_version: int = Field(
        DESIRED_SCHEMA_VERSION,
        ge=DESIRED_SCHEMA_VERSION,
        le=DESIRED_SCHEMA_VERSION,
        description="Schema of the desired state; older (unsigned) and newer are rejected.",
    )
    tenant: TenantName
    node: NodeName
    pipelines: dict[PipelineName, DesiredModel] = Field(max_length=_MAX_PIPELINES)
    issued_at: Timestamp
    expires_at: Timestamp
    generation: Count
    signature: SignatureHex | None = None

    @model_validator(mode="after")
    def _valid_for_a_while(self) -> Self:
        if self.expires_at <= self.issued_at:
            raise ValueError(
                f"expires_at ({self.expires_at}) must come after issued_at ({self.issued_at})"
            )
        return self


class ReportedModel(_WireModel):
    """What one pipeline on a node actually serves, or why it does not."""

    model: ModelName
    version: VersionName
    sha256: Sha256Hex
    state: Literal["serving", "fetching", "rejected", "failed"]
    error: Annotated[str, StringConstraints(max_length=2000)] | None = None


class ReportedState(_Message):
    """Retained reported state of one node, written by the node."""

    node: NodeName
    pipelines: dict[PipelineName, ReportedModel] = Field(max_length=_MAX_PIPELINES)
    ts: Timestamp


#: Most drift readings one telemetry message carries (a pipeline runs a few detectors).
MAX_DRIFT_READINGS: Final = 16


class DriftReading(_WireModel):
    """One drift detector's verdict at the end of a telemetry window.

    ``signal`` is what it watches (the model's ``outputs``, its ``inputs``, its errors on
    ``labels``), ``kind`` its test (``psi``, ``ks``, ``inputs``, ``labels``); ``score`` is
    on that test's own scale (PSI, KS statistic D, error-rate rise); ``feature`` names the
    input feature that moved most (``inputs`` only).
    """

    signal: Literal["outputs", "inputs", "labels"]
    kind: Literal["psi", "ks", "inputs", "labels"]
    score: float = Field(ge=0.0)
    drifted: bool
    ready: bool
    feature: ShortText | None = None


class Telemetry(_Message):
    """Metrics of one pipeline on one node over one window.

    Latencies and mean confidence are ``None`` when the window saw no frames (mean
    confidence also for tasks without one: regression, anomaly).  The labelled frames'
    counts give the task's metric per window (``continuum.task.window_metric``):
    ``correct`` (accuracy), ``labelled_positive``/``predicted_positive``/``true_positive``
    (precision, recall, F1 at the threshold of a binary or anomaly task) and the error
    sums (MAE, RMSE of a regression).  ``drift``
    holds one reading per detector the pipeline runs; ``drifted`` is true when any of them
    reports drift and ``drift_score`` is the largest of their scores (0.0 without
    detectors), so a reader that knows only those two fields (older clouds, the retrain
    trigger ``"drift > 0.2"``) still sees a drift from any signal.  Messages written before
    ``drift`` existed parse with no readings.
    """

    node: NodeName
    pipeline: PipelineName
    model_version: VersionName
    window_s: float = Field(gt=0.0, le=86_400.0)
    frames: Count
    uplinked: Count
    dropped: Count
    latency_p50_ms: Milliseconds | None = None
    latency_p95_ms: Milliseconds | None = None
    mean_confidence: float | None = Field(None, ge=0.0, le=1.0)
    drift_score: float = Field(0.0, ge=0.0)
    drifted: bool = False
    drift: list[DriftReading] = Field(default_factory=list, max_length=MAX_DRIFT_READINGS)
    labelled: Count = 0
    correct: Count = 0
    labelled_positive: Count = 0
    predicted_positive: Count = 0
    true_positive: Count = 0
    abs_error_sum: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    squared_error_sum: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    ts: Timestamp

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.correct > self.labelled:
            raise ValueError(f"correct ({self.correct}) exceeds labelled ({self.labelled})")
        positives = (self.labelled_positive, self.predicted_positive)
        if self.true_positive > min(positives) or max(positives) > self.labelled:
            raise ValueError(
                f"true_positive ({self.true_positive}), labelled_positive "
                f"({self.labelled_positive}) and predicted_positive ({self.predicted_positive}) "
                f"do not fit labelled ({self.labelled})"
            )
        p50, p95 = self.latency_p50_ms, self.latency_p95_ms
        if p50 is not None and p95 is not None and p50 > p95:
            raise ValueError(f"latency_p50_ms ({p50}) exceeds latency_p95_ms ({p95})")
        return self

    @property
    def accuracy(self) -> float | None:
        """Return ``correct / labelled``, or ``None`` when nothing was labelled."""
        return self.correct / self.labelled if self.labelled else None


SeqRange = tuple[Count, Count]


def merge_seq_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Return inclusive seq ranges sorted, and merged where they overlap or touch."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


#: A refusal reason as ingest names it (``cloud_head.ingest``): lower-case words joined by _.
RefusalReason = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
#: Reasons in one receipt's ``refused`` (ingest sends more receipts when it has more).
MAX_RECEIPT_REASONS: Final = 64


class RefusedSeqs(_WireModel):
    """Samples of one node that ingest refused for good, and why (a final refusal: sending
    them again could not change it, see ``cloud_head.ingest``)."""

    reason: RefusalReason
    seqs: list[SeqRange] = Field(min_length=1, max_length=MAX_RECEIPT_RANGES)


class StoredReceipt(_Message):
    """Ingest's word to one node: these of its samples are durably stored, these were
    refused for good (a resend could not change that), and the labels it sent for these
    samples are recorded, so its outbox may forget them.

    The broker's PUBACK only says the broker has a message; a broker that crashes before it
    saved or passed the message on loses it.  An outbox that keeps each sample and each
    delayed label until this receipt comes (and sends it again when none came in time)
    loses nothing to such a crash; ingest de-duplicates the samples it receives twice,
    records a label again in place, and confirms again.

    ``seqs`` (samples stored), ``labels`` (the delayed labels of those sample seqs) and
    each ``refused`` entry's ``seqs`` are inclusive ranges ``[first, last]`` of sample
    seqs, ascending; a receipt carries at least one range in one of them.  They are apart
    because a sample and its label travel and are stored apart, and because a sample
    refused is not stored: the node counts and records it as ended by that refusal.  A
    refusal that may pass later (unknown node, quota, ...) gets no receipt at all: the node
    keeps the samples and sends them again.
    """

    node: NodeName
    seqs: list[SeqRange] = Field(default_factory=list, max_length=MAX_RECEIPT_RANGES)
    labels: list[SeqRange] = Field(default_factory=list, max_length=MAX_RECEIPT_RANGES)
    refused: list[RefusedSeqs] = Field(default_factory=list, max_length=MAX_RECEIPT_REASONS)
    ts: Timestamp

    def to_payload(self) -> bytes:
        """Return the receipt as JSON, leaving out an empty ``seqs``, ``labels`` or ``refused``.

        A receipt of samples alone then reads exactly as it did before labels were
        confirmed and refusals named, so agents of those releases (which refuse unknown
        fields) still take it while the cloud is upgraded before them.  Such an agent
        refuses a receipt naming refusals and keeps those samples (sending them again until
        its outbox TTL): nothing is lost, it only costs resends.
        """
        empty = {name for name in ("seqs", "labels", "refused") if not getattr(self, name)}
        return self.model_dump_json(exclude=empty).encode()

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        if not self.seqs and not self.labels and not self.refused:
            raise ValueError("a receipt confirms nothing: seqs, labels and refused are all empty")
        named = [("seqs", self.seqs), ("labels", self.labels)]
        named += [(f"refused.{i}.seqs", r.seqs) for i, r in enumerate(self.refused)]
        if sum(len(r.seqs) for r in self.refused) > MAX_RECEIPT_RANGES:
            raise ValueError(
                f"refused names more than MAX_RECEIPT_RANGES ({MAX_RECEIPT_RANGES}) ranges"
            )
        for name, ranges in named:
            for first, last in ranges:
                if first > last:
                    raise ValueError(f"{name} range [{first}, {last}] ends before it starts")
        return self
