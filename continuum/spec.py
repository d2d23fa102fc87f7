"""The pipeline spec: ``DataClass``, every stage's frozen pydantic spec and ``PipelineSpec``.

A ``PipelineSpec`` is what the DSL (``continuum.pipeline.Pipeline``) produces and what
deploy, the edge agent and the cloud head consume; it round-trips through YAML and JSON.
This module also owns the small grammars a user types: durations (``"10 min"``), triggers
(``"500 new samples or every 1 h"``), rollback rules (``"accuracy drop 0.02 or p95 latency
+20%"``) and import refs (``"package.module:function"``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import warnings
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Final, Literal, Self

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from continuum._loading import import_file, located
from continuum._validation import key_path, raw_message, spec_error
from continuum.drift import DriftSpec, KSSpec, PSISpec
from continuum.errors import ProtocolError, SpecError
from continuum.labels import TIER, LabelSelector
from continuum.select import PolicySpec
from continuum.wire.topics import check_name

__all__ = [
    "API_VERSION",
    "BackendKind",
    "DataClass",
    "EdgeStageSpec",
    "GateMetric",
    "GateSpec",
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

API_VERSION: Final = "continuum.io/v1"

BackendKind = Literal["auto", "onnxruntime", "tensorrt"]
LabelSource = Literal["delayed_feedback", "teacher", "human"]
GateMetric = Literal["accuracy", "f1_macro"]

DURATION_FORMS = 'a number of seconds, or "30 s", "10 min", "2 h", "1 d"'
TRIGGER_FORMS = '"500 new samples", "drift > 0.2", "every 1 h" or "manual", joined with " or "'
ROLLBACK_FORMS = '"accuracy drop 0.02", "accuracy drop 2%" or a number in (0, 1]'
LATENCY_FORMS = '"p95 latency +20%", "latency increase 20%" or a number in (0, 10] (0.2 = +20%)'
RULES_FORMS = (
    '"accuracy drop 0.02", "p95 latency +20%" (or "latency increase 20%"), '
    'or both joined with " or "'
)
#: A rollout ramp may take at most this many steps, canary and the final one included.
MAX_RAMP_STEPS: Final = 20


# --- data classes ----------------------------------------------------------------------------


class DataClass(StrEnum):
    """How sensitive a pipeline's data is: public < internal < confidential < restricted."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"

    @property
    def rank(self) -> int:
        """Return 0 for public up to 3 for restricted."""
        return _RANKS[self]

    @classmethod
    def parse(cls, value: object, *, field: str = "data_class") -> DataClass:
        """Return the class named ``value``; raise ``SpecError`` listing the valid names."""
        if isinstance(value, DataClass):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        raise SpecError(
            f"unknown data class {value!r}",
            field=field,
            fix=f"use one of {' < '.join(c.value for c in cls)}",
        )

    def __lt__(self, other: object) -> bool:
        return self.rank < DataClass.parse(other, field="other").rank

    def __le__(self, other: object) -> bool:
        return self.rank <= DataClass.parse(other, field="other").rank

    def __gt__(self, other: object) -> bool:
        return self.rank > DataClass.parse(other, field="other").rank

    def __ge__(self, other: object) -> bool:
        return self.rank >= DataClass.parse(other, field="other").rank


_RANKS = {c: i for i, c in enumerate(DataClass)}


def _data_class(value: object) -> DataClass:
    return DataClass.parse(value, field="")


DataClassField = Annotated[DataClass, BeforeValidator(_data_class)]


# --- small grammars --------------------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_DURATION = re.compile(rf"^{_NUMBER}\s*([a-z]*)$")


def parse_duration(value: object, *, field: str = "duration") -> float:
    """Return ``value`` in seconds: a number is seconds; text is ``"30 s"``, ``"10 min"``...

    Raises:
        SpecError: the text is not a duration or the duration is not positive.
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value.strip().lower())
        if match and match.group(2) in ("", *_UNITS):
            seconds = float(match.group(1)) * _UNITS.get(match.group(2), 1.0)
    if seconds is None:
        raise SpecError(
            f"cannot read duration {value!r}", field=field, fix=f"write {DURATION_FORMS}"
        )
    if not (math.isfinite(seconds) and seconds > 0):
        raise SpecError(
            f"must be a positive duration, got {value!r}",
            field=field,
            fix=f"write {DURATION_FORMS}",
        )
    return seconds


def format_duration(seconds: float) -> str:
    """Return ``seconds`` in the largest unit that keeps it whole: ``3600.0`` -> ``"1 h"``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)} {unit}"
    return f"{seconds:g} s"


