"""PipelineSpec and its parts: data classes, the small grammars, round trips and loading."""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from continuum import select
from continuum.errors import SpecError
from continuum.spec import (
    DataClass,
    EdgeStageSpec,
    GateSpec,
    PipelineSpec,
    RetrainSpec,
    RollbackRules,
    RolloutSpec,
    TensorSchema,
    TriggerSpec,
    UplinkSpec,
    format_duration,
    load_pipeline,
    parse_duration,
    parse_latency_rise,
    parse_rollback,
    parse_rollback_rules,
    parse_trigger,
    ref_of,
    resolve_ref,
)

EXAMPLE = Path(__file__).parent / "fixtures" / "line_7_inspection.py"


def minimal_spec() -> PipelineSpec:
    return PipelineSpec(
        name="p",
        tenant="acme",
        data_class=DataClass.INTERNAL,
        edge=EdgeStageSpec(model="m", input=TensorSchema(shape=(3,))),
        uplink=UplinkSpec(policy=select.random(0.1)),
    )


def module_level_function() -> None:
    """A function other processes can import."""


@pytest.fixture
def write_module(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Write Python source to a uniquely named file; forget the module afterwards."""
    names: list[str] = []

    def write(source: str) -> Path:
        name = f"ctm_test_{uuid.uuid4().hex[:12]}"
        names.append(name)
        path = tmp_path / f"{name}.py"
        path.write_text(source, encoding="utf-8")
        return path

    yield write
    for name in names:
        sys.modules.pop(name, None)


class TestDataClass:
    def test_classes_are_ordered_by_sensitivity(self) -> None:
        assert DataClass.PUBLIC < DataClass.INTERNAL < DataClass.CONFIDENTIAL
        assert DataClass.CONFIDENTIAL < DataClass.RESTRICTED
        assert [c.rank for c in DataClass] == [0, 1, 2, 3]
        assert max(DataClass) is DataClass.RESTRICTED

    def test_comparison_with_a_name_uses_the_rank(self) -> None:
        assert DataClass.RESTRICTED > "internal"
        assert not DataClass.RESTRICTED < "internal"
        assert DataClass.INTERNAL <= "internal"

    def test_unknown_name_lists_the_valid_ones(self) -> None:
        with pytest.raises(SpecError) as caught:
            DataClass.parse("secret")
        assert caught.value.field == "data_class"
        assert "public < internal < confidential < restricted" in str(caught.value)

    def test_comparing_with_an_unknown_name_raises(self) -> None:
        with pytest.raises(SpecError, match="unknown data class 'secret'"):
            _ = DataClass.PUBLIC < "secret"

    def test_parse_is_case_insensitive(self) -> None:
        assert DataClass.parse(" Confidential ") is DataClass.CONFIDENTIAL


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("10 min", 600.0),
            ("30 s", 30.0),
            ("2 h", 7200.0),
            ("1.5h", 5400.0),
            ("250 ms", 0.25),
            ("1 day", 86400.0),
            ("45", 45.0),
            (90, 90.0),
            (0.5, 0.5),
        ],
    )
    def test_accepted_forms(self, text: str | float, seconds: float) -> None:
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["10 minutes?", "ten min", "10 fortnights", "", "-5 s"])
    def test_unreadable_duration_shows_the_accepted_forms(self, text: str) -> None:
        with pytest.raises(SpecError) as caught:
            parse_duration(text, field="rollout.promote_after")
        assert caught.value.field == "rollout.promote_after"
        assert '"10 min"' in str(caught.value)

    @pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), True])
    def test_non_positive_or_non_finite_numbers_are_refused(self, value: float) -> None:
        with pytest.raises(SpecError):
            parse_duration(value)

    @pytest.mark.parametrize(
        ("seconds", "text"), [(3600.0, "1 h"), (600.0, "10 min"), (90.0, "90 s"), (0.25, "0.25 s")]
    )
    def test_format_uses_the_largest_whole_unit(self, seconds: float, text: str) -> None:
        assert format_duration(seconds) == text
        assert parse_duration(text) == seconds


class TestTriggers:
    def test_each_form_sets_its_field(self) -> None:
        assert parse_trigger("500 new samples").new_samples == 500
        assert parse_trigger("drift > 0.2").drift_score == 0.2
        assert parse_trigger("every 1 h").every_s == 3600.0
        manual = parse_trigger("manual")
        assert manual.manual
        assert manual.conditions() == []

    def test_clauses_combine_with_or(self) -> None:
        trigger = parse_trigger("500 new samples or drift > 0.2 or every 30 min")
        assert (trigger.new_samples, trigger.drift_score, trigger.every_s) == (500, 0.2, 1800.0)
        assert trigger.describe() == "500 new samples or drift > 0.2 or every 30 min or manual"

    def test_description_parses_back_to_the_same_trigger(self) -> None:
        trigger = parse_trigger("every 2 h or 100 new samples")
        assert parse_trigger(trigger.describe()) == trigger

    @pytest.mark.parametrize(
        ("when", "hint"),
        [
            ("500 samples", 'did you mean "500 new samples"'),
            ("drift >= 0.2", 'did you mean "drift > 0.2"'),
            ("500 new samples or 1 h", 'did you mean "every 1 h"'),
            ("hourly", ""),
        ],
    )
    def test_unreadable_trigger_shows_the_accepted_forms(self, when: str, hint: str) -> None:
        with pytest.raises(SpecError) as caught:
            parse_trigger(when, field="retrain.when")
        message = str(caught.value)
        assert caught.value.field == "retrain.when"
        for form in ('"500 new samples"', '"drift > 0.2"', '"every 1 h"', '"manual"'):
            assert form in message
        assert hint in message

    def test_a_condition_named_twice_is_refused(self) -> None:
        with pytest.raises(SpecError, match="new samples twice"):
            parse_trigger("5 new samples or 10 new samples")

    @pytest.mark.parametrize("when", ["0 new samples", "drift > 0", "every 0 s"])
    def test_out_of_range_values_are_refused(self, when: str) -> None:
        with pytest.raises(SpecError, match=r"^retrain\.when: "):
            parse_trigger(when, field="retrain.when")

    def test_a_trigger_that_never_fires_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="never fires"):
            TriggerSpec(manual=False)

    def test_yaml_may_write_the_trigger_as_text(self) -> None:
        retrain = RetrainSpec.model_validate({"trainer": "a.b:c", "trigger": "every 1 h"})
        assert retrain.trigger == TriggerSpec(every_s=3600.0)


class TestRollback:
    @pytest.mark.parametrize(
        ("rule", "drop"),
        [("accuracy drop 0.02", 0.02), ("accuracy drop 2%", 0.02), ("Accuracy Drop 0.1", 0.1)],
    )
    def test_accepted_forms(self, rule: str, drop: float) -> None:
        assert parse_rollback(rule) == pytest.approx(drop)

    @pytest.mark.parametrize("rule", ["acc drop 2", "accuracy falls 0.02", "drop"])
    def test_unreadable_rule_shows_the_accepted_form(self, rule: str) -> None:
        with pytest.raises(SpecError, match=re.escape('"accuracy drop 0.02"')):
            parse_rollback(rule)

    @pytest.mark.parametrize("rule", ["accuracy drop 2", 0.0, 1.5])
    def test_drop_outside_zero_one_is_refused(self, rule: str | float) -> None:
        with pytest.raises(SpecError, match=r"must be in \(0, 1\]"):
            parse_rollback(rule)


class TestRollbackRules:
    @pytest.mark.parametrize(
        ("rule", "rise"),
        [
            ("p95 latency +20%", 0.2),
            ("latency +20%", 0.2),
            ("latency increase 20%", 0.2),
            ("P95 Latency Increase of 50%", 0.5),
            ("p95 latency rise by 150%", 1.5),
            (0.2, 0.2),
        ],
    )
    def test_accepted_latency_forms(self, rule: str | float, rise: float) -> None:
        assert parse_latency_rise(rule) == pytest.approx(rise)

    @pytest.mark.parametrize(
        "rule", ["p95 latency 20%", "latency +0.2", "p50 latency +20%", "slow"]
    )
    def test_unreadable_latency_rule_shows_the_accepted_forms(self, rule: str) -> None:
        with pytest.raises(SpecError, match=re.escape('"p95 latency +20%"')) as caught:
            parse_latency_rise(rule, field="rollout.rollback_on")
        assert caught.value.field == "rollout.rollback_on"

    @pytest.mark.parametrize("rule", ["latency +0%", "latency +2000%", 0.0, 11.0])
    def test_latency_rise_outside_its_range_is_refused(self, rule: str | float) -> None:
        with pytest.raises(SpecError, match=r"must be in \(0%, 1000%\]"):
            parse_latency_rise(rule)

    @pytest.mark.parametrize(
        ("text", "rules"),
        [
            ("accuracy drop 0.05", RollbackRules(accuracy_drop=0.05)),
            (0.05, RollbackRules(accuracy_drop=0.05)),
            ("p95 latency +20%", RollbackRules(latency_rise=0.2)),
            (
                "accuracy drop 0.05 or p95 latency +20%",
                RollbackRules(accuracy_drop=0.05, latency_rise=0.2),
            ),
            (
                "latency increase 20% OR accuracy drop 2%",
                RollbackRules(accuracy_drop=0.02, latency_rise=0.2),
            ),
        ],
    )
    def test_one_rule_or_both_joined_with_or(self, text: str | float, rules: RollbackRules) -> None:
        parsed = parse_rollback_rules(text)
        assert parsed.accuracy_drop == pytest.approx(rules.accuracy_drop)
        assert parsed.latency_rise == pytest.approx(rules.latency_rise)

    def test_describe_writes_the_rules_back_as_they_are_read(self) -> None:
        text = "accuracy drop 0.05 or p95 latency +20%"
        assert parse_rollback_rules(text).describe() == text

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("accuracy drop 0.05 or error rate 1%", "cannot read rollback rule 'error rate 1%'"),
            ("accuracy drop 0.05 and latency +20%", "cannot read rollback rule"),
            ("latency +20% or latency +30%", "gives the latency rule twice"),
            ("accuracy drop 0.1 or accuracy drop 0.2", "gives the accuracy rule twice"),
        ],
    )
    def test_unreadable_combination_names_the_field_and_the_forms(
        self, text: str, message: str
    ) -> None:
        with pytest.raises(SpecError, match=re.escape(message)) as caught:
            parse_rollback_rules(text, field="rollout.rollback_on")
        assert caught.value.field == "rollout.rollback_on"
        assert '"accuracy drop 0.02", "p95 latency +20%"' in str(caught.value)


class TestRolloutRamp:
    def test_defaults_ramp_by_two_and_check_accuracy_only(self) -> None:
        rollout = RolloutSpec()
        assert rollout.ramp_shares() == (0.1, 0.2, 0.4, 0.8, 1.0)
        assert (rollout.ramp_factor, rollout.step_after_s) == (2.0, 600.0)
        assert rollout.rules == RollbackRules(accuracy_drop=0.02)

    def test_step_after_defaults_to_promote_after(self) -> None:
        assert RolloutSpec(promote_after_s="20 s").step_after_s == 20.0
        assert RolloutSpec(promote_after_s=20, step_after_s="5 s").step_after_s == 5.0

    @pytest.mark.parametrize(
        ("canary", "factor", "shares"),
        [
            (0.25, 2.0, (0.25, 0.5, 1.0)),
            (0.25, 4.0, (0.25, 1.0)),
            (0.3, 3.0, (0.3, 0.9, 1.0)),
            (0.05, 3.0, (0.05, 0.15, 0.45, 1.0)),
            (1.0, 2.0, (1.0,)),
        ],
    )
    def test_shares_multiply_by_the_factor_capped_at_all(
        self, canary: float, factor: float, shares: tuple[float, ...]
    ) -> None:
        assert RolloutSpec(canary=canary, ramp_factor=factor).ramp_shares() == shares

    @pytest.mark.parametrize("factor", [1.0, 0.5, 1001.0])
    def test_factor_that_cannot_ramp_says_the_interval(self, factor: float) -> None:
        with pytest.raises(ValidationError, match=r"must be in \(1, 1000\]"):
            RolloutSpec(ramp_factor=factor)

    def test_a_ramp_of_too_many_steps_names_the_factor(self) -> None:
        with pytest.raises(SpecError) as caught:
            PipelineSpec.from_dict(
                minimal_spec().to_dict() | {"rollout": {"canary": 0.001, "ramp_factor": 1.2}}
            )
        assert caught.value.field == "rollout.ramp_factor"
        assert "more than 20 steps" in str(caught.value)

    def test_rollback_on_in_yaml_sets_both_rules_and_round_trips(self) -> None:
        text = (
            minimal_spec()
            .to_yaml()
            .replace(
                "rollout:\n",
                "rollout:\n  rollback_on: accuracy drop 0.05 or p95 latency +20%\n",
            )
        )
        text = "\n".join(
            line
            for line in text.splitlines()
            if not line.strip().startswith(("rollback_on_drop:", "rollback_on_latency_rise:"))
        )
        spec = PipelineSpec.from_yaml(text)
        assert spec.rollout.rules == RollbackRules(accuracy_drop=0.05, latency_rise=0.2)
        dumped = spec.to_yaml()
        assert "rollback_on_latency_rise: 0.2" in dumped
        assert PipelineSpec.from_yaml(dumped) == spec
        assert PipelineSpec.from_json(spec.to_json()) == spec

    def test_a_spec_written_before_ramps_still_loads_with_the_defaults(self) -> None:
        data = minimal_spec().to_dict()
        data["rollout"] = {"canary": 0.25, "promote_after_s": 20.0, "rollback_on_drop": 0.05}
        rollout = PipelineSpec.from_dict(data).rollout
        assert (rollout.ramp_factor, rollout.step_after_s) == (2.0, 20.0)
        assert rollout.rules == RollbackRules(accuracy_drop=0.05)

    @pytest.mark.parametrize(
        ("rollout", "field", "message"),
        [
            ({"rollback_on": "accuracy -2"}, "rollout.rollback_on", "cannot read rollback rule"),
            (
                {"rollback_on": "latency +20%", "rollback_on_drop": 0.05},
                "rollout.rollback_on",
                "rollback_on and rollback_on_drop are both given",
            ),
            ({"rollback_on_drop": None}, "rollout.rollback_on", "gives no rollback rule"),
            (
                {"rollback_on_latency_rise": "latency 20%"},
                "rollout.rollback_on_latency_rise",
                "cannot read latency rule",
            ),
            ({"step_after_s": "soon"}, "rollout.step_after_s", "cannot read duration"),
        ],
    )
    def test_bad_rollout_names_the_field_and_the_fix(
        self, rollout: dict[str, object], field: str, message: str
    ) -> None:
        data = minimal_spec().to_dict() | {"rollout": rollout}
        with pytest.raises(SpecError, match=re.escape(message)) as caught:
            PipelineSpec.from_dict(data)
        assert caught.value.field == field
        assert caught.value.fix


class TestImportRefs:
    def test_module_level_function_gives_module_and_qualname(self) -> None:
        assert ref_of(module_level_function) == f"{__name__}:module_level_function"

    def test_lambda_is_refused_with_the_fix(self) -> None:
        with pytest.raises(SpecError, match="define a named function at module level"):
            ref_of(lambda: None, field="edge.preprocess")

    def test_nested_function_is_refused_with_the_fix(self) -> None:
        def nested() -> None:
            pass

        with pytest.raises(SpecError, match="move it to module level") as caught:
            ref_of(nested, field="edge.preprocess")
        assert caught.value.field == "edge.preprocess"

    def test_callable_object_without_import_path_is_refused(self) -> None:
        with pytest.raises(SpecError, match="no import path"):
            ref_of(select.random(0.1))

    @pytest.mark.parametrize("ref", ["train.py", "pkg.mod.fn", "pkg.mod:", ":fn", "a b:c"])
    def test_malformed_ref_shows_the_module_function_form(self, ref: str) -> None:
        with pytest.raises(SpecError, match=re.escape('"package.module:function"')):
            ref_of(ref, field="retrain.trainer")

    def test_dotted_ref_suggests_the_colon(self) -> None:
        with pytest.raises(SpecError, match=re.escape('did you mean "pkg.mod:fn"')):
            ref_of("pkg.mod.fn")

    def test_resolve_returns_the_object(self) -> None:
        assert resolve_ref("continuum.spec:PipelineSpec.from_yaml") == PipelineSpec.from_yaml

    @pytest.mark.parametrize(
        ("ref", "message"),
        [("no_such_module_xyz:f", "cannot import module"), ("continuum.spec:nope", "has no")],
    )
    def test_resolve_names_what_is_missing(self, ref: str, message: str) -> None:
        with pytest.raises(SpecError, match=message):
            resolve_ref(ref)


class TestTensorSchema:
    @pytest.mark.parametrize(
        ("dtype", "name"), [("float32", "float32"), ("f4", "float32"), ("uint8", "uint8")]
    )
    def test_dtype_is_stored_by_its_numpy_name(self, dtype: str, name: str) -> None:
        assert TensorSchema(shape=(1, 8, 8), dtype=dtype).dtype == name

    @pytest.mark.parametrize("dtype", ["float33", "object", "U8", "datetime64"])
    def test_unknown_or_non_numeric_dtype_is_refused(self, dtype: str) -> None:
        with pytest.raises(ValidationError, match="numpy dtype name such as float32"):
            TensorSchema(shape=(1,), dtype=dtype)

    @pytest.mark.parametrize("shape", [(), (0, 8), (-1,)])
    def test_shape_needs_positive_sizes(self, shape: tuple[int, ...]) -> None:
        with pytest.raises(ValidationError, match="positive sizes"):
            TensorSchema(shape=shape)

    @pytest.mark.parametrize("name", ["IBAN", "patient id", "", "x" * 65, "a/b"])
    def test_field_names_follow_the_topic_level_rules(self, name: str) -> None:
        with pytest.raises(ValidationError, match="not a valid field name"):
            TensorSchema(shape=(1,), fields={name: "restricted"})


class TestStageSpecs:
    def test_canary_outside_zero_one_says_the_interval(self) -> None:
        with pytest.raises(ValidationError, match=r"must be in \(0, 1\], got 1.5"):
            RolloutSpec(canary=1.5)

    def test_rollout_fields_accept_the_user_grammar(self) -> None:
        rollout = RolloutSpec.model_validate(
            {"promote_after_s": "10 min", "rollback_on_drop": "accuracy drop 2%"}
        )
        assert (rollout.promote_after_s, rollout.rollback_on_drop) == (600.0, 0.02)

    def test_edge_stage_must_be_able_to_run_on_edge_nodes(self) -> None:
        with pytest.raises(ValidationError, match="excludes edge nodes"):
            EdgeStageSpec.model_validate(
                {"model": "m", "input": {"shape": [1]}, "where": {"continuum.io/tier": "cloud"}}
            )

    def test_edge_stage_runs_on_edge_tier_by_default(self) -> None:
        stage = EdgeStageSpec(model="m", input=TensorSchema(shape=(1,)))
        assert stage.where.root == {"continuum.io/tier": "edge"}

    def test_uplink_detectors_are_the_policys(self) -> None:
        from continuum import drift

        detector = drift.psi(0.3)
        uplink = UplinkSpec(policy=select.random(0.1) | select.drift(detector))
        assert uplink.detectors == (detector,)
        assert UplinkSpec(policy=select.random(0.1)).detectors == ()

    def test_uplink_runs_every_distinct_detector_once(self) -> None:
        from continuum import drift

        policy = select.drift(drift.psi(0.3)) | select.drift(drift.inputs(), rate=0.2)
        uplink = UplinkSpec(policy=policy, drift=(drift.labels(), drift.psi(0.3)))
        assert uplink.detectors == (drift.psi(0.3), drift.inputs(), drift.labels())

    def test_uplink_takes_one_extra_detector_or_null_as_before(self) -> None:
        from continuum import drift

        single = UplinkSpec.model_validate(
            {"policy": {"kind": "random", "rate": 0.1}, "drift": {"kind": "ks", "alpha": 0.01}}
        )
        assert single.detectors == (drift.ks(0.01),)
        none = UplinkSpec.model_validate({"policy": {"kind": "random", "rate": 0.1}, "drift": None})
        assert none.detectors == ()

    def test_uplink_with_several_signals_round_trips_through_json(self) -> None:
        from continuum import drift

        policy = select.drift(drift.psi(0.25, window=100)) | select.drift(drift.inputs(), rate=0.5)
        uplink = UplinkSpec(policy=policy, drift=drift.labels(0.1))
        assert UplinkSpec.model_validate_json(uplink.model_dump_json()) == uplink
        assert uplink.policy.describe() == (
            "drift(psi(0.25, window=100)) | drift(inputs(), rate=0.5)"
        )

    def test_gate_holdout_must_be_an_import_ref(self) -> None:
        assert GateSpec(holdout="pipelines.digits.data:holdout").holdout is not None
        with pytest.raises(ValidationError, match="not an import ref"):
            GateSpec(holdout="holdout.npz")

    def test_specs_are_frozen(self) -> None:
        spec = minimal_spec()
        with pytest.raises(ValidationError, match="frozen"):
            spec.name = "q"


class TestRoundTrip:
    def test_design_example_round_trips_through_yaml_and_json(self) -> None:
        spec = load_pipeline(EXAMPLE)
        assert PipelineSpec.from_yaml(spec.to_yaml()) == spec
        assert PipelineSpec.from_json(spec.to_json()) == spec
        assert PipelineSpec.from_yaml(spec.to_yaml()).to_yaml() == spec.to_yaml()

    def test_yaml_is_plain_data_starting_with_the_api_version(self) -> None:
        text = load_pipeline(EXAMPLE).to_yaml()
        data = yaml.safe_load(text)
        assert text.startswith("api_version: continuum.io/v1\n")
        assert data["edge"]["input"]["shape"] == [1, 8, 8]
        assert data["uplink"]["policy"]["kind"] == "any_of"
        assert "shape: [1, 8, 8]" in text

    def test_minimal_spec_fills_defaults_and_round_trips(self) -> None:
        spec = minimal_spec()
        assert spec.retrain is None
        assert spec.rollout == RolloutSpec()
        assert PipelineSpec.from_json(spec.to_json()) == spec


class TestSpecErrors:
    def test_missing_fields_are_named(self) -> None:
        with pytest.raises(SpecError, match=r"^tenant: is required \(also invalid: data_class"):
            PipelineSpec.from_yaml("name: p\n")

    def test_unknown_field_lists_the_known_ones(self) -> None:
        data = minimal_spec().to_dict()
        data["edge"]["modle"] = "m"
        with pytest.raises(SpecError) as caught:
            PipelineSpec.from_dict(data)
        assert caught.value.field == "edge.modle"
        assert "known fields here: model, backend, input" in str(caught.value)

    def test_nested_error_carries_the_full_path_and_the_fix(self) -> None:
        data = minimal_spec().to_dict()
        data["edge"]["where"] = {"tier": "edge"}
        with pytest.raises(SpecError) as caught:
            PipelineSpec.from_dict(data)
        assert caught.value.field == 'edge.where["tier"]'
        assert caught.value.fix == 'use "continuum.io/tier"'

    def test_error_inside_a_policy_names_the_policy_path(self) -> None:
        data = minimal_spec().to_dict()
        data["uplink"]["policy"] = {"kind": "random", "rate": 2}
        with pytest.raises(SpecError) as caught:
            PipelineSpec.from_dict(data)
        assert caught.value.field == "uplink.policy.random.rate"

    def test_bad_name_follows_the_topic_rules(self) -> None:
        data = minimal_spec().to_dict() | {"name": "Line 7/inspection"}
        with pytest.raises(SpecError, match="lowercase letters") as caught:
            PipelineSpec.from_dict(data)
        assert caught.value.field == "name"

    @pytest.mark.parametrize("text", ["a: [", "- 1\n", "42"])
    def test_bad_yaml_or_non_mapping_is_a_spec_error(self, text: str) -> None:
        with pytest.raises(SpecError, match="fix:"):
            PipelineSpec.from_yaml(text)

    def test_bad_json_is_a_spec_error(self) -> None:
        with pytest.raises(SpecError, match="not valid JSON"):
            PipelineSpec.from_json("{")


class TestLoadPipeline:
    def test_python_file_yields_its_pipeline_without_running_it(self) -> None:
        spec = load_pipeline(EXAMPLE)
        module = sys.modules[spec.edge.preprocess.partition(":")[0]]  # type: ignore[union-attr]
        assert spec.name == "line-7-inspection"
        assert module.CALLS == []

    def test_refs_in_a_loaded_file_resolve_to_its_functions(self) -> None:
        spec = load_pipeline(EXAMPLE)
        assert spec.retrain is not None
        assert resolve_ref(spec.retrain.trainer).__name__ == "train_fn"
        assert resolve_ref(spec.edge.preprocess or "").__name__ == "preprocess"

    def test_file_in_an_importable_package_loads_under_its_dotted_name(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        package = f"ctm_pkg_{uuid.uuid4().hex[:12]}"
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("", encoding="utf-8")
        (tmp_path / package / "line.py").write_text(
            "from continuum import Pipeline, select\n"
            "pipe = Pipeline('p', tenant='t', data_class='public')\n"
            "@pipe.edge(model='m', shape=(4,))\n"
            "def prep(frame):\n"
            "    return frame\n"
            "pipe.uplink(select.random(0.5))\n",
            encoding="utf-8",
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        for name in (package, f"{package}.line"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        spec = load_pipeline(tmp_path / package / "line.py")
        assert spec.edge.preprocess == f"{package}.line:prep"
        assert callable(resolve_ref(spec.edge.preprocess))

    def test_yaml_and_json_files_load(self, tmp_path: Path) -> None:
        spec = minimal_spec()
        (tmp_path / "p.yaml").write_text(spec.to_yaml(), encoding="utf-8")
        (tmp_path / "p.json").write_text(spec.to_json(), encoding="utf-8")
        assert load_pipeline(tmp_path / "p.yaml") == spec
        assert load_pipeline(str(tmp_path / "p.json")) == spec

    def test_a_module_level_spec_object_is_found(self, write_module: Callable[[str], Path]) -> None:
        path = write_module(
            "from continuum.spec import PipelineSpec\n"
            f"SPEC = PipelineSpec.from_json({minimal_spec().to_json()!r})\n"
        )
        assert load_pipeline(path) == minimal_spec()

    def test_file_without_a_pipeline_says_how_to_declare_one(
        self, write_module: Callable[[str], Path]
    ) -> None:
        path = write_module("x = 1\n")
        with pytest.raises(SpecError, match=r"defines no Pipeline.*pipe = Pipeline\("):
            load_pipeline(path)

    def test_file_with_two_pipelines_names_both(self, write_module: Callable[[str], Path]) -> None:
        path = write_module(
            "from continuum import Pipeline\n"
            "a = Pipeline('a', tenant='t', data_class='public')\n"
            "b = Pipeline('b', tenant='t', data_class='public')\n"
            "alias = a\n"
        )
        with pytest.raises(SpecError, match=r"defines 2 pipelines \(a, b\)"):
            load_pipeline(path)

    def test_declaration_error_names_the_file_and_line(
        self, write_module: Callable[[str], Path]
    ) -> None:
        path = write_module(
            "from continuum import Pipeline\n"
            "pipe = Pipeline('p', tenant='t', data_class='public')\n"
            "pipe.rollout(canary=1.5)\n"
        )
        with pytest.raises(SpecError) as caught:
            load_pipeline(path)
        assert str(caught.value).startswith(f"{path}:3: rollout.canary: must be in (0, 1]")
        assert caught.value.field == "rollout.canary"

    def test_incomplete_pipeline_names_what_is_missing(
        self, write_module: Callable[[str], Path]
    ) -> None:
        path = write_module(
            "from continuum import Pipeline\n"
            "pipe = Pipeline('p', tenant='t', data_class='public')\n"
        )
        with pytest.raises(SpecError, match="no edge stage declared"):
            load_pipeline(path)

    def test_import_failure_is_a_spec_error_with_the_cause(
        self, write_module: Callable[[str], Path]
    ) -> None:
        path = write_module("import no_such_module_xyz\n")
        with pytest.raises(SpecError, match=r"ModuleNotFoundError.*no_such_module_xyz"):
            load_pipeline(path)
        assert path.stem not in sys.modules

    def test_file_named_like_another_module_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "json.py"
        path.write_text("x = 1\n", encoding="utf-8")
        with pytest.raises(SpecError, match="module name 'json' is taken"):
            load_pipeline(path)
        assert sys.modules["json"] is json

    @pytest.mark.parametrize("name", ["missing.py", "pipe.toml"])
    def test_missing_file_or_unknown_suffix_is_refused(self, tmp_path: Path, name: str) -> None:
        if name.endswith(".toml"):
            (tmp_path / name).write_text("", encoding="utf-8")
        with pytest.raises(SpecError, match="fix:"):
            load_pipeline(tmp_path / name)

    def test_spec_error_in_yaml_file_names_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.yaml"
        path.write_text("name: p\n", encoding="utf-8")
        with pytest.raises(SpecError, match=rf"^{path}: tenant: is required"):
            load_pipeline(path)
