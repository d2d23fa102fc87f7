"""The frozen pydantic specs of a pipeline's stages, from the edge tensor to the gate.

``TensorSchema``, ``EdgeStageSpec``, ``UplinkSpec``, ``LabelSpec``, ``TriggerSpec``,
``RetrainSpec`` and ``GateSpec``, with the checks they share (``FrozenSpec``, ``bounded``,
``topic_name``).  ``continuum.spec`` is their public home.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from typing_extensions import Self

from continuum._data_class import DataClass, DataClassField
from continuum._federated_spec import FederatedSpec
from continuum._grammar import (
    TRIGGER_FORMS,
    format_duration,
    parse_duration,
    trigger_fields,
)
from continuum._refs import check_ref
from continuum._spec_base import FrozenSpec, bounded
from continuum._validation import key_path, raw_message, spec_error
from continuum.drift import DETECTOR_FIX, Detector, DriftSpec
from continuum.errors import ProtocolError, SpecError
from continuum.imaging import ImagePrep
from continuum.labels import TIER, LabelSelector
from continuum.select import PolicySpec
from continuum.task import Classification, TaskSpec, metric_info
from continuum.wire.topics import check_name

__all__ = [
    "BackendKind",
    "EdgeStageSpec",
    "FrozenSpec",
    "GateMetric",
    "GateSpec",
    "LabelSource",
    "LabelSpec",
    "RetrainSpec",
    "TensorSchema",
    "TrainingPool",
    "TriggerSpec",
    "UplinkSpec",
    "bounded",
    "parse_trigger",
    "topic_name",
]

BackendKind = Literal["auto", "onnxruntime", "tensorrt"]
LabelSource = Literal["delayed_feedback", "teacher", "human"]
#: A gate metric's name (``continuum.task.metric_info`` knows them; the task says which fit).
GateMetric = str


def topic_name(value: str, what: str, example: str) -> str:
    """Return ``value`` if it is a valid topic level; else raise ``SpecError`` with ``example``."""
    try:
        return check_name(value, what)
    except ProtocolError as error:
        raise SpecError(
            f"{value!r} is not a valid {what} name (it is a topic level)",
            fix=f"use 1-64 lowercase letters, digits, '.', '_' or '-', starting and ending "
            f"with a letter or digit, e.g. {example!r}",
        ) from error


class TensorSchema(FrozenSpec):
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
            topic_name(name, "field", "patient_id")
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


class EdgeStageSpec(FrozenSpec):
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
    image: ImagePrep | None = Field(
        default=None, description="Image prep of camera frames, before preprocess; or null."
    )
    task: TaskSpec = Field(
        default_factory=Classification,
        description="What the model answers (continuum.task): its output contract, the "
        "policies and metrics that fit it.",
    )

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        return topic_name(value, "model", "inspector")

    @field_validator("preprocess")
    @classmethod
    def _check_preprocess(cls, value: str | None) -> str | None:
        return None if value is None else check_ref(value, "preprocess")

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
        return int(bounded(value, low=1, high=65536, example="max_batch=8"))

    @field_validator("max_wait_ms")
    @classmethod
    def _check_max_wait(cls, value: float) -> float:
        return bounded(value, low=0, high=60000, example="max_wait_ms=5")

    @model_validator(mode="after")
    def _check_image(self) -> Self:
        # The prep is recorded so the cloud trains on what the edge saw: it must make
        # exactly the tensors the model takes, or every frame would be rejected at the edge.
        if self.image is not None:
            self.image.check_input(self.input.shape, self.input.dtype)
        return self


class UplinkSpec(FrozenSpec):
    """Which edge samples go up the link (``policy``), at what rate, and the drift detectors.

    The edge runs every distinct detector of the policy's ``drift(...)`` leaves and of
    ``drift``: detectors it runs and reports in telemetry even where no leaf selects on
    them (e.g. ``drift.labels()`` to watch the error rate).  A single detector or null is
    accepted for ``drift`` as written before several were allowed.
    """

    policy: PolicySpec
    budget_kbps: float | None = Field(
        default=None, description="Link budget in kbit/s; null: unlimited."
    )
    drift: tuple[DriftSpec, ...] = Field(
        default=(), description="Detectors the edge runs and reports besides the policy's."
    )

    @field_validator("budget_kbps")
    @classmethod
    def _check_budget(cls, value: float | None) -> float | None:
        if value is None:
            return None
        return bounded(value, low=0, low_open=True, example="budget_kbps=256")

    @field_validator("drift", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, Mapping | BaseModel):
            return (value,)
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise SpecError(
                f"expected drift detectors, got {type(value).__name__}",
                field="drift",
                fix=DETECTOR_FIX,
            )
        return value

    @property
    def detectors(self) -> tuple[Detector, ...]:
        """Return the detectors the edge runs: the policy's, then ``drift``'s, once each."""
        found: dict[Detector, None] = dict.fromkeys(self.policy.detectors())
        found.update(dict.fromkeys(self.drift))
        return tuple(found)


class LabelSpec(FrozenSpec):
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
            topic_name(self.teacher_model, "model", "inspector-large")
        return self


class TriggerSpec(FrozenSpec):
    """When to retrain: any set condition fires; ``manual`` allows an operator to start it."""

    new_samples: int | None = Field(
        default=None, description="Fire after this many new labelled samples."
    )
    drift_score: float | None = Field(
        default=None,
        description=(
            "Fire when a node's telemetry drift_score (the largest score of its drift "
            "detectors, each on its own scale) exceeds it."
        ),
    )
    every_s: float | None = Field(default=None, description="Fire on this period, in seconds.")
    manual: bool = True

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return trigger_fields(value, "")
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
        return bounded(value, low=0, low_open=True, example='"drift > 0.2"')

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


#: A trainer option's value: plain JSON, so the spec round-trips through YAML and the audit log.
TrainerOption = str | int | float | bool | list[str | int | float | bool]
#: Where retraining may run (``RetrainSpec.pool``).
TrainingPool = Literal["hpc", "cloud", "auto"]
TRAINING_POOLS: tuple[str, ...] = ("hpc", "cloud", "auto")
#: Keys of the training loop's config that the controller fills for every run.
RESERVED_TRAINER_KEYS = frozenset({"base_model", "epochs", "seed", "threads", "shape"})


class RetrainSpec(FrozenSpec):
    """Retraining on the central pools: the trainer, its trigger, resources and placement."""

    trainer: str = Field(description="Import ref of the Ray Train loop, 'module:function'.")
    trigger: TriggerSpec = TriggerSpec()
    gpus: float = Field(default=0.0, description="GPUs per training worker.")
    cpus: float = Field(default=1.0, description="CPUs per training worker.")
    where: LabelSelector = Field(
        default_factory=LabelSelector, description="Nodes the job may use; empty: any node."
    )
    options: dict[str, TrainerOption] = Field(
        default_factory=dict,
        description="The trainer's own declared options (e.g. augmentation), passed to its loop.",
    )
    pool: TrainingPool | None = Field(
        default=None,
        description="Which pool trains: 'hpc' (a Slurm allocation's Ray nodes, tier=hpc), "
        "'cloud' (tier=cloud), 'auto' (the cloud pool, or an HPC allocation when the cloud "
        "pool lacks the GPUs asked); null: any node 'where' and the policy allow.",
    )
    fallback: bool = Field(
        default=False,
        description="With pool 'hpc': train on the cloud pool when no HPC allocation can take "
        "the run (none up, refused by the policy, too little time left, pre-empted mid-run).",
    )
    federated: FederatedSpec = Field(
        default_factory=FederatedSpec,
        description="Rounds, quorum and strategy when the residency policy keeps the data at "
        "its sites and deploy plans federated retraining; unused when it trains centrally.",
    )

    @field_validator("trainer")
    @classmethod
    def _check_trainer(cls, value: str) -> str:
        return check_ref(value, "trainer")

    @field_validator("options")
    @classmethod
    def _check_options(cls, value: dict[str, TrainerOption]) -> dict[str, TrainerOption]:
        for name in value:
            if not name.isidentifier():
                raise SpecError(
                    f"option name {name!r} is not an identifier",
                    field="options",
                    fix='name options like keyword arguments, e.g. options={"augment": ["shift"]}',
                )
            if name in RESERVED_TRAINER_KEYS:
                raise SpecError(
                    f"option {name!r} is set by the controller for every run",
                    field="options",
                    fix=f"drop it; the controller sets {', '.join(sorted(RESERVED_TRAINER_KEYS))}",
                )
        return value

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, value: float) -> float:
        return bounded(value, low=0, high=1024, example="gpus=1")

    @field_validator("cpus")
    @classmethod
    def _check_cpus(cls, value: float) -> float:
        return bounded(value, low=0, low_open=True, high=4096, example="cpus=2")

    @field_validator("pool", mode="before")
    @classmethod
    def _check_pool(cls, value: object) -> object:
        if value is not None and value not in TRAINING_POOLS:
            raise SpecError(
                f"unknown pool {value!r}",
                field="pool",
                fix=f"use one of {', '.join(TRAINING_POOLS)}, or leave it out for any node",
            )
        return value

    @model_validator(mode="after")
    def _pool_fits(self) -> Self:
        if self.fallback and self.pool != "hpc":
            raise SpecError(
                f"fallback=True needs pool='hpc' (got pool={self.pool!r}): it says where an "
                "HPC run goes when no allocation can take it",
                field="fallback",
                fix="set pool='hpc', or drop fallback ('auto' already picks either pool)",
            )
        tier = self.where.root.get(TIER)
        if self.pool is not None and tier is not None:
            raise SpecError(
                f"where names {TIER}: {tier} and pool={self.pool!r} picks the tier too",
                field="where",
                fix=f"drop {TIER} from where; the pool sets it",
            )
        return self


class GateSpec(FrozenSpec):
    """The evaluation gate: a candidate must beat the current model by ``min_gain``.

    Both are scored on held-out recent edge samples, plus ``holdout`` (a fixed reference
    set) when given, so a model that forgets the old distribution does not pass.
    """

    metric: GateMetric | None = Field(
        default=None,
        description="The metric the candidate must gain on; null: the task's default "
        "(accuracy, pr_auc, mae, f1).  For an error metric (mae, rmse) a gain is a fall.",
    )
    min_gain: float = Field(
        default=0.0,
        description="Required gain on the held-out set: in [0, 1] for a share, in the "
        "target's units for an error metric.",
    )

    holdout: str | None = Field(
        default=None,
        description="Import ref of a function returning a reference holdout (x, y), or null.",
    )

    @field_validator("holdout")
    @classmethod
    def _check_holdout(cls, value: str | None) -> str | None:
        return None if value is None else check_ref(value, "holdout")

    @field_validator("metric")
    @classmethod
    def _check_metric(cls, value: str | None) -> str | None:
        if value is not None:
            metric_info(value)
        return value

    @field_validator("min_gain")
    @classmethod
    def _check_gain(cls, value: float) -> float:
        return bounded(value, low=0, example="min_gain=0.01")

    @model_validator(mode="after")
    def _gain_in_range(self) -> Self:
        if self.metric is not None and metric_info(self.metric).bounded and self.min_gain > 1:
            raise SpecError(
                f"{self.metric} lies in [0, 1], so a gain of {self.min_gain:g} can never be met",
                field="min_gain",
                fix="use e.g. min_gain=0.01 (one point)",
            )
        return self


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
        return TriggerSpec.model_validate(trigger_fields(when, field))
    except ValidationError as error:
        # The user wrote one string; name it rather than the TriggerSpec field inside.
        inner = spec_error(error, model=TriggerSpec)
        raise SpecError(f"in {when!r}: {raw_message(inner)}", field=field, fix=inner.fix) from error
