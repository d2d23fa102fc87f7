"""The pipeline spec's public home: ``DataClass``, every stage's spec, ``PipelineSpec``, loading.

A ``PipelineSpec`` is what the DSL (``continuum.pipeline.Pipeline``) produces and what
deploy, the edge agent and the cloud head consume; it round-trips through YAML and JSON.
The parts live in private modules: ``_data_class`` (``DataClass``, a leaf the wire codec
imports too), ``_grammar`` (durations, triggers and rollback rules as a user types them),
``_refs`` (import refs, ``"package.module:function"``), ``_stage_specs``, ``_rollout_spec``
and ``_pipeline_spec``.  This module re-exports them and loads a pipeline from a file; it
imports the DSL for that, and the DSL imports the parts, never this module.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from continuum._data_class import DataClass
from continuum._federated_spec import FederatedSpec
from continuum._grammar import (
    RollbackRules,
    format_duration,
    parse_duration,
    parse_latency_rise,
    parse_rollback,
    parse_rollback_rules,
)
from continuum._loading import import_file, located
from continuum._pipeline_spec import API_VERSION, PipelineSpec
from continuum._refs import ref_of, resolve_ref
from continuum._rollout_spec import RolloutSpec
from continuum._stage_specs import (
    BackendKind,
    EdgeStageSpec,
    GateMetric,
    GateSpec,
    LabelSource,
    LabelSpec,
    RetrainSpec,
    TensorSchema,
    TriggerSpec,
    UplinkSpec,
    parse_trigger,
)
from continuum.errors import SpecError
from continuum.imaging import ImagePrep
from continuum.pipeline import Pipeline

__all__ = [
    "API_VERSION",
    "BackendKind",
    "DataClass",
    "EdgeStageSpec",
    "FederatedSpec",
    "GateMetric",
    "GateSpec",
    "ImagePrep",
    "LabelSource",
    "LabelSpec",
    "PipelineSpec",
    "RetrainSpec",
    "RollbackRules",
    "RolloutSpec",
    "TensorSchema",
    "TriggerSpec",
    "UplinkSpec",
    "format_duration",
    "load_pipeline",
    "parse_duration",
    "parse_latency_rise",
    "parse_rollback",
    "parse_rollback_rules",
    "parse_trigger",
    "ref_of",
    "resolve_ref",
]


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Load the pipeline in ``path``.

    ``path`` is a ``.py`` file with exactly one module-level ``Pipeline`` or
    ``PipelineSpec``, or a ``.yaml``/``.yml``/``.json`` spec.

    Raises:
        SpecError: the file is missing, does not import, holds no or several pipelines, or
            the pipeline is invalid; the message starts with the file (and line).
    """
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"no such file: {file}", fix="check the path")
    suffix = file.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            return PipelineSpec.from_yaml(file.read_text(encoding="utf-8"))
        if suffix == ".json":
            return PipelineSpec.from_json(file.read_text(encoding="utf-8"))
        if suffix == ".py":
            return _from_module(import_file(file), file)
    except SpecError as error:
        raise located(error, file) from error
    raise SpecError(
        f"cannot load a pipeline from {file}",
        fix="pass a .py file that declares a Pipeline, or a .yaml or .json spec",
    )


def _from_module(module: ModuleType, file: Path) -> PipelineSpec:
    found: dict[int, tuple[str, Pipeline | PipelineSpec]] = {}
    for attr, value in vars(module).items():
        if isinstance(value, Pipeline | PipelineSpec) and id(value) not in found:
            found[id(value)] = (attr, value)
    if not found:
        raise SpecError(
            "defines no Pipeline",
            fix='declare one at module level, e.g. pipe = Pipeline("line-7", tenant=..., ...)',
        )
    if len(found) > 1:
        names = ", ".join(sorted(attr for attr, _ in found.values()))
        raise SpecError(f"defines {len(found)} pipelines ({names})", fix="keep one per file")
    [(_, value)] = found.values()
    return value if isinstance(value, PipelineSpec) else value.spec
