"""Turn a pydantic ``ValidationError`` deep inside a pipeline spec into one ``SpecError``.

The error keeps the full path of the bad field (``edge.where["tier"]``,
``uplink.policy.low_confidence.threshold``) and the fix that the validator gave, so a user
reads where the mistake is and what to write instead.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from continuum.errors import SpecError

M = TypeVar("M", bound=BaseModel)


def join_path(base: str, *parts: str | int | None) -> str:
    """Append raw field names to the path ``base``: ``edge.where["continuum.io/tier"]``."""
    text = base
    for part in parts:
        if part is None or part == "":
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith("["):
            text += part
        elif part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f'["{part}"]'
    return text


def key_path(key: str) -> str:
    """Return the path part of a mapping key, for ``SpecError(field=...)``."""
    return f'["{key}"]'


def raw_message(error: SpecError) -> str:
    """Return the message of ``error`` without the ``field:`` prefix and ``(fix: ...)``."""
    text = str(error)
    if error.field and text.startswith(f"{error.field}: "):
        text = text[len(error.field) + 2 :]
    if error.fix and text.endswith(f" (fix: {error.fix})"):
        text = text[: -len(f" (fix: {error.fix})")]
    return text


def spec_error(
    error: ValidationError, *, prefix: str = "", model: type[BaseModel] | None = None
) -> SpecError:
    """Return one ``SpecError`` for ``error``: the first problem's path and fix, the rest named."""
    problems = [_problem(item, prefix, model) for item in error.errors()]
    if not problems:
        return SpecError(str(error), field=prefix or None)
    return _combined(problems)


def check_partial(
    model: type[BaseModel], data: Mapping[str, Any], *, prefix: str, missing_ok: Iterable[str]
) -> None:
    """Validate ``data`` as far as it goes: only top-level fields in ``missing_ok`` may be absent.

    Raises:
        SpecError: any other problem, with its field path and fix.
    """
    try:
        model.model_validate(data)
    except ValidationError as error:
        allowed = set(missing_ok)
        problems = [
            _problem(item, prefix, model)
            for item in error.errors()
            if not (
                item["type"] == "missing" and len(item["loc"]) == 1 and item["loc"][0] in allowed
            )
        ]
        if problems:
            raise _combined(problems) from error


def _combined(problems: list[tuple[str, str, str | None]]) -> SpecError:
    field, message, fix = problems[0]
    if len(problems) > 1:
        others = ", ".join(other[0] or "?" for other in problems[1:])
        message = f"{message} (also invalid: {others})"
    return SpecError(message, field=field or None, fix=fix)


def validate(model: type[M], data: Any, *, prefix: str = "") -> M:
    """Validate ``data`` into ``model``; raise ``SpecError`` naming the field path and the fix."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise spec_error(error, prefix=prefix, model=model) from error


def _problem(
    item: Mapping[str, Any], prefix: str, model: type[BaseModel] | None
) -> tuple[str, str, str | None]:
    loc: tuple[str | int, ...] = tuple(item.get("loc", ()))
    path = join_path(prefix, *loc)
    cause = item.get("ctx", {}).get("error")
    if isinstance(cause, SpecError):
        inner = cause.field
        if inner and not (loc and loc[-1] == inner):
            path = join_path(path, inner)
        return path, raw_message(cause), cause.fix
    if isinstance(cause, Exception):
        return path, str(cause), None
    kind = item.get("type", "")
    if kind == "missing":
        return path, "is required", "add it"
    if kind == "extra_forbidden":
        known = _fields_at(model, loc[:-1]) if model is not None else None
        fix = f"remove it; known fields here: {', '.join(known)}" if known else "remove it"
        return path, "is not a known field", fix
    if kind == "literal_error":
        expected = item.get("ctx", {}).get("expected", "")
        return path, f"{item.get('input')!r} is not allowed", f"use one of {expected}"
    return path, str(item.get("msg", "is invalid")), None


def _fields_at(model: type[BaseModel], loc: Iterable[str | int]) -> list[str] | None:
    """Return the field names of the model found by walking ``loc`` from ``model``."""
    candidates: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        chosen = [c for c in candidates if part in c.model_fields]
        if chosen:
            candidates = _models_in(chosen[0].model_fields[part].annotation)
            continue
        tagged = [c for c in candidates if _tag(c) == part]
        if not tagged:
            return None
        candidates = tagged
    if len(candidates) != 1:
        return None
    return list(candidates[0].model_fields)


def _tag(model: type[BaseModel]) -> object:
    field = model.model_fields.get("kind")
    return None if field is None else field.default


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found.extend(_models_in(arg))
        return found
    return []
