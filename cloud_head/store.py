"""The sample store: uplinked samples as Parquet, partitioned by tenant, pipeline and date.

Layout (hive style, readable as is by Ray Data and pyarrow datasets)::

    {root}/tenant={T}/pipeline={P}/date={YYYY-MM-DD}/part-{ns}-{uid}.parquet

The date is the UTC day the cloud ingested the rows, so past days only change by compaction.
Besides the fixed ``SCHEMA`` columns, each named side field a sample carried becomes a column
``field_<name>`` (string for text, binary for bytes; null where a row lacks it).  Files differ
in their field columns as fields come and go; reads and compaction unify them by name.
Every file is complete when it becomes visible: on filesystems with an atomic rename (a local
disk) it is written under a hidden temporary name and renamed; on object stores (S3, GCS) an
object is only visible once its upload has completed, so it is written in place. All I/O goes
through ``pyarrow.fs``, so the same code serves a local directory and S3-compatible storage.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from continuum.errors import InputMismatchError
from continuum.wire import topics
from continuum.wire.codec import NO_FIELDS, FieldValue, SampleBatch, SampleColumns

_log = logging.getLogger(__name__)

__all__ = ["FIELD_PREFIX", "SCHEMA", "CompactionResult", "SampleStore", "to_numpy"]

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

#: Columns whose values are (nearly) all distinct: not worth a Parquet dictionary.
_UNIQUE_COLUMNS = frozenset({"sample_id", "seq", "captured_at_ns", "confidence", "tensor"})

_SUFFIX = ".parquet"
_TEMP_SUFFIX = ".tmp"
#: Listing then reading races with a compaction that replaces the listed files: list again.
#: Each retry follows a compaction that made progress, so a few more cost little; with 3,
#: a reader racing back-to-back compactions of small files still lost now and then.
_READ_ATTEMPTS = 8
# Filesystems whose uploads become visible atomically and whose "rename" is a copy.
_OBJECT_STORES = frozenset({"s3", "gcs"})


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What one compaction did: files merged into one, rows kept, the new file (if any),
    and the files it replaced (deleted once the new one was visible)."""

    files_merged: int
    rows: int
    path: str | None
    replaced: tuple[str, ...] = ()


@dataclass(slots=True)
class _Rows:
    """Rows appended from ``SampleBatch`` records, column by column."""

    columns: dict[str, list[Any]] = field(default_factory=lambda: {n: [] for n in SCHEMA.names})
    #: Each row's side fields (the shared empty mapping for most rows).
    fields: list[Mapping[str, FieldValue]] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    """Rows buffered for one partition, in append order: record rows, or whole column sets
    (with the ingest time of each) that are turned into Arrow arrays in bulk on write."""

    parts: list[_Rows | tuple[SampleColumns, int]] = field(default_factory=list)
    rows: int = 0


