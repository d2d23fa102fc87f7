"""Selection policies and the uplink token bucket, on hand-computed inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from continuum import drift as drift_detectors
from continuum import select
from continuum.errors import InputMismatchError, SpecError
from continuum.select import (
    AllOf,
    AnyOf,
    PolicySpec,
    SelectionContext,
    TokenBucket,
)

MASK64 = 2**64 - 1


def reference_splitmix64(x: int) -> int:
    """Pure-Python SplitMix64: the first output of the generator seeded with ``x``."""
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def ctx_for(n: int, *, drift_active: bool = False) -> SelectionContext:
    return SelectionContext(seeds=np.arange(n, dtype=np.uint64), drift_active=drift_active)


def two_class(top: list[float]) -> np.ndarray:
    tops = np.asarray(top)
    return np.stack([tops, 1.0 - tops], axis=1)


class TestLeafPoliciesSelectTheHandComputedRows:
    def test_low_confidence_selects_rows_whose_top_probability_is_strictly_below(self) -> None:
        probs = two_class([0.5, 0.9, 0.6, 0.59])  # max = 0.5, 0.9, 0.6, 0.59
        mask = select.low_confidence(0.6).decide(probs, ctx_for(4))
        assert mask.tolist() == [True, False, False, True]

    def test_small_margin_selects_rows_whose_top_two_are_close(self) -> None:
        probs = np.array(
            [
                [0.5, 0.4, 0.1],  # margin 0.1
                [0.1, 0.2, 0.7],  # margin 0.5
                [0.4, 0.2, 0.4],  # margin 0.0
                [0.15, 0.55, 0.3],  # margin 0.25
            ]
        )
        mask = select.small_margin(0.2).decide(probs, ctx_for(4))
        assert mask.tolist() == [True, False, True, False]

    def test_high_entropy_uses_entropy_divided_by_log_classes(self) -> None:
        # Normalised entropies: 1.0, 0.0 (a zero probability counts as 0 * ln 0 = 0),
        # and -(0.9 ln 0.9 + 0.1 ln 0.1) / ln 2 = 0.469.
        probs = two_class([0.5, 1.0, 0.9])
        assert select.high_entropy(0.5).decide(probs, ctx_for(3)).tolist() == [True, False, False]
        assert select.high_entropy(0.4).decide(probs, ctx_for(3)).tolist() == [True, False, True]

    def test_high_entropy_normalises_by_the_number_of_classes(self) -> None:
        # [0.5, 0.5, 0, 0] has entropy ln 2 = half of ln 4; the uniform row has 1.0.
        probs = np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
        assert select.high_entropy(0.49).decide(probs, ctx_for(2)).tolist() == [True, True]
        assert select.high_entropy(0.51).decide(probs, ctx_for(2)).tolist() == [False, True]

    def test_float32_softmax_output_is_accepted(self) -> None:
        logits = np.array([[2.0, 1.0, 0.1], [5.0, 0.0, 0.0]], dtype=np.float32)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        mask = select.low_confidence(0.8).decide(probs.astype(np.float32), ctx_for(2))
        assert mask.tolist() == [True, False]

    def test_an_empty_batch_selects_nothing(self) -> None:
        mask = select.low_confidence(0.6).decide(np.empty((0, 10)), ctx_for(0))
        assert mask.shape == (0,)
        assert mask.dtype == np.bool_


class TestRandomSelectionIsAPureFunctionOfTheSeed:
    def test_splitmix64_matches_the_published_first_output_for_seed_zero(self) -> None:
        assert int(select.splitmix64(0)[0]) == 0xE220A8397B1DCDAF

    def test_splitmix64_matches_a_pure_python_reference(self) -> None:
        seeds = [0, 1, 2, 12345, 2**63, MASK64]
        assert select.splitmix64(np.array(seeds, dtype=np.uint64)).tolist() == [
            reference_splitmix64(s) for s in seeds
        ]

    def test_random_selects_exactly_the_seeds_whose_hash_is_below_rate_times_two_to_64(
        self,
    ) -> None:
        seeds = list(range(40))
        rate = 0.25
        expected = [reference_splitmix64(s) < int(rate * 2**64) for s in seeds]
        ctx = SelectionContext(seeds=np.array(seeds, dtype=np.uint64))
        mask = select.random(rate).decide(np.full((40, 2), 0.5), ctx)
        assert mask.tolist() == expected
        assert 0 < sum(expected) < 40  # the example is not degenerate

    def test_a_sample_is_selected_regardless_of_its_batch_neighbours(self) -> None:
        policy = select.random(0.5)
        seeds = np.arange(100, dtype=np.uint64)
        whole = policy.decide(np.full((100, 2), 0.5), SelectionContext(seeds=seeds))
        order = np.random.default_rng(3).permutation(100)
        shuffled = policy.decide(np.full((100, 2), 0.5), SelectionContext(seeds=seeds[order]))
        assert shuffled.tolist() == whole[order].tolist()

    def test_rate_zero_selects_none_and_rate_one_selects_all(self) -> None:
        probs = np.full((50, 2), 0.5)
        assert not select.random(0.0).decide(probs, ctx_for(50)).any()
        assert select.random(1.0).decide(probs, ctx_for(50)).all()

    def test_the_selected_share_matches_the_rate_over_many_samples(self) -> None:
        n = 100_000
        mask = select.random(0.1).decide(np.full((n, 2), 0.5), ctx_for(n))
        assert abs(mask.mean() - 0.1) < 0.005

    def test_negative_int64_seeds_keep_all_their_bits(self) -> None:
        ctx = SelectionContext(seeds=np.array([-1, 5], dtype=np.int64))
        assert ctx.seeds.dtype == np.uint64
        assert ctx.seeds.tolist() == [MASK64, 5]

    def test_seeds_from_sample_ids_are_stable_across_runs_and_machines(self) -> None:
        # Pinned value: BLAKE2b-64 of the id, little-endian.  A change breaks replays.
        assert select.seed_from_id("edge-1:42") == 16236200313217628548
        ctx = SelectionContext.for_ids(["edge-1:42", "edge-1:43"], drift_active=True)
        assert ctx.seeds.tolist() == [16236200313217628548, select.seed_from_id("edge-1:43")]
        assert ctx.drift_active


class TestDriftBoostSelectsOnlyWhileDriftIsActive:
    def test_inactive_drift_selects_nothing(self) -> None:
        policy = select.drift(drift_detectors.psi(0.2))
        assert not policy.decide(np.full((20, 2), 0.5), ctx_for(20)).any()

    def test_active_drift_at_rate_one_selects_every_frame(self) -> None:
        policy = select.drift(drift_detectors.psi(0.2))
        assert policy.decide(np.full((20, 2), 0.5), ctx_for(20, drift_active=True)).all()

    def test_active_drift_at_a_rate_selects_that_share_independently_of_random(self) -> None:
        n = 20_000
        probs = np.full((n, 2), 0.5)
        boosted = select.drift(drift_detectors.ks(), rate=0.5).decide(
            probs, ctx_for(n, drift_active=True)
        )
        sampled = select.random(0.5).decide(probs, ctx_for(n, drift_active=True))
        assert abs(boosted.mean() - 0.5) < 0.02
        # Independent draws overlap on about a quarter of the frames, not on half.
        assert abs((boosted & sampled).mean() - 0.25) < 0.02


class TestComposition:
    def test_or_and_and_build_any_of_and_all_of(self) -> None:
        a, b = select.low_confidence(0.6), select.random(0.1)
        assert (a | b) == AnyOf(policies=(a, b))
        assert (a & b) == AllOf(policies=(a, b))

    def test_chained_operators_flatten_in_declaration_order(self) -> None:
        a, b, c = select.low_confidence(0.6), select.small_margin(0.1), select.random(0.1)
        assert (a | b | c).policies == (a, b, c)
        assert (a | (b | c)).policies == (a, b, c)
        assert (a & b & c).policies == (a, b, c)

    def test_any_of_and_all_of_combine_their_children_masks(self) -> None:
        probs = two_class([0.5, 0.65, 0.9, 0.55])
        # low_confidence(0.6): T F F T ; small_margin(0.35): 0.0, 0.3, 0.8, 0.1 -> T T F T
        # high_entropy(0.95): 1.0, 0.934, 0.469, 0.993 -> T F F T
        low = select.low_confidence(0.6)
        margin = select.small_margin(0.35)
        entropy = select.high_entropy(0.95)
        ctx = ctx_for(4)
        assert (low | margin).decide(probs, ctx).tolist() == [True, True, False, True]
        assert (margin & entropy).decide(probs, ctx).tolist() == [True, False, False, True]
        assert ((low | margin) & entropy).decide(probs, ctx).tolist() == [True, False, False, True]

    def test_composing_with_something_else_is_a_type_error(self) -> None:
        with pytest.raises(TypeError):
            _ = select.low_confidence(0.6) | 0.5  # type: ignore[operator]

    def test_detectors_lists_every_drift_leaf_in_order(self) -> None:
        psi, ks = drift_detectors.psi(0.3), drift_detectors.ks(0.05)
        policy = (select.drift(psi) | select.random(0.01)) & select.drift(ks, rate=0.5)
        assert policy.detectors() == (psi, ks)

    def test_describe_reads_like_the_declaration(self) -> None:
        policy = (
            select.low_confidence(0.6) | select.drift(drift_detectors.psi(0.2))
        ) & select.random(0.01)
        assert policy.describe() == "(low_confidence(0.6) | drift(psi(0.2))) & random(0.01)"


class TestExplainNamesWhySampleWasSelected:
    def test_any_of_names_the_first_child_that_selected_each_sample(self) -> None:
        probs = two_class([0.5, 0.9, 0.95, 0.55])
        policy = select.low_confidence(0.6) | select.drift(drift_detectors.psi()) | select.random(1)
        reasons = policy.explain(probs, ctx_for(4, drift_active=True))
        assert reasons == ["low_confidence", "drift", "drift", "low_confidence"]

    def test_unselected_samples_have_no_reason(self) -> None:
        probs = two_class([0.5, 0.9])
        policy = select.low_confidence(0.6) | select.drift(drift_detectors.psi())
        assert policy.explain(probs, ctx_for(2)) == ["low_confidence", None]

    def test_all_of_joins_the_reasons_of_its_children(self) -> None:
        probs = two_class([0.5, 0.9, 0.58])
        policy = select.low_confidence(0.6) & select.small_margin(0.1)
        assert policy.explain(probs, ctx_for(3)) == ["low_confidence&small_margin", None, None]

    def test_explain_agrees_with_decide(self) -> None:
        rng = np.random.default_rng(7)
        probs = rng.dirichlet(np.ones(5), size=200)
        policy = (select.low_confidence(0.5) & select.random(0.5)) | select.high_entropy(0.9)
        ctx = ctx_for(200)
        reasons = policy.explain(probs, ctx)
        assert [r is not None for r in reasons] == policy.decide(probs, ctx).tolist()


class UplinkLike(BaseModel):
    """Stands in for spec.UplinkSpec: a frozen model embedding PolicySpec."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    policy: PolicySpec


