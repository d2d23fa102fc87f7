"""The binary payloads of the samples and feedback topics: one home for their byte layout.

Every payload is a frame: a fixed header, then a body whose layout depends on the kind.
All integers and floats are little-endian; tensors are raw C-contiguous little-endian bytes,
never base64 or JSON.

Frame header (15 bytes)::

    magic      4s   b"CTMW"
    version    u8   FORMAT_VERSION
    kind       u8   1 = sample batch, 2 = feedback batch
    flags      u8   feedback batch: bit 0 = labels are f64 values; any other set bit (and
                    any bit of a sample batch) is rejected
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

Feedback batch body: pipeline, node, count u32, then per item seq u64 and label i32 (f64,
finite, when the frame's flag bit 0 is set: a regression's values; an encoder sets it only
for a batch holding a float label, so classes still travel as before).

Decoding rejects anything it cannot prove well formed with a ``ProtocolError`` whose
``reason`` is one of ``REASONS``, so ingest can count rejects by reason.  Decoded tensors are
read-only views into the payload (zero copy; the payload ``bytes`` is immutable, so no one can
change them behind the reader's back); pass ``copy=True`` for writable, independent arrays.

This module encodes and decodes whole payloads; the frame, limits and codes live in
``_layout``, the record classes in ``_records`` and the field section in ``_fields``, all
re-exported here.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from continuum._data_class import DataClass
from continuum.errors import InputMismatchError, ProtocolError
from continuum.wire._fields import (
    decode_fields,
    encode_fields,
    field_value_bytes,
    pack_fields,
    unpack_fields,
)
from continuum.wire._layout import (
    DATA_CLASS_BY_CODE,
    DATA_CLASS_CODES,
    DIMS,
    DTYPE_BY_CODE,
    DTYPE_CODES,
    FEEDBACK_FLOAT_LABELS,
    FLAGS_OFFSET,
    FORMAT_VERSION,
    HEADER,
    I16_MAX,
    I16_MIN,
    I32_MAX,
    I32_MIN,
    I64_MAX,
    I64_MIN,
    KIND_FEEDBACK,
    KIND_SAMPLES,
    MAGIC,
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    MAX_NDIM,
    MAX_PAYLOAD_BYTES,
    MAX_RECORDS,
    REASONS,
    RECORD_FIXED,
    RECORD_FLAGS,
    RECORD_HAS_FIELDS,
    RECORD_HAS_LABEL,
    RECORD_LAYOUT,
    RECORD_WIDE_PREDICTION,
    U8,
    U32,
    U64_MAX,
    as_bytes,
    check_consumed,
    check_count,
    check_int,
    frame,
    frame_parts,
    open_frame,
    pack_name,
    unpack_name,
)
from continuum.wire._records import (
    NO_FIELDS,
    FeedbackBatch,
    FieldValue,
    SampleBatch,
    SampleColumns,
    SampleRecord,
    sample_id,
)

__all__ = [
    "DTYPE_CODES",
    "FORMAT_VERSION",
    "KIND_FEEDBACK",
    "KIND_SAMPLES",
    "MAGIC",
    "MAX_FIELDS",
    "MAX_FIELD_BYTES",
    "MAX_NDIM",
    "MAX_PAYLOAD_BYTES",
    "MAX_RECORDS",
    "NO_FIELDS",
    "REASONS",
    "FeedbackBatch",
    "FieldValue",
    "SampleBatch",
    "SampleColumns",
    "SampleRecord",
    "decode_feedback",
    "decode_fields",
    "decode_sample_columns",
    "decode_samples",
    "encode_feedback",
    "encode_fields",
    "encode_samples",
    "field_value_bytes",
    "sample_id",
]

_FEEDBACK_ITEM: Final = struct.Struct("<Qi")
_FEEDBACK_FLOAT_ITEM: Final = struct.Struct("<Qd")
#: The largest finite float32: a confidence beyond it is left to the record path (``struct``
#: packs or refuses it, naming the record).
_F32_MAX: Final = float(np.finfo(np.float32).max)


def encode_samples(batch: SampleBatch) -> bytes:
    """Encode ``batch`` as one binary payload.

    Raises:
        ProtocolError: a name, data class, dtype, shape or field value cannot go on the wire,
            or the payload would exceed ``MAX_PAYLOAD_BYTES``.
    """
    try:
        code = DATA_CLASS_CODES[DataClass(batch.data_class)]
    except ValueError as exc:
        raise ProtocolError(
            f"unknown data class {batch.data_class!r}: use one of {[c.value for c in DataClass]}",
            reason="bad_data_class",
        ) from exc
    check_count(len(batch.records), "records")
    parts: list[Any] = [
        U8.pack(code),
        pack_name(batch.pipeline, "pipeline"),
        pack_name(batch.node, "node"),
        pack_name(batch.model_version, "version"),
        U32.pack(len(batch.records)),
    ]
    size = HEADER.size + sum(len(p) for p in parts)
    uniform = _uniform_records(batch.records)
    if uniform is not None:
        heads, tensors = uniform
        body_len = size - HEADER.size + heads.nbytes + len(tensors) * tensors[0].nbytes
        if HEADER.size + body_len <= MAX_PAYLOAD_BYTES:
            packed, step = heads.tobytes(), heads.itemsize
            records: list[Any] = [None] * (2 * len(tensors))
            records[0::2] = [packed[at : at + step] for at in range(0, len(packed), step)]
            records[1::2] = tensors
            return frame_parts(KIND_SAMPLES, parts + records, body_len)
    size = _records_body(batch.records, parts, size)
    return frame_parts(KIND_SAMPLES, parts, size - HEADER.size)


def _records_body(records: tuple[SampleRecord, ...], parts: list[Any], size: int) -> int:
    """Append each record to ``parts`` (the batch header so far, ``size`` bytes with the
    frame header), packed on its own and checked field by field; return the new size."""
    for index, record in enumerate(records):
        head, tensor = _pack_record(index, record)
        parts.append(head)
        parts.append(tensor)
        size += len(head) + tensor.nbytes
        if record.fields:
            section = pack_fields(record.fields, _where(index, record))
            parts.append(section)
            size += len(section)
        if size > MAX_PAYLOAD_BYTES:
            raise ProtocolError(
                f"sample batch exceeds MAX_PAYLOAD_BYTES ({MAX_PAYLOAD_BYTES}) at record {index}: "
                "send fewer records per batch",
                reason="too_large",
            )
    return size


def _uniform_records(
    records: tuple[SampleRecord, ...],
) -> tuple[npt.NDArray[Any], list[npt.NDArray[Any]]] | None:
    """Pack the fixed fields of ``records`` as one numpy structured array when they share
    one layout, and return it with the tensors as they go on the wire; else None.

    An edge uplink batch is records of one dtype and shape, without side fields, with or
    without labels alike: one array of ``_record_dtype`` without its data holds their heads
    byte for byte as ``_pack_record`` would write them one by one, filled column by column
    instead of a ``struct`` call and range checks per record.  The tensors stay separate
    (stacking them would copy every byte once more than the join does).  Anything else,
    including every value the record path would refuse, returns None so that the record
    path packs it or names the first bad record.
    """
    first = records[0].tensor if records else None
    if not isinstance(first, np.ndarray) or not 0 < first.ndim <= MAX_NDIM or first.size == 0:
        return None
    little = first.dtype.newbyteorder("<")
    shape = first.shape
    if DTYPE_CODES.get(little) is None or _too_large(shape, first.nbytes, first.itemsize):
        return None
    has_label = records[0].label is not None
    dtype = first.dtype
    as_is = dtype == little  # contiguous tensors in wire byte order go on as they are
    tensors = []
    for record in records:
        tensor = record.tensor
        if (
            not isinstance(tensor, np.ndarray)
            or tensor.dtype != dtype
            or tensor.shape != shape
            or record.fields
            or (record.label is not None) is not has_label
        ):
            return None
        as_is = as_is and tensor.flags.c_contiguous
        tensors.append(tensor)
    try:
        seq = np.array([r.seq for r in records])
        captured = np.array([r.captured_at_ns for r in records])
        prediction = np.array([r.prediction for r in records])
        label = np.array([r.label for r in records]) if has_label else None
        confidence = np.array([r.confidence for r in records], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    integers = (seq, captured, prediction) if label is None else (seq, captured, prediction, label)
    if any(column.dtype.kind not in "iu" for column in integers):
        return None  # a float, or an int beyond 64 bits: the record path says which
    if not (
        _within(seq, 0, U64_MAX)
        and _within(captured, I64_MIN, I64_MAX)
        and _within(prediction, I32_MIN, I32_MAX)
        and (label is None or _within(label, I32_MIN, I32_MAX))
    ):
        return None
    narrow = _within(prediction, I16_MIN, I16_MAX)
    if (
        not narrow and not ((prediction < I16_MIN) | (prediction > I16_MAX)).all()
    ):  # the record path picks the width per record: a mixed batch is not uniform
        return None
    finite = np.isfinite(confidence)
    if (np.abs(confidence[finite]) > _F32_MAX).any():
        return None
    flags = (0 if narrow else RECORD_WIDE_PREDICTION) | (RECORD_HAS_LABEL if has_label else 0)
    rows = np.empty(len(records), _head_dtype(flags, len(shape)))
    rows["flags"] = flags
    rows["seq"] = seq
    rows["captured"] = captured
    rows["prediction"] = prediction
    with np.errstate(invalid="ignore"):  # a NaN's payload is kept, as struct keeps it
        rows["confidence"] = confidence
    if label is not None:
        rows["label"] = label
    rows["dtype"] = DTYPE_CODES[little]
    rows["ndim"] = len(shape)
    rows["dims"] = shape
    if not as_is:
        tensors = [np.ascontiguousarray(tensor, dtype=little) for tensor in tensors]
    return rows, tensors


@functools.lru_cache(maxsize=64)
def _head_dtype(flags: int, ndim: int) -> np.dtype[Any]:
    """Return the numpy structured dtype of a record's fixed fields (all but its tensor)."""
    record = _record_dtype(flags, np.dtype(np.uint8), (1,) * ndim)
    fields = record.fields
    assert fields is not None  # a structured dtype
    return np.dtype([(name, fields[name][0]) for name in fields if name != "data"])


