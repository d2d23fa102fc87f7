"""The Pipeline DSL: declaring builds a validated spec, runs nothing, and refuses mistakes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import continuum
from continuum import (
    DataClass,
    LabelSelector,
    Pipeline,
    PipelineSpec,
    SpecError,
    TensorSchema,
    drift,
    load_pipeline,
    select,
)

EXAMPLE = Path(__file__).parent / "fixtures" / "line_7_inspection.py"
ROOT = Path(__file__).resolve().parents[3]
CALLS: list[str] = []


def scale(frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Module-level preprocess function."""
    CALLS.append("scale")
    return (frame / 255.0).astype(np.float32)


def other_scale(frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """A second preprocess function."""
    return scale(frame)


def train_loop(config: dict[str, object]) -> None:
    """Module-level trainer."""
    CALLS.append("train_loop")


def pipeline(name: str = "p") -> Pipeline:
    return Pipeline(name, tenant="acme", data_class="internal")


def complete(pipe: Pipeline) -> Pipeline:
    pipe.edge(model="inspector", shape=(1, 8, 8))
    pipe.uplink(select.random(0.1))
    return pipe


def spec_error(declare: Callable[[], object]) -> SpecError:
    with pytest.raises(SpecError) as caught:
        declare()
    return caught.value


class TestDesignExample:
    def test_example_declares_the_spec_of_design_section_3(self) -> None:
        spec = load_pipeline(EXAMPLE)
        assert (spec.name, spec.tenant, spec.data_class) == (
            "line-7-inspection",
            "acme",
            DataClass.CONFIDENTIAL,
        )
        assert spec.edge.model == "inspector"
        assert spec.edge.backend == "auto"
        assert spec.edge.input == TensorSchema(shape=(1, 8, 8), dtype="float32")
        assert spec.edge.where.root == {
            "continuum.io/tier": "edge",
            "continuum.io/site": "lux-*",
        }
        assert spec.edge.preprocess is not None
        assert spec.edge.preprocess.endswith("line_7_inspection:preprocess")
        assert (
            spec.uplink.policy.describe() == "low_confidence(0.6) | drift(psi(0.2)) | random(0.01)"
        )
        assert spec.uplink.budget_kbps == 256.0
        assert spec.uplink.detectors == (drift.psi(0.2),)
        assert spec.label.source == "delayed_feedback"
        assert spec.retrain is not None
        assert spec.retrain.trainer.endswith("line_7_inspection:train_fn")
        assert spec.retrain.trigger.new_samples == 500
        assert (spec.retrain.gpus, spec.retrain.where.root) == (
            1.0,
            {"continuum.io/jurisdiction": "LU"},
        )
        assert (spec.gate.metric, spec.gate.min_gain) == ("accuracy", 0.01)
        assert (spec.rollout.canary, spec.rollout.promote_after_s) == (0.1, 600.0)
        assert spec.rollout.rollback_on_drop == 0.02

    def test_example_round_trips_exactly(self) -> None:
        spec = load_pipeline(EXAMPLE)
        assert PipelineSpec.from_yaml(spec.to_yaml()) == spec
        assert PipelineSpec.from_json(spec.to_json()) == spec


class TestBuildingRunsNothing:
    def test_declaring_calls_no_user_function_and_starts_no_thread(self) -> None:
        threads = threading.active_count()
        pipe = pipeline()
        pipe.edge(model="inspector", shape=(1, 8, 8))(scale)
        pipe.uplink(select.random(0.1))
        pipe.retrain(trainer=train_loop, when="every 1 h")
        spec = pipe.spec
        assert CALLS == []
        assert threading.active_count() == threads
        assert spec.retrain is not None
        assert spec.retrain.trainer == f"{__name__}:train_loop"

    def test_spec_is_frozen_and_equal_on_every_read(self) -> None:
        pipe = complete(pipeline())
        assert pipe.spec == pipe.spec
        with pytest.raises(ValueError, match="frozen"):
            pipe.spec.name = "q"


class TestEdgeDecorator:
    def test_decorator_with_arguments_returns_the_function_unchanged(self) -> None:
        pipe = pipeline()
        decorated = pipe.edge(model="inspector", shape=(1, 8, 8))(scale)
        # mypy sees the decorated function's own signature (checked with reveal_type).
        typed: Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]] = decorated
        assert typed is scale
        pipe.uplink(select.random(0.1))
        assert pipe.spec.edge.preprocess == f"{__name__}:scale"

    def test_bare_decorator_records_the_function_and_names_the_model_after_the_pipeline(
        self,
    ) -> None:
        pipe = pipeline("line-7")
        decorated = pipe.edge(scale)
        typed: Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]] = decorated
        assert typed is scale
        error = spec_error(lambda: pipe.spec)
        assert error.field == "edge.input"
        assert "shape=(1, 8, 8)" in str(error)

    def test_plain_call_declares_a_stage_without_preprocess(self) -> None:
        spec = complete(pipeline()).spec
        assert spec.edge.preprocess is None
        assert spec.edge.where == LabelSelector.parse({"continuum.io/tier": "edge"})

    def test_input_schema_can_be_given_whole(self) -> None:
        pipe = pipeline()
        pipe.edge(model="m", input=TensorSchema(shape=(30,), dtype="float64"))
        pipe.uplink(select.random(0.1))
        assert pipe.spec.edge.input.dtype == "float64"

    def test_later_edits_of_the_callers_dict_do_not_change_the_spec(self) -> None:
        where = {"continuum.io/site": "lux-1"}
        pipe = pipeline()
        pipe.edge(model="m", shape=(1,), where=where)
        where["continuum.io/site"] = "par-1"
        pipe.uplink(select.random(0.1))
        assert pipe.spec.edge.where.root["continuum.io/site"] == "lux-1"


