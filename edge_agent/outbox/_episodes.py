"""Drop episodes: the outbox's drops logged once when they start and once when they end."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from edge_agent.outbox._partitions import Partitions

log = logging.getLogger(__name__)


class DropEpisodes:
    """Log drops once when an episode starts and once when it ends, not once per record.

    Episodes are per pipeline and reason.  An episode of "full_*" drops ends with the
    pipeline's first append that needs none; one of "expired" drops with the first expiry
    pass that finds none of the pipeline's records old.

    Args:
        where: the outbox file, named in the log lines.
        partitions: the outbox's bounds (to say which one was full).
        ttl_s: the outbox's age bound (to say which records expire).
        full_policy: the outbox's full policy (to say what it does when full).
    """

    def __init__(self, where: Path, partitions: Partitions, ttl_s: float, full_policy: str) -> None:
        self._where = where
        self._partitions = partitions
        self._ttl_s = ttl_s
        self._full_policy = full_policy
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], tuple[float, int]] = {}

    def dropped(self, pipeline: str, reason: str, count: int) -> None:
        """Note ``count`` records of ``pipeline`` dropped for ``reason``; log a new episode."""
        key = (pipeline, reason)
        with self._lock:
            started, total = self._open.get(key, (0.0, 0))
            self._open[key] = (started or time.monotonic(), total + count)
        if not started:
            log.warning(
                "outbox %s, pipeline %s: %s; further drops are only counted "
                '(continuum_edge_records_dropped_total{pipeline="%s",reason="%s"}) '
                "until this ends",
                self._where,
                pipeline,
                self._describe(pipeline, reason),
                pipeline,
                reason,
            )

    def ended(self, pipeline: str, *reasons: str) -> None:
        """End ``pipeline``'s open episodes of ``reasons``, logging each with its total."""
        if not self._open:  # the common case, without taking the lock
            return
        with self._lock:
            closed = [
                (r, self._open.pop((pipeline, r))) for r in reasons if (pipeline, r) in self._open
            ]
        for reason, (started, total) in closed:
            log.warning(
                "outbox %s, pipeline %s: %s drops ended after %.1f s, %d record(s) dropped in all",
                self._where,
                pipeline,
                reason,
                time.monotonic() - started,
                total,
            )

    def _describe(self, pipeline: str, reason: str) -> str:
        parts = self._partitions
        if reason == "expired":
            return f"dropping records older than outbox_ttl_s={self._ttl_s:g}"
        if parts.shared:
            full = f"full at {parts.max_bytes} bytes"
        else:
            full = (
                f"full at its partition's {parts.bound_or_zero(pipeline)} bytes "
                f"(of outbox_max_bytes={parts.max_bytes})"
            )
        if reason == "full_oldest":
            return f"{full}, dropping the oldest unsent samples (outbox_full_policy=drop_oldest)"
        return f"{full}, refusing new records (outbox_full_policy={self._full_policy})"
