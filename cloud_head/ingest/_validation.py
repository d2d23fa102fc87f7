"""Ingest's checks of one message: its topic, its payload, its pipeline's schema and class.

``check_message`` returns the message ready to store or raises why not
(``RejectedError``, ``DeferredError``); the residency check, where a policy is given, is
``cloud_head.ingest._residency``'s.  A batch that decoded on its own node's topic is noted
(``Decoded``) whatever comes next, so its receipt can name its seqs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cloud_head.ingest._outcome import RejectedError
from cloud_head.seen import MAX_SEQ
from continuum.errors import InputMismatchError, ProtocolError
from continuum.spec import PipelineSpec
from continuum.wire import codec, topics

if TYPE_CHECKING:
    from cloud_head.ingest._residency import ResidencyCheck


@dataclass(slots=True)
class Accepted:
    """A message that passed every check, waiting for the durable write."""

    index: int
    samples: codec.SampleColumns | None = None
    feedback: codec.FeedbackBatch | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
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


_Batch = codec.SampleColumns | codec.SampleBatch | codec.FeedbackBatch


def check_message(
    index: int,
    topic: str,
    payload: bytes,
    decoded: dict[int, Decoded],
    *,
    tenant: str,
    spec_of: Callable[[str], PipelineSpec | None],
    residency: ResidencyCheck | None,
) -> Accepted:
    """Return message ``index`` ready to store, or raise why not.

    A batch that decoded on its own node's topic goes into ``decoded`` (its receipt,
    whatever comes next).  ``spec_of`` returns the deployed spec of a pipeline, None for
    one not deployed; ``residency`` checks a sample batch against the policy, if any.

    Raises:
        RejectedError: refused, for good or for now (see ``FINAL_REASONS``).
        DeferredError: it cannot be judged yet (its node is not known yet).
    """
    spec, batch = _decode(topic, payload, tenant=tenant, spec_of=spec_of)
    if isinstance(batch, codec.FeedbackBatch):
        labelled = np.fromiter((seq for seq, _ in batch.items), dtype=np.uint64)
        if 0 <= _highest(labelled) <= MAX_SEQ:
            decoded[index] = Decoded(batch.node, labelled, labels=True)
        return Accepted(index, feedback=batch)
    seqs = (
        batch.seq
        if isinstance(batch, codec.SampleColumns)
        else np.fromiter((r.seq for r in batch.records), dtype=np.uint64)
    )
    highest = _highest(seqs)
    if 0 <= highest <= MAX_SEQ:
        decoded[index] = Decoded(batch.node, seqs)
    if batch.data_class.rank > spec.data_class.rank:
        raise RejectedError(
            "data_class_mismatch",
            f"batch is {batch.data_class.value}, pipeline {spec.name!r} stores at most "
            f"{spec.data_class.value}",
        )
    if isinstance(batch, codec.SampleBatch):
        check_schema(spec, batch)
        raise AssertionError("a batch decoded off its schema passed the schema check")
    if len(batch) == 0:
        raise RejectedError("empty_batch", "the batch holds no samples; send none instead")
    if highest > MAX_SEQ:
        raise RejectedError(
            "bad_seq",
            f"sample seq {highest} is beyond the store's range (below 2**63); "
            "seqs come from the edge outbox's allocator, which stays far below it",
        )
    if residency is not None:
        residency.check(spec, batch)
    return Accepted(index, samples=batch)


def _decode(
    topic: str,
    payload: bytes,
    *,
    tenant: str,
    spec_of: Callable[[str], PipelineSpec | None],
) -> tuple[PipelineSpec, _Batch]:
    """Return the pipeline of ``topic`` and its batch, decoded and on its own topic."""
    try:
        parsed = topics.parse(topic)
    except ProtocolError as exc:
        raise RejectedError(exc.reason, str(exc)) from exc
    if parsed.tenant != tenant:
        raise RejectedError(
            "wrong_tenant", f"topic of tenant {parsed.tenant!r}, this is {tenant!r}"
        )
    if parsed.kind not in ("samples", "feedback"):
        raise RejectedError("unexpected_topic", f"ingest does not take {parsed.kind} messages")
    spec = spec_of(parsed.pipeline)
    if spec is None:
        raise RejectedError("unknown_pipeline", f"no pipeline {parsed.pipeline!r} is deployed")
    try:
        batch: _Batch
        if parsed.kind == "samples":
            schema = spec.edge.input
            try:
                batch = codec.decode_sample_columns(
                    payload, dtype=schema.dtype, shape=tuple(schema.shape)
                )
            except InputMismatchError:
                # A tensor off the schema: decode the records so the checks run in their
                # usual order and the schema check names the first such sample.
                batch = codec.decode_samples(payload)
        else:
            batch = codec.decode_feedback(payload)
    except ProtocolError as exc:
        raise RejectedError(exc.reason, str(exc)) from exc
    if batch.node != parsed.node:
        raise RejectedError(
            "node_mismatch", f"batch of node {batch.node!r} on the topic of {parsed.node!r}"
        )
    if batch.pipeline != parsed.pipeline:
        raise RejectedError(
            "pipeline_mismatch",
            f"batch of pipeline {batch.pipeline!r} on the topic of {parsed.pipeline!r}",
        )
    return spec, batch


def check_schema(spec: PipelineSpec, batch: codec.SampleBatch) -> None:
    """Raise ``RejectedError`` (schema_mismatch) naming the first sample off the schema."""
    schema = spec.edge.input
    want_shape = tuple(schema.shape)
    want_dtype = _dtype(schema.dtype)  # comparing dtypes is cheap; dtype.name is not
    for record in batch.records:
        tensor = record.tensor
        if tensor.shape != want_shape or tensor.dtype != want_dtype:
            raise RejectedError(
                "schema_mismatch",
                f"sample {batch.sample_id(record)}: expected {schema.dtype}"
                f"{list(want_shape)}, got {tensor.dtype.name}{list(tensor.shape)}",
            )