def _within(values: npt.NDArray[Any], low: int, high: int) -> bool:
    """Whether every one of ``values`` (an integer array) lies in ``[low, high]``."""
    return bool(values.min() >= low and values.max() <= high)


def decode_samples(payload: bytes, *, copy: bool = False) -> SampleBatch:
    """Decode a payload made by ``encode_samples``.

    Tensors are read-only views into ``payload`` unless ``copy`` is true.

    Raises:
        ProtocolError: the payload is not a well-formed sample batch; ``reason`` says why.
    """
    payload = as_bytes(payload)
    offset = open_frame(payload, KIND_SAMPLES)
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
    payload = as_bytes(payload)
    want = np.dtype(dtype)
    want_shape = tuple(int(d) for d in shape)
    offset = open_frame(payload, KIND_SAMPLES)
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
        data_class = DATA_CLASS_BY_CODE.get(data_class_code)
        if data_class is None:
            raise ProtocolError(
                f"unknown data class code {data_class_code}", reason="bad_data_class"
            )
        pipeline, offset = unpack_name(payload, offset + 1, "pipeline")
        node, offset = unpack_name(payload, offset, "node")
        model_version, offset = unpack_name(payload, offset, "version")
        (count,) = U32.unpack_from(payload, offset)
    except (struct.error, IndexError) as exc:
        raise ProtocolError(
            "sample batch body ends inside the batch header", reason="truncated"
        ) from exc
    check_count(count, "records")
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
    if flags > RECORD_LAYOUT:  # fields (variable size) or undefined bits
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
    has_label = bool(flags & RECORD_HAS_LABEL)
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
        ("prediction", "<i4" if flags & RECORD_WIDE_PREDICTION else "<i2"),
        ("confidence", "<f4"),
    ]
    if flags & RECORD_HAS_LABEL:
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
            if flags > RECORD_FLAGS:
                raise ProtocolError(
                    f"record {index}: unknown flag bits {flags:#04x}", reason="bad_flags"
                )
            fixed = RECORD_FIXED[flags & RECORD_LAYOUT]
            fields = fixed.unpack_from(payload, offset + 1)
            offset += 1 + fixed.size
            if flags & RECORD_HAS_LABEL:
                seq, captured_at_ns, prediction, confidence, label, dtype_code, ndim = fields
            else:
                seq, captured_at_ns, prediction, confidence, dtype_code, ndim = fields
                label = None
            dtype = DTYPE_BY_CODE[dtype_code] if dtype_code < len(DTYPE_BY_CODE) else None
            if dtype is None:
                raise ProtocolError(
                    f"record {index}: unknown dtype code {dtype_code}", reason="bad_dtype"
                )
            if ndim > MAX_NDIM:
                raise ProtocolError(
                    f"record {index}: ndim {ndim} exceeds MAX_NDIM ({MAX_NDIM})",
                    reason="bad_shape",
                )
            dims = DIMS[ndim].unpack_from(payload, offset)
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
            if flags & RECORD_HAS_FIELDS:
                record_fields, offset = unpack_fields(payload, offset, f"record {index}")
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
    check_consumed(offset, end)
    return SampleBatch(
        header.pipeline, header.node, header.model_version, header.data_class, tuple(records)
    )


