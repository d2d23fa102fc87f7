"""Load declarations from text and files, and point errors at where they came from.

``model_from_mapping``/``model_from_yaml`` are the one home of the ``from_dict``/``from_yaml``
of ``PipelineSpec`` and ``ResidencyPolicy``; ``import_file`` imports a pipeline file so that
refs to its functions resolve (a file importable from the path imports under its dotted name,
so ``"pipelines.digits_inspection:preprocess"`` is the same ref on the edge).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from continuum._validation import spec_error
from continuum.errors import SpecError

M = TypeVar("M", bound=BaseModel)


def model_from_mapping(model: type[M], data: Any, *, kind: str, fix: str) -> M:
    """Validate ``data`` as a ``model``; raise ``SpecError`` naming the field path and the fix.

    Args:
        model: the pydantic model to build, e.g. ``PipelineSpec``.
        data: parsed YAML or JSON; anything but a mapping is refused with ``fix``.
        kind: what the model is called in errors, with its article: ``"a pipeline spec"``.
        fix: what to do when ``data`` is not a mapping, e.g. which example to start from.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{kind} is a mapping, got {type(data).__name__}", fix=fix)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise spec_error(error, model=model) from error


def model_from_yaml(model: type[M], text: str, *, kind: str, fix: str) -> M:
    """Parse YAML and validate it as ``model`` (see ``model_from_mapping``).

    Raises:
        SpecError: the text is not valid YAML, or not a valid ``model``.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"not valid YAML: {error}", fix="fix the YAML syntax") from error
    return model_from_mapping(model, data, kind=kind, fix=fix)


def located(error: SpecError, file: Path) -> SpecError:
    """Return ``error`` with the file, and the line of ``file`` that raised it, in front."""
    where = str(file)
    resolved = file.resolve()
    for exc in (error.__cause__, error):  # an import failure carries its line in the cause
        frame = exc.__traceback__ if exc is not None else None
        while frame is not None:
            if Path(frame.tb_frame.f_code.co_filename).resolve() == resolved:
                where = f"{file}:{frame.tb_lineno}"
            frame = frame.tb_next
    result = SpecError(f"{where}: {error}")
    result.field, result.fix = error.field, error.fix
    return result


def _module_name(file: Path) -> str | None:
    """Return the longest dotted name that imports ``file`` (``pipelines.digits_inspection``)."""
    resolved = file.resolve()
    package = resolved.stem == "__init__"  # a package's own file imports as the package
    parts = [resolved.parent.name] if package else [resolved.stem]
    best: str | None = None
    for folder in resolved.parents[1:] if package else resolved.parents:
        if not all(p.isidentifier() for p in parts) or len(parts) > 6:
            break
        name = ".".join(reversed(parts))
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is not None and found.origin and Path(found.origin).resolve() == resolved:
            best = name
        parts.append(folder.name)
    return best


def import_file(file: Path) -> ModuleType:
    """Import ``file`` so that refs to its functions resolve in this and other processes.

    A file that is importable (its package is on the path) imports under its dotted name,
    e.g. ``pipelines.digits_inspection``; any other under its stem, as ``python FILE``
    would import a sibling module.
    """
    try:
        name = _module_name(file)
        if name is not None:
            return importlib.import_module(name)
        return _exec_file(file)
    except SpecError:
        raise
    except Exception as error:
        raise SpecError(
            f"failed to import: {type(error).__name__}: {error}",
            fix=f"run `python {file}` to see the full traceback",
        ) from error


def _exec_file(file: Path) -> ModuleType:
    name = file.stem
    if not name.isidentifier():
        raise SpecError(
            f"{file.name} is not an importable module name",
            fix="rename the file to a Python identifier, e.g. line_7.py",
        )
    existing = sys.modules.get(name)
    origin = getattr(existing, "__file__", None)
    if existing is not None and origin is not None and Path(origin).resolve() == file.resolve():
        return existing
    other = existing or importlib.util.find_spec(name)
    if other is not None:
        raise SpecError(
            f"the module name {name!r} is taken by another module",
            fix="rename the file, or put it in a package on the Python path",
        )
    loader_spec = importlib.util.spec_from_file_location(name, file)
    if loader_spec is None or loader_spec.loader is None:
        raise SpecError(f"cannot import {file}", fix="check that it is a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
