"""What a frame source yields: the ``Frame`` record and the ``Source`` protocol.

Pipelines write sources (cameras, file replays, sensor buses) against these two names;
the edge agent loads them by import ref and runs them. They live in the core so a
pipeline needs nothing of the agent to define one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Frame", "Source"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured input: its tensor and, where the scene provides one, a delayed label.

    ``label_delay_s`` is how long after capture the ground truth becomes known
    (an inspection verdict, a later sensor reading); the agent sends it as
    feedback for the samples it uplinked once that time has passed.
    """

    tensor: np.ndarray
    label: int | None = None
    label_delay_s: float = 0.0
    captured_at_ns: int = field(default_factory=time.time_ns)


@runtime_checkable
class Source(Protocol):
    """An iterable of frames, produced at the source's own pace."""

    def __iter__(self) -> Iterator[Frame]: ...
