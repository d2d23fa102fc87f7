"""Paced replay for the example pipelines' simulated sources (camera, terminal, scanner)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

#: How far behind a source may fall before it skips ahead instead of catching up.
MAX_LAG_S = 1.0


def paced(
    rate: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    max_frames: int | None = None,
) -> Iterator[tuple[int, float]]:
    """Yield ``(n, now)`` for each frame at ``rate`` per second, ``now`` read at its release.

    A consumer more than ``MAX_LAG_S`` late is not made up for with a burst: a real camera
    or terminal drops what it could not deliver, so the stream skips ahead to the present.
    """
    period = 1.0 / rate
    next_at = clock()
    n = 0
    while max_frames is None or n < max_frames:
        now = clock()
        if next_at > now:
            sleep(next_at - now)
            now = clock()
        elif now - next_at > MAX_LAG_S:
            next_at = now
        yield n, now
        n += 1
        next_at += period