class SampleStore:
    """Append sample batches to partitioned Parquet and read them back de-duplicated."""

    def __init__(
        self,
        root: str | Path,
        filesystem: pafs.FileSystem | None = None,
        *,
        flush_rows: int = 10_000,
        row_group_rows: int = 65_536,
        fsync: bool = True,
    ) -> None:
        """Open a store at ``root`` (a local path, or a URI such as ``s3://bucket/prefix``).

        Args:
            root: the store root; a path inside ``filesystem`` when one is given.
            filesystem: the pyarrow filesystem; inferred from ``root`` when omitted.
            flush_rows: buffered rows of one partition that trigger a write on ``append``.
            row_group_rows: the largest row group written by ``compact``.
            fsync: on a local disk, sync each file and its directory before a write returns,
                so a write that returned survives a power cut (ingest acks after it).
        """
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, got {flush_rows}")
        if filesystem is None:
            text = str(root)
            if "://" in text:
                filesystem, text = pafs.FileSystem.from_uri(text)
            else:
                filesystem, text = pafs.LocalFileSystem(), Path(text).resolve().as_posix()
            root = text
        self._fs = filesystem
        self._root = str(root).rstrip("/") or "/"
        self._flush_rows = flush_rows
        self._row_group_rows = row_group_rows
        self._atomic_rename = self._fs.type_name not in _OBJECT_STORES
        self._fsync = fsync and isinstance(self._fs, pafs.LocalFileSystem)
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], _Pending] = {}
        self._written: list[str] = []  # files written since the last flush

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem the store writes to (pass it to Ray Data along with a path)."""
        return self._fs

    @property
    def root(self) -> str:
        """The store root, as a path inside ``filesystem``."""
        return self._root

    def dataset_path(self, tenant: str, pipeline: str) -> str:
        """Return the directory holding every file of one pipeline, inside ``filesystem``."""
        return _join(
            self._root,
            f"tenant={topics.check_name(tenant, 'tenant')}",
            f"pipeline={topics.check_name(pipeline, 'pipeline')}",
        )

    def partition_path(self, tenant: str, pipeline: str, date: str) -> str:
        """Return the directory of one day of one pipeline."""
        return _join(self.dataset_path(tenant, pipeline), f"date={_check_date(date)}")

    # -- writing ---------------------------------------------------------------------------

    def append(self, tenant: str, batch: SampleBatch, *, ingested_at_ns: int | None = None) -> int:
        """Buffer the batch's records; write a partition once it holds ``flush_rows`` rows.

        Returns the number of rows buffered. Rows become readable after ``flush``.
        """
        topics.check_name(tenant, "tenant")
        topics.check_name(batch.pipeline, "pipeline")
        now_ns = time.time_ns() if ingested_at_ns is None else ingested_at_ns
        key = (tenant, batch.pipeline, _utc_date(now_ns))
        with self._lock:
            pending = self._pending.setdefault(key, _Pending())
            part = pending.parts[-1] if pending.parts else None
            if not isinstance(part, _Rows):
                part = _Rows()
                pending.parts.append(part)
            cols = part.columns
            for record in batch.records:
                tensor = np.ascontiguousarray(record.tensor)
                little = (
                    tensor.astype(tensor.dtype.newbyteorder("<"))
                    if tensor.dtype.byteorder == ">"
                    else tensor
                )
                cols["sample_id"].append(batch.sample_id(record))
                cols["node"].append(batch.node)
                cols["seq"].append(record.seq)
                cols["pipeline"].append(batch.pipeline)
                cols["model_version"].append(batch.model_version)
                cols["data_class"].append(str(batch.data_class))
                cols["captured_at_ns"].append(record.captured_at_ns)
                cols["ingested_at_ns"].append(now_ns)
                cols["prediction"].append(record.prediction)
                cols["confidence"].append(float(record.confidence))
                cols["label"].append(record.label)
                cols["dtype"].append(_dtype_name(tensor.dtype))
                cols["shape"].append(list(tensor.shape))
                cols["tensor"].append(little.tobytes())
                part.fields.append(record.fields)
            pending.rows += len(batch.records)
            if pending.rows >= self._flush_rows:
                self._write_pending(key)
        return len(batch.records)

    def append_columns(
        self, tenant: str, columns: SampleColumns, *, ingested_at_ns: int | None = None
    ) -> int:
        """Buffer a batch decoded as columns, like ``append``; return the rows buffered.

        The columns are kept as they are (views into the payload included) and become
        Arrow arrays in bulk when the partition is written: no Python object per row.
        """
        topics.check_name(tenant, "tenant")
        topics.check_name(columns.pipeline, "pipeline")
        now_ns = time.time_ns() if ingested_at_ns is None else ingested_at_ns
        key = (tenant, columns.pipeline, _utc_date(now_ns))
        with self._lock:
            pending = self._pending.setdefault(key, _Pending())
            pending.parts.append((columns, now_ns))
            pending.rows += len(columns)
            if pending.rows >= self._flush_rows:
                self._write_pending(key)
        return len(columns)

    @property
    def buffered_rows(self) -> int:
        """Rows appended but not yet written."""
        with self._lock:
            return sum(p.rows for p in self._pending.values())

    def flush(self) -> list[str]:
        """Write every buffered partition to its own new file.

        Returns the paths of every file written since the last flush: this one's, and those
        ``append`` wrote when a partition reached ``flush_rows``. A partition whose write
        fails keeps its rows buffered and the error propagates.
        """
        with self._lock:
            for key in list(self._pending):
                self._write_pending(key)
            written, self._written = self._written, []
            return written

    def discard(self) -> int:
        """Drop every buffered row (after a failed write whose messages will be redelivered).

        Files already written stay written, and the next ``flush`` still returns them.
        """
        with self._lock:
            dropped = sum(p.rows for p in self._pending.values())
            self._pending.clear()
            return dropped

    def _write_pending(self, key: tuple[str, str, str]) -> str | None:
        pending = self._pending.get(key)
        if pending is None or pending.rows == 0:
            self._pending.pop(key, None)
            return None
        table = _pending_table(pending.parts)
        directory = self.partition_path(*key)
        path = self._write_file(directory, table, time.time_ns())
        del self._pending[key]
        self._written.append(path)
        return path

    def _write_file(self, directory: str, table: pa.Table, stamp_ns: int) -> str:
        name = f"part-{stamp_ns:020d}-{uuid.uuid4().hex[:12]}{_SUFFIX}"
        final = _join(directory, name)
        self._fs.create_dir(directory, recursive=True)
        if not self._atomic_rename:
            pq.write_table(table, final, filesystem=self._fs, **self._write_options(table))
            return final
        temp = _join(directory, f".{name}{_TEMP_SUFFIX}")
        try:
            pq.write_table(table, temp, filesystem=self._fs, **self._write_options(table))
            if self._fsync:
                _fsync_local(temp)
            self._fs.move(temp, final)
        except BaseException:
            _delete_quietly(self._fs, temp)
            raise
        if self._fsync:
            _fsync_local(directory)
        return final

    def _write_options(self, table: pa.Table) -> dict[str, Any]:
        # Dictionary-encode only the columns with few distinct values: trying it on ids,
        # tensors and timestamps costs half the write time and saves nothing.
        return {
            "row_group_size": self._row_group_rows,
            "use_dictionary": [n for n in table.column_names if n not in _UNIQUE_COLUMNS],
        }

    # -- reading ---------------------------------------------------------------------------

    def dates(self, tenant: str, pipeline: str) -> list[str]:
        """Return the days (``YYYY-MM-DD``) that hold files of one pipeline, oldest first."""
        base = self.dataset_path(tenant, pipeline)
        infos = self._fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        found = []
        for info in infos:
            name = info.base_name
            if info.type == pafs.FileType.Directory and name.startswith("date="):
                found.append(name.removeprefix("date="))
        return sorted(found)

    def files(self, tenant: str, pipeline: str, date: str | None = None) -> list[str]:
        """Return the visible data files of one pipeline (or one day of it), oldest first."""
        base = (
            self.dataset_path(tenant, pipeline)
            if date is None
            else self.partition_path(tenant, pipeline, date)
        )
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        paths = [
            info.path
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.File and _is_data_file(info.base_name)
        ]
        # Names start with the write time, so sorting by name orders files by write time.
        return sorted(paths, key=lambda p: (p.rsplit("/", 1)[-1], p))

    def read(
        self,
        tenant: str,
        pipeline: str,
        *,
        columns: Iterable[str] | None = None,
        dates: Iterable[str] | None = None,
    ) -> pa.Table:
        """Read one pipeline's written samples, each sample id once (its first write wins).

        Without ``columns``: every ``SCHEMA`` column, then the ``field_<name>`` columns any
        file holds, by name.  A requested field column no file holds reads as nulls.  A
        compaction that replaces files between listing and reading makes it list again.
        """
        days = None if dates is None else sorted(set(dates))
        wanted = None if columns is None else list(columns)  # each attempt needs them
        for attempt in range(_READ_ATTEMPTS):
            if days is None:
                paths = self.files(tenant, pipeline)
            else:
                paths = [p for d in days for p in self.files(tenant, pipeline, d)]
            try:
                return self._read_paths(paths, wanted)
            except OSError:
                # A listed file deleted before it is opened raises FileNotFoundError. On an
                # object store it can also go between opening (a HEAD) and reading (a GET),
                # which S3 reports as a plain OSError (NoSuchKey): so what decides is whether
                # a listed file is gone, not the error's type.
                if attempt == _READ_ATTEMPTS - 1 or not self._any_gone(paths):
                    raise
        raise AssertionError("unreachable")

    def _any_gone(self, paths: list[str]) -> bool:
        """Return whether any of ``paths`` no longer exists (False when that cannot be told)."""
        try:
            infos = self._fs.get_file_info(paths)
        except OSError:
            return False  # the store is unreachable: report the read's own error
        return any(info.type == pafs.FileType.NotFound for info in infos)

    def _read_paths(self, paths: list[str], columns: list[str] | None) -> pa.Table:
        wanted = [*SCHEMA.names, *sorted(self._field_types(paths))] if columns is None else columns
        unknown = sorted(
            c for c in set(wanted) - set(SCHEMA.names) if not c.startswith(FIELD_PREFIX)
        )
        if unknown:
            raise ValueError(
                f"unknown columns {unknown}; the store has {SCHEMA.names} and "
                f"{FIELD_PREFIX}<name> per side field"
            )
        read_cols = wanted if "sample_id" in wanted else ["sample_id", *wanted]
        table = self._read_files(paths, read_cols)
        return _dedup(table).select(wanted)

    def file_seqs(self, path: str) -> dict[tuple[str, str], npt.NDArray[np.int64]]:
        """Return the seqs of every row of one data file by (pipeline, node), as written."""
        table = pq.read_table(path, columns=["pipeline", "node", "seq"], filesystem=self._fs)
        out: dict[tuple[str, str], npt.NDArray[np.int64]] = {}
        if table.num_rows == 0:
            return out
        for group in table.group_by(["pipeline", "node"]).aggregate([("seq", "list")]).to_pylist():
            out[(group["pipeline"], group["node"])] = np.asarray(group["seq_list"], dtype=np.int64)
        return out

    def count(self, tenant: str, pipeline: str) -> int:
        """Return the number of distinct samples written for one pipeline."""
        return int(self.read(tenant, pipeline, columns=["sample_id"]).num_rows)

    def _read_files(self, paths: list[str], columns: list[str]) -> pa.Table:
        extra = [c for c in columns if c not in SCHEMA.names]
        if not extra:
            schema = pa.schema([SCHEMA.field(c) for c in columns])
            if not paths:
                return schema.empty_table()
            tables = [
                pq.read_table(p, columns=columns, filesystem=self._fs, schema=SCHEMA) for p in paths
            ]
            return pa.concat_tables(tables).select(columns)
        # Field columns differ between files: read each file's own, fill the rest with nulls
        # and widen text to binary where another file holds bytes under the same name.
        found = self._field_types(paths)
        types = {c: found.get(c, pa.string()) for c in extra}
        schema = pa.schema(
            [SCHEMA.field(c) if c in SCHEMA.names else pa.field(c, types[c]) for c in columns]
        )
        if not paths:
            return schema.empty_table()
        tables = []
        for path in paths:
            have = set(pq.read_schema(path, filesystem=self._fs).names)
            fixed = [c for c in columns if c in SCHEMA.names]
            own = [c for c in extra if c in have]
            table = pq.read_table(path, columns=fixed + own, filesystem=self._fs)
            arrays = []
            for column in columns:
                if column in table.column_names:
                    arrays.append(table.column(column).cast(schema.field(column).type))
                else:
                    arrays.append(pa.nulls(table.num_rows, schema.field(column).type))
            tables.append(pa.Table.from_arrays(arrays, schema=schema))
        return pa.concat_tables(tables)

    def _field_types(self, paths: list[str]) -> dict[str, pa.DataType]:
        """Return the field columns of ``paths`` and their unified type (binary wins)."""
        types: dict[str, pa.DataType] = {}
        for path in paths:
            for f in pq.read_schema(path, filesystem=self._fs):
                extra = f.name.startswith(FIELD_PREFIX) and f.name not in SCHEMA.names
                if extra and types.get(f.name) != pa.binary():
                    types[f.name] = f.type
        return types

    # -- maintenance -----------------------------------------------------------------------

    def compact(
        self, tenant: str, pipeline: str, date: str, *, stale_temp_s: float = 3600.0
    ) -> CompactionResult:
        """Merge one day's files into one de-duplicated file; readers never see a gap.

        The merged file becomes visible before the files it replaces are deleted, and ``read``
        de-duplicates, so a reader sees the same samples before, during and after (a crash in
        between leaves duplicates that the next compaction removes). Files written while this
        runs are left alone. Temporary files older than ``stale_temp_s`` (left by a crashed
        writer) are deleted.
        """
        directory = self.partition_path(tenant, pipeline, date)
        self._delete_stale_temps(directory, stale_temp_s)
        paths = self.files(tenant, pipeline, date)
        if len(paths) < 2:
            return CompactionResult(files_merged=0, rows=0, path=None)
        columns = [*SCHEMA.names, *sorted(self._field_types(paths))]
        table = _dedup(self._read_files(paths, columns))
        first_stamp = min(_stamp_of(p) for p in paths)
        merged = self._write_file(directory, table, first_stamp)
        for path in paths:
            self._fs.delete_file(path)
        return CompactionResult(
            files_merged=len(paths), rows=table.num_rows, path=merged, replaced=tuple(paths)
        )

    def _delete_stale_temps(self, directory: str, stale_temp_s: float) -> None:
        selector = pafs.FileSelector(directory, allow_not_found=True)
        cutoff = time.time() - stale_temp_s
        for info in self._fs.get_file_info(selector):
            name = info.base_name
            if info.type != pafs.FileType.File or not name.endswith(_TEMP_SUFFIX):
                continue
            if info.mtime is None or info.mtime.timestamp() < cutoff:
                _delete_quietly(self._fs, info.path)


def to_numpy(
    table: pa.Table, *, shape: tuple[int, ...] | None = None, dtype: str | None = None
) -> tuple[np.ndarray, list[str]]:
    """Rebuild the batch tensor ``(n, *shape)`` and the sample ids from store rows.

    Every row must share one dtype and shape (``shape``/``dtype`` when given, which also
    type an empty table); otherwise ``InputMismatchError`` names the first odd row.
    """
    ids = [str(i) for i in table.column("sample_id").to_pylist()]
    dtypes = table.column("dtype").to_pylist()
    shapes = [tuple(s) for s in table.column("shape").to_pylist()]
    want_dtype = dtype if dtype is not None else (dtypes[0] if dtypes else "float32")
    want_shape = shape if shape is not None else (shapes[0] if shapes else (0,))
    for i, (d, s) in enumerate(zip(dtypes, shapes, strict=True)):
        if d != want_dtype or s != tuple(want_shape):
            raise InputMismatchError(
                f"row {i} ({ids[i]}) does not match the others",
                expected=f"{want_dtype}{list(want_shape)}",
                got=f"{d}{list(s)}",
            )
    np_dtype = np.dtype(want_dtype).newbyteorder("<")
    raw = b"".join(table.column("tensor").to_pylist())
    x = np.frombuffer(raw, dtype=np_dtype).reshape((len(ids), *want_shape))
    return x.astype(np.dtype(want_dtype), copy=True), ids


def _pending_table(parts: list[_Rows | tuple[SampleColumns, int]]) -> pa.Table:
    """Return the buffered parts of one partition as one table, rows in append order."""
    tables: list[pa.Table] = []
    fields: list[Mapping[str, FieldValue]] = []
    any_fields = False
    run: list[tuple[SampleColumns, int]] = []
    for part in [*parts, None]:
        if isinstance(part, tuple):
            run.append(part)
            columns = part[0]
            if columns.fields is None:
                fields.extend([NO_FIELDS] * len(columns))
            else:
                fields.extend(columns.fields)
                any_fields = True
            continue
        if run:
            tables.append(_columns_table(run))
            run = []
        if part is not None:
            tables.append(pa.Table.from_pydict(part.columns, schema=SCHEMA))
            fields.extend(part.fields)
            any_fields = any_fields or any(part.fields)
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    return _with_fields(table, fields) if any_fields else table


def _columns_table(parts: list[tuple[SampleColumns, int]]) -> pa.Table:
    """Build ``SCHEMA`` columns from decoded column sets with array operations only."""
    sets = [columns for columns, _ in parts]
    sizes = np.array([len(c) for c in sets], dtype=np.int64)
    rows = int(sizes.sum())
    part_of_row = pa.array(np.repeat(np.arange(len(sets), dtype=np.int32), sizes))

    def per_part(values: list[str]) -> pa.Array:
        return pa.array(values, pa.string()).take(part_of_row)

    node = per_part([c.node for c in sets])
    seq = pa.array(np.concatenate([c.seq for c in sets])).cast(pa.int64())
    tensors = [c.tensors for c in sets]
    item_bytes = np.array([t[0].nbytes if len(t) else 0 for t in tensors], dtype=np.int64)
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.repeat(item_bytes, sizes), out=offsets[1:])
    tensor: pa.Array | pa.ChunkedArray
    if offsets[-1] <= np.iinfo(np.int32).max:
        # One gather of every tensor's bytes (little-endian, as the store keeps them).
        data = np.concatenate([_le_bytes(t) for t in tensors])
        tensor = pa.Array.from_buffers(
            pa.binary(), rows, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
        )
    else:  # over 2 GiB of tensors in one write: let pyarrow chunk the column
        tensor = pa.chunked_array(
            [pa.array([_le_bytes(row).tobytes() for row in t], pa.binary()) for t in tensors],
            pa.binary(),
        )
    runs: list[tuple[tuple[int, ...], int]] = []  # consecutive rows of one tensor shape
    for c, size in zip(sets, sizes.tolist(), strict=True):
        shape = c.tensors.shape[1:]
        if runs and runs[-1][0] == shape:
            runs[-1] = (shape, runs[-1][1] + size)
        else:
            runs.append((shape, size))
    shapes = pa.concat_arrays(
        [
            pa.ListArray.from_arrays(
                pa.array(np.arange(size + 1, dtype=np.int32) * len(shape)),
                pa.array(np.tile(np.array(shape, dtype=np.int32), size), pa.int32()),
                type=pa.list_(pa.int32()),
            )
            for shape, size in runs
        ]
    )
    labels = np.concatenate([c.label for c in sets]).astype(np.int64)
    has_label = np.concatenate([c.has_label for c in sets])
    arrays = [
        pc.binary_join_element_wise(node, seq.cast(pa.string()), ":"),
        node,
        seq,
        per_part([c.pipeline for c in sets]),
        per_part([c.model_version for c in sets]),
        per_part([str(c.data_class) for c in sets]),
        pa.array(np.concatenate([c.captured_at_ns for c in sets]).astype(np.int64)),
        pa.array(np.repeat(np.array([at for _, at in parts], dtype=np.int64), sizes)),
        pa.array(np.concatenate([c.prediction for c in sets]).astype(np.int64)),
        pa.array(np.concatenate([c.confidence for c in sets]).astype(np.float64)),
        pa.array(labels, pa.int64(), mask=~has_label),
        per_part([_dtype_name(t.dtype) for t in tensors]),
        shapes,
        tensor,
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _le_bytes(tensors: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Return the bytes of ``tensors`` (any strides, any byte order) little-endian, in order."""
    little = np.ascontiguousarray(tensors, dtype=tensors.dtype.newbyteorder("<"))
    return little.reshape(-1).view(np.uint8)