def composed_policy() -> AnyOf:
    return (
        select.low_confidence(0.6)
        | select.drift(drift_detectors.psi(0.25, window=100, reference=150), rate=0.8)
        | (select.small_margin(0.05) & select.random(0.2))
        | select.any_of(select.high_entropy(0.9))
        | select.drift(drift_detectors.ks(0.001))
    )


class TestPoliciesRoundTripThroughJsonAndYaml:
    def test_json_round_trip_gives_an_equal_policy(self) -> None:
        policy = composed_policy()
        text = json.dumps(policy.model_dump(mode="json"))
        restored = TypeAdapter(PolicySpec).validate_python(json.loads(text))
        assert restored == policy
        assert restored.describe() == policy.describe()

    def test_yaml_round_trip_inside_an_enclosing_spec_gives_an_equal_policy(self) -> None:
        spec = UplinkLike(policy=composed_policy())
        text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        restored = UplinkLike.model_validate(yaml.safe_load(text))
        assert restored == spec

    def test_the_dump_names_each_kind(self) -> None:
        dumped = (select.low_confidence(0.6) | select.random(0.01)).model_dump(mode="json")
        assert dumped == {
            "kind": "any_of",
            "policies": [
                {"kind": "low_confidence", "threshold": 0.6},
                {"kind": "random", "rate": 0.01},
            ],
        }

    def test_restored_policy_decides_like_the_original(self) -> None:
        policy = composed_policy()
        restored = TypeAdapter(PolicySpec).validate_json(policy.model_dump_json())
        probs = np.random.default_rng(1).dirichlet(np.ones(3), size=64)
        ctx = ctx_for(64, drift_active=True)
        assert restored.decide(probs, ctx).tolist() == policy.decide(probs, ctx).tolist()

    def test_an_unknown_kind_is_rejected(self) -> None:
        with pytest.raises(ValidationError, match="kind"):
            TypeAdapter(PolicySpec).validate_python({"kind": "most_recent", "rate": 0.1})

    def test_policies_are_frozen_and_hashable(self) -> None:
        policy = select.low_confidence(0.6)
        with pytest.raises(ValidationError):
            policy.threshold = 0.1
        assert hash(composed_policy()) == hash(composed_policy())


