"""``single_runs`` answers a group's receipts at once: it must name what ``seq_runs`` names."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cloud_head.ingest._service import single_runs
from cloud_head.seen import MAX_SEQ, seq_runs

_SEQS = st.lists(st.integers(0, 40), max_size=12)


@given(st.lists(_SEQS, max_size=8), st.sampled_from([np.int64, np.uint64]))
def test_a_batch_is_one_run_exactly_when_seq_runs_finds_one_ascending_run(
    batches: list[list[int]], dtype: type[np.generic]
) -> None:
    arrays = [np.array(b, dtype=dtype) for b in batches]
    for values, span in zip(batches, single_runs(arrays), strict=True):
        ascending_run = bool(values) and values == list(range(values[0], values[0] + len(values)))
        if ascending_run:
            assert span == (values[0], values[-1])
            assert [span] == seq_runs(np.array(values, dtype=np.int64))
        else:
            assert span is None


def test_runs_do_not_join_across_batches_and_keep_the_highest_seq() -> None:
    top = np.array([MAX_SEQ - 1, MAX_SEQ], dtype=np.uint64)
    assert single_runs([np.array([1, 2], dtype=np.uint64), np.array([3, 5]), top]) == [
        (1, 2),
        None,
        (MAX_SEQ - 1, MAX_SEQ),
    ]
    assert single_runs([]) == []
    assert single_runs([np.zeros(0, dtype=np.uint64)]) == [None]
