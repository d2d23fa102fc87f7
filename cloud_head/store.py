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

``SampleStore`` buffers, lists and compacts; its rooms are ``_store_schema`` (the columns and
the layout), ``_store_write`` (samples to Arrow tables, tables to files), ``_store_read``
(files to one de-duplicated table) and ``_store_compaction`` (``Compactor``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cloud_head._store_compaction import Compactor
from cloud_head._store_read import dedup, field_types, read_files, to_numpy
from cloud_head._store_schema import (
    FIELD_PREFIX,
    SCHEMA,
    check_date,
    is_data_file,
    join,
    stamp_of,
    utc_date,
)
from cloud_head._store_write import (
    FileWriter,
    PendingPartition,
    Rows,
    add_records,
    pending_table,
)
from continuum.wire import topics
from continuum.wire.codec import SampleBatch, SampleColumns

__all__ = ["FIELD_PREFIX", "SCHEMA", "CompactionResult", "Compactor", "SampleStore", "to_numpy"]

#: Listing then reading races with a compaction that replaces the listed files: list again.
#: Each retry follows a compaction that made progress, so a few more cost little; with 3,
#: a reader racing back-to-back compactions of small files still lost now and then.
_READ_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What one compaction did: files merged into one, rows kept, the new file (if any),
    and the files it replaced (deleted once the new one was visible)."""

    files_merged: int
    rows: int
    path: str | None
    replaced: tuple[str, ...] = ()


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
        self._writer = FileWriter(filesystem, row_group_rows=row_group_rows, fsync=fsync)
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], PendingPartition] = {}
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
        return join(
            self._root,
            f"tenant={topics.check_name(tenant, 'tenant')}",
            f"pipeline={topics.check_name(pipeline, 'pipeline')}",
        )

    def partition_path(self, tenant: str, pipeline: str, date: str) -> str:
        """Return the directory of one day of one pipeline."""
        return join(self.dataset_path(tenant, pipeline), f"date={check_date(date)}")

    # -- writing ---------------------------------------------------------------------------

    def append(self, tenant: str, batch: SampleBatch, *, ingested_at_ns: int | None = None) -> int:
        """Buffer the batch's records; write a partition once it holds ``flush_rows`` rows.

        Returns the number of rows buffered. Rows become readable after ``flush``.
        """
        topics.check_name(tenant, "tenant")
        topics.check_name(batch.pipeline, "pipeline")
        now_ns = time.time_ns() if ingested_at_ns is None else ingested_at_ns
        key = (tenant, batch.pipeline, utc_date(now_ns))
        with self._lock:
            pending = self._pending.setdefault(key, PendingPartition())
            part = pending.parts[-1] if pending.parts else None
            if not isinstance(part, Rows):
                part = Rows()
                pending.parts.append(part)
            add_records(part, batch, now_ns)
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
        key = (tenant, columns.pipeline, utc_date(now_ns))
        with self._lock:
            pending = self._pending.setdefault(key, PendingPartition())
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
        table = pending_table(pending.parts)
        directory = self.partition_path(*key)
        path = self._writer.write(directory, table, time.time_ns())
        del self._pending[key]
        self._written.append(path)
        return path

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
        paths = [
            info.path
            for info in self._list(base)
            if info.type == pafs.FileType.File and is_data_file(info.base_name)
        ]
        # Names start with the write time, so sorting by name orders files by write time.
        return sorted(paths, key=lambda p: (p.rsplit("/", 1)[-1], p))

    def _list(self, base: str) -> list[pafs.FileInfo]:
        """List ``base`` recursively; a folder that does not exist yet lists as empty.

        ``allow_not_found`` does not cover a folder created while it is being listed (the
        first write of a pipeline racing a reader): Arrow then reports it as not found, so
        the listing is taken again once before that is believed.
        """
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            return list(self._fs.get_file_info(selector))
        except FileNotFoundError:
            try:
                return list(self._fs.get_file_info(selector))
            except FileNotFoundError:
                return []

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
        wanted = (
            [*SCHEMA.names, *sorted(field_types(self._fs, paths))] if columns is None else columns
        )
        unknown = sorted(
            c for c in set(wanted) - set(SCHEMA.names) if not c.startswith(FIELD_PREFIX)
        )
        if unknown:
            raise ValueError(
                f"unknown columns {unknown}; the store has {SCHEMA.names} and "
                f"{FIELD_PREFIX}<name> per side field"
            )
        read_cols = wanted if "sample_id" in wanted else ["sample_id", *wanted]
        table = read_files(self._fs, paths, read_cols)
        return dedup(table).select(wanted)

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
        self._writer.delete_stale_temps(directory, stale_temp_s)
        paths = self.files(tenant, pipeline, date)
        if len(paths) < 2:
            return CompactionResult(files_merged=0, rows=0, path=None)
        columns = [*SCHEMA.names, *sorted(field_types(self._fs, paths))]
        table = dedup(read_files(self._fs, paths, columns))
        first_stamp = min(stamp_of(p) for p in paths)
        merged = self._writer.write(directory, table, first_stamp)
        for path in paths:
            self._fs.delete_file(path)
        return CompactionResult(
            files_merged=len(paths), rows=table.num_rows, path=merged, replaced=tuple(paths)
        )