def encode_feedback(batch: FeedbackBatch) -> bytes:
    """Encode ``batch`` as one binary payload.

    Raises:
        ProtocolError: a name is invalid, a seq or label is out of range, or there are more
            than ``MAX_RECORDS`` items.
    """
    check_count(len(batch.items), "feedback items")
    parts = [
        pack_name(batch.pipeline, "pipeline"),
        pack_name(batch.node, "node"),
        U32.pack(len(batch.items)),
    ]
    floats = any(isinstance(label, float) for _, label in batch.items)
    item = _FEEDBACK_FLOAT_ITEM if floats else _FEEDBACK_ITEM
    for index, (seq, label) in enumerate(batch.items):
        if floats and not (isinstance(label, int | float) and math.isfinite(label)):
            raise ProtocolError(
                f"feedback item {index}: label {label!r} is not a finite number",
                reason="bad_value",
            )
        try:
            parts.append(item.pack(seq, label))
        except struct.error as exc:
            check_int(seq, 0, U64_MAX, f"feedback item {index}: seq")
            if isinstance(label, int):
                check_int(label, I32_MIN, I32_MAX, f"feedback item {index}: label")
            raise ProtocolError(f"feedback item {index}: {exc}", reason="bad_value") from exc
    return frame(KIND_FEEDBACK, b"".join(parts), FEEDBACK_FLOAT_LABELS if floats else 0)