class TestDeclarationMistakes:
    """Each mistake fails at the declaring call, naming the field and the fix."""

    def test_bare_label_key_names_the_continuum_key(self) -> None:
        error = spec_error(lambda: pipeline().edge(model="m", shape=(1,), where={"tier": "edge"}))
        assert error.field == 'edge.where["tier"]'
        assert 'use "continuum.io/tier"' in str(error)

    def test_unknown_data_class_lists_the_valid_ones(self) -> None:
        error = spec_error(lambda: Pipeline("p", tenant="acme", data_class="secret"))
        assert error.field == "data_class"
        assert "public < internal < confidential < restricted" in str(error)

    def test_canary_outside_zero_one_says_the_interval(self) -> None:
        error = spec_error(lambda: pipeline().rollout(canary=1.5))
        assert error.field == "rollout.canary"
        assert "must be in (0, 1], got 1.5" in str(error)

    def test_unreadable_trigger_shows_the_accepted_forms(self) -> None:
        error = spec_error(lambda: pipeline().retrain(train_loop, when="500 samples"))
        assert error.field == "retrain.when"
        for form in ("500 new samples", "drift > 0.2", "every 1 h", "manual"):
            assert form in str(error)

    def test_unreadable_duration_shows_the_accepted_forms(self) -> None:
        error = spec_error(lambda: pipeline().rollout(promote_after="10 minutes?"))
        assert error.field == "rollout.promote_after"
        assert '"10 min"' in str(error)

    def test_unreadable_rollback_rule_shows_the_accepted_form(self) -> None:
        error = spec_error(lambda: pipeline().rollout(rollback_on="accuracy -2"))
        assert error.field == "rollout.rollback_on"
        assert '"accuracy drop 0.02"' in str(error)

    def test_trainer_ref_without_a_colon_suggests_one(self) -> None:
        error = spec_error(lambda: pipeline().retrain("pipelines.digits.train.loop"))
        assert error.field == "retrain.trainer"
        assert 'did you mean "pipelines.digits.train:loop"' in str(error)

    def test_lambda_trainer_is_refused(self) -> None:
        error = spec_error(lambda: pipeline().retrain(lambda config: None))
        assert error.field == "retrain.trainer"
        assert "module level" in str(error)

    def test_nested_preprocess_function_is_refused(self) -> None:
        decorate = pipeline().edge(model="m", shape=(1,))

        def nested(frame: int) -> int:
            return frame

        error = spec_error(lambda: decorate(nested))
        assert error.field == "edge.preprocess"
        assert "move it to module level" in str(error)

    def test_pipeline_name_must_be_a_topic_level(self) -> None:
        error = spec_error(lambda: Pipeline("Line 7/a", tenant="acme", data_class="public"))
        assert error.field == "name"
        assert "lowercase letters" in str(error)

    def test_tenant_must_be_a_topic_level(self) -> None:
        error = spec_error(lambda: Pipeline("p", tenant="acme/#", data_class="public"))
        assert error.field == "tenant"

    def test_unknown_dtype_is_refused(self) -> None:
        error = spec_error(lambda: pipeline().edge(model="m", shape=(1,), dtype="float33"))
        assert error.field == "edge.input.dtype"
        assert "numpy does not know dtype 'float33'" in str(error)

    def test_edge_stage_on_cloud_tier_is_refused(self) -> None:
        error = spec_error(
            lambda: pipeline().edge(model="m", shape=(1,), where={"continuum.io/tier": "cloud"})
        )
        assert error.field == 'edge.where["continuum.io/tier"]'

    def test_retrain_where_may_name_any_tier_but_must_be_valid(self) -> None:
        pipe = pipeline()
        pipe.retrain(train_loop, where={"continuum.io/tier": "in(cloud,hpc)"})
        error = spec_error(
            lambda: pipeline().retrain(train_loop, where={"continuum.io/tier": "gpu"})
        )
        assert error.field == 'retrain.where["continuum.io/tier"]'

    def test_model_name_must_be_a_topic_level(self) -> None:
        error = spec_error(lambda: pipeline().edge(model="Inspector v2", shape=(1,)))
        assert error.field == "edge.model"

    def test_uplink_needs_a_policy(self) -> None:
        error = spec_error(lambda: pipeline().uplink(0.1))  # type: ignore[arg-type]
        assert error.field == "uplink.policy"
        assert "select.low_confidence(0.6)" in str(error)

    def test_negative_budget_is_refused(self) -> None:
        error = spec_error(lambda: pipeline().uplink(select.random(0.1), budget_kbps=-1))
        assert error.field == "uplink.budget_kbps"

    def test_teacher_label_source_needs_a_model(self) -> None:
        error = spec_error(lambda: pipeline().label(source="teacher"))
        assert error.field == "label.teacher_model"

    def test_unknown_gate_metric_lists_the_metrics(self) -> None:
        error = spec_error(lambda: pipeline().gate(metric="auc"))  # type: ignore[arg-type]
        assert error.field == "gate.metric"
        assert "accuracy, f1_macro" in str(error)

    def test_model_name_passed_positionally_asks_for_keywords(self) -> None:
        error = spec_error(lambda: pipeline().edge("inspector"))  # type: ignore[call-overload]
        assert error.field == "edge"
        assert 'model="inspector"' in str(error)

    def test_shape_and_input_together_are_refused(self) -> None:
        error = spec_error(
            lambda: pipeline().edge(model="m", shape=(1,), input=TensorSchema(shape=(1,)))
        )
        assert error.field == "edge.input"


