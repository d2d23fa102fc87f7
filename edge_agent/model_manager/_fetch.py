"""One artifact transfer and its retries: which chunks are here (resumable across restarts),
whether the upload is complete on the broker, and when a failed fetch is tried again."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from continuum._retry import Backoff
from continuum.wire import topics
from continuum.wire.messages import DesiredModel

#: A fetch that got nothing new for this long asks the broker for its missing chunks again.
STALL_S = 10.0
#: Stalls in a row (while connected, after the manifest arrived) that make a fetch truncated.
STALL_LIMIT = 3
#: A fetch that failed in a way a new attempt can mend (a tampered or truncated transfer, a
#: disk error) is tried again after about this long, about doubling (with jitter) up to
#: ``RETRY_MAX_S``, while the desired state still names it: the broker's retained chunks
#: are intact even when a live copy was not.
RETRY_MIN_S = 30.0
RETRY_MAX_S = 900.0


@dataclass
class Fetch:
    """One artifact being assembled for one pipeline."""

    pipeline: str
    want: DesiredModel
    generation: int
    folder: Path
    received: set[int]
    last_progress: float
    #: Whether the manifest arrived: the upload is complete on the broker (it comes last).
    manifest_seen: bool = False
    #: Stall periods in a row, counted only while connected and after the manifest.
    stalls: int = 0

    @classmethod
    def resume(cls, pipeline: str, want: DesiredModel, generation: int, folder: Path) -> Fetch:
        """Start fetching ``want`` into ``folder``, keeping the whole chunks already there."""
        folder.mkdir(parents=True, exist_ok=True)
        fetch = cls(pipeline, want, generation, folder, set(), time.monotonic())
        for index in range(want.chunks):
            with contextlib.suppress(OSError):
                if fetch.chunk_path(index).stat().st_size == fetch.expected_size(index):
                    fetch.received.add(index)
        return fetch

    def chunk_path(self, index: int) -> Path:
        """Where chunk ``index`` is kept until the artifact is assembled."""
        return self.folder / f"{index:06d}.chunk"

    def chunk_topics(self, tenant: str, indices: Iterable[int]) -> list[str]:
        """The topics of chunks ``indices`` of this artifact."""
        return [
            topics.artifact_chunk(tenant, self.want.model, self.want.version, i) for i in indices
        ]

    def missing(self) -> list[int]:
        """The chunks not received yet."""
        return [i for i in range(self.want.chunks) if i not in self.received]

    def expected_size(self, index: int) -> int:
        """The size chunk ``index`` must have (the last one takes the rest)."""
        if index < self.want.chunks - 1:
            return self.want.chunk_size
        return self.want.size_bytes - self.want.chunk_size * (self.want.chunks - 1)

    def discard_chunks(self) -> None:
        """Throw the chunks away (tampered or corrupt) so a later attempt starts clean."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.received.clear()


class FetchFailedError(Exception):
    """A fetch ended without a model; ``state`` is "rejected" or "failed".

    ``retry``: whether another attempt can mend it (the desired state may name it again).
    """

    def __init__(self, reason: str, detail: str, *, state: str = "rejected", retry: bool) -> None:
        super().__init__(detail)
        self.reason = reason
        self.state = state
        self.retry = retry


@dataclass
class Retry:
    """A desired model whose fetch failed, to be fetched again at ``due`` (monotonic)."""

    want: DesiredModel
    generation: int
    due: float
    backoff: Backoff


class RetrySchedule:
    """Per pipeline, the failed fetch to try again and when: after ``first_s``, then about
    twice as long each time (jittered, up to ``RETRY_MAX_S``) while it fails again."""

    def __init__(self, first_s: float) -> None:
        self._first_s = first_s
        self._retries: dict[str, Retry] = {}

    def failed(self, pipeline: str, want: DesiredModel, generation: int) -> None:
        """Schedule ``want`` again after its fetch for ``pipeline`` failed."""
        last = self._retries.get(pipeline)
        if last is not None and last.want == want:
            backoff = last.backoff
        else:
            backoff = Backoff(self._first_s, max(self._first_s, RETRY_MAX_S))
        due = time.monotonic() + backoff.next_delay()
        self._retries[pipeline] = Retry(want, generation, due, backoff)

    def get(self, pipeline: str) -> Retry | None:
        """The retry scheduled for ``pipeline``, if any."""
        return self._retries.get(pipeline)

    def forget(self, pipeline: str) -> None:
        """Schedule nothing more for ``pipeline`` (it serves, or the desired state moved)."""
        self._retries.pop(pipeline, None)

    def items(self) -> list[tuple[str, Retry]]:
        """Every scheduled retry, by pipeline (a copy: the caller may change the schedule)."""
        return list(self._retries.items())
