"""LabelSelector: key and value validation, matching nodes, and turning into Ray selectors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from continuum.errors import PlacementError, SpecError
from continuum.labels import JURISDICTION, KNOWN_KEYS, SITE, TIER, TIERS, LabelSelector

EDGE_LUX = {TIER: "edge", SITE: "lux-1", JURISDICTION: "LU"}


class TestLabelKeys:
    def test_known_keys_are_the_design_keys(self) -> None:
        assert {k.removeprefix("continuum.io/") for k in KNOWN_KEYS} == {
            "tier",
            "site",
            "country",
            "jurisdiction",
            "accelerator",
            "tenant",
        }
        assert TIERS == ("edge", "cloud", "hpc")

    def test_bare_key_names_the_continuum_key_meant(self) -> None:
        with pytest.raises(SpecError) as caught:
            LabelSelector.parse({"tier": "edge"})
        assert caught.value.field == 'where["tier"]'
        assert 'use "continuum.io/tier"' in str(caught.value)

    def test_misspelt_continuum_key_suggests_the_right_one(self) -> None:
        with pytest.raises(SpecError, match=r'did you mean "continuum.io/jurisdiction"'):
            LabelSelector.parse({"continuum.io/jurisdiktion": "LU"})

    def test_unknown_bare_key_lists_the_known_keys_and_custom_form(self) -> None:
        with pytest.raises(SpecError) as caught:
            LabelSelector.parse({"line": "7"})
        assert "continuum.io/site" in str(caught.value)
        assert "example.com/line" in str(caught.value)

    def test_custom_key_with_a_domain_is_allowed(self) -> None:
        selector = LabelSelector.parse({"example.com/line": "7", "ray.io/node-id": "!abc"})
        assert selector.root == {"example.com/line": "7", "ray.io/node-id": "!abc"}

    def test_direct_construction_raises_pydantic_error_with_the_same_fix(self) -> None:
        with pytest.raises(ValidationError, match=r"continuum\.io/tier"):
            LabelSelector({"tier": "edge"})


class TestLabelValues:
    @pytest.mark.parametrize(
        "expression", ["edge", "!cloud", "in(edge,cloud)", "!in(cloud,hpc)", "e*", "!h?c"]
    )
    def test_accepted_tier_expressions(self, expression: str) -> None:
        assert LabelSelector.parse({TIER: expression}).root[TIER] == expression

    def test_unknown_tier_suggests_the_closest(self) -> None:
        with pytest.raises(SpecError, match=r'did you mean "edge"\? tiers are edge, cloud, hpc'):
            LabelSelector.parse({TIER: "egde"})

    def test_tier_glob_that_matches_no_tier_is_refused(self) -> None:
        with pytest.raises(SpecError, match="is not a tier"):
            LabelSelector.parse({TIER: "fog-*"})

    @pytest.mark.parametrize("expression", ["lux 1", "", "in()", "in(a,)", "in(a,b", "!"])
    def test_unreadable_expression_shows_the_accepted_forms(self, expression: str) -> None:
        with pytest.raises(SpecError) as caught:
            LabelSelector.parse({SITE: expression}, field="edge.where")
        assert caught.value.field == 'edge.where["continuum.io/site"]'
        assert "fix:" in str(caught.value)

    def test_non_string_value_is_refused(self) -> None:
        with pytest.raises(SpecError, match="must be strings"):
            LabelSelector.parse({SITE: 7})  # type: ignore[dict-item]


class TestMatching:
    @pytest.mark.parametrize(
        ("selector", "expected"),
        [
            ({}, True),
            ({TIER: "edge"}, True),
            ({TIER: "cloud"}, False),
            ({SITE: "lux-*"}, True),
            ({SITE: "par-*"}, False),
            ({SITE: "in(lux-1,lux-2)"}, True),
            ({SITE: "!lux-1"}, False),
            ({SITE: "!in(par-1,par-2)"}, True),
            ({TIER: "edge", JURISDICTION: "FR"}, False),
        ],
    )
    def test_selector_matches_node_labels(self, selector: dict[str, str], expected: bool) -> None:
        assert LabelSelector.parse(selector).matches(EDGE_LUX) is expected

    def test_missing_label_fails_equality_and_passes_negation(self) -> None:
        assert not LabelSelector.parse({"example.com/gpu": "a100"}).matches(EDGE_LUX)
        assert LabelSelector.parse({"example.com/gpu": "!a100"}).matches(EDGE_LUX)

    def test_can_match_checks_one_key_only(self) -> None:
        selector = LabelSelector.parse({TIER: "in(cloud,hpc)", SITE: "lux-1"})
        assert selector.can_match(TIER, "hpc")
        assert not selector.can_match(TIER, "edge")
        assert selector.can_match(JURISDICTION, "anything")


class TestToRay:
    def test_literals_and_lists_pass_through(self) -> None:
        selector = LabelSelector.parse({TIER: "!edge", JURISDICTION: "in(LU,BE)"})
        assert selector.to_ray() == {TIER: "!edge", JURISDICTION: "in(LU,BE)"}

    def test_glob_expands_over_known_values(self) -> None:
        selector = LabelSelector.parse({SITE: "lux-*"})
        known = {SITE: ["par-1", "lux-2", "lux-1", "lux-2"]}
        assert selector.to_ray(known) == {SITE: "in(lux-1,lux-2)"}

    def test_glob_with_one_match_becomes_a_literal(self) -> None:
        assert LabelSelector.parse({SITE: "!lux-*"}).to_ray({SITE: ["lux-1"]}) == {SITE: "!lux-1"}

    def test_glob_without_known_values_raises_placement_error(self) -> None:
        with pytest.raises(PlacementError, match="known_values") as caught:
            LabelSelector.parse({SITE: "lux-*"}).to_ray()
        assert caught.value.label == SITE

    def test_glob_matching_nothing_raises_and_names_what_is_known(self) -> None:
        with pytest.raises(PlacementError, match=r"matches no known value \(par-1\)"):
            LabelSelector.parse({SITE: "lux-*"}).to_ray({SITE: ["par-1"]})

    def test_negated_glob_matching_nothing_constrains_nothing(self) -> None:
        assert LabelSelector.parse({SITE: "!lux-*"}).to_ray({SITE: ["par-1"]}) == {}


class TestSerialisation:
    def test_selector_round_trips_through_json(self) -> None:
        selector = LabelSelector.parse({TIER: "edge", SITE: "lux-*"})
        assert LabelSelector.model_validate_json(selector.model_dump_json()) == selector

    def test_selector_is_frozen(self) -> None:
        selector = LabelSelector.parse({TIER: "edge"})
        with pytest.raises(ValidationError):
            selector.root = {}

    def test_str_lists_the_expressions(self) -> None:
        assert str(LabelSelector.parse({TIER: "edge", SITE: "lux-*"})) == (
            "continuum.io/tier=edge, continuum.io/site=lux-*"
        )
        assert str(LabelSelector()) == "any node"
