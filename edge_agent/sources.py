"""Where frames come from: loading the ``Source`` named in the agent config.

A source is any iterable of frames (a camera, a file replay, a sensor bus)
named in the agent config as ``{"ref": "module:Class", "args": {...}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from continuum.errors import ConfigError, SpecError
from continuum.sources import Source
from continuum.spec import resolve_ref


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
