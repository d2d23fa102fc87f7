"""The field section of a sample record: named side values (text or bytes) beside the tensor."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final

from continuum.errors import ProtocolError
from continuum.wire._layout import MAX_FIELD_BYTES, MAX_FIELDS, U8, as_bytes, unpack_name
from continuum.wire._records import NO_FIELDS, FieldValue
from continuum.wire.topics import check_name

_FIELD_TEXT: Final = 0
_FIELD_BYTES: Final = 1
_FIELD_HEAD: Final = struct.Struct("<BI")


def encode_fields(fields: Mapping[str, object]) -> bytes:
    """Encode named fields as the record field section (the edge outbox stores it as is).

    Returns ``b""`` for no fields.

    Raises:
        ProtocolError: a name breaks the name rules, a value is not str or bytes, or there
            are too many or too large fields.
    """
    return pack_fields(fields, "fields") if fields else b""


def decode_fields(section: bytes) -> Mapping[str, FieldValue]:
    """Decode what ``encode_fields`` made.

    Raises:
        ProtocolError: the section is truncated, has trailing bytes or a bad name or value.
    """
    if not section:
        return NO_FIELDS
    data = as_bytes(section)
    try:
        fields, offset = unpack_fields(data, 0, "fields")
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


def pack_fields(fields: Mapping[str, object], where: str) -> bytes:
    """Return the field section of one record (``fields`` is not empty)."""
    if len(fields) > MAX_FIELDS:
        raise ProtocolError(
            f"{where}: {len(fields)} fields exceed MAX_FIELDS ({MAX_FIELDS})", reason="too_large"
        )
    names = {check_name(name, "field"): name for name in fields}
    parts = [U8.pack(len(fields))]
    for name in sorted(names):
        value = fields[name]
        raw = field_value_bytes(name, value, where)
        tag = _FIELD_TEXT if isinstance(value, str) else _FIELD_BYTES
        parts.append(U8.pack(len(name)) + name.encode("ascii"))
        parts.append(_FIELD_HEAD.pack(tag, len(raw)))
        parts.append(raw)
    return b"".join(parts)


def unpack_fields(payload: bytes, offset: int, where: str) -> tuple[dict[str, FieldValue], int]:
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
        name, offset = unpack_name(payload, offset, "field")
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