def _with_fields(table: pa.Table, rows: list[Mapping[str, FieldValue]]) -> pa.Table:
    """Append one ``field_<name>`` column per side field any row carries, by name."""
    names = sorted({name for fields in rows if fields for name in fields})
    for name in names:
        values = [fields.get(name) for fields in rows]
        if any(isinstance(v, bytes) for v in values):
            kind = pa.binary()
            values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
        else:
            kind = pa.string()
        table = table.append_column(pa.field(FIELD_PREFIX + name, kind), pa.array(values, kind))
    return table


@functools.cache
def _dtype_name(dtype: np.dtype[Any]) -> str:
    # numpy computes dtype.name in Python on every access; ingest asks once per sample.
    return dtype.name


def _dedup(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    ids = np.asarray(table.column("sample_id").to_pylist(), dtype=object)
    _, first = np.unique(ids, return_index=True)
    if len(first) == table.num_rows:
        return table
    return table.take(pa.array(np.sort(first)))


def _join(*parts: str) -> str:
    head, *rest = parts
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in rest)])


def _utc_date(ns: int) -> str:
    # Every append asks; a UTC day is 86,400 POSIX seconds, so the day number is the key.
    return _utc_day_name(ns // _NS_PER_DAY)


_NS_PER_DAY = 86_400 * 10**9


@functools.lru_cache(maxsize=64)
def _utc_day_name(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")


def _check_date(date: str) -> str:
    try:
        datetime.strptime(date, "%Y-%m-%d")
    except ValueError as exc:
        raise ValueError(f"date must be YYYY-MM-DD, got {date!r}") from exc
    return date


def _is_data_file(name: str) -> bool:
    return name.endswith(_SUFFIX) and not name.startswith((".", "_"))


def _stamp_of(path: str) -> int:
    name = path.rsplit("/", 1)[-1]
    try:
        return int(name.split("-")[1])
    except (IndexError, ValueError):
        return time.time_ns()


def _fsync_local(path: str) -> None:
    # pyarrow.fs has no fsync; on a local disk the OS call is the only way to make a write
    # (or, for a directory, a rename) durable before ingest acknowledges it.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(OSError):
        fs.delete_file(path)


class Compactor:
    """Merge each partition's small files in the background, so the store stays a few files.

    Ingest writes one file per flush, which at a low uplink rate is a file per sample; every
    ``interval_s`` this merges a partition once it holds ``min_files`` files. Run one per
    store (ingest replica 0 runs it): compactions of one partition must not overlap.
    ``on_compacted`` receives each merge that happened (ingest tells its seen index, so the
    merged file is not read back as one written before a crash).
    """

    def __init__(
        self,
        store: SampleStore,
        partitions: Iterable[tuple[str, str]],
        *,
        interval_s: float = 30.0,
        min_files: int = 8,
        on_compacted: Callable[[CompactionResult], None] | None = None,
    ) -> None:
        if interval_s <= 0 or min_files < 2:
            raise ValueError("interval_s must be > 0 and min_files >= 2")
        self._store = store
        self._partitions = list(partitions)
        self._interval_s = interval_s
        self._min_files = min_files
        self._on_compacted = on_compacted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-compactor", daemon=True)
        self.merged = 0

    def start(self) -> Compactor:
        """Start the background thread."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the compaction in progress, if any."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def run_once(self) -> int:
        """Compact every partition that has enough files; return how many files were merged."""
        merged = 0
        for tenant, pipeline in self._partitions:
            for date in self._store.dates(tenant, pipeline):
                if len(self._store.files(tenant, pipeline, date)) >= self._min_files:
                    result = self._store.compact(tenant, pipeline, date)
                    merged += result.files_merged
                    if result.path is not None and self._on_compacted is not None:
                        self._on_compacted(result)
        self.merged += merged
        return merged

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.run_once()
            except Exception:  # a failed compaction leaves the files as they were
                _log.exception("store compaction failed; will try again")
