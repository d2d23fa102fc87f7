"""The sample store's layout: the columns of a sample file and the names of its folders and files.

Part of ``cloud_head.store`` (which re-exports ``SCHEMA`` and ``FIELD_PREFIX``): a file is
``{root}/tenant={T}/pipeline={P}/date={YYYY-MM-DD}/part-{ns}-{uid}.parquet``.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime

import pyarrow as pa

#: The columns of every sample file. ``label`` is the label the edge attached at capture time,
#: if any; delayed labels live in the label store and are joined at read time.
SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("node", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("pipeline", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("data_class", pa.string(), nullable=False),
        pa.field("captured_at_ns", pa.int64(), nullable=False),
        pa.field("ingested_at_ns", pa.int64(), nullable=False),
        pa.field("prediction", pa.int64(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("label", pa.int64(), nullable=True),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.int32()), nullable=False),
        pa.field("tensor", pa.binary(), nullable=False),
    ]
)

#: Prefix of the column of each named side field: ``field_iban``, ``field_operator``.
FIELD_PREFIX = "field_"

#: Every data file's suffix; a file being written on a local disk also ends in ``TEMP_SUFFIX``.
SUFFIX = ".parquet"
TEMP_SUFFIX = ".tmp"


def join(*parts: str) -> str:
    """Join path parts with ``/`` (paths inside a ``pyarrow.fs`` filesystem)."""
    head, *rest = parts
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in rest)])


def utc_date(ns: int) -> str:
    """Return the UTC day (``YYYY-MM-DD``) of a time in ns since the epoch."""
    # Every append asks; a UTC day is 86,400 POSIX seconds, so the day number is the key.
    return _utc_day_name(ns // _NS_PER_DAY)


_NS_PER_DAY = 86_400 * 10**9


@functools.lru_cache(maxsize=64)
def _utc_day_name(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")


def check_date(date: str) -> str:
    """Return ``date`` if it is ``YYYY-MM-DD``, else raise ValueError."""
    try:
        datetime.strptime(date, "%Y-%m-%d")
    except ValueError as exc:
        raise ValueError(f"date must be YYYY-MM-DD, got {date!r}") from exc
    return date


def is_data_file(name: str) -> bool:
    """Return whether a file name is a visible data file (not a temporary or hidden one)."""
    return name.endswith(SUFFIX) and not name.startswith((".", "_"))


def stamp_of(path: str) -> int:
    """Return the write time (ns) a data file's name starts with (now, if it has none)."""
    name = path.rsplit("/", 1)[-1]
    try:
        return int(name.split("-")[1])
    except (IndexError, ValueError):
        return time.time_ns()
