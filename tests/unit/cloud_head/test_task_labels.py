"""Labels of every task kind on their way to training: a regression's values travel as
feedback (f64 on the wire), are kept as values, join the samples as a float column and are
trained on; binary and anomaly labels are 0 or 1 whatever the model's output width."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_head._training_data import _usable_labels
from cloud_head.labelling import LabelStore, labelled, to_xy
from cloud_head.store import SampleStore
from continuum import task
from continuum.errors import ProtocolError
from continuum.wire.codec import (
    FeedbackBatch,
    SampleBatch,
    SampleRecord,
    decode_feedback,
    encode_feedback,
    sample_id,
)


class TestFeedbackOnTheWire:
    def test_values_round_trip_as_f64_and_classes_as_before(self) -> None:
        values = FeedbackBatch("rul", "press-7", ((1, 412.5), (2, 17.25)))
        assert decode_feedback(encode_feedback(values)).items == ((1, 412.5), (2, 17.25))
        classes = FeedbackBatch("rul", "press-7", ((1, 3), (2, 0)))
        payload = encode_feedback(classes)
        assert payload[6] == 0  # no flag: a reader of the integer layout reads it as before
        assert decode_feedback(payload).items == ((1, 3), (2, 0))

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_a_value_that_is_no_number_is_refused(self, bad: float) -> None:
        with pytest.raises(ProtocolError, match="finite"):
            encode_feedback(FeedbackBatch("rul", "press-7", ((1, bad),)))

    def test_a_forged_nan_is_refused_on_decode(self) -> None:
        payload = bytearray(encode_feedback(FeedbackBatch("rul", "n", ((1, 2.5),))))
        # Overwrite the f64 with a NaN and fix the CRC as a forger would.
        import struct
        import zlib

        payload[-8:] = struct.pack("<d", float("nan"))
        crc = zlib.crc32(bytes(payload[15:]), zlib.crc32(bytes(payload[:11])))
        payload[11:15] = struct.pack("<I", crc)
        with pytest.raises(ProtocolError, match="finite") as caught:
            decode_feedback(bytes(payload))
        assert caught.value.reason == "bad_value"


def _store_one(store: SampleStore, node: str, seq: int) -> None:
    record = SampleRecord(
        seq=seq,
        captured_at_ns=1_800_000_000_000_000_000 + seq,
        tensor=np.full((3,), float(seq), dtype=np.float32),
        prediction=0,
        confidence=12.0,
    )
    store.append("acme", SampleBatch("rul", node, "v1", "internal", (record,)))
    store.flush()


class TestValuesInTheLabelStore:
    def test_values_are_kept_joined_as_floats_and_rebuilt(self, tmp_path: Path) -> None:
        store = SampleStore(tmp_path / "store")
        labels = LabelStore(tmp_path / "labels.db")
        try:
            for seq in (1, 2):
                _store_one(store, "press-7", seq)
            batch = FeedbackBatch("rul", "press-7", ((1, 412.5), (2, 17.25)))
            assert labels.record("acme", batch) == 2
            assert labels.get("acme", "rul", sample_id("press-7", 1)).label == 412.5
            table = labelled(store, labels, "acme", "rul")
            _, y, _ = to_xy(table, shape=(3,), dtype="float32")
            assert y.dtype == np.float64 and sorted(y.tolist()) == [17.25, 412.5]
        finally:
            labels.close()

    def test_a_value_that_is_no_number_is_refused(self, tmp_path: Path) -> None:
        labels = LabelStore(tmp_path / "labels.db")
        try:
            with pytest.raises(ValueError, match="finite"):
                labels.put("acme", "rul", "press-7:1", float("nan"), source="human")
        finally:
            labels.close()


class TestUsableLabelsFollowTheTask:
    def test_a_binary_models_positives_are_kept_though_it_answers_one_column(self) -> None:
        y = np.array([0, 1, 1, 2, -1])
        ok, dropped = _usable_labels(y, None, task.binary())
        assert ok.tolist() == [True, True, True, False, False] and dropped == 2

    def test_a_regressions_values_are_kept_unless_not_finite(self) -> None:
        y = np.array([412.5, -3.0, np.nan])
        ok, dropped = _usable_labels(y, None, task.regression())
        assert ok.tolist() == [True, True, False] and dropped == 1
