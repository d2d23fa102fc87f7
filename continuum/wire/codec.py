"""The binary payloads of the samples and feedback topics: one home for their byte layout.

Every payload is a frame: a fixed header, then a body whose layout depends on the kind.
All integers and floats are little-endian; tensors are raw C-contiguous little-endian bytes,
never base64 or JSON.

Frame header (15 bytes)::

    magic      4s   b"CTMW"
    version    u8   FORMAT_VERSION
    kind       u8   1 = sample batch, 2 = feedback batch
    flags      u8   0 (no flags are defined in version 1; any set bit is rejected)
    body_len   u32  bytes after the header
    crc32      u32  zlib.crc32 over the 11 header bytes before it, then the body

Sample batch body::

    data_class u8   0 public, 1 internal, 2 confidential, 3 restricted
    pipeline   u8 length + ASCII   (topics.check_name rules)
    node       u8 length + ASCII
    version    u8 length + ASCII   (the model version that made the predictions)
    count      u32  records that follow (at most MAX_RECORDS)
    per record:
      flags      u8   bit 0: a label follows; bit 1: prediction is i32 (else i16);
                      bit 2: a field section follows the tensor data
      seq        u64  monotonic per node; (node, seq) is the sample id
      captured   i64  captured_at_ns
      prediction i16 | i32
      confidence f32  (NaN when unknown)
      label      i32  only when flag bit 0 is set
      dtype      u8   see DTYPE_CODES
      ndim       u8   at most MAX_NDIM
      dims       u32 * ndim
      data       prod(dims) * itemsize raw bytes
      fields     only when flag bit 2 is set (a record without fields costs nothing more):
        count    u8   1..MAX_FIELDS
        per field, names strictly ascending:
          name   u8 length + ASCII   (topics.check_name rules)
          type   u8   0 = UTF-8 text, 1 = bytes
          length u32  then that many value bytes (at most MAX_FIELD_BYTES)

Feedback batch body: pipeline, node, count u32, then per item seq u64 and label i32.

Decoding rejects anything it cannot prove well formed with a ``ProtocolError`` whose
``reason`` is one of ``REASONS``, so ingest can count rejects by reason.  Decoded tensors are
read-only views into the payload (zero copy; the payload ``bytes`` is immutable, so no one can
change them behind the reader's back); pass ``copy=True`` for writable, independent arrays.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt

from continuum.errors import InputMismatchError, ProtocolError
from continuum._data_class import DataClass
from continuum.wire.topics import check_name

MAGIC: Final = b"CTMW"
FORMAT_VERSION: Final = 1
KIND_SAMPLES: Final = 1
KIND_FEEDBACK: Final = 2

#: Largest payload either side accepts (the MQTT message limit of a small broker is far larger).
MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
#: Most records (or feedback items) in one batch.
MAX_RECORDS: Final = 65_536
#: Most tensor dimensions per record.
MAX_NDIM: Final = 8
#: Most named side fields per record (an IBAN, an operator, a face crop...).
MAX_FIELDS: Final = 64
#: Largest value of one field; a bigger side payload belongs in the tensor.
MAX_FIELD_BYTES: Final = 1024 * 1024

#: A field value on the wire: text or raw bytes (numbers are stringified by the sender).
FieldValue: TypeAlias = str | bytes
#: The fields of a record without any; shared, read-only.
NO_FIELDS: Final[Mapping[str, FieldValue]] = MappingProxyType({})

#: Every ``ProtocolError.reason`` the codec raises.
REASONS: Final = frozenset(
    {
        "truncated",  # the payload ends before its structure does
        "trailing_bytes",  # bytes after the declared body or after the last record
        "too_large",  # over MAX_PAYLOAD_BYTES, MAX_RECORDS or a tensor larger than that
        "bad_magic",  # not a continuum payload at all
        "unsupported_version",  # a format version this build does not read
        "bad_kind",  # a feedback batch where samples were expected, or vice versa
        "bad_flags",  # a flag bit this version does not define
        "corrupt",  # CRC32 mismatch
        "bad_name",  # pipeline, node, model version or field name breaks the name rules
        "bad_data_class",  # unknown data class code or value
        "bad_dtype",  # a tensor dtype without a wire code
        "bad_shape",  # ndim above MAX_NDIM or a shape the bytes do not match
        "bad_value",  # a value out of its wire range or type (a field: not str/bytes/UTF-8)
    }
)

#: Wire code of each tensor dtype (little-endian); code 0 is never valid.
DTYPE_CODES: Final[dict[np.dtype[Any], int]] = {
    np.dtype(name): code
    for code, name in enumerate(
        ("|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"),
        start=1,
    )
}
_DTYPE_BY_CODE: Final[tuple[np.dtype[Any] | None, ...]] = (None, *DTYPE_CODES)

#: Wire code of each data class; fixed here so that reordering the enum cannot change the wire.
_DATA_CLASS_CODES: Final = {
    DataClass.PUBLIC: 0,
    DataClass.INTERNAL: 1,
    DataClass.CONFIDENTIAL: 2,
    DataClass.RESTRICTED: 3,
}
_DATA_CLASS_BY_CODE: Final = {code: data_class for data_class, code in _DATA_CLASS_CODES.items()}

_HEADER: Final = struct.Struct("<4sBBBII")
_CRC_OFFSET: Final = _HEADER.size - 4
_U8: Final = struct.Struct("<B")
_U32: Final = struct.Struct("<I")
_RECORD_HAS_LABEL: Final = 0x01
_RECORD_WIDE_PREDICTION: Final = 0x02
_RECORD_HAS_FIELDS: Final = 0x04
_RECORD_LAYOUT: Final = _RECORD_HAS_LABEL | _RECORD_WIDE_PREDICTION
_RECORD_FLAGS: Final = _RECORD_LAYOUT | _RECORD_HAS_FIELDS
_FIELD_TEXT: Final = 0
_FIELD_BYTES: Final = 1
_FIELD_HEAD: Final = struct.Struct("<BI")
#: Fixed record fields after the flags byte, one layout per flags value.
_RECORD_FIXED: Final = (
    struct.Struct("<QqhfBB"),
    struct.Struct("<QqhfiBB"),
    struct.Struct("<QqifBB"),
    struct.Struct("<QqifiBB"),
)
_DIMS: Final = tuple(struct.Struct(f"<{n}I") for n in range(MAX_NDIM + 1))
_FEEDBACK_ITEM: Final = struct.Struct("<Qi")
_KIND_NAMES: Final = {KIND_SAMPLES: "sample batch", KIND_FEEDBACK: "feedback batch"}

_U64_MAX: Final = 2**64 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1
_I16_MIN, _I16_MAX = -(2**15), 2**15 - 1


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
            and _le_bytes(a) == _le_bytes(b)
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
    """Delayed ground-truth labels of earlier samples of one node: ``(seq, label)`` pairs."""

    pipeline: str
    node: str
    items: tuple[tuple[int, int], ...]


def encode_samples(batch: SampleBatch) -> bytes:
    """Encode ``batch`` as one binary payload.

    Raises:
        ProtocolError: a name, data class, dtype, shape or field value cannot go on the wire,
            or the payload would exceed ``MAX_PAYLOAD_BYTES``.
    """
    try:
        code = _DATA_CLASS_CODES[DataClass(batch.data_class)]
    except ValueError as exc:
        raise ProtocolError(
            f"unknown data class {batch.data_class!r}: use one of {[c.value for c in DataClass]}",
            reason="bad_data_class",
        ) from exc
    _check_count(len(batch.records), "records")
    parts: list[Any] = [
        _U8.pack(code),
        _pack_name(batch.pipeline, "pipeline"),
        _pack_name(batch.node, "node"),
        _pack_name(batch.model_version, "version"),
        _U32.pack(len(batch.records)),
    ]
    size = _HEADER.size + sum(len(p) for p in parts)
    for index, record in enumerate(batch.records):
        head, tensor = _pack_record(index, record)
        parts.append(head)
        parts.append(tensor)
        size += len(head) + tensor.nbytes
        if record.fields:
            section = _pack_fields(record.fields, _where(index, record))
            parts.append(section)
            size += len(section)
        if size > MAX_PAYLOAD_BYTES:
            raise ProtocolError(
                f"sample batch exceeds MAX_PAYLOAD_BYTES ({MAX_PAYLOAD_BYTES}) at record {index}: "
                "send fewer records per batch",
                reason="too_large",
            )
    return _frame(KIND_SAMPLES, b"".join(parts))


def decode_samples(payload: bytes, *, copy: bool = False) -> SampleBatch:
    """Decode a payload made by ``encode_samples``.

    Tensors are read-only views into ``payload`` unless ``copy`` is true.

    Raises:
        ProtocolError: the payload is not a well-formed sample batch; ``reason`` says why.
    """
    payload = _as_bytes(payload)
    offset = _open_frame(payload, KIND_SAMPLES)
    header, offset = _sample_header(payload, offset)
    return _decode_records(payload, offset, header, copy=copy)


def decode_sample_columns(
    payload: bytes, *, dtype: npt.DTypeLike, shape: tuple[int, ...]
) -> SampleColumns:
    """Decode a payload made by ``encode_samples`` whose every tensor is ``dtype[shape]``.

    A batch of records that share one layout (the same flags, no fields: what an edge
    uplink sends) is read with one numpy view, without a Python object per record; any
    other batch is decoded record by record, and both yield the same columns.  Tensors are
    read-only views into ``payload``.

    Raises:
        ProtocolError: the payload is not a well-formed sample batch; ``reason`` says why.
        InputMismatchError: it is, but a tensor is not ``dtype[shape]`` (the first one).
    """
    payload = _as_bytes(payload)
    want = np.dtype(dtype)
    want_shape = tuple(int(d) for d in shape)
    offset = _open_frame(payload, KIND_SAMPLES)
    header, offset = _sample_header(payload, offset)
    columns = _uniform_columns(payload, offset, header, want, want_shape)
    if columns is not None:
        return columns
    batch = _decode_records(payload, offset, header, copy=False)
    for record in batch.records:
        tensor = record.tensor
        if tensor.shape != want_shape or tensor.dtype != want:
            raise InputMismatchError(
                f"sample {batch.sample_id(record)}",
                expected=f"{want.name}{list(want_shape)}",
                got=f"{tensor.dtype.name}{list(tensor.shape)}",
            )
    return SampleColumns.from_batch(batch, dtype=want, shape=want_shape)


@dataclass(frozen=True, slots=True)
class _SampleHeader:
    data_class: DataClass
    pipeline: str
    node: str
    model_version: str
    count: int


def _sample_header(payload: bytes, offset: int) -> tuple[_SampleHeader, int]:
    """Read the sample batch header after the frame header; return it and the records' offset."""
    try:
        data_class_code = payload[offset]
        data_class = _DATA_CLASS_BY_CODE.get(data_class_code)
        if data_class is None:
            raise ProtocolError(
                f"unknown data class code {data_class_code}", reason="bad_data_class"
            )
        pipeline, offset = _unpack_name(payload, offset + 1, "pipeline")
        node, offset = _unpack_name(payload, offset, "node")
        model_version, offset = _unpack_name(payload, offset, "version")
        (count,) = _U32.unpack_from(payload, offset)
    except (struct.error, IndexError) as exc:
        raise ProtocolError(
            "sample batch body ends inside the batch header", reason="truncated"
        ) from exc
    _check_count(count, "records")
    return _SampleHeader(data_class, pipeline, node, model_version, count), offset + 4