class TestPolicyArgumentsAreValidatedAtDeclaration:
    @pytest.mark.parametrize(
        ("build", "field"),
        [
            (lambda: select.low_confidence(1.5), "threshold"),
            (lambda: select.small_margin(-0.1), "threshold"),
            (lambda: select.high_entropy(math.nan), "threshold"),
            (lambda: select.random(2.0), "rate"),
            (lambda: select.drift(drift_detectors.psi(), rate=-1.0), "rate"),
        ],
    )
    def test_out_of_range_arguments_raise_spec_error_naming_field_and_fix(
        self, build: object, field: str
    ) -> None:
        with pytest.raises(SpecError, match="between 0 and 1") as caught:
            build()  # type: ignore[operator]
        assert caught.value.field == field
        assert caught.value.fix and "e.g." in caught.value.fix

    def test_an_empty_any_of_is_refused(self) -> None:
        with pytest.raises(SpecError, match="at least one policy") as caught:
            select.any_of()
        assert caught.value.field == "policies"

    def test_a_non_policy_child_is_refused(self) -> None:
        with pytest.raises(SpecError, match="not a policy"):
            select.all_of(select.random(0.1), "low_confidence")  # type: ignore[arg-type]

    def test_drift_needs_a_detector_spec(self) -> None:
        with pytest.raises(SpecError, match=r"drift\.psi") as caught:
            select.drift(0.2)  # type: ignore[arg-type]
        assert caught.value.field == "detector"

    def test_a_bad_value_in_a_loaded_document_names_its_path(self) -> None:
        bad = {"kind": "any_of", "policies": [{"kind": "low_confidence", "threshold": 3}]}
        with pytest.raises(ValidationError, match=r"policies\.0\.low_confidence\.threshold"):
            TypeAdapter(PolicySpec).validate_python(bad)


