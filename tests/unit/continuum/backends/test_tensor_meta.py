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


class TestCheckBatchFastPath:
    """The usual batch is accepted by a dtype and tuple comparison; the rest still get the
    full check and its messages."""

    def test_a_fitting_contiguous_batch_comes_back_as_is(self) -> None:
        batch = np.zeros((4, 1, 8, 8), dtype=np.float32)

        assert check_batch(batch, IMAGE) is batch

    def test_a_big_endian_float32_batch_takes_the_full_check_and_passes(self) -> None:
        batch = np.zeros((2, 1, 8, 8), dtype=">f4")

        assert check_batch(batch, IMAGE).shape == (2, 1, 8, 8)

    def test_a_fixed_batch_dimension_is_still_enforced(self) -> None:
        fixed = TensorMeta("input", (1, 1, 8, 8), "float32")

        assert check_batch(np.zeros((1, 1, 8, 8), dtype=np.float32), fixed).shape[0] == 1
        with pytest.raises(InputMismatchError, match="axis 0"):
            check_batch(np.zeros((2, 1, 8, 8), dtype=np.float32), fixed)

    def test_an_empty_batch_is_still_refused(self) -> None:
        with pytest.raises(InputMismatchError, match="empty batch"):
            check_batch(np.zeros((0, 1, 8, 8), dtype=np.float32), IMAGE)

    def test_a_dynamic_inner_dimension_takes_the_full_check(self) -> None:
        ragged = TensorMeta("input", (None, 3, None), "float32")

        assert check_batch(np.zeros((2, 3, 5), dtype=np.float32), ragged).shape == (2, 3, 5)
        with pytest.raises(InputMismatchError, match="axis 1"):
            check_batch(np.zeros((2, 4, 5), dtype=np.float32), ragged)
