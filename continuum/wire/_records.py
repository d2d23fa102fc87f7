"""The records the codec encodes and decodes: samples one by one or as columns, feedback."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from continuum._data_class import DataClass

#: A field value on the wire: text or raw bytes (numbers are stringified by the sender).
FieldValue: TypeAlias = str | bytes
#: The fields of a record without any; shared, read-only.
NO_FIELDS: Final[Mapping[str, FieldValue]] = MappingProxyType({})


def sample_id(node: str, seq: int) -> str:
    """Return the globally unique id of sample ``seq`` of ``node`` (ingest de-duplicates on it)."""
    return f"{node}:{seq}"


@dataclass(frozen=True, slots=True, eq=False)
class SampleRecord:
    """One selected sample: its tensor, what the edge model said about it, its side fields.

    ``confidence`` travels as float32.  ``fields`` are named values captured with the tensor
    (name -> text or bytes), after the edge applied the residency plan to them.  Records
    compare equal when every field, the dtype, the shape and the tensor bytes are the same
    (so NaN equals NaN); they are not hashable.
    """

    seq: int
    captured_at_ns: int
    tensor: npt.NDArray[Any]
    prediction: int = -1
    confidence: float = math.nan
    label: int | None = None
    fields: Mapping[str, FieldValue] = field(default_factory=lambda: NO_FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampleRecord):
            return NotImplemented
        a, b = self.tensor, other.tensor
        return (
            self.seq == other.seq
            and self.captured_at_ns == other.captured_at_ns
            and self.prediction == other.prediction
            and self.label == other.label
            and (
                self.confidence == other.confidence
                or (math.isnan(self.confidence) and math.isnan(other.confidence))
            )
            and a.dtype.newbyteorder("<") == b.dtype.newbyteorder("<")
            and a.shape == b.shape
            and dict(self.fields) == dict(other.fields)
            and le_bytes(a) == le_bytes(b)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Samples of one pipeline on one node, predicted by one model version."""

    pipeline: str
    node: str
    model_version: str
    data_class: DataClass
    records: tuple[SampleRecord, ...]

    def sample_id(self, record: SampleRecord) -> str:
        """Return the globally unique id of ``record``: ``"{node}:{seq}"``."""
        return sample_id(self.node, record.seq)


@dataclass(frozen=True, slots=True, eq=False)
class SampleColumns:
    """The records of one sample batch as columns: entry ``i`` of each array is record ``i``.

    What ingest and the store work with: no Python object per record.  Every tensor has one
    dtype and shape, so ``tensors`` is one array ``(n, *shape)``; ``label`` holds 0 where
    ``has_label`` is false; ``fields`` is None when no record carries fields.
    """

    pipeline: str
    node: str
    model_version: str
    data_class: DataClass
    seq: npt.NDArray[np.unsignedinteger[Any]]
    captured_at_ns: npt.NDArray[np.signedinteger[Any]]
    prediction: npt.NDArray[np.signedinteger[Any]]
    confidence: npt.NDArray[np.floating[Any]]
    label: npt.NDArray[np.signedinteger[Any]]
    has_label: npt.NDArray[np.bool_]
    tensors: npt.NDArray[Any]
    fields: tuple[Mapping[str, FieldValue], ...] | None = None

    def __len__(self) -> int:
        return len(self.seq)

    def sample_ids(self) -> list[str]:
        """Return each record's globally unique id (see ``sample_id``), in order."""
        node = self.node
        return [sample_id(node, seq) for seq in self.seq.tolist()]

    def take(self, rows: npt.NDArray[np.intp] | list[int]) -> SampleColumns:
        """Return the columns of records ``rows`` only, in that order."""
        index = np.asarray(rows, dtype=np.intp)
        fields = self.fields
        return SampleColumns(
            self.pipeline,
            self.node,
            self.model_version,
            self.data_class,
            self.seq[index],
            self.captured_at_ns[index],
            self.prediction[index],
            self.confidence[index],
            self.label[index],
            self.has_label[index],
            self.tensors[index],
            None if fields is None else tuple(fields[i] for i in index.tolist()),
        )

    def records(self) -> tuple[SampleRecord, ...]:
        """Return the records as ``SampleRecord`` objects (as ``decode_samples`` makes them)."""
        fields = self.fields or (NO_FIELDS,) * len(self)
        labels = [
            label if has else None
            for label, has in zip(self.label.tolist(), self.has_label.tolist(), strict=True)
        ]
        return tuple(
            SampleRecord(
                seq=seq,
                captured_at_ns=captured,
                tensor=tensor,
                prediction=prediction,
                confidence=confidence,
                label=label,
                fields=record_fields,
            )
            for seq, captured, tensor, prediction, confidence, label, record_fields in zip(
                self.seq.tolist(),
                self.captured_at_ns.tolist(),
                self.tensors,
                self.prediction.tolist(),
                self.confidence.tolist(),
                labels,
                fields,
                strict=True,
            )
        )

    @classmethod
    def from_batch(
        cls, batch: SampleBatch, *, dtype: np.dtype[Any], shape: tuple[int, ...]
    ) -> SampleColumns:
        """Return ``batch`` as columns; every tensor must already be ``dtype[shape]``."""
        records = batch.records
        n = len(records)
        fields = tuple(r.fields for r in records)
        return cls(
            batch.pipeline,
            batch.node,
            batch.model_version,
            batch.data_class,
            np.fromiter((r.seq for r in records), np.uint64, n),
            np.fromiter((r.captured_at_ns for r in records), np.int64, n),
            np.fromiter((r.prediction for r in records), np.int32, n),
            np.fromiter((r.confidence for r in records), np.float32, n),
            np.fromiter((r.label or 0 for r in records), np.int32, n),
            np.fromiter((r.label is not None for r in records), np.bool_, n),
            np.stack([r.tensor for r in records]) if n else np.empty((0, *shape), dtype),
            fields if any(fields) else None,
        )


@dataclass(frozen=True, slots=True)
class FeedbackBatch:
    """Delayed ground-truth labels of earlier samples of one node: ``(seq, label)`` pairs.

    A label is a class (int) or, for a regression, a value (float).
    """

    pipeline: str
    node: str
    items: tuple[tuple[int, int | float], ...]


def le_bytes(tensor: npt.NDArray[Any]) -> bytes:
    """Return the tensor's bytes in little-endian C order, as the wire carries them."""
    return np.ascontiguousarray(tensor, dtype=tensor.dtype.newbyteorder("<")).tobytes()