def parse_rollback(value: object, *, field: str = "rollback_on") -> float:
    """Return the accuracy drop of ``"accuracy drop 0.02"`` (or ``"2%"``, or a number).

    Raises:
        SpecError: the rule cannot be read or the drop is not in (0, 1].
    """
    drop: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        drop = float(value)
    elif isinstance(value, str):
        match = re.match(rf"^accuracy\s+drop\s+(?:of\s+)?{_NUMBER}\s*(%?)$", value.strip().lower())
        if match:
            drop = float(match.group(1)) / (100.0 if match.group(2) else 1.0)
    if drop is None:
        raise SpecError(
            f"cannot read rollback rule {value!r}", field=field, fix=f"write {ROLLBACK_FORMS}"
        )
    if not 0.0 < drop <= 1.0:
        raise SpecError(
            f"the accuracy drop must be in (0, 1], got {drop:g}",
            field=field,
            fix='write e.g. "accuracy drop 0.02" (two points of accuracy)',
        )
    return drop


_LATENCY_RULE = re.compile(
    rf"^(?:p95\s+)?latency\s+(?:\+\s*|(?:increase|rise)\s+(?:of\s+|by\s+)?\+?){_NUMBER}\s*%$"
)


def parse_latency_rise(value: object, *, field: str = "rollback_on") -> float:
    """Return the p95 latency rise of ``"p95 latency +20%"`` as a fraction (``0.2``).

    ``"latency increase 20%"`` says the same; a number is the fraction itself.

    Raises:
        SpecError: the rule cannot be read or the rise is not in (0, 10] (up to +1000%).
    """
    rise: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        rise = float(value)
    elif isinstance(value, str):
        match = _LATENCY_RULE.match(re.sub(r"\s+", " ", value.strip().lower()))
        if match:
            rise = float(match.group(1)) / 100.0
    if rise is None:
        raise SpecError(
            f"cannot read latency rule {value!r}", field=field, fix=f"write {LATENCY_FORMS}"
        )
    if not (math.isfinite(rise) and 0.0 < rise <= 10.0):
        raise SpecError(
            f"the latency rise must be in (0%, 1000%], got {rise * 100:g}%",
            field=field,
            fix='write e.g. "p95 latency +20%" (roll back when p95 latency grows by a fifth)',
        )
    return rise


class RollbackRules(BaseModel):
    """What rolls a rollout back: an accuracy drop, a p95 latency rise or either (None: off)."""

    model_config = ConfigDict(frozen=True)

    accuracy_drop: float | None = None
    latency_rise: float | None = None

    def describe(self) -> str:
        """Return the rules as a user writes them: ``accuracy drop 0.02 or p95 latency +20%``."""
        parts = []
        if self.accuracy_drop is not None:
            parts.append(f"accuracy drop {self.accuracy_drop:g}")
        if self.latency_rise is not None:
            parts.append(f"p95 latency +{self.latency_rise * 100:g}%")
        return " or ".join(parts) or "no rule"


def parse_rollback_rules(value: object, *, field: str = "rollback_on") -> RollbackRules:
    """Read ``"accuracy drop 0.05"``, ``"p95 latency +20%"`` or both joined with ``" or "``.

    A bare number is an accuracy drop, as ``parse_rollback`` reads it.

    Raises:
        SpecError: a part cannot be read, is out of range, or names the same metric twice.
    """
    if not isinstance(value, str):
        return RollbackRules(accuracy_drop=parse_rollback(value, field=field))
    parts = [part.strip() for part in re.split(r"\s+or\s+", value.strip(), flags=re.IGNORECASE)]
    drop: float | None = None
    rise: float | None = None
    for part in parts:
        lowered = part.lower()
        metric = "accuracy" if lowered.startswith("accuracy") else "latency"
        if metric not in lowered:
            raise SpecError(
                f"cannot read rollback rule {part!r}" + (f" in {value!r}" if part != value else ""),
                field=field,
                fix=f"write {RULES_FORMS}",
            )
        if (drop if metric == "accuracy" else rise) is not None:
            raise SpecError(
                f"{value!r} gives the {metric} rule twice",
                field=field,
                fix=f"keep one; write {RULES_FORMS}",
            )
        try:
            if metric == "accuracy":
                drop = parse_rollback(part, field=field)
            else:
                rise = parse_latency_rise(part, field=field)
        except SpecError as error:
            if not raw_message(error).startswith("cannot read"):
                raise  # a readable rule out of its range: its own message says the range
            raise SpecError(
                f"cannot read rollback rule {part!r}" + (f" in {value!r}" if part != value else ""),
                field=field,
                fix=f"write {RULES_FORMS}",
            ) from error
    return RollbackRules(accuracy_drop=drop, latency_rise=rise)


