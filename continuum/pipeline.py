"""The pipeline DSL: ``Pipeline`` collects declarations and yields a frozen ``PipelineSpec``.

Declaring runs nothing: each call validates its part at once (raising ``SpecError`` with the
field and the fix) and records it; ``pipe.spec`` assembles the whole, immutable spec.  The
spec's parts come from their private modules, not ``continuum.spec``, which imports this
module (``load_pipeline`` finds a ``Pipeline`` in a file).

    pipe = Pipeline("line-7-inspection", tenant="acme", data_class="confidential")

    @pipe.edge(model="inspector", shape=(1, 8, 8), where={"continuum.io/site": "lux-*"})
    def preprocess(frame): ...

    pipe.uplink(select.low_confidence(0.6) | select.random(0.01), budget_kbps=256)
    pipe.retrain(trainer=train_loop, when="500 new samples", gpus=1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from continuum._data_class import DataClass
from continuum._grammar import parse_duration, parse_rollback_rules
from continuum._pipeline_spec import PipelineSpec
from continuum._refs import ref_of
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
    UplinkSpec,
    parse_trigger,
)
from continuum._validation import check_partial, validate
from continuum.drift import DETECTOR_FIX, DETECTOR_TYPES, Detector
from continuum.errors import SpecError
from continuum.imaging import ImagePrep
from continuum.labels import TIER, LabelSelector
from continuum.select import Policy
from continuum.task import (
    TASK_DATA,
    Classification,
    Task,
    check_gate_metric,
    check_label_source,
    check_policy_kinds,
    check_rollback_metric,
)

__all__ = ["EdgeDecorator", "Pipeline"]

P = ParamSpec("P")
R = TypeVar("R")

_EDGE_EXAMPLE = '@pipe.edge(model="inspector", shape=(1, 8, 8), dtype="float32")'
_UPLINK_EXAMPLE = "pipe.uplink(select.low_confidence(0.6) | select.random(0.01), budget_kbps=256)"


class EdgeDecorator(Protocol):
    """What ``pipe.edge(...)`` returns: a decorator that keeps the function's type."""

    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


