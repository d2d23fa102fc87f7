"""The digits camera faults and sensor jitter: per-image draws, determinism, shape and range."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.digits.data import load_splits
from pipelines.digits.faults import (
    AUGMENTATIONS,
    AUGMENTED_KINDS,
    DRIFT_KINDS,
    NOVELTY,
    apply_drift,
    augmented_kinds,
    site_condition,
)

#: A readout flipped right to left is the same flip on every frame: no random part to draw.
WITHOUT_RANDOM_PARTS = {"mirror"}


def images(n: int = 32) -> np.ndarray:
    return load_splits().test_x[:n]


class TestFaultKinds:
    def test_there_are_the_eight_old_kinds_and_at_least_six_new_ones(self) -> None:
        old = {
            "blur",
            "contrast",
            "blur_contrast",
            "rotation",
            "inversion",
            "noise",
            "occlusion",
            "brightness",
        }
        assert old <= set(DRIFT_KINDS)
        assert len(set(DRIFT_KINDS) - old) >= 6

    @pytest.mark.parametrize("kind", DRIFT_KINDS)
    def test_each_kind_keeps_shape_dtype_and_unit_range(self, kind: str) -> None:
        x = images()
        for severity in (0.5, 1.0, 2.0):
            out = apply_drift(x, kind, severity, np.random.default_rng(0))
            assert out.shape == x.shape and out.dtype == np.float32
            assert out.min() >= 0.0 and out.max() <= 1.0

    @pytest.mark.parametrize("kind", sorted(set(DRIFT_KINDS) - WITHOUT_RANDOM_PARTS))
    def test_each_kind_draws_its_fault_per_image(self, kind: str) -> None:
        same = np.repeat(images(1), 16, axis=0)
        out = apply_drift(same, kind, 1.0, np.random.default_rng(0))
        distinct = {o.tobytes() for o in out}
        assert len(distinct) >= 8, f"{kind}: {len(distinct)} distinct images out of 16"

    @pytest.mark.parametrize("kind", DRIFT_KINDS)
    def test_each_kind_is_deterministic_given_the_generator(self, kind: str) -> None:
        x = images()
        a = apply_drift(x, kind, 1.0, np.random.default_rng(5))
        b = apply_drift(x, kind, 1.0, np.random.default_rng(5))
        np.testing.assert_array_equal(a, b)

    @pytest.mark.parametrize("kind", DRIFT_KINDS)
    def test_severity_zero_is_the_identity(self, kind: str) -> None:
        x = images()
        np.testing.assert_array_equal(apply_drift(x, kind, 0.0, np.random.default_rng(1)), x)

    @pytest.mark.parametrize("kind", DRIFT_KINDS)
    def test_a_stronger_fault_changes_the_images_more(self, kind: str) -> None:
        x = images(64)
        change = [
            np.abs(apply_drift(x, kind, s, np.random.default_rng(2)) - x).mean()
            for s in (0.25, 1.0)
        ]
        assert change[1] > 0.03 and change[1] > change[0]

    def test_an_empty_batch_passes_through(self) -> None:
        empty = np.zeros((0, 1, 8, 8), dtype=np.float32)
        assert apply_drift(empty, "rotation").shape == (0, 1, 8, 8)


class TestSiteCondition:
    def test_clean_frames_are_jittered_but_stay_close_to_the_image(self) -> None:
        x = images(64)
        out = site_condition(x, None, rng=np.random.default_rng(0))
        assert out.shape == x.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert not np.array_equal(out, x)
        # Each jittered frame is still nearest to its own image among the batch.
        distance = ((out[:, None] - x[None]) ** 2).sum(axis=(2, 3, 4))
        assert (distance.argmin(axis=1) == np.arange(len(x))).mean() >= 0.85

    def test_the_same_image_never_comes_out_twice(self) -> None:
        same = np.repeat(images(1), 500, axis=0)
        for kind in (None, "mirror", "inversion"):
            out = site_condition(same, kind, rng=np.random.default_rng(3))
            assert len({o.tobytes() for o in out}) == 500, kind

    def test_it_is_deterministic_given_the_generator_and_applies_the_fault(self) -> None:
        x = images()
        a = site_condition(x, "inversion", rng=np.random.default_rng(4))
        b = site_condition(x, "inversion", rng=np.random.default_rng(4))
        np.testing.assert_array_equal(a, b)
        assert a.mean() > 0.6 > x.mean()

    def test_an_unknown_kind_is_refused_naming_the_known_ones(self) -> None:
        with pytest.raises(ValueError, match="motion_blur"):
            site_condition(images(2), "fog")

    def test_novelty_says_how_frames_differ(self) -> None:
        assert "per-frame fault draws" in NOVELTY and "0.5 px" in NOVELTY


class TestAugmentedKinds:
    def test_each_augmentation_covers_the_fault_of_its_name(self) -> None:
        assert augmented_kinds(["noise"]) == ("noise",)
        assert "blur_contrast" in augmented_kinds(AUGMENTATIONS)
        assert "blur_contrast" not in augmented_kinds(["blur"])

    def test_the_default_leaves_kinds_it_never_trained_for(self) -> None:
        unseen = set(DRIFT_KINDS) - set(AUGMENTED_KINDS)
        assert {"mirror", "rotation", "dead_pixels", "gamma"} <= unseen

    def test_an_unknown_augmentation_is_refused(self) -> None:
        with pytest.raises(ValueError, match="choose from shift"):
            augmented_kinds(["fog"])