class TestRolloutDeclaration:
    def test_ramp_and_both_rules_are_declared_in_one_call(self) -> None:
        pipe = complete(pipeline())
        pipe.rollout(
            canary=0.05,
            promote_after="30 min",
            ramp_factor=3.0,
            step_after="10 min",
            rollback_on="accuracy drop 0.02 or p95 latency +20%",
        )
        rollout = pipe.spec.rollout
        assert (rollout.canary, rollout.promote_after_s, rollout.step_after_s) == (
            0.05,
            1800.0,
            600.0,
        )
        assert rollout.ramp_shares() == (0.05, 0.15, 0.45, 1.0)
        assert (rollout.rollback_on_drop, rollout.rollback_on_latency_rise) == (0.02, 0.2)
        assert PipelineSpec.from_yaml(pipe.spec.to_yaml()) == pipe.spec

    def test_a_latency_rule_alone_turns_the_accuracy_rule_off(self) -> None:
        pipe = complete(pipeline())
        pipe.rollout(rollback_on="latency increase 50%", promote_after="1 h")
        rollout = pipe.spec.rollout
        assert (rollout.rollback_on_drop, rollout.rollback_on_latency_rise) == (None, 0.5)
        assert rollout.step_after_s == 3600.0  # defaults to promote_after

    def test_unreadable_latency_rule_names_the_argument_and_the_forms(self) -> None:
        error = spec_error(
            lambda: pipeline().rollout(rollback_on="accuracy drop 0.02 or latency 20 ms")
        )
        assert error.field == "rollout.rollback_on"
        assert "cannot read rollback rule 'latency 20 ms'" in str(error)
        for form in ("accuracy drop 0.02", "p95 latency +20%", "latency increase 20%", " or "):
            assert form in str(error)

    def test_a_factor_that_does_not_grow_names_the_argument(self) -> None:
        error = spec_error(lambda: pipeline().rollout(ramp_factor=1.0))
        assert error.field == "rollout.ramp_factor"
        assert "(1, 1000]" in str(error)

    def test_the_demo_pipeline_promotes_after_the_canary_and_one_step(self) -> None:
        rollout = load_pipeline(ROOT / "pipelines" / "digits_inspection.py").rollout
        assert rollout.ramp_shares() == (0.25, 0.5, 1.0)
        # The demo's three cameras: the canary (1) holds, one step (2) holds, then all 3;
        # the holds add up to the 20 s the canary alone held before ramps.
        assert rollout.promote_after_s + rollout.step_after_s <= 20.0


