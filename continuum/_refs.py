"""Import refs, ``"package.module:function"``: how a spec names code that other processes run.

A ref, not the function object, is what travels to the edge agent and the cloud head, so
``ref_of`` refuses what another process could not import (a lambda, a nested function, a
function of ``__main__``) at declaration time.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from continuum.errors import SpecError

__all__ = ["check_ref", "ref_of", "resolve_ref"]

_IDENTIFIER_PATH = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def check_ref(ref: object, field: str) -> str:
    """Return ``ref`` if it reads ``"package.module:function"``; else raise ``SpecError``."""
    if isinstance(ref, str):
        module, colon, qualname = ref.partition(":")
        if colon and _IDENTIFIER_PATH.match(module) and _IDENTIFIER_PATH.match(qualname):
            return ref
        example = "pipelines.digits.train:train_loop_per_worker"
        hint = ""
        if not colon and _IDENTIFIER_PATH.match(ref) and "." in ref:
            head, _, tail = ref.rpartition(".")
            hint = f'did you mean "{head}:{tail}"? '
        raise SpecError(
            f"{ref!r} is not an import ref",
            field=field,
            fix=f'{hint}write "package.module:function", e.g. "{example}"',
        )
    raise SpecError(
        f"expected an import ref string, got {type(ref).__name__}",
        field=field,
        fix='write "package.module:function"',
    )


def ref_of(obj: object, *, field: str = "ref") -> str:
    """Return the import ref ``"module:qualname"`` of a module-level function or class.

    Raises:
        SpecError: ``obj`` is a lambda, a nested function, defined in ``__main__`` or has
            no import path; another process could not import it.
    """
    if isinstance(obj, str):
        return check_ref(obj, field)
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise SpecError(
            f"{obj!r} has no import path",
            field=field,
            fix="pass a function defined at module level, or its ref 'package.module:function'",
        )
    if "<lambda>" in qualname:
        raise SpecError(
            "a lambda cannot be imported by the edge agent or the cloud head",
            field=field,
            fix="define a named function at module level and pass that",
        )
    if "<locals>" in qualname:
        raise SpecError(
            f"{qualname.replace('<locals>.', '')} is defined inside a function, so other "
            "processes cannot import it",
            field=field,
            fix="move it to module level",
        )
    if module == "__main__":
        raise SpecError(
            f"{qualname} is defined in __main__, which other processes cannot import",
            field=field,
            fix="put the pipeline in a module and load it by path "
            "(continuum validate FILE) or with python -m package.module",
        )
    return check_ref(f"{module}:{qualname}", field)


def resolve_ref(ref: str, *, field: str = "ref") -> Any:
    """Import ``"module:qualname"`` and return the object it names.

    Raises:
        SpecError: the ref is malformed, its module does not import or lacks the name.
    """
    module_name, _, qualname = check_ref(ref, field).partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise SpecError(
            f"cannot import module {module_name!r} of {ref!r}: {error}",
            field=field,
            fix="check the module path and that its package is installed here",
        ) from error
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as error:
            raise SpecError(
                f"{module_name!r} has no {qualname!r}",
                field=field,
                fix="check the name after ':'",
            ) from error
    return target
