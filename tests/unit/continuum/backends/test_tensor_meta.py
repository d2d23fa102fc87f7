"""TensorMeta spelling and the shared batch check, including TensorRT's batch bound."""

from __future__ import annotations

import numpy as np
import pytest

from continuum.backends import TensorMeta, check_batch
from continuum.errors import InputMismatchError

IMAGE = TensorMeta("input", (None, 1, 8, 8), "float32")


class TestDescribe:
    def test_dynamic_batch_is_spelled_n(self) -> None:
        assert IMAGE.describe() == "float32[N,1,8,8]"

    def test_other_dynamic_axes_are_spelled_question_marks(self) -> None:
        assert TensorMeta("x", (None, None, 3), "float16").describe() == "float16[N,?,3]"

    def test_rank_counts_the_batch_axis(self) -> None:
        assert IMAGE.rank == 4


class TestCheckBatch:
    def test_a_fitting_batch_comes_back_contiguous(self) -> None:
        batch = np.zeros((3, 1, 8, 8), dtype=np.float32)[::-1]

        checked = check_batch(batch, IMAGE)

        assert checked.flags.c_contiguous
        np.testing.assert_array_equal(checked, batch)

    def test_a_batch_up_to_max_batch_passes(self) -> None:
        batch = np.zeros((8, 1, 8, 8), dtype=np.float32)

        assert check_batch(batch, IMAGE, max_batch=8).shape == (8, 1, 8, 8)

    def test_a_batch_over_max_batch_names_the_bound_and_the_fix(self) -> None:
        batch = np.zeros((9, 1, 8, 8), dtype=np.float32)

        with pytest.raises(InputMismatchError) as caught:
            check_batch(batch, IMAGE, max_batch=8)

        assert caught.value.expected == "float32[N,1,8,8] with N<=8"
        assert caught.value.got == "float32[9,1,8,8]"
        assert "split the batch" in str(caught.value)

    def test_dtype_is_checked_after_shape(self) -> None:
        with pytest.raises(InputMismatchError, match="rank 3"):
            check_batch(np.zeros((1, 8, 8), dtype=np.uint8), IMAGE)

    def test_a_dtype_mismatch_says_how_to_convert(self) -> None:
        with pytest.raises(InputMismatchError, match=r"astype\(np.float32\)"):
            check_batch(np.zeros((1, 1, 8, 8), dtype=np.float16), IMAGE)
