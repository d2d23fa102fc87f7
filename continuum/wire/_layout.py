"""The byte layout every codec payload shares: the frame, the limits, the record codes.

The frame header and its CRC, the size limits, the wire codes of dtypes, data classes and
record flags, and the primitive reads and writes of names and counts.  ``continuum.wire.codec``
documents the whole layout and is the public home of these names.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Final

import numpy as np

from continuum._data_class import DataClass
from continuum.errors import ProtocolError
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
DTYPE_BY_CODE: Final[tuple[np.dtype[Any] | None, ...]] = (None, *DTYPE_CODES)

#: Wire code of each data class; fixed here so that reordering the enum cannot change the wire.
DATA_CLASS_CODES: Final = {
    DataClass.PUBLIC: 0,
    DataClass.INTERNAL: 1,
    DataClass.CONFIDENTIAL: 2,
    DataClass.RESTRICTED: 3,
}
DATA_CLASS_BY_CODE: Final = {code: data_class for data_class, code in DATA_CLASS_CODES.items()}

HEADER: Final = struct.Struct("<4sBBBII")
CRC_OFFSET: Final = HEADER.size - 4
U8: Final = struct.Struct("<B")
U32: Final = struct.Struct("<I")
RECORD_HAS_LABEL: Final = 0x01
RECORD_WIDE_PREDICTION: Final = 0x02
RECORD_HAS_FIELDS: Final = 0x04
RECORD_LAYOUT: Final = RECORD_HAS_LABEL | RECORD_WIDE_PREDICTION
RECORD_FLAGS: Final = RECORD_LAYOUT | RECORD_HAS_FIELDS
#: Fixed record fields after the flags byte, one layout per flags value.
RECORD_FIXED: Final = (
    struct.Struct("<QqhfBB"),
    struct.Struct("<QqhfiBB"),
    struct.Struct("<QqifBB"),
    struct.Struct("<QqifiBB"),
)
DIMS: Final = tuple(struct.Struct(f"<{n}I") for n in range(MAX_NDIM + 1))
KIND_NAMES: Final = {KIND_SAMPLES: "sample batch", KIND_FEEDBACK: "feedback batch"}

U64_MAX: Final = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
I16_MIN, I16_MAX = -(2**15), 2**15 - 1


#: Frame flag of a feedback batch: its labels are f64 values (a regression's), not i32.
FEEDBACK_FLOAT_LABELS: Final = 0x01
#: Where the flags byte sits in the frame header (after magic, version and kind).
FLAGS_OFFSET: Final = 6


#: Bodies smaller than this are joined before their CRC is taken (see ``frame_parts``):
#: glibc's malloc serves blocks from 128 KiB on with fresh ``mmap`` pages, whose faults make
#: a second copy of a larger body dear (measured: 4x at 256 KiB, a wash at 64-128 KiB).
_JOIN_FIRST_BELOW: Final = 128 * 1024


def frame(kind: int, body: bytes, flags: int = 0) -> bytes:
    """Return ``body`` behind a frame header of ``kind`` and ``flags``, its CRC32 over both."""
    prefix = HEADER.pack(MAGIC, FORMAT_VERSION, kind, flags, len(body), 0)[:CRC_OFFSET]
    crc = zlib.crc32(body, zlib.crc32(prefix))
    return b"".join((prefix, U32.pack(crc), body))


def frame_parts(kind: int, parts: list[Any], body_len: int) -> bytes:
    """Return ``frame(kind, b"".join(parts))`` for a body of ``body_len`` bytes given as its
    parts (bytes, or C-contiguous arrays), copying a large body once instead of twice.

    Joining the parts and then the header to the joined body copies every byte twice into
    freshly allocated memory; for a batch of camera frames (64 x 12 KiB) that and its page
    faults cost three times what the CRC does.  Small bodies are joined first: one CRC call
    over them beats one per part.
    """
    if body_len < _JOIN_FIRST_BELOW:
        return frame(kind, b"".join(parts))
    prefix = HEADER.pack(MAGIC, FORMAT_VERSION, kind, 0, body_len, 0)[:CRC_OFFSET]
    crc = zlib.crc32(prefix)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"".join([prefix, U32.pack(crc), *parts])


def open_frame(payload: bytes, kind: int, allowed_flags: int = 0) -> int:
    """Check the frame header and CRC of ``payload``; return the offset of its body.

    A flag bit outside ``allowed_flags`` (what the kind defines) is rejected.
    """
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
    if size < HEADER.size:
        raise ProtocolError(
            f"payload of {size} bytes is shorter than the {HEADER.size}-byte header",
            reason="truncated",
        )
    _, version, got_kind, flags, body_len, crc = HEADER.unpack_from(payload)
    if version != FORMAT_VERSION:
        raise ProtocolError(
            f"format version {version} is not supported (this build reads {FORMAT_VERSION})",
            reason="unsupported_version",
        )
    if got_kind != kind:
        raise ProtocolError(
            f"expected a {KIND_NAMES[kind]} (kind {kind}), got "
            f"{KIND_NAMES.get(got_kind, 'an unknown kind')} (kind {got_kind})",
            reason="bad_kind",
        )
    if flags & ~allowed_flags:
        raise ProtocolError(
            f"unknown frame flag bits {flags & ~allowed_flags:#04x}", reason="bad_flags"
        )
    declared = HEADER.size + body_len
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
    body = memoryview(payload)[HEADER.size :]
    actual = zlib.crc32(body, zlib.crc32(memoryview(payload)[:CRC_OFFSET]))
    if actual != crc:
        raise ProtocolError(
            f"CRC32 mismatch: header says {crc:#010x}, payload hashes to {actual:#010x}",
            reason="corrupt",
        )
    return HEADER.size


def as_bytes(payload: bytes) -> bytes:
    """Return ``payload`` as immutable ``bytes`` (decoded tensors are views into it)."""
    # A bytearray or memoryview could change under the zero-copy tensor views: copy it once.
    return payload if type(payload) is bytes else bytes(payload)


def check_consumed(offset: int, end: int) -> None:
    """Raise ``trailing_bytes`` unless reading stopped exactly at ``end``."""
    if offset != end:
        raise ProtocolError(
            f"{end - offset} trailing bytes after the last record", reason="trailing_bytes"
        )


def check_count(count: int, what: str) -> None:
    """Raise ``too_large`` when ``count`` exceeds ``MAX_RECORDS``."""
    if count > MAX_RECORDS:
        raise ProtocolError(
            f"{count} {what} exceed MAX_RECORDS ({MAX_RECORDS})", reason="too_large"
        )


def check_int(value: int, low: int, high: int, what: str) -> None:
    """Raise ``bad_value`` unless ``value`` is an integer in ``[low, high]``."""
    if not isinstance(value, int | np.integer) or not low <= value <= high:
        raise ProtocolError(
            f"{what} must be an integer in [{low}, {high}], got {value!r}", reason="bad_value"
        )


def pack_name(value: str, what: str) -> bytes:
    """Return ``value`` as a length-prefixed ASCII name, checked against the name rules."""
    raw = check_name(value, what).encode("ascii")
    return U8.pack(len(raw)) + raw


def unpack_name(payload: bytes, offset: int, what: str) -> tuple[str, int]:
    """Read a name at ``offset``; return it and the offset after it (IndexError when cut)."""
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