def decode_feedback(payload: bytes) -> FeedbackBatch:
    """Decode a payload made by ``encode_feedback``.

    Raises:
        ProtocolError: the payload is not a well-formed feedback batch; ``reason`` says why.
    """
    payload = as_bytes(payload)
    offset = open_frame(payload, KIND_FEEDBACK, allowed_flags=FEEDBACK_FLOAT_LABELS)
    item = _FEEDBACK_FLOAT_ITEM if payload[FLAGS_OFFSET] & FEEDBACK_FLOAT_LABELS else _FEEDBACK_ITEM
    try:
        pipeline, offset = unpack_name(payload, offset, "pipeline")
        node, offset = unpack_name(payload, offset, "node")
        (count,) = U32.unpack_from(payload, offset)
    except (struct.error, IndexError) as exc:
        raise ProtocolError(
            "feedback batch body ends inside its header", reason="truncated"
        ) from exc
    offset += 4
    check_count(count, "feedback items")
    end = offset + count * item.size
    if end > len(payload):
        raise ProtocolError(
            f"feedback batch declares {count} items but holds only "
            f"{(len(payload) - offset) // item.size}",
            reason="truncated",
        )
    check_consumed(end, len(payload))
    items = tuple(item.iter_unpack(memoryview(payload)[offset:end]))
    if item is _FEEDBACK_FLOAT_ITEM:
        bad = next((i for i, (_, label) in enumerate(items) if not math.isfinite(label)), None)
        if bad is not None:
            raise ProtocolError(
                f"feedback item {bad}: label {items[bad][1]!r} is not a finite number",
                reason="bad_value",
            )
    return FeedbackBatch(pipeline, node, items)


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
            0 <= seq <= U64_MAX
            and I64_MIN <= record.captured_at_ns <= I64_MAX
            and I32_MIN <= prediction <= I32_MAX
            and (label is None or I32_MIN <= label <= I32_MAX)
        )
    except TypeError:
        in_range = False
    if not in_range:
        _explain_out_of_range(index, record)
    flags = 0 if I16_MIN <= prediction <= I16_MAX else RECORD_WIDE_PREDICTION
    if label is not None:
        flags |= RECORD_HAS_LABEL
    fixed = RECORD_FIXED[flags]
    if record.fields:
        flags |= RECORD_HAS_FIELDS
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
        head = b"".join((U8.pack(flags), values, DIMS[tensor.ndim].pack(*tensor.shape)))
    except (struct.error, OverflowError, TypeError) as exc:
        raise ProtocolError(f"{_where(index, record)}: {exc}", reason="bad_value") from exc
    return head, np.ascontiguousarray(tensor, dtype=little)


def _explain_out_of_range(index: int, record: SampleRecord) -> None:
    """Raise the ``ProtocolError`` that names the first integer field out of its wire range."""
    where = _where(index, record)
    check_int(record.seq, 0, U64_MAX, f"{where}: seq")
    check_int(record.captured_at_ns, I64_MIN, I64_MAX, f"{where}: captured_at_ns")
    check_int(record.prediction, I32_MIN, I32_MAX, f"{where}: prediction")
    if record.label is not None:
        check_int(record.label, I32_MIN, I32_MAX, f"{where}: label")


def _where(index: int, record: SampleRecord) -> str:
    return f"record {index} (seq {record.seq!r})"


def _too_large(dims: tuple[int, ...], nbytes: int, itemsize: int) -> bool:
    # A zero-size tensor still has a shape; numpy refuses shapes whose other axes overflow.
    return nbytes > MAX_PAYLOAD_BYTES or (
        nbytes == 0 and math.prod(d or 1 for d in dims) * itemsize > MAX_PAYLOAD_BYTES
    )