class TestProbabilitiesAreCheckedBeforeDeciding:
    def test_a_1d_array_is_refused(self) -> None:
        with pytest.raises(InputMismatchError, match=r"\(batch, classes\)"):
            select.low_confidence(0.6).decide(np.array([0.5, 0.5]), ctx_for(2))

    def test_a_single_class_is_refused(self) -> None:
        with pytest.raises(InputMismatchError, match="classes >= 2"):
            select.low_confidence(0.6).decide(np.ones((3, 1)), ctx_for(3))

    def test_logits_are_refused_with_a_hint_to_apply_softmax(self) -> None:
        logits = np.array([[2.0, -1.0], [0.3, 0.1]])
        with pytest.raises(InputMismatchError, match="softmax") as caught:
            select.low_confidence(0.6).decide(logits, ctx_for(2))
        assert "row 0" in caught.value.got

    def test_nan_is_refused(self) -> None:
        with pytest.raises(InputMismatchError, match="finite"):
            select.random(0.5).decide(np.array([[0.5, 0.5], [math.nan, 0.5]]), ctx_for(2))

    def test_seeds_must_match_the_batch(self) -> None:
        with pytest.raises(InputMismatchError, match="one seed per row") as caught:
            select.low_confidence(0.6).decide(np.full((3, 2), 0.5), ctx_for(2))
        assert caught.value.expected == "3 seeds"

    def test_explain_checks_its_input_too(self) -> None:
        with pytest.raises(InputMismatchError):
            select.low_confidence(0.6).explain(np.full((3, 2), 0.9), ctx_for(3))

    def test_float_seeds_are_refused(self) -> None:
        with pytest.raises(InputMismatchError, match="one integer per sample"):
            SelectionContext(seeds=np.array([0.5, 1.5]))


