"""The digits trainer's declared augmentation and its Ray Train config."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from continuum.errors import ConfigError
from pipelines.digits.augment import augment_batch, check_augment
from pipelines.digits.data import load_splits
from pipelines.digits.faults import AUGMENTATIONS, DEFAULT_AUGMENT
from pipelines.digits.train import FINE_TUNE, SCRATCH, Recipe, recipe_for


def batch(n: int = 64) -> torch.Tensor:
    return torch.from_numpy(load_splits().train_x[:n])


class TestAugmentBatch:
    @pytest.mark.parametrize("name", AUGMENTATIONS)
    def test_each_augmentation_changes_the_batch_and_keeps_shape_and_range(self, name: str) -> None:
        x = batch()
        out = augment_batch(x, [name], torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        changed = (out - x).abs().amax(dim=(1, 2, 3)) > 1e-4
        assert float(changed.float().mean()) >= 0.2

    def test_the_same_generator_gives_the_same_batch_and_another_does_not(self) -> None:
        x = batch()
        a = augment_batch(x, AUGMENTATIONS, torch.Generator().manual_seed(1))
        b = augment_batch(x, AUGMENTATIONS, torch.Generator().manual_seed(1))
        c = augment_batch(x, AUGMENTATIONS, torch.Generator().manual_seed(2))
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_no_augmentation_leaves_the_batch_alone(self) -> None:
        x = batch()
        assert torch.equal(augment_batch(x, [], torch.Generator().manual_seed(0)), x)

    def test_an_unknown_name_is_refused_naming_the_known_ones(self) -> None:
        with pytest.raises(ConfigError, match=r"'fog'.*choose from shift, noise"):
            augment_batch(batch(4), ["shift", "fog"], torch.Generator())

    def test_a_bare_string_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="list of names"):
            check_augment("shift")


class TestRecipeAugment:
    def test_the_default_is_the_chosen_set_in_the_trainer_order(self) -> None:
        assert Recipe().augment == DEFAULT_AUGMENT
        assert Recipe(augment=("noise", "shift")).augment == ("shift", "noise")

    def test_an_unknown_augmentation_in_a_recipe_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="unknown augmentation"):
            Recipe(augment=("rotate",))


class TestTrainerConfig:
    def test_a_base_model_picks_the_fine_tune_recipe_else_scratch(self) -> None:
        assert recipe_for({"base_model": "/models/1/model.pt"}) == FINE_TUNE
        assert recipe_for({"base_model": None, "epochs": None}) == SCRATCH

    def test_options_override_the_recipe(self) -> None:
        recipe = recipe_for({"epochs": 3, "lr": 0.01, "oversample": 2, "augment": ["noise"]})
        assert recipe == replace(SCRATCH, epochs=3, lr=0.01, oversample=2, augment=("noise",))
        assert recipe_for({"augment": []}).augment == ()

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ({"epochs": 0}, "epochs"),
            ({"epochs": 2.5}, "whole number"),
            ({"lr": "fast"}, "lr"),
            ({"oversample": True}, "oversample"),
            ({"augment": "shift"}, "list of names"),
            ({"augment": ["shift", "sharpen"]}, "sharpen"),
            ({"augmnet": ["noise"]}, "unknown key.*augmnet"),
        ],
    )
    def test_bad_values_are_refused_with_the_key(
        self, config: dict[str, object], message: str
    ) -> None:
        with pytest.raises(ConfigError, match=message):
            recipe_for(config)
