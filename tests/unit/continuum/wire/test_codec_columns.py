"""Decoding sample batches as columns: the same records as ``decode_samples``, in bulk."""

from __future__ import annotations

import math

import numpy as np
import pytest

from continuum.errors import InputMismatchError, ProtocolError
from continuum.spec import DataClass
from continuum.wire import _layout, codec
from continuum.wire.codec import (
    KIND_SAMPLES,
    SampleBatch,
    SampleRecord,
    decode_sample_columns,
    decode_samples,
    encode_samples,
)

SHAPE = (1, 8, 8)


def record(seq: int, **changes: object) -> SampleRecord:
    values: dict[str, object] = {
        "seq": seq,
        "captured_at_ns": 1_000 + seq,
        "tensor": np.arange(64, dtype=np.float32).reshape(SHAPE) + seq,
        "prediction": seq % 10,
        "confidence": 0.25,
    }
    values.update(changes)
    return SampleRecord(**values)  # type: ignore[arg-type]


def payload(*records: SampleRecord) -> bytes:
    return encode_samples(SampleBatch("digits", "cam-1", "v1", DataClass.INTERNAL, records))


def columns(data: bytes) -> codec.SampleColumns:
    return decode_sample_columns(data, dtype="float32", shape=SHAPE)


class TestSameRecordsAsDecodeSamples:
    def test_a_uniform_batch_decodes_to_the_same_records_as_views(self) -> None:
        data = payload(*(record(s) for s in range(5)))
        cols = columns(data)
        assert cols.records() == decode_samples(data).records
        assert cols.sample_ids() == [f"cam-1:{s}" for s in range(5)]
        assert cols.tensors.shape == (5, *SHAPE)
        assert not cols.tensors.flags.writeable  # a view into the payload, not a copy
        assert cols.fields is None

    @pytest.mark.parametrize(
        "odd",
        [
            {"label": 3},
            {"prediction": 100_000},
            {"confidence": math.nan},
            {"fields": {"operator": "ann"}},
        ],
        ids=["label", "wide-prediction", "nan", "fields"],
    )
    def test_a_batch_of_mixed_records_decodes_to_the_same_records(
        self, odd: dict[str, object]
    ) -> None:
        data = payload(record(0), record(1, **odd), record(2))
        assert columns(data).records() == decode_samples(data).records

    def test_every_record_labelled_keeps_every_label(self) -> None:
        data = payload(*(record(s, label=s * 2) for s in range(4)))
        cols = columns(data)
        assert cols.has_label.all()
        assert cols.label.tolist() == [0, 2, 4, 6]

    def test_take_keeps_the_chosen_records_in_order(self) -> None:
        data = payload(record(0, fields={"a": "x"}), record(1), record(2, fields={"a": "z"}))
        taken = columns(data).take([2, 0])
        assert taken.records() == (decode_samples(data).records[2], decode_samples(data).records[0])


class TestRejects:
    def test_a_tensor_off_the_layout_names_the_first_such_sample(self) -> None:
        data = payload(record(0), record(1, tensor=np.zeros((8, 8), np.float32)), record(2))
        with pytest.raises(InputMismatchError) as caught:
            columns(data)
        assert str(caught.value) == "sample cam-1:1: expected float32[1, 8, 8], got float32[8, 8]"

    @pytest.mark.parametrize(
        ("tensor", "got"),
        [
            (np.zeros((8, 1, 8), np.float32), "float32[8, 1, 8]"),  # same size, other dims
            (np.zeros(SHAPE, np.int32), "int32[1, 8, 8]"),  # same size, other dtype
        ],
    )
    def test_a_record_of_the_same_size_but_another_layout_is_a_mismatch(
        self, tensor: np.ndarray, got: str
    ) -> None:
        data = payload(record(0), record(1), record(2, tensor=tensor))
        with pytest.raises(InputMismatchError) as caught:
            columns(data)
        assert str(caught.value) == f"sample cam-1:2: expected float32[1, 8, 8], got {got}"

    def test_a_wrong_dtype_is_a_mismatch(self) -> None:
        with pytest.raises(InputMismatchError, match="got float64"):
            columns(payload(record(0, tensor=np.zeros(SHAPE, np.float64))))

    @pytest.mark.parametrize("extra", [-1, 1])
    def test_a_record_count_that_lies_is_rejected_like_decode_samples(self, extra: int) -> None:
        data = payload(*(record(s) for s in range(3)))
        body = bytearray(data[15:])
        count_at = 1 + 1 + len("digits") + 1 + len("cam-1") + 1 + len("v1")
        body[count_at : count_at + 4] = (3 + extra).to_bytes(4, "little")
        forged = _layout.frame(KIND_SAMPLES, bytes(body))
        with pytest.raises(ProtocolError) as expected:
            decode_samples(forged)
        with pytest.raises(ProtocolError) as got:
            columns(forged)
        assert got.value.reason == expected.value.reason

    def test_an_unknown_record_flag_is_rejected_like_decode_samples(self) -> None:
        data = bytearray(payload(*(record(s) for s in range(3))))
        first_record = 15 + 1 + 1 + len("digits") + 1 + len("cam-1") + 1 + len("v1") + 4
        data[first_record] = 0x80
        forged = _layout.frame(KIND_SAMPLES, bytes(data[15:]))
        with pytest.raises(ProtocolError) as got:
            columns(forged)
        assert got.value.reason == "bad_flags"
