"""The outbox's byte bound, partitioned by pipeline, and the bytes each pipeline uses now.

Each pipeline owns its share of ``max_bytes`` and the full policy acts inside that share
only, so one pipeline's backlog never evicts or blocks another's records.  The totals live
in memory (summed from the database once, at open), so the insert path runs no aggregate
query.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from continuum.errors import ConfigError


class Partitions:
    """Byte bounds per pipeline (or one shared bound) and the bytes counted against them.

    Not thread-safe: the outbox calls it with its lock held (or while it opens).

    Args:
        max_bytes: the bound on all records.
        bounds: pipeline -> the bound of its records, adding up to at most ``max_bytes``;
            None: every pipeline shares ``max_bytes``.
        where: the outbox file, for error messages.
    """

    def __init__(self, max_bytes: int, bounds: Mapping[str, int] | None, where: Path) -> None:
        if bounds is not None and (
            any(bound < 1 for bound in bounds.values()) or sum(bounds.values()) > max_bytes
        ):
            raise ConfigError(
                f"outbox partitions must be positive and add up to at most {max_bytes=}, "
                f"got {dict(bounds)}"
            )
        self.max_bytes = int(max_bytes)
        self.bounds = None if bounds is None else {p: int(b) for p, b in bounds.items()}
        self._where = where
        #: Bytes of all records.
        self.total = 0
        self._by: dict[str, int] = {}  # pipeline -> bytes of its samples and feedback

    @property
    def shared(self) -> bool:
        """Whether all pipelines share one bound."""
        return self.bounds is None

    def bound(self, pipeline: str) -> int:
        """Return the byte bound of ``pipeline``'s records; ValueError if it has none."""
        if self.bounds is None:
            return self.max_bytes
        bound = self.bounds.get(pipeline)
        if bound is None:
            raise ValueError(
                f"pipeline {pipeline!r} has no partition in the outbox {self._where} "
                f"(partitions: {', '.join(sorted(self.bounds))})"
            )
        return bound

    def bound_or_zero(self, pipeline: str) -> int:
        """Return the byte bound of ``pipeline``'s records, 0 if it has none."""
        if self.bounds is None:
            return self.max_bytes
        return self.bounds.get(pipeline, 0)

    def used(self, pipeline: str) -> int:
        """Bytes counted against ``pipeline``'s bound."""
        if self.bounds is None:
            return self.total
        return self._by.get(pipeline, 0)

    def bytes_of(self, pipeline: str) -> int:
        """Bytes of ``pipeline``'s own records."""
        return self._by.get(pipeline, 0)

    def pipelines(self) -> list[str]:
        """The pipelines that ever had records counted since the outbox opened."""
        return list(self._by)

    def count(self, pipeline: str, delta: int) -> None:
        """Add ``delta`` bytes to ``pipeline``'s total and to the outbox's."""
        self._by[pipeline] = self._by.get(pipeline, 0) + delta
        self.total += delta
