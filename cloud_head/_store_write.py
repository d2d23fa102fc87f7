"""The sample store's write path: buffered samples to Arrow tables, tables to Parquet files.

Part of ``cloud_head.store``.  A batch is buffered as rows (decoded records) or as whole
column sets (turned into Arrow arrays in bulk, no Python object per row); a partition's
buffer becomes one table, and a table one new file that is complete when it becomes visible.
On a local disk the files are owner-only (0600) in owner-only folders (0700), as is all of
the cloud head's state (``continuum._fs``): samples are a tenant's data.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cloud_head._store_schema import FIELD_PREFIX, SCHEMA, SUFFIX, TEMP_SUFFIX, join
from continuum._fs import private_dir, private_file
from continuum.wire.codec import NO_FIELDS, FieldValue, SampleBatch, SampleColumns

#: Columns whose values are (nearly) all distinct: not worth a Parquet dictionary.
_UNIQUE_COLUMNS = frozenset({"sample_id", "seq", "captured_at_ns", "confidence", "tensor"})
# Filesystems whose uploads become visible atomically and whose "rename" is a copy.
_OBJECT_STORES = frozenset({"s3", "gcs"})


@dataclass(slots=True)
class Rows:
    """Rows appended from ``SampleBatch`` records, column by column."""

    columns: dict[str, list[Any]] = field(default_factory=lambda: {n: [] for n in SCHEMA.names})
    #: Each row's side fields (the shared empty mapping for most rows).
    fields: list[Mapping[str, FieldValue]] = field(default_factory=list)


@dataclass(slots=True)
class PendingPartition:
    """Rows buffered for one partition, in append order: record rows, or whole column sets
    (with the ingest time of each) that are turned into Arrow arrays in bulk on write."""

    parts: list[Rows | tuple[SampleColumns, int]] = field(default_factory=list)
    rows: int = 0


def add_records(part: Rows, batch: SampleBatch, now_ns: int) -> None:
    """Append the records of ``batch``, ingested at ``now_ns``, to ``part`` column by column."""
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
        cols["dtype"].append(dtype_name(tensor.dtype))
        cols["shape"].append(list(tensor.shape))
        cols["tensor"].append(little.tobytes())
        part.fields.append(record.fields)


def pending_table(parts: list[Rows | tuple[SampleColumns, int]]) -> pa.Table:
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
            tables.append(columns_table(run))
            run = []
        if part is not None:
            tables.append(pa.Table.from_pydict(part.columns, schema=SCHEMA))
            fields.extend(part.fields)
            any_fields = any_fields or any(part.fields)
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    return with_fields(table, fields) if any_fields else table


def columns_table(parts: list[tuple[SampleColumns, int]]) -> pa.Table:
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
        data = gathered_bytes(tensors)
        tensor = pa.Array.from_buffers(
            pa.binary(), rows, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
        )
    else:  # over 2 GiB of tensors in one write: let pyarrow chunk the column
        tensor = pa.chunked_array(
            [pa.array([le_bytes(row).tobytes() for row in t], pa.binary()) for t in tensors],
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
        per_part([dtype_name(t.dtype) for t in tensors]),
        shapes,
        tensor,
    ]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def gathered_bytes(tensors: list[npt.NDArray[Any]]) -> npt.NDArray[np.uint8]:
    """Return the bytes of every tensor of ``tensors`` (column sets), in order, little-endian.

    Sets of one dtype and one size per tensor (one pipeline's schema: the usual group) are
    gathered by one ``concatenate`` straight from the payload views, byte order fixed in
    the same pass; copying each set first costs ingest a few us per message.
    """
    first = tensors[0]
    per_row = math.prod(first.shape[1:])
    if all(t.dtype == first.dtype and math.prod(t.shape[1:]) == per_row for t in tensors):
        rows = [t.reshape(len(t), per_row) for t in tensors]
        flat = np.concatenate(rows, dtype=first.dtype.newbyteorder("<"))
        return flat.reshape(-1).view(np.uint8)
    return np.concatenate([le_bytes(t) for t in tensors])


def le_bytes(tensors: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Return the bytes of ``tensors`` (any strides, any byte order) little-endian, in order."""
    little = np.ascontiguousarray(tensors, dtype=tensors.dtype.newbyteorder("<"))
    return little.reshape(-1).view(np.uint8)


def with_fields(table: pa.Table, rows: list[Mapping[str, FieldValue]]) -> pa.Table:
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
def dtype_name(dtype: np.dtype[Any]) -> str:
    """Return ``dtype.name``, cached."""
    # numpy computes dtype.name in Python on every access; ingest asks once per sample.
    return dtype.name


class FileWriter:
    """Write tables as new data files of one filesystem, each complete once it is visible.

    On a filesystem with an atomic rename (a local disk) a file is written under a hidden
    temporary name and renamed; on an object store an upload only becomes visible once it
    completed, so it is written in place. On a local disk folders and files are made
    owner-only; an object store's access is its bucket policy's.

    Args:
        fs: the filesystem.
        row_group_rows: the largest row group written.
        fsync: on a local disk, sync each file and its directory before ``write`` returns.
    """

    def __init__(self, fs: pafs.FileSystem, *, row_group_rows: int, fsync: bool) -> None:
        self._fs = fs
        self._row_group_rows = row_group_rows
        self._atomic_rename = fs.type_name not in _OBJECT_STORES
        self._local = isinstance(fs, pafs.LocalFileSystem)
        self._fsync = fsync and self._local

    def write(self, directory: str, table: pa.Table, stamp_ns: int) -> str:
        """Write ``table`` as a new file in ``directory`` named after ``stamp_ns``; return it."""
        name = f"part-{stamp_ns:020d}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        final = join(directory, name)
        if self._local:
            private_dir(directory)
        else:
            self._fs.create_dir(directory, recursive=True)
        if not self._atomic_rename:
            pq.write_table(table, final, filesystem=self._fs, **self._options(table))
            return final
        temp = join(directory, f".{name}{TEMP_SUFFIX}")
        try:
            if self._local:
                private_file(temp)  # Parquet then writes into it, keeping its mode (0600)
            pq.write_table(table, temp, filesystem=self._fs, **self._options(table))
            if self._fsync:
                fsync_local(temp)
            self._fs.move(temp, final)
        except BaseException:
            delete_quietly(self._fs, temp)
            raise
        if self._fsync:
            fsync_local(directory)
        return final

    def delete_stale_temps(self, directory: str, stale_temp_s: float) -> None:
        """Delete temporary files in ``directory`` older than ``stale_temp_s`` (crashed writers)."""
        selector = pafs.FileSelector(directory, allow_not_found=True)
        cutoff = time.time() - stale_temp_s
        for info in self._fs.get_file_info(selector):
            name = info.base_name
            if info.type != pafs.FileType.File or not name.endswith(TEMP_SUFFIX):
                continue
            if info.mtime is None or info.mtime.timestamp() < cutoff:
                delete_quietly(self._fs, info.path)

    def _options(self, table: pa.Table) -> dict[str, Any]:
        # Dictionary-encode only the columns with few distinct values: trying it on ids,
        # tensors and timestamps costs half the write time and saves nothing.
        return {
            "row_group_size": self._row_group_rows,
            "use_dictionary": [n for n in table.column_names if n not in _UNIQUE_COLUMNS],
        }


def fsync_local(path: str) -> None:
    """Make a file's contents, or a directory's renames, durable; raise if that fails.

    Unlike ``continuum._fs.fsync_dir`` this raises: ingest acknowledges a batch only once
    its file is on disk.
    """
    # pyarrow.fs has no fsync; on a local disk the OS call is the only way to make a write
    # (or, for a directory, a rename) durable before ingest acknowledges it.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    """Delete ``path`` if it can be (a leftover is deleted later as a stale temporary)."""
    with contextlib.suppress(OSError):
        fs.delete_file(path)
