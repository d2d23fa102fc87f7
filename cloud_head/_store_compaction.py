"""The sample store's background compaction: merge each partition's small files into one.

Public through ``cloud_head.store``; the merge itself is ``SampleStore.compact``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from continuum._retry import FailureLog

if TYPE_CHECKING:
    from cloud_head.store import CompactionResult, SampleStore

_log = logging.getLogger("cloud_head.store")


class Compactor:
    """Merge each partition's small files in the background, so the store stays a few files.

    Ingest writes one file per flush, which at a low uplink rate is a file per sample; every
    ``interval_s`` this merges a partition once it holds ``min_files`` files. Run one per
    store (ingest replica 0 runs it): compactions of one partition must not overlap.
    ``on_compacted`` receives each merge that happened (ingest tells its seen index, so the
    merged file is not read back as one written before a crash).  A compaction that keeps
    failing (an unreadable file) is logged when it starts failing and when it recovers.
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
        # Each interval tries again; the log says when failing starts and when it ends.
        self._failures = FailureLog("store compaction", _log)

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
            except Exception as exc:  # a failed compaction leaves the files as they were
                _log.debug("store compaction failed", exc_info=True)
                self._failures.failed(f"{type(exc).__name__}: {exc}")
            else:
                self._failures.recovered()