class TestTokenBucket:
    def test_starts_full_and_takes_while_bytes_last(self) -> None:
        bucket = TokenBucket(rate_bytes_per_s=100.0, burst_bytes=1000)
        assert bucket.level(0.0) == 1000
        assert bucket.try_take(600, now_s=0.0)
        assert not bucket.try_take(500, now_s=0.0)
        assert bucket.level(0.0) == 400  # a refused request takes nothing

    def test_refills_at_the_rate_up_to_the_burst(self) -> None:
        bucket = TokenBucket(rate_bytes_per_s=100.0, burst_bytes=1000)
        assert bucket.try_take(1000, now_s=10.0)
        assert bucket.level(12.5) == pytest.approx(250.0)
        assert bucket.try_take(250, now_s=12.5)
        assert bucket.level(1000.0) == 1000

    def test_a_request_larger_than_the_burst_is_never_granted(self) -> None:
        bucket = TokenBucket(rate_bytes_per_s=100.0, burst_bytes=1000)
        assert not bucket.fits(1001)
        assert not bucket.try_take(1001, now_s=1e6)
        assert bucket.level(1e6) == 1000

    def test_a_clock_stepping_back_refills_nothing(self) -> None:
        bucket = TokenBucket(rate_bytes_per_s=100.0, burst_bytes=1000)
        assert bucket.try_take(1000, now_s=5.0)
        assert bucket.level(3.0) == 0
        assert bucket.level(6.0) == pytest.approx(100.0)

    def test_admit_grants_requests_in_order(self) -> None:
        bucket = TokenBucket(rate_bytes_per_s=100.0, burst_bytes=1000)
        assert bucket.admit([400, 400, 300, 200], now_s=0.0).tolist() == [True, True, False, True]
        assert bucket.level(0.0) == 0

    def test_from_kbps_converts_kilobits_to_bytes(self) -> None:
        bucket = TokenBucket.from_kbps(256, burst_s=2.0)
        assert bucket.rate_bytes_per_s == 32_000
        assert bucket.burst_bytes == 64_000

    @pytest.mark.parametrize(
        ("rate", "burst", "field"),
        [
            (0.0, 100, "rate_bytes_per_s"),
            (math.inf, 100, "rate_bytes_per_s"),
            (10.0, 0, "burst_bytes"),
        ],
    )
    def test_bad_settings_raise_spec_error(self, rate: float, burst: int, field: str) -> None:
        with pytest.raises(SpecError) as caught:
            TokenBucket(rate_bytes_per_s=rate, burst_bytes=burst)
        assert caught.value.field == field

    def test_negative_requests_and_non_finite_times_are_refused(self) -> None:
        bucket = TokenBucket(rate_bytes_per_s=100.0, burst_bytes=1000)
        with pytest.raises(InputMismatchError):
            bucket.try_take(-1, now_s=0.0)
        with pytest.raises(InputMismatchError):
            bucket.level(math.nan)