def _trigger_fields(when: str, field: str) -> dict[str, Any]:
    """Parse a trigger expression into ``TriggerSpec`` fields."""
    fields: dict[str, Any] = {}
    value: Any
    clauses = [c.strip() for c in re.split(r"\s+or\s+", when.strip().lower())]
    for clause in clauses:
        text = re.sub(r"\s+", " ", clause)
        if match := re.match(r"^(\d+) new samples?$", text):
            key, value = "new_samples", int(match.group(1))
        elif match := re.match(rf"^drift ?> ?{_NUMBER}$", text):
            key, value = "drift_score", float(match.group(1))
        elif match := re.match(r"^every (.+)$", text):
            key, value = "every_s", parse_duration(match.group(1), field=field)
        elif text == "manual":
            key, value = "manual", True
        else:
            raise SpecError(
                f"cannot read trigger {clause!r}" + (f" in {when!r}" if clause != when else ""),
                field=field,
                fix=_trigger_hint(text) + f"write {TRIGGER_FORMS}",
            )
        if key in fields:
            raise SpecError(
                f"{when!r} names {key.replace('_', ' ')} twice", field=field, fix="keep one"
            )
        fields[key] = value
    return fields


def _trigger_hint(text: str) -> str:
    if match := re.match(r"^(\d+) ?(?:samples?|new)$", text):
        return f'did you mean "{match.group(1)} new samples"? '
    if match := re.match(rf"^drift\D*?{_NUMBER}$", text):
        return f'did you mean "drift > {match.group(1)}"? '
    if re.match(rf"^{_NUMBER} ?[a-z]+$", text):
        return f'did you mean "every {text}"? '
    return ""


def parse_trigger(when: str | TriggerSpec, *, field: str = "when") -> TriggerSpec:
    """Return the trigger of ``"500 new samples"``, ``"drift > 0.2"``, ``"every 1 h"``...

    Clauses combine with ``" or "``; a manual trigger is always possible.

    Raises:
        SpecError: a clause cannot be read or a value is out of range.
    """
    if isinstance(when, TriggerSpec):
        return when
    if not isinstance(when, str):
        raise SpecError(
            f"expected a trigger expression, got {type(when).__name__}",
            field=field,
            fix=f"write {TRIGGER_FORMS}",
        )
    try:
        return TriggerSpec.model_validate(_trigger_fields(when, field))
    except ValidationError as error:
        # The user wrote one string; name it rather than the TriggerSpec field inside.
        inner = spec_error(error, model=TriggerSpec)
        raise SpecError(f"in {when!r}: {raw_message(inner)}", field=field, fix=inner.fix) from error


_IDENTIFIER_PATH = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def _check_ref(ref: object, field: str) -> str:
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
        return _check_ref(obj, field)
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
    return _check_ref(f"{module}:{qualname}", field)


def resolve_ref(ref: str, *, field: str = "ref") -> Any:
    """Import ``"module:qualname"`` and return the object it names.

    Raises:
        SpecError: the ref is malformed, its module does not import or lacks the name.
    """
    module_name, _, qualname = _check_ref(ref, field).partition(":")
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


def _bounded(
    value: float,
    *,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    example: str,
) -> float:
    ok = math.isfinite(value) and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if ok:
        return value
    left = "(" if low_open else "["
    if high is None:
        interval = f"{left}{low:g}, inf)"
    else:
        interval = f"{left}{low:g}, {high:g}{')' if high_open else ']'}"
    raise SpecError(f"must be in {interval}, got {value!r}", fix=f"use e.g. {example}")


