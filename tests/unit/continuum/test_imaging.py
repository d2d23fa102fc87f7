"""ImagePrep: values against hand computations, shapes checked at declaration."""

from __future__ import annotations

import numpy as np
import pytest

from continuum.errors import SpecError
from continuum.pipeline import Pipeline
from continuum.select import random as select_random
from continuum.spec import EdgeStageSpec, ImagePrep, PipelineSpec


def rgb(values: list[list[list[int]]]) -> np.ndarray:
    return np.array(values, dtype=np.uint8)


class TestValues:
    def test_identity_prep_scales_and_transposes_to_chw(self) -> None:
        frame = rgb([[[255, 0, 51], [102, 153, 204]]])  # 1x2 RGB
        out = ImagePrep().apply(frame)
        assert out.shape == (3, 1, 2)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out[:, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)
        np.testing.assert_allclose(out[:, 0, 1], [0.4, 0.6, 0.8], atol=1e-6)

    def test_bgr_reverses_channels_and_hwc_keeps_them_last(self) -> None:
        frame = rgb([[[10, 20, 30]]])
        out = ImagePrep(colour="bgr", layout="hwc", scale=1.0).apply(frame)
        assert out.shape == (1, 1, 3)
        np.testing.assert_array_equal(out[0, 0], [30, 20, 10])

    def test_gray_is_bt601_luma(self) -> None:
        frame = rgb([[[100, 200, 50]]])
        out = ImagePrep(colour="gray", scale=1.0).apply(frame)
        # 0.299 * 100 + 0.587 * 200 + 0.114 * 50 = 29.9 + 117.4 + 5.7
        assert out.shape == (1, 1, 1)
        assert out[0, 0, 0] == pytest.approx(153.0, abs=1e-3)

    def test_per_channel_mean_and_std(self) -> None:
        frame = rgb([[[255, 128, 0]]])
        prep = ImagePrep(mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.1), layout="hwc")
        out = prep.apply(frame)[0, 0]
        expected = [(1.0 - 0.5) / 0.5, (128 / 255 - 0.5) / 0.25, (0.0 - 0.5) / 0.1]
        np.testing.assert_allclose(out, expected, atol=1e-6)

    def test_crop_takes_x_y_width_height(self) -> None:
        frame = np.arange(4 * 5, dtype=np.uint8).reshape(4, 5)  # gray HW frame
        out = ImagePrep(crop=(1, 2, 3, 2), colour="gray", scale=1.0).apply(frame)
        np.testing.assert_array_equal(out[0], [[11, 12, 13], [16, 17, 18]])

    def test_area_resize_averages_blocks(self) -> None:
        frame = np.array([[0, 2, 4, 6], [2, 4, 6, 8], [10, 10, 0, 0], [10, 10, 0, 4]], np.uint8)
        out = ImagePrep(resize=(2, 2), colour="gray", scale=1.0).apply(frame)[0]
        np.testing.assert_allclose(out, [[2.0, 6.0], [10.0, 1.0]])

    def test_area_resize_weighs_fractional_boxes(self) -> None:
        # 3 pixels into 2: the first output covers pixel 0 and half of pixel 1.
        frame = np.array([[0, 30, 90]], np.uint8)
        out = ImagePrep(resize=(1, 2), colour="gray", scale=1.0).apply(frame)[0, 0]
        np.testing.assert_allclose(out, [(0 + 15) / 1.5, (15 + 90) / 1.5], rtol=1e-6)

    def test_area_resize_equals_the_box_mean_of_the_upsampled_frame(self) -> None:
        # Repeating every pixel out times makes each output box whole input blocks:
        # their plain mean is the exact area average, for any ratio.
        frame = np.random.default_rng(7).integers(0, 256, (7, 11, 3), dtype=np.uint8)
        up = frame.astype(np.float64).repeat(3, axis=0).repeat(4, axis=1)
        expected = up.reshape(3, 7, 4, 11, 3).mean(axis=(1, 3))
        out = ImagePrep(resize=(3, 4), scale=1.0, layout="hwc").apply(frame)
        np.testing.assert_allclose(out, expected, rtol=1e-5)

    def test_bilinear_upscale_aligns_pixel_centres(self) -> None:
        frame = np.array([[0, 100]], np.uint8)
        out = ImagePrep(resize=(1, 4), resample="bilinear", colour="gray", scale=1.0)
        # Output centres map to source x = -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped 1).
        np.testing.assert_allclose(out.apply(frame)[0, 0], [0.0, 25.0, 75.0, 100.0])

    def test_gray_frame_becomes_three_equal_channels_for_rgb(self) -> None:
        out = ImagePrep(scale=1.0).apply(np.full((2, 2), 7, np.uint8))
        assert out.shape == (3, 2, 2)
        assert (out == 7).all()

    def test_output_dtype_is_the_declared_one(self) -> None:
        out = ImagePrep(dtype="float16", resize=(4, 4)).apply(np.zeros((8, 8, 3), np.uint8))
        assert out.dtype == np.float16
        assert out.flags.c_contiguous


