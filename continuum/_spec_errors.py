"""Turn pydantic validation failures of continuum specs into ``SpecError``.

Spec validators raise ``SpecError`` (naming the field and the fix); pydantic wraps any
``ValueError`` raised in a validator into a ``ValidationError``.  ``build`` unwraps it so
declaration-time helpers (``select.low_confidence(...)``, ``drift.psi(...)``) raise the
``SpecError`` itself.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from continuum.errors import SpecError

M = TypeVar("M", bound=BaseModel)


def spec_error_from(error: ValidationError) -> SpecError:
    """Return the ``SpecError`` a validator raised, or one built from the first pydantic error."""
    details = error.errors()
    for item in details:
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, SpecError):
            return cause
    first = details[0] if details else {"loc": (), "msg": str(error)}
    field = ".".join(str(part) for part in first.get("loc", ())) or None
    return SpecError(str(first.get("msg", error)), field=field, fix="see the spec's documented fields")


def build(model: type[M], **values: Any) -> M:
    """Validate ``values`` into ``model``; raise ``SpecError`` naming the field and the fix."""
    try:
        return model(**values)
    except ValidationError as error:
        raise spec_error_from(error) from error
