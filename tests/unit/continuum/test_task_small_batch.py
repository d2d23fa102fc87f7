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

    @pytest.mark.parametrize("rows", [1, 4])
    def test_a_wide_output_reads_the_same_by_numpy(
        self, rows: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # An ImageNet model's 1000 classes: numpy even at batch 1 (SMALL_VALUES), as on floats.
        x = np.random.default_rng(rows).dirichlet(np.ones(1000), size=rows).astype(np.float32)
        by_numpy = Classification().read(x)
        monkeypatch.setattr(selection_inputs, "SMALL_VALUES", 10**6)
        monkeypatch.setattr(task_module, "SMALL_VALUES", 10**6)
        on_floats = Classification().read(x)
        assert np.array_equal(by_numpy.score, on_floats.score)
        assert np.array_equal(by_numpy.prediction, on_floats.prediction)
        assert by_numpy.probs is not None and on_floats.probs is not None
        assert np.array_equal(by_numpy.probs.values, on_floats.probs.values)

    def test_ties_pick_the_first_class(self) -> None:
        out = Classification().read(np.full((1, 4), 0.25, dtype=np.float32))
        assert out.prediction.tolist() == [0.0]


class TestAnyOfSkipsIdleLeaves:
    """any_of skips leaves that cannot select in the context (a drift leaf while its detector
    is quiet, mistakes at inference): its picks stay the union of every leaf's picks."""

    @pytest.mark.parametrize("drifted", [False, True])
    @pytest.mark.parametrize("rows", [1, 3, 40])
    def test_union_of_the_leaves(self, drifted: bool, rows: int) -> None:
        from continuum import drift, select
        from continuum.select import SelectionContext

        psi, inputs = drift.psi(0.25), drift.inputs()
        leaves = [
            select.low_confidence(0.7),
            select.drift(psi, rate=0.5),
            select.drift(inputs, rate=0.5),
            select.mistakes(),
            select.random(0.1),
        ]
        policy = select.any_of(*leaves)
        probs = np.random.default_rng(rows).dirichlet(np.ones(10), size=rows)
        out = Classification().read(probs)
        ctx = SelectionContext.for_node(
            "cam-1", range(100, 100 + rows), drifted=frozenset({psi}) if drifted else frozenset()
        )
        kinds = ["low_confidence", "drift", "drift", "mistakes", "random"]

        def picks(leaf: select.Policy) -> np.ndarray:
            return leaf.decide(out, ctx)

        union = np.zeros(rows, dtype=np.bool_)
        for leaf in leaves:
            union |= leaf.decide(out, ctx)
        assert np.array_equal(policy.decide(out, ctx), union)
        assert policy.explain(out, ctx) == [
            next((kind for kind, leaf in zip(kinds, leaves, strict=True) if picks(leaf)[row]), None)
            for row in range(rows)
        ]
        idle = select.any_of(select.drift(inputs), select.mistakes())
        assert idle.decide(out, ctx).tolist() == [False] * rows