class TestBadFrames:
    def test_four_channel_frame_is_refused_with_the_shapes_it_takes(self) -> None:
        with pytest.raises(ValueError, match=r"HxWx3 RGB"):
            ImagePrep().apply(np.zeros((2, 2, 4), np.uint8))

    def test_crop_outside_the_frame_says_so(self) -> None:
        with pytest.raises(ValueError, match="outside the 4x4 frame"):
            ImagePrep(crop=(2, 0, 4, 4)).apply(np.zeros((4, 4, 3), np.uint8))


class TestDeclaration:
    def test_output_shape_follows_resize_then_crop_then_frame(self) -> None:
        assert ImagePrep(resize=(224, 320)).output_shape() == (3, 224, 320)
        assert ImagePrep(crop=(0, 0, 50, 40), layout="hwc").output_shape() == (40, 50, 3)
        assert ImagePrep(colour="gray").output_shape((8, 8)) == (1, 8, 8)
        with pytest.raises(SpecError, match="resize="):
            ImagePrep().output_shape()

    def test_mean_with_wrong_channel_count_names_the_field(self) -> None:
        with pytest.raises(ValueError, match=r"mean.*2 values for 1 channel"):
            ImagePrep(colour="gray", mean=(0.1, 0.2))

    def test_zero_std_is_refused(self) -> None:
        with pytest.raises(ValueError, match="std"):
            ImagePrep(std=(0.0,))

    def test_integer_output_dtype_is_refused(self) -> None:
        with pytest.raises(ValueError, match="not a float dtype"):
            ImagePrep(dtype="uint8")

    def test_shape_mismatch_names_both_shapes_and_the_fix(self) -> None:
        pipe = Pipeline("cam", tenant="acme", data_class="internal")
        with pytest.raises(SpecError) as caught:
            pipe.edge(model="m", shape=(3, 8, 8), image=ImagePrep(resize=(8, 8), colour="gray"))
        text = str(caught.value)
        assert "edge.image" in text
        assert "(1, 8, 8)" in text and "(3, 8, 8)" in text
        assert "resize=" in text

    def test_dtype_mismatch_is_refused(self) -> None:
        with pytest.raises(ValueError, match="float16 samples, the model input is float32"):
            EdgeStageSpec(
                model="m",
                input={"shape": (3, 4, 4)},
                image=ImagePrep(resize=(4, 4), dtype="float16"),
            )

    def test_spec_with_image_round_trips_through_yaml_and_json(self) -> None:
        pipe = Pipeline("cam", tenant="acme", data_class="internal")
        pipe.edge(
            model="m",
            shape=(1, 8, 8),
            image={"resize": (8, 8), "colour": "gray", "crop": (80, 0, 480, 480)},
        )
        pipe.uplink(select_random(0.1))
        spec = pipe.spec
        assert spec.edge.image == ImagePrep(resize=(8, 8), colour="gray", crop=(80, 0, 480, 480))
        assert PipelineSpec.from_yaml(spec.to_yaml()) == spec
        assert PipelineSpec.from_json(spec.to_json()) == spec
