"""The sample store's read path: Parquet files of differing field columns to one table.

Part of ``cloud_head.store`` (which re-exports ``to_numpy``).  Files differ in their
``field_<name>`` columns as fields come and go; reads unify them by name, and a sample
written twice (a redelivery, a compaction cut short) is read once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cloud_head._store_schema import FIELD_PREFIX, SCHEMA
from continuum.errors import InputMismatchError


def read_files(fs: pafs.FileSystem, paths: list[str], columns: list[str]) -> pa.Table:
    """Read ``columns`` of ``paths`` into one table; a field column a file lacks reads as nulls."""
    extra = [c for c in columns if c not in SCHEMA.names]
    if not extra:
        schema = pa.schema([SCHEMA.field(c) for c in columns])
        if not paths:
            return schema.empty_table()
        tables = [pq.read_table(p, columns=columns, filesystem=fs, schema=SCHEMA) for p in paths]
        return pa.concat_tables(tables).select(columns)
    # Field columns differ between files: read each file's own, fill the rest with nulls
    # and widen text to binary where another file holds bytes under the same name.
    found = field_types(fs, paths)
    types = {c: found.get(c, pa.string()) for c in extra}
    schema = pa.schema(
        [SCHEMA.field(c) if c in SCHEMA.names else pa.field(c, types[c]) for c in columns]
    )
    if not paths:
        return schema.empty_table()
    tables = []
    for path in paths:
        have = set(pq.read_schema(path, filesystem=fs).names)
        fixed = [c for c in columns if c in SCHEMA.names]
        own = [c for c in extra if c in have]
        table = pq.read_table(path, columns=fixed + own, filesystem=fs)
        arrays = []
        for column in columns:
            if column in table.column_names:
                arrays.append(table.column(column).cast(schema.field(column).type))
            else:
                arrays.append(pa.nulls(table.num_rows, schema.field(column).type))
        tables.append(pa.Table.from_arrays(arrays, schema=schema))
    return pa.concat_tables(tables)


def field_types(fs: pafs.FileSystem, paths: list[str]) -> dict[str, pa.DataType]:
    """Return the field columns of ``paths`` and their unified type (binary wins)."""
    types: dict[str, pa.DataType] = {}
    for path in paths:
        for f in pq.read_schema(path, filesystem=fs):
            extra = f.name.startswith(FIELD_PREFIX) and f.name not in SCHEMA.names
            if extra and types.get(f.name) != pa.binary():
                types[f.name] = f.type
    return types


def dedup(table: pa.Table) -> pa.Table:
    """Keep each sample id's first row, in order."""
    if table.num_rows == 0:
        return table
    ids = np.asarray(table.column("sample_id").to_pylist(), dtype=object)
    _, first = np.unique(ids, return_index=True)
    if len(first) == table.num_rows:
        return table
    return table.take(pa.array(np.sort(first)))


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
