"""continuum: edge-to-cloud AI continuum orchestration.

The public surface is the pipeline DSL (``Pipeline``, ``task``, ``select``, ``drift``), the spec it
produces (``PipelineSpec`` and its parts) and the error hierarchy.
"""

from __future__ import annotations

from continuum import drift, select, task
from continuum.errors import ContinuumError, SpecError
from continuum.labels import LabelSelector
from continuum.pipeline import Pipeline
from continuum.spec import (
    DataClass,
    EdgeStageSpec,
    GateSpec,
    LabelSpec,
    PipelineSpec,
    RetrainSpec,
    RolloutSpec,
    TensorSchema,
    TriggerSpec,
    UplinkSpec,
    load_pipeline,
)

__all__ = [
    "ContinuumError",
    "DataClass",
    "EdgeStageSpec",
    "GateSpec",
    "LabelSelector",
    "LabelSpec",
    "Pipeline",
    "PipelineSpec",
    "RetrainSpec",
    "RolloutSpec",
    "SpecError",
    "TensorSchema",
    "TriggerSpec",
    "UplinkSpec",
    "drift",
    "load_pipeline",
    "select",
    "task",
]
