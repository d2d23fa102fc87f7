"""A few rows are read on Python floats (the edge's batch-1 path): the same outputs as the
numpy path for probabilities, logits, one-hot rows, ties, NaN and infinities."""

from __future__ import annotations

import numpy as np
import pytest

import continuum._selection_inputs as selection_inputs
import continuum.task as task_module
from continuum.errors import InputMismatchError
from continuum.task import Classification, TaskOutputs


def _read_both(
    x: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> tuple[TaskOutputs | str, TaskOutputs | str]:
    task = Classification()
    results: list[TaskOutputs | str] = []
    for small in (selection_inputs.SMALL_BATCH, 0):
        monkeypatch.setattr(selection_inputs, "SMALL_BATCH", small)
        monkeypatch.setattr(task_module, "SMALL_BATCH", small)
        try:
            results.append(task.read(x))
        except InputMismatchError as exc:
            results.append(exc.args[0])
    return results[0], results[1]


def _cases() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    cases: list[np.ndarray] = []
    for trial in range(400):
        rows, classes = int(rng.integers(1, 5)), int(rng.integers(2, 12))
        x = rng.random((rows, classes))
        kind = trial % 4
        if kind == 0:
            x = x / x.sum(axis=1, keepdims=True)
        elif kind == 1:
            x = (x / x.sum(axis=1, keepdims=True)).astype(np.float32)
        elif kind == 2:
            x = np.eye(classes)[rng.integers(0, classes, rows)].astype(np.float32)
        else:
            x = x * 3.0 - 1.0  # logits
        cases.append(x)
    cases.append(np.full((2, 4), 0.25, dtype=np.float32))  # ties: the first class wins
    nan = np.full((1, 3), 1 / 3)
    nan[0, 1] = np.nan
    inf = np.full((1, 3), 1 / 3, dtype=np.float32)
    inf[0, 2] = np.inf
    cases += [nan, inf]
    return cases


class TestSmallBatchRead:
    @pytest.mark.parametrize("x", _cases())
    def test_same_as_numpy_path(self, x: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
        small, wide = _read_both(x, monkeypatch)
        if isinstance(small, str) or isinstance(wide, str):
            assert small == wide
            return
        assert np.array_equal(small.score, wide.score)
        assert np.array_equal(small.prediction, wide.prediction)
        assert small.probs is not None and wide.probs is not None
        assert np.array_equal(small.probs.values, wide.probs.values)
        assert small.prediction.dtype == np.float64
        for array in (small.score, small.prediction, small.probs.values):
            assert not array.flags.writeable

    def test_ties_pick_the_first_class(self) -> None:
        out = Classification().read(np.full((1, 4), 0.25, dtype=np.float32))
        assert out.prediction.tolist() == [0.0]