class Pipeline:
    """Collect one pipeline's declarations; ``spec`` returns the frozen ``PipelineSpec``.

    Each stage is declared once.  Errors are raised by the declaring call, naming the field
    (``edge.where["tier"]``) and the fix.
    """

    def __init__(self, name: str, *, tenant: str, data_class: DataClass | str) -> None:
        """Start declaring pipeline ``name`` of ``tenant`` with data of ``data_class``."""
        head = {"name": name, "tenant": tenant, "data_class": data_class}
        check_partial(PipelineSpec, head, prefix="", missing_ok={"edge", "uplink"})
        self._name = name
        self._tenant = tenant
        self._data_class = DataClass.parse(data_class)
        self._edge: dict[str, Any] | None = None
        self._uplink: UplinkSpec | None = None
        self._label: LabelSpec | None = None
        self._retrain: RetrainSpec | None = None
        self._gate: GateSpec | None = None
        self._rollout: RolloutSpec | None = None

    @property
    def name(self) -> str:
        """The pipeline name (a topic level)."""
        return self._name

    @property
    def tenant(self) -> str:
        """The tenant that owns the pipeline."""
        return self._tenant

    @property
    def data_class(self) -> DataClass:
        """The class of the pipeline's data."""
        return self._data_class

    @overload
    def edge(self, fn: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def edge(
        self,
        fn: None = None,
        /,
        *,
        model: str | None = None,
        backend: BackendKind = "auto",
        shape: Sequence[int] | None = None,
        dtype: str = "float32",
        input: TensorSchema | Mapping[str, Any] | None = None,
        where: Mapping[str, str] | LabelSelector | None = None,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        image: ImagePrep | Mapping[str, Any] | None = None,
        task: Task | Mapping[str, Any] | None = None,
    ) -> EdgeDecorator: ...

    def edge(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        model: str | None = None,
        backend: BackendKind = "auto",
        shape: Sequence[int] | None = None,
        dtype: str = "float32",
        input: TensorSchema | Mapping[str, Any] | None = None,
        where: Mapping[str, str] | LabelSelector | None = None,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        image: ImagePrep | Mapping[str, Any] | None = None,
        task: Task | Mapping[str, Any] | None = None,
    ) -> Callable[..., Any]:
        """Declare the edge inference stage; decorate its preprocess function, or call it plain.

        ``@pipe.edge`` (model named like the pipeline) and ``@pipe.edge(model=..., ...)``
        both return the function unchanged; its import ref is recorded as ``preprocess``.
        ``pipe.edge(model=..., shape=...)`` without decorating declares a stage with no
        preprocess.  ``shape`` and ``dtype`` describe one sample (no batch axis); ``input``
        gives the whole ``TensorSchema`` instead.  ``where`` defaults to edge-tier nodes.
        ``image`` declares how camera frames become that input (``ImagePrep``: crop, resize,
        colour, normalisation); the agent applies it before the preprocess function.
        ``task`` says what the model answers (``continuum.task``: classification, the
        default; binary, regression, anomaly); the policies, gate and rollback rules
        declared later must fit it.
        """
        if fn is not None and not callable(fn):
            raise SpecError(
                f"expected the preprocess function, got {fn!r}",
                field="edge",
                fix=f"pass the stage's settings by keyword: {_EDGE_EXAMPLE}",
            )
        if self._edge is not None:
            raise SpecError(
                "the edge stage is declared twice",
                field="edge",
                fix="declare one edge stage per pipeline",
            )
        if shape is not None and input is not None:
            raise SpecError(
                "both shape and input are given",
                field="edge.input",
                fix="give shape= and dtype=, or input=TensorSchema(...), not both",
            )
        data: dict[str, Any] = {
            "model": self._name if model is None else model,
            "backend": backend,
            "where": {TIER: "edge"} if where is None else _selector_data(where),
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
        }
        if image is not None:
            data["image"] = image
        if task is not None:
            data["task"] = task
        if input is not None:
            data["input"] = input
        elif shape is not None:
            data["input"] = {"shape": tuple(shape), "dtype": dtype}
        check_partial(EdgeStageSpec, data, prefix="edge", missing_ok={"input"})
        self._edge = data
        try:
            self._check_fit()
        except SpecError:
            self._edge = None
            raise

        def attach(function: Callable[P, R], /) -> Callable[P, R]:
            if "preprocess" in data:
                raise SpecError(
                    "the edge stage already has a preprocess function",
                    field="edge.preprocess",
                    fix="decorate one function per pipeline",
                )
            data["preprocess"] = ref_of(function, field="edge.preprocess")
            return function

        return attach if fn is None else attach(fn)

    def uplink(
        self,
        policy: Policy,
        /,
        *,
        budget_kbps: float | None = None,
        drift: Detector | Sequence[Detector] | None = None,
    ) -> None:
        """Declare which edge samples go up the link, the link budget and the drift detectors.

        The edge runs the detectors of the policy's ``drift(...)`` leaves; ``drift`` names
        more that it runs and reports in telemetry though no leaf selects on them.
        """
        self._once("uplink", self._uplink, "combine policies with | and & in one call")
        if not isinstance(policy, Policy):
            raise SpecError(
                f"expected a selection policy, got {type(policy).__name__}",
                field="uplink.policy",
                fix=f"build it with continuum.select: {_UPLINK_EXAMPLE}",
            )
        extra: tuple[object, ...] = ()
        if isinstance(drift, Sequence) and not isinstance(drift, str):
            extra = tuple(drift)
        elif drift is not None:
            extra = (drift,)
        for detector in extra:
            if not isinstance(detector, DETECTOR_TYPES):
                raise SpecError(
                    f"expected a drift detector, got {type(detector).__name__}",
                    field="uplink.drift",
                    fix=DETECTOR_FIX,
                )
        data = {"policy": policy, "budget_kbps": budget_kbps, "drift": extra}
        self._uplink = validate(UplinkSpec, data, prefix="uplink")
        self._checked_or_undone("_uplink")

    def label(
        self,
        source: LabelSource = "delayed_feedback",
        *,
        teacher_model: str | None = None,
    ) -> None:
        """Declare where labels come from: ``"delayed_feedback"``, ``"teacher"`` or ``"human"``."""
        self._once("label", self._label, "keep one label source")
        data = {"source": source, "teacher_model": teacher_model}
        self._label = validate(LabelSpec, data, prefix="label")
        self._checked_or_undone("_label")

    def retrain(
        self,
        trainer: Callable[..., Any] | str,
        *,
        when: str = "manual",
        gpus: float = 0.0,
        cpus: float = 1.0,
        where: Mapping[str, str] | LabelSelector | None = None,
        options: Mapping[str, Any] | None = None,
        pool: str | None = None,
        fallback: bool = False,
        federated: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare retraining: the Ray Train loop, when it runs, its resources and placement.

        ``when`` is ``"500 new samples"``, ``"drift > 0.2"``, ``"every 1 h"`` or
        ``"manual"``, or several joined with ``" or "``.  ``where`` defaults to any node.
        ``options`` are the trainer's own declared options (plain JSON values, e.g.
        ``{"augment": ["shift", "noise"]}``), passed to its loop's config on every run.
        ``pool`` picks the pool: ``"hpc"`` (the Ray nodes of a Slurm allocation, ``continuum
        hpc up``), ``"cloud"``, or ``"auto"`` (cloud, or HPC when the cloud lacks the GPUs);
        ``fallback=True`` lets an ``"hpc"`` run go to the cloud pool when no allocation can
        take it.  The residency policy bounds every pool alike.  ``federated`` (rounds,
        quorum, strategy, clip_factor, outliers...: ``continuum.spec.FederatedSpec``) applies
        when the policy keeps the data at its sites and deploy plans federated retraining.
        """
        self._once("retrain", self._retrain, "put all triggers in one when=... or ...")
        data = {
            "trainer": ref_of(trainer, field="retrain.trainer"),
            "trigger": parse_trigger(when, field="retrain.when"),
            "gpus": gpus,
            "cpus": cpus,
            "where": {} if where is None else _selector_data(where),
            "options": dict(options or {}),
            "pool": pool,
            "fallback": fallback,
            "federated": dict(federated or {}),
        }
        self._retrain = validate(RetrainSpec, data, prefix="retrain")

    def gate(
        self,
        metric: GateMetric | None = None,
        *,
        min_gain: float = 0.0,
        holdout: Callable[[], tuple[Any, Any]] | str | None = None,
    ) -> None:
        """Declare the evaluation gate: the candidate must gain ``min_gain`` on ``metric``.

        ``metric`` must fit the edge stage's task (``continuum.task``); None takes the
        task's default.  For an error metric (mae, rmse) the gain is a fall.

        ``holdout`` is a module-level function (or its ref) returning a fixed reference set
        ``(x, y)`` that the gate scores on besides the held-out recent edge samples.
        """
        self._once("gate", self._gate, "keep one gate")
        data = {
            "metric": metric,
            "min_gain": min_gain,
            "holdout": None if holdout is None else ref_of(holdout, field="gate.holdout"),
        }
        self._gate = validate(GateSpec, data, prefix="gate")
        self._checked_or_undone("_gate")

    def rollout(
        self,
        *,
        canary: float = 0.1,
        promote_after: str | float = "10 min",
        ramp_factor: float = 2.0,
        step_after: str | float | None = None,
        rollback_on: str | float = "accuracy drop 0.02",
    ) -> None:
        """Declare the rollout: a canary share of nodes, then an exponential ramp to all.

        Args:
            canary: share of the target nodes that get a new model first, in (0, 1].
            promote_after: how long the canary holds without regression (``"10 min"``).
            ramp_factor: each later step multiplies the share of nodes by this (> 1);
                ``ramp_factor >= 1 / canary`` goes from the canary to every node at once.
            step_after: how long each later step holds; defaults to ``promote_after``.
            rollback_on: ``"accuracy drop 0.02"``, ``"p95 latency +20%"`` or both joined
                with ``" or "``; a rule that fires at any step rolls the candidate back.
                Another task metric reads ``"recall drop 0.05"`` or ``"mae rise 2.5"``.
        """
        self._once("rollout", self._rollout, "keep one rollout")
        promote_after_s = parse_duration(promote_after, field="rollout.promote_after")
        rules = parse_rollback_rules(rollback_on, field="rollout.rollback_on")
        data = {
            "canary": canary,
            "promote_after_s": promote_after_s,
            "ramp_factor": ramp_factor,
            "step_after_s": promote_after_s
            if step_after is None
            else parse_duration(step_after, field="rollout.step_after"),
            "rollback_on_drop": rules.accuracy_drop,
            "rollback_metric": rules.metric,
            "rollback_on_latency_rise": rules.latency_rise,
        }
        self._rollout = validate(RolloutSpec, data, prefix="rollout")
        self._checked_or_undone("_rollout")

    @property
    def spec(self) -> PipelineSpec:
        """Return the frozen, validated spec; raise ``SpecError`` naming what is missing."""
        if self._edge is None:
            raise SpecError(
                "no edge stage declared",
                field="edge",
                fix=f"decorate the preprocess function with {_EDGE_EXAMPLE}",
            )
        if "input" not in self._edge:
            raise SpecError(
                "the edge stage has no input schema",
                field="edge.input",
                fix=f"give the shape of one sample: {_EDGE_EXAMPLE}",
            )
        if self._uplink is None:
            raise SpecError("no uplink declared", field="uplink", fix=f"call {_UPLINK_EXAMPLE}")
        data: dict[str, Any] = {
            "name": self._name,
            "tenant": self._tenant,
            "data_class": self._data_class,
            "edge": self._edge,
            "uplink": self._uplink,
            "retrain": self._retrain,
        }
        for key, part in (("label", self._label), ("gate", self._gate), ("rollout", self._rollout)):
            if part is not None:
                data[key] = part
        return validate(PipelineSpec, data)

    def __repr__(self) -> str:
        parts = ("edge", "uplink", "label", "retrain", "gate", "rollout")
        declared = [p for p in parts if getattr(self, f"_{p}") is not None]
        return (
            f"Pipeline({self._name!r}, tenant={self._tenant!r}, "
            f"data_class={self._data_class.value!r}, declared={declared})"
        )

    def _check_fit(self) -> None:
        """Refuse, at the declaring call, a policy, gate or rollback rule the task cannot feed.

        The edge stage may be declared before or after the others: whichever comes second
        is checked against the first.  ``spec`` checks the whole again (YAML has no order).
        """
        if self._edge is None:
            return
        given = self._edge.get("task")
        task: Task = Classification() if given is None else TASK_DATA.validate_python(given)
        if self._uplink is not None:
            check_policy_kinds(task, self._uplink.policy.kinds())
        if self._gate is not None and self._gate.metric is not None:
            check_gate_metric(task, self._gate.metric)
        if self._rollout is not None and self._rollout.rollback_on_drop is not None:
            check_rollback_metric(task, self._rollout.rollback_metric)
        if self._label is not None:
            check_label_source(task, self._label.source)

    def _checked_or_undone(self, attribute: str) -> None:
        """Check the fit; on a misfit forget the part just declared, so it may be fixed."""
        try:
            self._check_fit()
        except SpecError:
            setattr(self, attribute, None)
            raise

    def _once(self, part: str, current: object, fix: str) -> None:
        if current is not None:
            raise SpecError(f"{part} is declared twice", field=part, fix=fix)


def _selector_data(where: Mapping[str, str] | LabelSelector) -> Any:
    """Return ``where`` as selector input (a copy, so later edits of the caller's dict are moot)."""
    if isinstance(where, Mapping) and not isinstance(where, LabelSelector):
        return dict(where)
    return where