class TestDeclaringTwice:
    @pytest.mark.parametrize(
        ("part", "declare"),
        [
            ("uplink", lambda p: p.uplink(select.random(0.1))),
            ("label", lambda p: p.label()),
            ("retrain", lambda p: p.retrain(train_loop)),
            ("gate", lambda p: p.gate()),
            ("rollout", lambda p: p.rollout()),
            ("edge", lambda p: p.edge(model="m", shape=(1,))),
        ],
    )
    def test_second_declaration_is_refused(
        self, part: str, declare: Callable[[Pipeline], object]
    ) -> None:
        pipe = pipeline()
        declare(pipe)
        error = spec_error(lambda: declare(pipe))
        assert error.field == part
        assert "twice" in str(error)

    def test_second_preprocess_function_is_refused(self) -> None:
        pipe = pipeline()
        decorate = pipe.edge(model="m", shape=(1,))
        decorate(scale)
        error = spec_error(lambda: decorate(other_scale))
        assert error.field == "edge.preprocess"


class TestMissingParts:
    def test_no_edge_stage_is_named(self) -> None:
        pipe = pipeline()
        pipe.uplink(select.random(0.1))
        error = spec_error(lambda: pipe.spec)
        assert error.field == "edge"
        assert "no edge stage declared" in str(error)

    def test_no_uplink_is_named(self) -> None:
        pipe = pipeline()
        pipe.edge(model="m", shape=(1,))
        error = spec_error(lambda: pipe.spec)
        assert error.field == "uplink"
        assert "pipe.uplink(" in str(error)

    def test_optional_parts_take_their_defaults(self) -> None:
        spec = complete(pipeline()).spec
        assert spec.retrain is None
        assert spec.label.source == "delayed_feedback"
        assert spec.gate.min_gain == 0.0
        assert spec.rollout.canary == 0.1


class TestPublicSurface:
    def test_package_exports_the_dsl_and_specs(self) -> None:
        for name in ("Pipeline", "PipelineSpec", "DataClass", "select", "drift", "ContinuumError"):
            assert name in continuum.__all__
            assert getattr(continuum, name) is not None

    def test_repr_lists_what_is_declared(self) -> None:
        pipe = pipeline()
        pipe.uplink(select.random(0.1))
        assert repr(pipe) == (
            "Pipeline('p', tenant='acme', data_class='internal', declared=['uplink'])"
        )


class TestTrainerOptions:
    """``retrain(options=...)``: the trainer's declared options travel with the spec."""

    def test_options_round_trip_through_json(self) -> None:
        pipe = complete(pipeline())
        pipe.retrain("pkg.mod:loop", options={"augment": ["shift", "noise"], "lr": 0.01})
        spec = pipe.spec
        assert spec.retrain is not None
        assert spec.retrain.options == {"augment": ["shift", "noise"], "lr": 0.01}
        again = PipelineSpec.model_validate_json(spec.model_dump_json())
        assert again.retrain is not None and again.retrain.options == spec.retrain.options

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"epochs": 3}, "set by the controller"),
            ({"aug ment": 1}, "not an identifier"),
            ({"augment": {"nested": 1}}, "retrain.options.augment"),
        ],
    )
    def test_bad_options_name_the_problem(self, options: dict[str, object], message: str) -> None:
        with pytest.raises(SpecError, match=message):
            pipeline().retrain("pkg.mod:loop", options=options)
