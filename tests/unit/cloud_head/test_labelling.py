"""Labels by sample id, and the join of samples with labels into a training set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_head.labelling import LabelStore, labelled, to_xy
from cloud_head.store import SampleStore
from continuum.spec import DataClass
from continuum.wire.codec import FeedbackBatch, SampleBatch, SampleRecord

TENANT = "acme"


def make_batch(
    seqs: range | list[int], *, edge_labels: dict[int, int] | None = None
) -> SampleBatch:
    edge_labels = edge_labels or {}
    records = tuple(
        SampleRecord(
            seq=s,
            captured_at_ns=s,
            tensor=np.full((1, 8, 8), s, dtype=np.float32),
            label=edge_labels.get(s),
        )
        for s in seqs
    )
    return SampleBatch("digits", "cam-1", "v1", DataClass.INTERNAL, records)


@pytest.fixture
def labels(tmp_path: Path) -> Iterator[LabelStore]:
    with LabelStore(tmp_path / "labels.db") as store:
        yield store


@pytest.fixture
def samples(tmp_path: Path) -> SampleStore:
    return SampleStore(tmp_path / "samples")


class TestLabelStore:
    def test_feedback_items_become_labels_by_sample_id(self, labels: LabelStore) -> None:
        written = labels.record(
            TENANT, FeedbackBatch("digits", "cam-1", ((4, 1), (5, 2))), ts=100.0
        )
        assert written == 2
        label = labels.get(TENANT, "digits", "cam-1:5")
        assert label is not None
        assert (label.label, label.source, label.ts) == (2, "delayed_feedback", 100.0)
        assert labels.count(TENANT, "digits") == 2

    def test_a_sample_without_a_label_has_none(self, labels: LabelStore) -> None:
        assert labels.get(TENANT, "digits", "cam-1:1") is None

    def test_a_later_label_of_the_same_source_replaces_the_earlier(
        self, labels: LabelStore
    ) -> None:
        labels.put(TENANT, "digits", "cam-1:1", 3, source="delayed_feedback")
        assert labels.put(TENANT, "digits", "cam-1:1", 4, source="delayed_feedback")
        assert labels.labels(TENANT, "digits")["cam-1:1"].label == 4

    def test_a_teacher_guess_does_not_overwrite_ground_truth(self, labels: LabelStore) -> None:
        labels.put(TENANT, "digits", "cam-1:1", 3, source="delayed_feedback")
        assert not labels.put(TENANT, "digits", "cam-1:1", 8, source="teacher")
        assert labels.labels(TENANT, "digits")["cam-1:1"].label == 3

    def test_a_human_correction_overwrites_feedback(self, labels: LabelStore) -> None:
        labels.put(TENANT, "digits", "cam-1:1", 3, source="delayed_feedback")
        assert labels.put(TENANT, "digits", "cam-1:1", 9, source="human")
        assert labels.labels(TENANT, "digits")["cam-1:1"].source == "human"

    def test_labels_are_kept_per_tenant_and_pipeline(self, labels: LabelStore) -> None:
        labels.put(TENANT, "digits", "cam-1:1", 3, source="human")
        assert labels.count("globex", "digits") == 0
        assert labels.count(TENANT, "other") == 0

    def test_an_unknown_source_is_refused(self, labels: LabelStore) -> None:
        with pytest.raises(ValueError, match="source"):
            labels.put(TENANT, "digits", "cam-1:1", 3, source="oracle")  # type: ignore[arg-type]

    def test_labels_survive_reopening(self, tmp_path: Path) -> None:
        with LabelStore(tmp_path / "l.db") as store:
            store.put(TENANT, "digits", "cam-1:1", 3, source="human")
        with LabelStore(tmp_path / "l.db") as store:
            assert store.count(TENANT, "digits") == 1


class TestLabelledJoin:
    def test_labels_that_arrive_before_or_after_their_sample_are_joined(
        self, samples: SampleStore, labels: LabelStore
    ) -> None:
        labels.record(TENANT, FeedbackBatch("digits", "cam-1", ((1, 7),)))  # before
        samples.append(TENANT, make_batch(range(4)))
        samples.flush()
        labels.record(TENANT, FeedbackBatch("digits", "cam-1", ((3, 9),)))  # after
        table = labelled(samples, labels, TENANT, "digits")
        assert table.column("sample_id").to_pylist() == ["cam-1:1", "cam-1:3"]
        assert table.column("label").to_pylist() == [7, 9]
        assert table.column("label_source").to_pylist() == ["delayed_feedback"] * 2

    def test_unlabelled_samples_and_labels_without_samples_are_left_out(
        self, samples: SampleStore, labels: LabelStore
    ) -> None:
        samples.append(TENANT, make_batch(range(2)))
        samples.flush()
        labels.record(TENANT, FeedbackBatch("digits", "cam-1", ((1, 5), (99, 5))))
        assert labelled(samples, labels, TENANT, "digits").column("seq").to_pylist() == [1]

    def test_an_edge_label_counts_unless_the_label_store_has_one(
        self, samples: SampleStore, labels: LabelStore
    ) -> None:
        samples.append(TENANT, make_batch(range(3), edge_labels={0: 1, 1: 1}))
        samples.flush()
        labels.put(TENANT, "digits", "cam-1:1", 6, source="human")
        table = labelled(samples, labels, TENANT, "digits")
        assert table.column("label").to_pylist() == [1, 6]
        assert table.column("label_source").to_pylist() == ["edge", "human"]
        only_store = labelled(samples, labels, TENANT, "digits", edge_labels=False)
        assert only_store.column("seq").to_pylist() == [1]

    def test_to_xy_rebuilds_aligned_arrays(self, samples: SampleStore, labels: LabelStore) -> None:
        samples.append(TENANT, make_batch(range(5)))
        samples.flush()
        labels.record(TENANT, FeedbackBatch("digits", "cam-1", ((4, 0), (2, 8))))
        x, y, ids = to_xy(labelled(samples, labels, TENANT, "digits"))
        assert ids == ["cam-1:2", "cam-1:4"]
        assert x.shape == (2, 1, 8, 8)
        np.testing.assert_array_equal(x[:, 0, 0, 0], [2.0, 4.0])
        np.testing.assert_array_equal(y, [8, 0])

    def test_a_pipeline_without_samples_gives_an_empty_set(
        self, samples: SampleStore, labels: LabelStore
    ) -> None:
        labels.put(TENANT, "digits", "cam-1:1", 6, source="human")
        x, y, ids = to_xy(labelled(samples, labels, TENANT, "digits"), shape=(1, 8, 8))
        assert x.shape == (0, 1, 8, 8) and y.shape == (0,) and ids == []
