"""``PipelineSpec``: a whole pipeline, immutable and validated, and its YAML and JSON forms."""

from __future__ import annotations

import json
from typing import Any, Final, Literal

import yaml
from pydantic import field_validator, model_validator
from typing_extensions import Self

from continuum._data_class import DataClassField
from continuum._loading import model_from_mapping, model_from_yaml
from continuum._rollout_spec import RolloutSpec
from continuum._stage_specs import (
    EdgeStageSpec,
    FrozenSpec,
    GateSpec,
    LabelSpec,
    RetrainSpec,
    UplinkSpec,
    topic_name,
)
from continuum.errors import SpecError
from continuum.task import (
    check_gate_metric,
    check_label_source,
    check_policy_kinds,
    check_rollback_metric,
)

__all__ = ["API_VERSION", "PipelineSpec"]

API_VERSION: Final = "continuum.io/v1"

_KIND = "a pipeline spec"
_START = f"start from `continuum show FILE`; it begins with api_version: {API_VERSION}"


class PipelineSpec(FrozenSpec):
    """A whole pipeline: immutable, validated, the same whether written in Python or YAML."""

    api_version: Literal["continuum.io/v1"] = API_VERSION
    name: str
    tenant: str
    data_class: DataClassField
    edge: EdgeStageSpec
    uplink: UplinkSpec
    label: LabelSpec = LabelSpec()
    retrain: RetrainSpec | None = None
    gate: GateSpec = GateSpec()
    rollout: RolloutSpec = RolloutSpec()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return topic_name(value, "pipeline", "line-7-inspection")

    @field_validator("tenant")
    @classmethod
    def _check_tenant(cls, value: str) -> str:
        return topic_name(value, "tenant", "acme")

    @model_validator(mode="after")
    def _fits_task(self) -> Self:
        # Everything downstream of the model reads its outputs through the task: a policy,
        # gate or rollback rule that cannot is refused here, naming the ones that can.
        task = self.edge.task
        check_policy_kinds(task, self.uplink.policy.kinds())
        check_gate_metric(task, self.gate_metric)
        check_label_source(task, self.label.source)
        if self.rollout.rollback_on_drop is not None:
            check_rollback_metric(task, self.rollout.rollback_metric)
        return self

    @property
    def gate_metric(self) -> str:
        """The gate's metric: the one declared, else the task's default."""
        return self.gate.metric or self.edge.task.default_metric

    @classmethod
    def from_dict(cls, data: Any) -> PipelineSpec:
        """Validate a mapping (e.g. parsed YAML); raise ``SpecError`` naming the field path."""
        return model_from_mapping(cls, data, kind=_KIND, fix=_START)

    @classmethod
    def from_yaml(cls, text: str) -> PipelineSpec:
        """Parse and validate YAML; raise ``SpecError`` on bad YAML or a bad spec."""
        return model_from_yaml(cls, text, kind=_KIND, fix=_START)

    @classmethod
    def from_json(cls, text: str | bytes) -> PipelineSpec:
        """Parse and validate JSON; raise ``SpecError`` on bad JSON or a bad spec."""
        try:
            data = json.loads(text)
        except ValueError as error:
            raise SpecError(f"not valid JSON: {error}", fix="fix the JSON syntax") from error
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as plain JSON-compatible data."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """Return the spec as YAML, fields in declaration order."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True)

    def to_json(self) -> str:
        """Return the spec as indented JSON."""
        return self.model_dump_json(indent=2)

    def summary(self) -> str:
        """Return a few lines that say what the pipeline does, for people."""
        edge = self.edge
        uplink = self.uplink
        budget = "unlimited" if uplink.budget_kbps is None else f"{uplink.budget_kbps:g} kbit/s"
        lines = [
            f"pipeline {self.name} (tenant {self.tenant}, data class {self.data_class.value})",
            f"  edge:    model {edge.model} on {edge.backend}, input {list(edge.input.shape)} "
            f"{edge.input.dtype}, {edge.task.describe()}, on {edge.where}",
            f"  uplink:  {uplink.policy.describe()}, budget {budget}",
            f"  label:   {self.label.source}"
            + (f" ({self.label.teacher_model})" if self.label.teacher_model else ""),
        ]
        retrain = self.retrain
        if retrain is None:
            lines.append("  retrain: none")
        else:
            lines.append(
                f"  retrain: {retrain.trainer} when {retrain.trigger.describe()}, "
                f"{retrain.gpus:g} GPU {retrain.cpus:g} CPU, on {retrain.where}"
            )
        rollout = self.rollout
        lines.append(f"  gate:    {self.gate_metric} gain >= {self.gate.min_gain:g}")
        lines.append(f"  rollout: {rollout.describe()}")
        return "\n".join(lines)


class _Dumper(yaml.SafeDumper):
    """Write lists of scalars (a shape) on one line: ``shape: [1, 8, 8]``."""

    def represent_list(self, data: Any) -> yaml.SequenceNode:
        flow = all(isinstance(item, int | float | str | bool) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)
