"""Where frames come from: the ``Frame`` record, the ``Source`` protocol and its loader.

A source is any iterable of frames (a camera, a file replay, a sensor bus)
named in the agent config as ``{"ref": "module:Class", "args": {...}}``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from continuum.errors import ConfigError, SpecError
from continuum.spec import resolve_ref


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


def load_source(ref: str, args: Mapping[str, Any] | None = None) -> Source:
    """Build the source named by ``ref`` with keyword ``args``.

    Raises:
        ConfigError: the reference does not import, the arguments do not fit, or the
            result is not iterable.
    """
    try:
        factory = resolve_ref(ref, field="source.ref")
    except SpecError as exc:
        raise ConfigError(str(exc)) from exc
    if not callable(factory):
        raise ConfigError(f"source {ref!r} is not a class or factory function")
    try:
        source = factory(**dict(args or {}))
    except TypeError as exc:
        raise ConfigError(
            f"source {ref!r} does not accept args {dict(args or {})!r}: {exc}"
        ) from exc
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"source {ref!r} failed to start: {exc}") from exc
    if not isinstance(source, Source):
        raise ConfigError(f"source {ref!r} built a {type(source).__name__}, which is not iterable")
    return source