# --- specs -----------------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSchema(_Spec):
    """One sample's tensor: ``shape`` without the batch axis, numpy ``dtype`` name."""

    shape: tuple[int, ...] = Field(description="Per-sample shape, no batch axis, e.g. (1, 8, 8).")
    dtype: str = Field(default="float32", description="numpy dtype name, e.g. float32, uint8.")
    fields: dict[str, DataClassField] = Field(
        default_factory=dict, description="Data class of named fields (field-level residency)."
    )

    @field_validator("shape")
    @classmethod
    def _check_shape(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(d < 1 for d in value):
            raise SpecError(
                f"must list one or more positive sizes, got {value!r}",
                fix="give the shape of one sample without the batch axis, e.g. (1, 8, 8)",
            )
        return value

    @field_validator("fields")
    @classmethod
    def _check_field_names(cls, value: dict[str, DataClass]) -> dict[str, DataClass]:
        # A field travels by name on the wire (codec) and becomes a store column, where the
        # same rules as a topic level hold: check it here rather than when a frame arrives.
        for name in value:
            _topic_name(name, "field", "patient_id")
        return value

    @field_validator("dtype", mode="before")
    @classmethod
    def _check_dtype(cls, value: object) -> str:
        fix = "use a numpy dtype name such as float32, float16, uint8 or int64"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                dtype = np.dtype(value)  # type: ignore[call-overload]
        except Exception as error:
            raise SpecError(f"numpy does not know dtype {value!r}", fix=fix) from error
        if dtype.kind not in "biuf" or not isinstance(value, str):
            raise SpecError(f"{value!r} is not a numeric dtype name", fix=fix)
        return str(dtype.name)

    def numpy_dtype(self) -> np.dtype[Any]:
        """Return the numpy dtype."""
        return np.dtype(self.dtype)


class EdgeStageSpec(_Spec):
    """Real-time inference on edge nodes: the model, its input and where it runs."""

    model: str = Field(description="Model name in the registry (a topic level).")
    backend: BackendKind = Field(
        default="auto", description="auto prefers tensorrt, then onnxruntime."
    )
    input: TensorSchema
    preprocess: str | None = Field(
        default=None, description="Import ref 'module:qualname' or null."
    )
    where: LabelSelector = Field(
        default_factory=lambda: LabelSelector({TIER: "edge"}),
        description="Nodes that run the stage; must allow continuum.io/tier=edge.",
    )
    max_batch: int = Field(default=8, description="Largest micro-batch, in samples.")
    max_wait_ms: float = Field(default=5.0, description="Longest wait to fill a micro-batch.")

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        return _topic_name(value, "model", "inspector")

    @field_validator("preprocess")
    @classmethod
    def _check_preprocess(cls, value: str | None) -> str | None:
        return None if value is None else _check_ref(value, "preprocess")

    @field_validator("where")
    @classmethod
    def _check_where(cls, value: LabelSelector) -> LabelSelector:
        if not value.can_match(TIER, "edge"):
            raise SpecError(
                f"{value.root[TIER]!r} excludes edge nodes, where the edge stage runs",
                field=key_path(TIER),
                fix=f'use {{"{TIER}": "edge"}} or leave the key out',
            )
        return value

    @field_validator("max_batch")
    @classmethod
    def _check_max_batch(cls, value: int) -> int:
        return int(_bounded(value, low=1, high=65536, example="max_batch=8"))

    @field_validator("max_wait_ms")
    @classmethod
    def _check_max_wait(cls, value: float) -> float:
        return _bounded(value, low=0, high=60000, example="max_wait_ms=5")


class UplinkSpec(_Spec):
    """Which edge samples go up the link (``policy``), at what rate, and the drift detector."""

    policy: PolicySpec
    budget_kbps: float | None = Field(
        default=None, description="Link budget in kbit/s; null: unlimited."
    )
    drift: DriftSpec | None = Field(
        default=None, description="Detector the edge runs; defaults to the policy's drift(...) one."
    )

    @field_validator("budget_kbps")
    @classmethod
    def _check_budget(cls, value: float | None) -> float | None:
        if value is None:
            return None
        return _bounded(value, low=0, low_open=True, example="budget_kbps=256")

    @model_validator(mode="after")
    def _one_detector(self) -> Self:
        detectors = {d.model_dump_json(): d for d in self.policy.detectors()}
        if self.drift is not None:
            detectors.setdefault(self.drift.model_dump_json(), self.drift)
        if len(detectors) > 1:
            raise SpecError(
                f"{len(detectors)} different drift detectors are declared; the edge runs one "
                "per stream",
                field="drift",
                fix="use the same detector in select.drift(...) and uplink(drift=...)",
            )
        return self

    @property
    def detector(self) -> PSISpec | KSSpec | None:
        """Return the drift detector the edge runs: ``drift``, else the policy's, else None."""
        if self.drift is not None:
            return self.drift
        found = self.policy.detectors()
        return found[0] if found else None


class LabelSpec(_Spec):
    """Where labels for uplinked samples come from."""

    source: LabelSource = "delayed_feedback"
    teacher_model: str | None = Field(
        default=None, description="Cloud model that labels (teacher only)."
    )

    @model_validator(mode="after")
    def _teacher(self) -> Self:
        if self.source == "teacher" and self.teacher_model is None:
            raise SpecError(
                "a teacher source needs a teacher model",
                field="teacher_model",
                fix='name it, e.g. label(source="teacher", teacher_model="inspector-large")',
            )
        if self.source != "teacher" and self.teacher_model is not None:
            raise SpecError(
                f"only a teacher source uses a teacher model, the source is {self.source!r}",
                field="teacher_model",
                fix='drop teacher_model or use source="teacher"',
            )
        if self.teacher_model is not None:
            _topic_name(self.teacher_model, "model", "inspector-large")
        return self


class TriggerSpec(_Spec):
    """When to retrain: any set condition fires; ``manual`` allows an operator to start it."""

    new_samples: int | None = Field(
        default=None, description="Fire after this many new labelled samples."
    )
    drift_score: float | None = Field(
        default=None, description="Fire when an edge drift score exceeds it."
    )
    every_s: float | None = Field(default=None, description="Fire on this period, in seconds.")
    manual: bool = True

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _trigger_fields(value, "")
        return value

    @field_validator("new_samples")
    @classmethod
    def _check_new_samples(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise SpecError(f"must be at least 1, got {value}", fix='write e.g. "500 new samples"')
        return value

    @field_validator("drift_score")
    @classmethod
    def _check_drift(cls, value: float | None) -> float | None:
        if value is None:
            return None
        return _bounded(value, low=0, low_open=True, example='"drift > 0.2"')

    @field_validator("every_s", mode="before")
    @classmethod
    def _check_every(cls, value: object) -> float | None:
        return None if value is None else parse_duration(value, field="every_s")

    @model_validator(mode="after")
    def _fires(self) -> Self:
        if not self.manual and self.conditions() == []:
            raise SpecError(
                "this trigger never fires", fix=f"set manual: true or a condition: {TRIGGER_FORMS}"
            )
        return self

    def conditions(self) -> list[str]:
        """Return the automatic conditions as text, e.g. ``["500 new samples"]``."""
        found = []
        if self.new_samples is not None:
            found.append(f"{self.new_samples} new samples")
        if self.drift_score is not None:
            found.append(f"drift > {self.drift_score:g}")
        if self.every_s is not None:
            found.append(f"every {format_duration(self.every_s)}")
        return found

    def describe(self) -> str:
        """Return the trigger as a ``when`` expression, e.g. ``"500 new samples or manual"``."""
        return " or ".join([*self.conditions(), *(["manual"] if self.manual else [])])


class RetrainSpec(_Spec):
    """Retraining on the central pools: the trainer, its trigger, resources and placement."""

    trainer: str = Field(description="Import ref of the Ray Train loop, 'module:function'.")
    trigger: TriggerSpec = TriggerSpec()
    gpus: float = Field(default=0.0, description="GPUs per training worker.")
    cpus: float = Field(default=1.0, description="CPUs per training worker.")
    where: LabelSelector = Field(
        default_factory=LabelSelector, description="Nodes the job may use; empty: any node."
    )

    @field_validator("trainer")
    @classmethod
    def _check_trainer(cls, value: str) -> str:
        return _check_ref(value, "trainer")

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, value: float) -> float:
        return _bounded(value, low=0, high=1024, example="gpus=1")

    @field_validator("cpus")
    @classmethod
    def _check_cpus(cls, value: float) -> float:
        return _bounded(value, low=0, low_open=True, high=4096, example="cpus=2")


class GateSpec(_Spec):
    """The evaluation gate: a candidate must beat the current model by ``min_gain``.

    Both are scored on held-out recent edge samples, plus ``holdout`` (a fixed reference
    set) when given, so a model that forgets the old distribution does not pass.
    """

    metric: GateMetric = "accuracy"
    min_gain: float = Field(
        default=0.0, description="Required gain on the held-out set, in [0, 1]."
    )

    holdout: str | None = Field(
        default=None,
        description="Import ref of a function returning a reference holdout (x, y), or null.",
    )

    @field_validator("holdout")
    @classmethod
    def _check_holdout(cls, value: str | None) -> str | None:
        return None if value is None else _check_ref(value, "holdout")

    @field_validator("min_gain")
    @classmethod
    def _check_gain(cls, value: float) -> float:
        return _bounded(value, low=0, high=1, example="min_gain=0.01")


class RolloutSpec(_Spec):
    """Canary, then an exponential ramp to every target node, rolled back when a rule fires.

    The candidate first goes to ``canary`` of the target nodes and holds there for
    ``promote_after_s``; then to ``canary * ramp_factor``, ``canary * ramp_factor**2``... of
    them (capped at all), holding ``step_after_s`` at each step, as Greengrass jobs ramp up.
    At every step its telemetry is compared with the current version's; an accuracy drop
    past ``rollback_on_drop`` or a p95 latency rise past ``rollback_on_latency_rise`` rolls
    it back. ``ramp_factor >= 1 / canary`` gives canary, then everyone at once.

    Besides the fields, a mapping may give ``rollback_on: "accuracy drop 0.05 or p95 latency
    +20%"`` (as the DSL does), which sets both rule fields.
    """

    canary: float = Field(
        default=0.1, description="Share of the target nodes that get a new model first."
    )
    promote_after_s: float = Field(
        default=600.0, description="How long the canary step holds without regression, seconds."
    )
    ramp_factor: float = Field(
        default=2.0,
        description="Each step after the canary multiplies the share of nodes by this (> 1).",
    )
    step_after_s: float = Field(
        default=600.0,
        description="How long each later step holds, seconds; defaults to promote_after_s.",
    )
    rollback_on_drop: float | None = Field(
        default=0.02, description="Roll back if accuracy drops by this; null: not checked."
    )
    rollback_on_latency_rise: float | None = Field(
        default=None,
        description="Roll back if p95 latency rises by this fraction (0.2 = +20%); "
        "null: not checked.",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_in(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("step_after_s") is None and "promote_after_s" in data:
            data["step_after_s"] = data["promote_after_s"]
        if "rollback_on" in data:
            given = [k for k in ("rollback_on_drop", "rollback_on_latency_rise") if k in data]
            if given:
                raise SpecError(
                    f"rollback_on and {' and '.join(given)} are both given",
                    field="rollback_on",
                    fix="keep rollback_on alone, e.g. "
                    'rollback_on: "accuracy drop 0.05 or p95 latency +20%"',
                )
            rules = parse_rollback_rules(data.pop("rollback_on"), field="rollback_on")
            data["rollback_on_drop"] = rules.accuracy_drop
            data["rollback_on_latency_rise"] = rules.latency_rise
        return data

    @field_validator("canary")
    @classmethod
    def _check_canary(cls, value: float) -> float:
        return _bounded(value, low=0, low_open=True, high=1, example="canary=0.1 (10% of nodes)")

    @field_validator("promote_after_s", mode="before")
    @classmethod
    def _check_promote(cls, value: object) -> float:
        return parse_duration(value, field="promote_after_s")

    @field_validator("step_after_s", mode="before")
    @classmethod
    def _check_step(cls, value: object) -> float:
        return parse_duration(value, field="step_after_s")

    @field_validator("ramp_factor")
    @classmethod
    def _check_factor(cls, value: float) -> float:
        return _bounded(value, low=1, low_open=True, high=1000, example="ramp_factor=2.0")

    @field_validator("rollback_on_drop", mode="before")
    @classmethod
    def _check_rollback(cls, value: object) -> float | None:
        return None if value is None else parse_rollback(value, field="rollback_on_drop")

    @field_validator("rollback_on_latency_rise", mode="before")
    @classmethod
    def _check_latency(cls, value: object) -> float | None:
        return (
            None if value is None else parse_latency_rise(value, field="rollback_on_latency_rise")
        )

    @model_validator(mode="after")
    def _check_plan(self) -> Self:
        if self.rollback_on_drop is None and self.rollback_on_latency_rise is None:
            raise SpecError(
                "gives no rollback rule, so a regressing candidate would reach every node",
                field="rollback_on",
                fix=f"write {RULES_FORMS}",
            )
        if len(self.ramp_shares()) > MAX_RAMP_STEPS:
            raise SpecError(
                f"a ramp from canary {self.canary:g} by factor {self.ramp_factor:g} takes "
                f"more than {MAX_RAMP_STEPS} steps",
                field="ramp_factor",
                fix="raise ramp_factor or canary, e.g. canary=0.1, ramp_factor=2.0 (5 steps)",
            )
        return self

    @property
    def rules(self) -> RollbackRules:
        """Return the rollback rules of the rollout."""
        return RollbackRules(
            accuracy_drop=self.rollback_on_drop, latency_rise=self.rollback_on_latency_rise
        )

    def ramp_shares(self) -> tuple[float, ...]:
        """Return the share of the target nodes at each step: ``canary``, times the factor..., 1.

        ``RolloutSpec(canary=0.1).ramp_shares() == (0.1, 0.2, 0.4, 0.8, 1.0)``.
        """
        shares: list[float] = []
        share = self.canary
        while share < 1.0 and len(shares) <= MAX_RAMP_STEPS:
            shares.append(share)
            # Rounded so that 0.1 * 2 * 2 * 2 reads 0.8, not 0.8000000000000002.
            share = round(share * self.ramp_factor, 12)
        shares.append(1.0)
        return tuple(shares)

    def describe(self) -> str:
        """Return the rollout in a line: canary, ramp, holds and rules."""
        shares = self.ramp_shares()
        text = f"canary {self.canary:g}, promote after {format_duration(self.promote_after_s)}"
        if len(shares) > 2:
            text += f", then x{self.ramp_factor:g} every {format_duration(self.step_after_s)}"
        ramp = " -> ".join(f"{share:.0%}" for share in shares)
        return f"{text} ({ramp} of the nodes), roll back on {self.rules.describe()}"


class PipelineSpec(_Spec):
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
        return _topic_name(value, "pipeline", "line-7-inspection")

    @field_validator("tenant")
    @classmethod
    def _check_tenant(cls, value: str) -> str:
        return _topic_name(value, "tenant", "acme")

    @classmethod
    def from_dict(cls, data: Any) -> PipelineSpec:
        """Validate a mapping (e.g. parsed YAML); raise ``SpecError`` naming the field path."""
        if not isinstance(data, dict):
            raise SpecError(
                f"a pipeline spec is a mapping, got {type(data).__name__}",
                fix=f"start from `continuum show FILE`; it begins with api_version: {API_VERSION}",
            )
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise spec_error(error, model=cls) from error

    @classmethod
    def from_yaml(cls, text: str) -> PipelineSpec:
        """Parse and validate YAML; raise ``SpecError`` on bad YAML or a bad spec."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SpecError(f"not valid YAML: {error}", fix="fix the YAML syntax") from error
        return cls.from_dict(data)

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
            f"{edge.input.dtype}, on {edge.where}",
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
        lines.append(f"  gate:    {self.gate.metric} gain >= {self.gate.min_gain:g}")
        lines.append(f"  rollout: {rollout.describe()}")
        return "\n".join(lines)


class _Dumper(yaml.SafeDumper):
    """Write lists of scalars (a shape) on one line: ``shape: [1, 8, 8]``."""

    def represent_list(self, data: Any) -> yaml.SequenceNode:
        flow = all(isinstance(item, int | float | str | bool) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def _topic_name(value: str, what: str, example: str) -> str:
    try:
        return check_name(value, what)
    except ProtocolError as error:
        raise SpecError(
            f"{value!r} is not a valid {what} name (it is a topic level)",
            fix=f"use 1-64 lowercase letters, digits, '.', '_' or '-', starting and ending "
            f"with a letter or digit, e.g. {example!r}",
        ) from error


# --- loading ---------------------------------------------------------------------------------


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
    from continuum.pipeline import Pipeline  # the builder imports this module

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
