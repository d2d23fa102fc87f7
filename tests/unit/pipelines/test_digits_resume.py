"""A digits training cut short resumes after its last epoch and ends where an uninterrupted
one would (``fit``'s ``on_epoch``/``resume``, the state ``EpochProgress`` saves)."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.digits.data import load_splits
from pipelines.digits.train import SCRATCH, fit


class _CutError(Exception):
    """The allocation ended."""


def _saved(state: dict[str, Any]) -> dict[str, Any]:
    """Return ``state`` after the trip through ``torch.save``/``weights_only`` load it takes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, map_location="cpu", weights_only=True)
    return loaded


def test_a_run_cut_after_an_epoch_resumes_to_the_uninterrupted_weights() -> None:
    splits = load_splits(0)
    x, y = splits.train_x[:192], splits.train_y[:192]
    recipe = replace(SCRATCH, epochs=4, augment=("shift",))
    whole = fit(x, y, recipe=recipe, seed=3)

    kept: dict[str, Any] = {}

    def cut_after_second(epoch: int, state: Any) -> None:
        if epoch == 1:
            kept.update(_saved({**state(), "epoch": epoch}))
            raise _CutError

    with pytest.raises(_CutError):
        fit(x, y, recipe=recipe, seed=3, on_epoch=cut_after_second)
    assert kept["epoch"] == 1
    epochs_run: list[int] = []
    resumed = fit(
        x, y, recipe=recipe, seed=3, resume=kept, on_epoch=lambda e, _: epochs_run.append(e)
    )
    assert epochs_run == [2, 3]  # only the epochs the cut run had not done
    for name, value in whole.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[name].numpy(), value.numpy(), atol=1e-6)


def test_resuming_from_another_runs_state_differs_from_starting_over() -> None:
    # Resume must be used, not ignored: another seed's state after its first epoch changes
    # the outcome of the second.
    splits = load_splits(0)
    x, y = splits.train_x[:128], splits.train_y[:128]
    recipe = replace(SCRATCH, epochs=2, augment=())
    kept: dict[str, Any] = {}

    def keep_first(epoch: int, state: Any) -> None:
        if epoch == 0:
            kept.update({**state(), "epoch": epoch})

    fit(x, y, recipe=recipe, seed=9, on_epoch=keep_first)
    other = fit(x, y, recipe=recipe, seed=3, resume=kept)
    plain = fit(x, y, recipe=recipe, seed=3)
    differs = any(
        not torch.allclose(other.state_dict()[k], v) for k, v in plain.state_dict().items()
    )
    assert differs
