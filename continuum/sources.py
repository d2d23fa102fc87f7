"""What a frame source yields: the ``Frame`` record and the ``Source`` protocol.

Pipelines write sources (cameras, file replays, sensor buses) against these two names;
the edge agent loads them by import ref and runs them. They live in the core so a
pipeline needs nothing of the agent to define one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol, TypeAlias, runtime_checkable

import numpy as np

from continuum.errors import ProtocolError
from continuum.wire.topics import check_name

__all__ = ["FieldValue", "Frame", "Source"]

#: A named side value captured with a frame: an IBAN, an operator's name, a face crop.
FieldValue: TypeAlias = str | bytes | int | float

_NO_FIELDS: Final[Mapping[str, FieldValue]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured input: its tensor and, where the scene provides one, a delayed label.

    ``label_delay_s`` is how long after capture the ground truth becomes known
    (an inspection verdict, a later sensor reading); the agent sends it as
    feedback for the samples it uplinked once that time has passed.

    ``fields`` are named side values captured with the tensor (name -> str, bytes, int or
    float).  The pipeline's ``input.fields`` gives each a data class; the agent's residency
    plan drops or hashes those the cloud store may not hold before a sample is queued.
    Names follow the topic name rules (lowercase, digits, ``.``, ``_``, ``-``; 1-64 chars).

    Raises:
        TypeError: a field value is not str, bytes, int or float.
        ValueError: a field name breaks the name rules.
    """

    tensor: np.ndarray
    label: int | float | None = None
    label_delay_s: float = 0.0
    captured_at_ns: int = field(default_factory=time.time_ns)
    fields: Mapping[str, FieldValue] = field(default_factory=lambda: _NO_FIELDS)

    def __post_init__(self) -> None:
        # Checked here, where the source builds the frame, so its author reads the problem
        # at the line that made it rather than as a sample dropped later on the way up.
        for name, value in self.fields.items():
            try:
                check_name(name, "field")
            except ProtocolError as exc:
                raise ValueError(str(exc)) from exc
            if not isinstance(value, str | bytes | int | float):
                raise TypeError(
                    f"field {name!r} is a {type(value).__name__}; a frame field is str, "
                    "bytes, int or float (encode anything else, e.g. an image crop as PNG bytes)"
                )


@runtime_checkable
class Source(Protocol):
    """An iterable of frames, produced at the source's own pace."""

    def __iter__(self) -> Iterator[Frame]: ...
