"""The agent prepares frames as the pipeline declares: image prep, then the preprocess
function, composed once per pipeline (``edge_agent.runtime._core._preprocess``)."""

from __future__ import annotations

import numpy as np

from continuum import Pipeline, select
from continuum.spec import ImagePrep, PipelineSpec
from edge_agent.runtime._core import _preprocess

PREP = ImagePrep(resize=(2, 2), colour="gray", scale=1.0)


def negate(image: np.ndarray) -> np.ndarray:
    """A preprocess function the test can recognise in the output."""
    return -image


def _spec(*, image: ImagePrep | None, preprocess: bool) -> PipelineSpec:
    pipe = Pipeline("cam", tenant="acme", data_class="internal")
    declare = pipe.edge(model="m", shape=(1, 2, 2), image=image)
    if preprocess:
        declare(negate)
    pipe.uplink(select.random(0.1))
    return pipe.spec


FRAME = np.zeros((4, 4, 3), np.uint8)
FRAME[:2, :2] = 40  # the top-left quarter; its 2x2 block averages to 40


class TestComposition:
    def test_image_prep_alone_makes_the_model_input(self) -> None:
        prepare = _preprocess(_spec(image=PREP, preprocess=False))
        assert prepare is not None
        np.testing.assert_allclose(prepare(FRAME), [[[40.0, 0.0], [0.0, 0.0]]], atol=1e-4)

    def test_the_preprocess_function_gets_the_prepared_image(self) -> None:
        prepare = _preprocess(_spec(image=PREP, preprocess=True))
        assert prepare is not None
        np.testing.assert_allclose(prepare(FRAME), [[[-40.0, 0.0], [0.0, 0.0]]], atol=1e-4)

    def test_without_image_prep_the_function_is_used_as_it_is(self) -> None:
        assert _preprocess(_spec(image=None, preprocess=True)) is negate
        assert _preprocess(_spec(image=None, preprocess=False)) is None
