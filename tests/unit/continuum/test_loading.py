"""One home for building a declaration (spec, residency policy) from a mapping or YAML."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from continuum._loading import model_from_mapping, model_from_yaml
from continuum.errors import SpecError


class _Window(BaseModel):
    width_px: int = Field(gt=0)


class TestModelFromMapping:
    def test_a_mapping_becomes_the_model(self) -> None:
        assert model_from_mapping(_Window, {"width_px": 3}, kind="a window", fix="x").width_px == 3

    def test_a_list_is_refused_with_the_kind_and_the_fix(self) -> None:
        with pytest.raises(SpecError) as caught:
            model_from_mapping(_Window, [1], kind="a window", fix="start from window.yaml")
        assert "a window is a mapping, got list" in str(caught.value)
        assert caught.value.fix == "start from window.yaml"

    def test_a_bad_field_is_named(self) -> None:
        with pytest.raises(SpecError) as caught:
            model_from_mapping(_Window, {"width_px": 0}, kind="a window", fix="x")
        assert caught.value.field == "width_px"


class TestModelFromYaml:
    def test_yaml_becomes_the_model(self) -> None:
        assert model_from_yaml(_Window, "width_px: 5\n", kind="a window", fix="x").width_px == 5

    def test_broken_yaml_is_refused_with_a_fix(self) -> None:
        with pytest.raises(SpecError) as caught:
            model_from_yaml(_Window, "width_px: [\n", kind="a window", fix="x")
        assert "not valid YAML" in str(caught.value)
        assert caught.value.fix == "fix the YAML syntax"

    def test_yaml_that_is_not_a_mapping_is_refused(self) -> None:
        with pytest.raises(SpecError, match="a window is a mapping, got str"):
            model_from_yaml(_Window, "just text\n", kind="a window", fix="x")