def _uniform_columns(
    payload: bytes,
    offset: int,
    header: _SampleHeader,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
) -> SampleColumns | None:
    """Read records that all share the first one's flags and the layout ``dtype[shape]`` as
    one numpy structured view; None when they do not (the record path then decides).

    Records of one flags value and one tensor layout have one size, so when ``count`` of
    them fill the body exactly, each starts where the record-by-record reader would start it.
    """
    count = header.count
    dtype_code = DTYPE_CODES.get(dtype)
    if count == 0 or dtype_code is None or not shape or math.prod(shape) == 0:
        return None
    flags = payload[offset] if offset < len(payload) else 0xFF
    if flags > _RECORD_LAYOUT:  # fields (variable size) or undefined bits
        return None
    record = _record_dtype(flags, dtype, shape)
    if len(shape) > MAX_NDIM or count * record.itemsize != len(payload) - offset:
        return None
    rows = np.frombuffer(payload, record, count, offset)
    # Every record's layout bytes (flags, dtype, ndim, dims) must be the first one's: one
    # gather and one comparison over the raw bytes instead of a numpy call per field.
    columns, expected = _layout_bytes(flags, dtype, shape)
    raw = np.frombuffer(payload, np.uint8, count * record.itemsize, offset)
    if not (raw.reshape(count, record.itemsize)[:, columns] == expected).all():
        return None
    has_label = bool(flags & _RECORD_HAS_LABEL)
    return SampleColumns(
        pipeline=header.pipeline,
        node=header.node,
        model_version=header.model_version,
        data_class=header.data_class,
        seq=rows["seq"],
        captured_at_ns=rows["captured"],
        prediction=rows["prediction"],
        confidence=rows["confidence"],
        label=rows["label"] if has_label else np.zeros(count, np.int32),
        has_label=np.ones(count, np.bool_) if has_label else np.zeros(count, np.bool_),
        tensors=rows["data"],
    )