class TestCheckedProbabilities:
    def test_probabilities_pass_through_and_logits_get_a_softmax(self) -> None:
        given = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
        np.testing.assert_allclose(
            select.Probabilities.from_outputs(given).values, given, rtol=1e-7
        )
        logits = select.Probabilities.from_outputs(np.array([[2.0, -1.0, 0.5]])).values
        assert logits.sum() == pytest.approx(1.0)
        assert logits.argmax() == 0

    def test_the_values_are_read_only_and_the_callers_array_is_untouched(self) -> None:
        given = np.array([[0.5, 0.5]])
        values = select.Probabilities.from_outputs(given).values
        assert not values.flags.writeable
        assert given.flags.writeable

    @pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
    def test_every_float_precision_comes_back_as_float64_probabilities(self, dtype: type) -> None:
        logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]], dtype=dtype)
        values = select.Probabilities.from_outputs(logits).values
        assert values.dtype == np.float64
        np.testing.assert_allclose(values.sum(axis=1), 1.0)
        np.testing.assert_allclose(values[1], 1.0 / 3.0)
        assert logits[0, 0] == 2.0  # the caller's logits are not overwritten by the softmax

    def test_a_rounding_overshoot_is_clipped_on_a_copy(self) -> None:
        given = np.array([[1.0004, 0.0], [0.3, 0.7]])
        values = select.Probabilities.from_outputs(given).values
        assert values.max() == 1.0
        assert given[0, 0] == 1.0004

    def test_integer_outputs_are_probabilities_too(self) -> None:
        values = select.Probabilities.from_outputs(np.array([[0, 1], [1, 0]])).values
        assert values.dtype == np.float64
        assert values.tolist() == [[0.0, 1.0], [1.0, 0.0]]

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_non_finite_outputs_are_refused(self, dtype: type) -> None:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(InputMismatchError, match="NaN or infinite"):
                select.Probabilities.from_outputs(np.array([[0.5, 0.5], [bad, 0.5]], dtype=dtype))
            with pytest.raises(InputMismatchError, match="NaN or infinite"):
                select.Probabilities.from_outputs(np.array([[bad, 0.5]], dtype=dtype))

    def test_a_non_2d_output_is_refused(self) -> None:
        with pytest.raises(InputMismatchError, match=r"\(batch, classes\)"):
            select.Probabilities.from_outputs(np.ones(4))

    def test_decide_on_checked_probabilities_matches_decide_on_the_array(self) -> None:
        rng = np.random.default_rng(5)
        logits = rng.normal(size=(64, 5))
        checked = select.Probabilities.from_outputs(logits)
        policy = select.low_confidence(0.5) | select.small_margin(0.1) | select.random(0.2)
        ctx = ctx_for(64)
        assert policy.decide(checked, ctx).tolist() == policy.decide(checked.values, ctx).tolist()
        assert policy.explain(checked, ctx) == policy.explain(checked.values, ctx)

    def test_checked_probabilities_still_need_one_seed_per_row(self) -> None:
        checked = select.Probabilities.from_outputs(np.full((3, 2), 0.5))
        with pytest.raises(InputMismatchError, match="one seed per row"):
            select.low_confidence(0.6).decide(checked, ctx_for(2))

    def test_a_hand_built_probabilities_must_hold_a_float64_matrix(self) -> None:
        with pytest.raises(InputMismatchError, match="from_outputs"):
            select.Probabilities(values=[[0.5, 0.5]])  # type: ignore[arg-type]


class TestSeedsForANodesSamples:
    def test_the_seed_is_the_node_hash_plus_the_seq(self) -> None:
        ctx = SelectionContext.for_node("edge-1", range(41, 44), drift_active=True)
        base = select.seed_from_id("edge-1")
        assert ctx.seeds.tolist() == [(base + s) % 2**64 for s in (41, 42, 43)]
        assert ctx.drift_active

    def test_a_range_and_a_list_of_seqs_give_the_same_seeds(self) -> None:
        by_range = SelectionContext.for_node("n", range(7, 17)).seeds
        by_list = SelectionContext.for_node("n", list(range(7, 17))).seeds
        assert by_range.tolist() == by_list.tolist()

    def test_other_nodes_get_other_seeds_for_the_same_seq(self) -> None:
        a = SelectionContext.for_node("edge-1", range(100)).seeds
        b = SelectionContext.for_node("edge-2", range(100)).seeds
        assert not set(a.tolist()) & set(b.tolist())

    def test_negative_or_fractional_seqs_are_refused(self) -> None:
        with pytest.raises(InputMismatchError, match="negative"):
            SelectionContext.for_node("n", [1, -2])
        with pytest.raises(InputMismatchError, match="one integer per sample"):
            SelectionContext.for_node("n", [0.5])  # type: ignore[list-item]

    @pytest.mark.parametrize("n", [1, 2, 4, 5, 64])
    def test_small_and_large_batches_draw_the_same_random_picks(self, n: int) -> None:
        # Up to a few seeds are hashed with Python integers, more with numpy: same bits.
        seeds = np.random.default_rng(n).integers(0, 2**63, size=n, dtype=np.uint64) * 2 + 1
        probs = np.full((n, 2), 0.5)
        for rate in (0.3, 0.7):
            policy = select.random(rate)
            expected = [reference_splitmix64(int(s)) < int(rate * 2**64) for s in seeds]
            assert policy.decide(probs, SelectionContext(seeds=seeds)).tolist() == expected