@functools.lru_cache(maxsize=256)
def _layout_bytes(
    flags: int, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint8]]:
    """Return where a record of this layout keeps its layout fields, and their bytes."""
    record = _record_dtype(flags, dtype, shape)
    fields = record.fields
    assert fields is not None  # a structured dtype
    one = np.zeros(1, record)
    one["flags"], one["dtype"], one["ndim"], one["dims"] = (
        flags,
        DTYPE_CODES[dtype],
        len(shape),
        shape,
    )
    columns = np.concatenate(
        [
            np.arange(fields[name][1], fields[name][1] + record[name].itemsize)
            for name in ("flags", "dtype", "ndim", "dims")
        ]
    )
    return columns, one.view(np.uint8)[columns]


@functools.lru_cache(maxsize=256)
def _record_dtype(flags: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.dtype[Any]:
    """Return the numpy structured dtype of one record of ``flags`` holding ``dtype[shape]``."""
    layout: list[tuple[Any, ...]] = [
        ("flags", "u1"),
        ("seq", "<u8"),
        ("captured", "<i8"),
        ("prediction", "<i4" if flags & _RECORD_WIDE_PREDICTION else "<i2"),
        ("confidence", "<f4"),
    ]
    if flags & _RECORD_HAS_LABEL:
        layout.append(("label", "<i4"))
    layout += [("dtype", "u1"), ("ndim", "u1"), ("dims", "<u4", (len(shape),))]
    layout.append(("data", dtype, shape))
    return np.dtype(layout)


def _decode_records(
    payload: bytes, offset: int, header: _SampleHeader, *, copy: bool
) -> SampleBatch:
    end = len(payload)
    count = header.count
    index = -1
    try:
        records: list[SampleRecord] = []
        for index in range(count):
            flags = payload[offset]
            if flags > _RECORD_FLAGS:
                raise ProtocolError(
                    f"record {index}: unknown flag bits {flags:#04x}", reason="bad_flags"
                )
            fixed = _RECORD_FIXED[flags & _RECORD_LAYOUT]
            fields = fixed.unpack_from(payload, offset + 1)
            offset += 1 + fixed.size
            if flags & _RECORD_HAS_LABEL:
                seq, captured_at_ns, prediction, confidence, label, dtype_code, ndim = fields
            else:
                seq, captured_at_ns, prediction, confidence, dtype_code, ndim = fields
                label = None
            dtype = _DTYPE_BY_CODE[dtype_code] if dtype_code < len(_DTYPE_BY_CODE) else None
            if dtype is None:
                raise ProtocolError(
                    f"record {index}: unknown dtype code {dtype_code}", reason="bad_dtype"
                )
            if ndim > MAX_NDIM:
                raise ProtocolError(
                    f"record {index}: ndim {ndim} exceeds MAX_NDIM ({MAX_NDIM})",
                    reason="bad_shape",
                )
            dims = _DIMS[ndim].unpack_from(payload, offset)
            offset += 4 * ndim
            n_items = math.prod(dims)
            nbytes = n_items * dtype.itemsize
            if _too_large(dims, nbytes, dtype.itemsize):
                raise ProtocolError(
                    f"record {index}: tensor shape {dims} {dtype.name} exceeds "
                    f"MAX_PAYLOAD_BYTES ({MAX_PAYLOAD_BYTES})",
                    reason="too_large",
                )
            if offset + nbytes > end:
                raise ProtocolError(
                    f"record {index}: shape {dims} {dtype.name} needs {nbytes} bytes, "
                    f"only {end - offset} left",
                    reason="bad_shape",
                )
            tensor = np.frombuffer(payload, dtype, n_items, offset).reshape(dims)
            offset += nbytes
            record_fields = NO_FIELDS
            if flags & _RECORD_HAS_FIELDS:
                record_fields, offset = _unpack_fields(payload, offset, f"record {index}")
            records.append(
                SampleRecord(
                    seq=seq,
                    captured_at_ns=captured_at_ns,
                    tensor=tensor.copy() if copy else tensor,
                    prediction=prediction,
                    confidence=confidence,
                    label=label,
                    fields=record_fields,
                )
            )
    except (struct.error, IndexError) as exc:
        where = "the batch header" if index < 0 else f"record {index}"
        raise ProtocolError(f"sample batch body ends inside {where}", reason="truncated") from exc
    _check_consumed(offset, end)
    return SampleBatch(
        header.pipeline, header.node, header.model_version, header.data_class, tuple(records)
    )


def encode_feedback(batch: FeedbackBatch) -> bytes:
    """Encode ``batch`` as one binary payload.

    Raises:
        ProtocolError: a name is invalid, a seq or label is out of range, or there are more
            than ``MAX_RECORDS`` items.
    """
    _check_count(len(batch.items), "feedback items")
    parts = [
        _pack_name(batch.pipeline, "pipeline"),
        _pack_name(batch.node, "node"),
        _U32.pack(len(batch.items)),
    ]
    for index, (seq, label) in enumerate(batch.items):
        try:
            parts.append(_FEEDBACK_ITEM.pack(seq, label))
        except struct.error as exc:
            _check_int(seq, 0, _U64_MAX, f"feedback item {index}: seq")
            _check_int(label, _I32_MIN, _I32_MAX, f"feedback item {index}: label")
            raise ProtocolError(f"feedback item {index}: {exc}", reason="bad_value") from exc
    return _frame(KIND_FEEDBACK, b"".join(parts))


def decode_feedback(payload: bytes) -> FeedbackBatch:
    """Decode a payload made by ``encode_feedback``.

    Raises:
        ProtocolError: the payload is not a well-formed feedback batch; ``reason`` says why.
    """
    payload = _as_bytes(payload)
    offset = _open_frame(payload, KIND_FEEDBACK)
    try:
        pipeline, offset = _unpack_name(payload, offset, "pipeline")
        node, offset = _unpack_name(payload, offset, "node")
        (count,) = _U32.unpack_from(payload, offset)
    except (struct.error, IndexError) as exc:
        raise ProtocolError(
            "feedback batch body ends inside its header", reason="truncated"
        ) from exc
    offset += 4
    _check_count(count, "feedback items")
    end = offset + count * _FEEDBACK_ITEM.size
    if end > len(payload):
        raise ProtocolError(
            f"feedback batch declares {count} items but holds only "
            f"{(len(payload) - offset) // _FEEDBACK_ITEM.size}",
            reason="truncated",
        )
    _check_consumed(end, len(payload))
    items = tuple(_FEEDBACK_ITEM.iter_unpack(memoryview(payload)[offset:end]))
    return FeedbackBatch(pipeline, node, items)


def encode_fields(fields: Mapping[str, object]) -> bytes:
    """Encode named fields as the record field section (the edge outbox stores it as is).

    Returns ``b""`` for no fields.

    Raises:
        ProtocolError: a name breaks the name rules, a value is not str or bytes, or there
            are too many or too large fields.
    """
    return _pack_fields(fields, "fields") if fields else b""


def decode_fields(section: bytes) -> Mapping[str, FieldValue]:
    """Decode what ``encode_fields`` made.

    Raises:
        ProtocolError: the section is truncated, has trailing bytes or a bad name or value.
    """
    if not section:
        return NO_FIELDS
    data = _as_bytes(section)
    try:
        fields, offset = _unpack_fields(data, 0, "fields")
    except (struct.error, IndexError) as exc:
        raise ProtocolError("field section ends inside a field", reason="truncated") from exc
    if offset != len(data):
        raise ProtocolError(
            f"{len(data) - offset} trailing bytes after the field section",
            reason="trailing_bytes",
        )
    return fields


def field_value_bytes(name: str, value: object, where: str = "sample") -> bytes:
    """Return a field value as the wire carries it: UTF-8 text or the raw bytes.

    The one home of what a field value may be, for the encoder and for an edge that drops
    a field it cannot send rather than lose the whole batch.

    Raises:
        ProtocolError: reason ``bad_value`` (not str or bytes, or text that is not valid
            UTF-8) or ``too_large`` (over ``MAX_FIELD_BYTES``).
    """
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ProtocolError(
                f"{where}: field {name!r} is not valid text: {exc.reason}", reason="bad_value"
            ) from exc
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    else:
        raise ProtocolError(
            f"{where}: field {name!r} is a {type(value).__name__}; fields travel as str "
            "or bytes (stringify numbers before sending)",
            reason="bad_value",
        )
    if len(raw) > MAX_FIELD_BYTES:
        raise ProtocolError(
            f"{where}: field {name!r} has {len(raw)} bytes, over MAX_FIELD_BYTES "
            f"({MAX_FIELD_BYTES})",
            reason="too_large",
        )
    return raw


def _pack_fields(fields: Mapping[str, object], where: str) -> bytes:
    """Return the field section of one record (``fields`` is not empty)."""
    if len(fields) > MAX_FIELDS:
        raise ProtocolError(
            f"{where}: {len(fields)} fields exceed MAX_FIELDS ({MAX_FIELDS})", reason="too_large"
        )
    names = {check_name(name, "field"): name for name in fields}
    parts = [_U8.pack(len(fields))]
    for name in sorted(names):
        value = fields[name]
        raw = field_value_bytes(name, value, where)
        tag = _FIELD_TEXT if isinstance(value, str) else _FIELD_BYTES
        parts.append(_U8.pack(len(name)) + name.encode("ascii"))
        parts.append(_FIELD_HEAD.pack(tag, len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _unpack_fields(payload: bytes, offset: int, where: str) -> tuple[dict[str, FieldValue], int]:
    """Read one field section at ``offset``; raise IndexError/struct.error when it is cut."""
    count = payload[offset]
    offset += 1
    if not 1 <= count <= MAX_FIELDS:
        raise ProtocolError(
            f"{where}: field count {count} is outside 1..MAX_FIELDS ({MAX_FIELDS})",
            reason="too_large" if count else "bad_value",
        )
    fields: dict[str, FieldValue] = {}
    previous = ""
    for _ in range(count):
        name, offset = _unpack_name(payload, offset, "field")
        if name <= previous:
            raise ProtocolError(
                f"{where}: field {name!r} is repeated or out of order", reason="bad_name"
            )
        previous = name
        tag, length = _FIELD_HEAD.unpack_from(payload, offset)
        offset += _FIELD_HEAD.size
        if length > MAX_FIELD_BYTES:
            raise ProtocolError(
                f"{where}: field {name!r} declares {length} bytes, over MAX_FIELD_BYTES "
                f"({MAX_FIELD_BYTES})",
                reason="too_large",
            )
        raw = payload[offset : offset + length]
        if len(raw) != length:
            raise IndexError(name)
        offset += length
        if tag == _FIELD_TEXT:
            try:
                fields[name] = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError(
                    f"{where}: text field {name!r} is not valid UTF-8", reason="bad_value"
                ) from exc
        elif tag == _FIELD_BYTES:
            fields[name] = raw
        else:
            raise ProtocolError(
                f"{where}: field {name!r} has unknown type code {tag}", reason="bad_value"
            )
    return fields, offset


def _frame(kind: int, body: bytes) -> bytes:
    prefix = _HEADER.pack(MAGIC, FORMAT_VERSION, kind, 0, len(body), 0)[:_CRC_OFFSET]
    crc = zlib.crc32(body, zlib.crc32(prefix))
    return b"".join((prefix, _U32.pack(crc), body))


def _open_frame(payload: bytes, kind: int) -> int:
    """Check the frame header and CRC of ``payload``; return the offset of its body."""
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            f"payload of {size} bytes exceeds MAX_PAYLOAD_BYTES ({MAX_PAYLOAD_BYTES})",
            reason="too_large",
        )
    if payload[: len(MAGIC)] != MAGIC[:size]:
        raise ProtocolError(
            f"not a continuum payload: starts with {payload[:8]!r}, expected {MAGIC!r}",
            reason="bad_magic",
        )
    if size < _HEADER.size:
        raise ProtocolError(
            f"payload of {size} bytes is shorter than the {_HEADER.size}-byte header",
            reason="truncated",
        )
    _, version, got_kind, flags, body_len, crc = _HEADER.unpack_from(payload)
    if version != FORMAT_VERSION:
        raise ProtocolError(
            f"format version {version} is not supported (this build reads {FORMAT_VERSION})",
            reason="unsupported_version",
        )
    if got_kind != kind:
        raise ProtocolError(
            f"expected a {_KIND_NAMES[kind]} (kind {kind}), got "
            f"{_KIND_NAMES.get(got_kind, 'an unknown kind')} (kind {got_kind})",
            reason="bad_kind",
        )
    if flags:
        raise ProtocolError(f"unknown frame flag bits {flags:#04x}", reason="bad_flags")
    declared = _HEADER.size + body_len
    if declared > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            f"declared body of {body_len} bytes exceeds MAX_PAYLOAD_BYTES ({MAX_PAYLOAD_BYTES})",
            reason="too_large",
        )
    if size < declared:
        raise ProtocolError(
            f"payload truncated: header declares {declared} bytes, got {size}",
            reason="truncated",
        )
    if size > declared:
        raise ProtocolError(
            f"{size - declared} trailing bytes after the declared {declared}-byte payload",
            reason="trailing_bytes",
        )
    body = memoryview(payload)[_HEADER.size :]
    actual = zlib.crc32(body, zlib.crc32(memoryview(payload)[:_CRC_OFFSET]))
    if actual != crc:
        raise ProtocolError(
            f"CRC32 mismatch: header says {crc:#010x}, payload hashes to {actual:#010x}",
            reason="corrupt",
        )
    return _HEADER.size


def _as_bytes(payload: bytes) -> bytes:
    # A bytearray or memoryview could change under the zero-copy tensor views: copy it once.
    return payload if type(payload) is bytes else bytes(payload)


def _check_consumed(offset: int, end: int) -> None:
    if offset != end:
        raise ProtocolError(
            f"{end - offset} trailing bytes after the last record", reason="trailing_bytes"
        )


def _check_count(count: int, what: str) -> None:
    if count > MAX_RECORDS:
        raise ProtocolError(
            f"{count} {what} exceed MAX_RECORDS ({MAX_RECORDS})", reason="too_large"
        )


def _check_int(value: int, low: int, high: int, what: str) -> None:
    if not isinstance(value, int | np.integer) or not low <= value <= high:
        raise ProtocolError(
            f"{what} must be an integer in [{low}, {high}], got {value!r}", reason="bad_value"
        )


def _pack_name(value: str, what: str) -> bytes:
    raw = check_name(value, what).encode("ascii")
    return _U8.pack(len(raw)) + raw


def _unpack_name(payload: bytes, offset: int, what: str) -> tuple[str, int]:
    length = payload[offset]
    start = offset + 1
    raw = payload[start : start + length]
    if len(raw) != length:
        raise IndexError(what)
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"invalid {what} name {raw!r}: not ASCII", reason="bad_name") from exc
    return check_name(name, what), start + length


def _pack_record(index: int, record: SampleRecord) -> tuple[bytes, npt.NDArray[Any]]:
    """Return the record's fixed fields and its tensor as a little-endian C-contiguous array."""
    tensor = record.tensor
    if not isinstance(tensor, np.ndarray):
        raise ProtocolError(
            f"{_where(index, record)}: tensor must be a numpy array, got {type(tensor).__name__}",
            reason="bad_dtype",
        )
    little = tensor.dtype.newbyteorder("<")
    dtype_code = DTYPE_CODES.get(little)
    if dtype_code is None:
        raise ProtocolError(
            f"{_where(index, record)}: dtype {tensor.dtype} has no wire code; use one of "
            f"{sorted(d.name for d in DTYPE_CODES)}",
            reason="bad_dtype",
        )
    if tensor.ndim > MAX_NDIM:
        raise ProtocolError(
            f"{_where(index, record)}: ndim {tensor.ndim} exceeds MAX_NDIM ({MAX_NDIM})",
            reason="bad_shape",
        )
    if _too_large(tensor.shape, tensor.nbytes, tensor.itemsize):
        raise ProtocolError(
            f"{_where(index, record)}: tensor shape {tensor.shape} {tensor.dtype} exceeds "
            f"MAX_PAYLOAD_BYTES ({MAX_PAYLOAD_BYTES})",
            reason="too_large",
        )
    seq, prediction, label = record.seq, record.prediction, record.label
    try:
        in_range = (
            0 <= seq <= _U64_MAX
            and _I64_MIN <= record.captured_at_ns <= _I64_MAX
            and _I32_MIN <= prediction <= _I32_MAX
            and (label is None or _I32_MIN <= label <= _I32_MAX)
        )
    except TypeError:
        in_range = False
    if not in_range:
        _explain_out_of_range(index, record)
    flags = 0 if _I16_MIN <= prediction <= _I16_MAX else _RECORD_WIDE_PREDICTION
    if label is not None:
        flags |= _RECORD_HAS_LABEL
    fixed = _RECORD_FIXED[flags]
    if record.fields:
        flags |= _RECORD_HAS_FIELDS
    try:
        if label is None:
            values = fixed.pack(
                seq, record.captured_at_ns, prediction, record.confidence, dtype_code, tensor.ndim
            )
        else:
            values = fixed.pack(
                seq,
                record.captured_at_ns,
                prediction,
                record.confidence,
                label,
                dtype_code,
                tensor.ndim,
            )
        head = b"".join((_U8.pack(flags), values, _DIMS[tensor.ndim].pack(*tensor.shape)))
    except (struct.error, OverflowError, TypeError) as exc:
        raise ProtocolError(f"{_where(index, record)}: {exc}", reason="bad_value") from exc
    return head, np.ascontiguousarray(tensor, dtype=little)


def _explain_out_of_range(index: int, record: SampleRecord) -> None:
    """Raise the ``ProtocolError`` that names the first integer field out of its wire range."""
    where = _where(index, record)
    _check_int(record.seq, 0, _U64_MAX, f"{where}: seq")
    _check_int(record.captured_at_ns, _I64_MIN, _I64_MAX, f"{where}: captured_at_ns")
    _check_int(record.prediction, _I32_MIN, _I32_MAX, f"{where}: prediction")
    if record.label is not None:
        _check_int(record.label, _I32_MIN, _I32_MAX, f"{where}: label")


def _where(index: int, record: SampleRecord) -> str:
    return f"record {index} (seq {record.seq!r})"


def _too_large(dims: tuple[int, ...], nbytes: int, itemsize: int) -> bool:
    # A zero-size tensor still has a shape; numpy refuses shapes whose other axes overflow.
    return nbytes > MAX_PAYLOAD_BYTES or (
        nbytes == 0 and math.prod(d or 1 for d in dims) * itemsize > MAX_PAYLOAD_BYTES
    )


def _le_bytes(tensor: npt.NDArray[Any]) -> bytes:
    return np.ascontiguousarray(tensor, dtype=tensor.dtype.newbyteorder("<")).tobytes()
