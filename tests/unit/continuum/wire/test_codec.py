"""The binary codec of sample and feedback batches: round trips, size, and every rejection."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from continuum.errors import ProtocolError
from continuum.spec import DataClass
from continuum.wire import codec
from continuum.wire.codec import (
    MAX_PAYLOAD_BYTES,
    MAX_RECORDS,
    FeedbackBatch,
    SampleBatch,
    SampleRecord,
    decode_feedback,
    decode_samples,
    encode_feedback,
    encode_samples,
)
from continuum.wire.topics import NAME_PATTERN

# The frame header as the format documents it, written out again here so that a change to the
# layout in codec.py has to be made on purpose in two places.
HEADER = struct.Struct("<4sBBBII")
# Body offsets of the first record in a batch built by `short_batch` (pipeline "p", node "n",
# version "v1"): data class 1 + (1+1) + (1+1) + (1+2) + count 4 = 12.
FIRST_RECORD = 12
# Within that record (no label, narrow prediction): flags 0, seq 1, captured_at 9,
# prediction 17, confidence 19, dtype 23, ndim 24, dims 25.
DTYPE_AT = FIRST_RECORD + 23
NDIM_AT = FIRST_RECORD + 24
DIMS_AT = FIRST_RECORD + 25


def record(
    seq: int = 1,
    tensor: np.ndarray[Any, Any] | None = None,
    *,
    prediction: int = 3,
    confidence: float = 0.75,
    label: int | None = None,
) -> SampleRecord:
    if tensor is None:
        tensor = np.arange(256, dtype=np.float32) / 256
    return SampleRecord(
        seq=seq,
        captured_at_ns=1_700_000_000_000_000_000 + seq,
        tensor=tensor,
        prediction=prediction,
        confidence=confidence,
        label=label,
    )


def batch(*records: SampleRecord, data_class: DataClass = DataClass.CONFIDENTIAL) -> SampleBatch:
    return SampleBatch(
        pipeline="line-7-inspection",
        node="cam-lux1-a",
        model_version="v12",
        data_class=data_class,
        records=records,
    )


def short_batch(*records: SampleRecord) -> SampleBatch:
    return SampleBatch("p", "n", "v1", DataClass.PUBLIC, records)


def reframe(payload: bytes, change: Callable[[bytearray], None]) -> bytes:
    """Change the body of a valid payload, then fix its length and CRC so only the body is bad."""
    magic, version, kind, flags, _, _ = HEADER.unpack_from(payload)
    body = bytearray(payload[HEADER.size :])
    change(body)
    prefix = HEADER.pack(magic, version, kind, flags, len(body), 0)[: HEADER.size - 4]
    crc = zlib.crc32(bytes(body), zlib.crc32(prefix))
    return prefix + struct.pack("<I", crc) + bytes(body)


def poke(at: int, value: bytes) -> Callable[[bytearray], None]:
    def change(body: bytearray) -> None:
        body[at : at + len(value)] = value

    return change


def rejected(payload: bytes, decode: Callable[[bytes], object] = decode_samples) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(payload)
    return info.value


class TestSampleRoundTrip:
    def test_one_float32_sample_comes_back_field_for_field(self) -> None:
        original = batch(record(seq=42, prediction=7, confidence=0.5, label=7))
        decoded = decode_samples(encode_samples(original))
        (got,) = decoded.records
        assert decoded.pipeline == "line-7-inspection"
        assert decoded.node == "cam-lux1-a"
        assert decoded.model_version == "v12"
        assert decoded.data_class is DataClass.CONFIDENTIAL
        assert (got.seq, got.prediction, got.confidence, got.label) == (42, 7, 0.5, 7)
        assert got.captured_at_ns == 1_700_000_000_000_000_042
        assert got.tensor.dtype == np.float32
        np.testing.assert_array_equal(got.tensor, original.records[0].tensor)
        assert decoded == original

    def test_unknown_confidence_and_missing_label_survive(self) -> None:
        decoded = decode_samples(encode_samples(batch(record(confidence=math.nan, label=None))))
        assert math.isnan(decoded.records[0].confidence)
        assert decoded.records[0].label is None

    @pytest.mark.parametrize("dtype", sorted({d.name for d in codec.DTYPE_CODES}))
    def test_every_wire_dtype_round_trips(self, dtype: str) -> None:
        tensor = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
        decoded = decode_samples(encode_samples(batch(record(tensor=tensor))))
        assert decoded.records[0].tensor.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(decoded.records[0].tensor, tensor)

    def test_big_endian_and_strided_tensors_arrive_as_little_endian_c_contiguous(self) -> None:
        source = np.arange(64, dtype=">f8").reshape(8, 8)
        strided = source[::2, 1::3]
        decoded = decode_samples(encode_samples(batch(record(tensor=strided))))
        tensor = decoded.records[0].tensor
        assert tensor.dtype.str == "<f8"
        assert tensor.flags.c_contiguous
        np.testing.assert_array_equal(tensor, strided)

    @pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1, 1, 1, 1, 1, 1, 1, 1)])
    def test_scalar_empty_and_eight_dimensional_tensors_round_trip(
        self, shape: tuple[int, ...]
    ) -> None:
        tensor = np.ones(shape, dtype=np.int16)
        decoded = decode_samples(encode_samples(batch(record(tensor=tensor))))
        assert decoded.records[0].tensor.shape == shape

    @pytest.mark.parametrize("prediction", [-1, 0, 32_767, -32_768, 32_768, 2**31 - 1, -(2**31)])
    def test_small_and_wide_predictions_round_trip(self, prediction: int) -> None:
        decoded = decode_samples(encode_samples(batch(record(prediction=prediction))))
        assert decoded.records[0].prediction == prediction

    def test_a_batch_keeps_its_records_in_order(self) -> None:
        records = [record(seq=s, tensor=np.full((1, 8, 8), s, np.float32)) for s in range(50)]
        decoded = decode_samples(encode_samples(batch(*records)))
        assert [r.seq for r in decoded.records] == list(range(50))
        assert [float(r.tensor[0, 0, 0]) for r in decoded.records] == [float(s) for s in range(50)]

    def test_an_empty_batch_round_trips(self) -> None:
        assert decode_samples(encode_samples(batch())).records == ()

    @pytest.mark.parametrize("data_class", list(DataClass))
    def test_every_data_class_round_trips(self, data_class: DataClass) -> None:
        assert decode_samples(encode_samples(batch(data_class=data_class))).data_class is data_class

    def test_sample_id_is_node_and_seq(self) -> None:
        sample_batch = batch(record(seq=981))
        assert sample_batch.sample_id(sample_batch.records[0]) == "cam-lux1-a:981"
        assert codec.sample_id("cam-lux1-a", 981) == "cam-lux1-a:981"


class TestDecodedTensors:
    def test_are_read_only_views_by_default(self) -> None:
        tensor = decode_samples(encode_samples(batch(record()))).records[0].tensor
        assert not tensor.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            tensor[0] = 1.0

    def test_do_not_share_memory_with_each_other(self) -> None:
        first, second = decode_samples(encode_samples(batch(record(1), record(2)))).records
        assert not np.shares_memory(first.tensor, second.tensor)

    def test_are_writable_copies_when_asked(self) -> None:
        payload = encode_samples(batch(record()))
        tensor = decode_samples(payload, copy=True).records[0].tensor
        tensor[0] = 99.0
        assert tensor.flags.writeable
        assert decode_samples(payload).records[0].tensor[0] == 0.0

    def test_do_not_follow_later_changes_to_a_mutable_payload_buffer(self) -> None:
        buffer = bytearray(encode_samples(batch(record())))
        tensor = decode_samples(buffer).records[0].tensor  # type: ignore[arg-type]
        buffer[-4:] = b"\x00\x00\x00\x00"
        assert tensor[-1] == np.float32(255 / 256)


class TestOverhead:
    """The header must stay small next to the tensor it carries (DESIGN.md §5)."""

    @staticmethod
    def overhead(payload: bytes, raw_bytes: int) -> float:
        return (len(payload) - raw_bytes) / raw_bytes

    def test_one_kib_float32_sample_costs_under_ten_percent(self) -> None:
        payload = encode_samples(batch(record(tensor=np.zeros(256, np.float32))))
        assert self.overhead(payload, 1024) < 0.10

    def test_one_kib_sample_with_label_and_three_dims_costs_under_ten_percent(self) -> None:
        payload = encode_samples(batch(record(tensor=np.zeros((1, 16, 16), np.float32), label=3)))
        assert self.overhead(payload, 1024) < 0.10

    def test_batching_spreads_the_batch_header_over_the_samples(self) -> None:
        one = encode_samples(batch(record()))
        sixty_four = encode_samples(batch(*(record(seq=s) for s in range(64))))
        assert self.overhead(sixty_four, 64 * 1024) < self.overhead(one, 1024) / 2


class TestRecordEquality:
    def test_nan_confidences_are_equal(self) -> None:
        assert record(confidence=math.nan) == record(confidence=math.nan)

    def test_a_different_tensor_byte_makes_records_differ(self) -> None:
        tensor = np.zeros(4, np.uint8)
        other = tensor.copy()
        other[2] = 1
        assert record(tensor=tensor) != record(tensor=other)

    def test_the_same_values_in_either_byte_order_are_equal(self) -> None:
        values = np.arange(4, dtype="<i4")
        assert record(tensor=values) == record(tensor=values.astype(">i4"))

    def test_records_are_not_hashable(self) -> None:
        with pytest.raises(TypeError):
            hash(record())


class TestFrameRejection:
    def test_empty_payload_is_truncated(self) -> None:
        assert rejected(b"").reason == "truncated"

    @pytest.mark.parametrize("payload", [b'{"seq": 1}', b"\x93NUMPY", b"CTMX" + b"\x00" * 20])
    def test_foreign_bytes_have_bad_magic(self, payload: bytes) -> None:
        error = rejected(payload)
        assert error.reason == "bad_magic"
        assert "not a continuum payload" in str(error)

    def test_a_future_format_version_is_unsupported(self) -> None:
        payload = bytearray(encode_samples(batch(record())))
        payload[4] = 2
        error = rejected(bytes(payload))
        assert error.reason == "unsupported_version"
        assert "format version 2" in str(error)

    def test_a_feedback_batch_is_not_a_sample_batch(self) -> None:
        payload = encode_feedback(FeedbackBatch("p", "n", ((1, 2),)))
        error = rejected(payload)
        assert error.reason == "bad_kind"
        assert "expected a sample batch" in str(error)
        assert "feedback batch" in str(error)

    def test_a_sample_batch_is_not_a_feedback_batch(self) -> None:
        error = rejected(encode_samples(batch()), decode_feedback)
        assert error.reason == "bad_kind"

    def test_unknown_frame_flags_are_rejected(self) -> None:
        payload = bytearray(encode_samples(batch(record())))
        payload[6] = 0x80
        assert rejected(bytes(payload)).reason == "bad_flags"

    @pytest.mark.parametrize("keep", [3, 10, 14, 15, 16, 100, -1])
    def test_every_truncation_is_reported_as_truncated(self, keep: int) -> None:
        payload = encode_samples(batch(record()))
        error = rejected(payload[:keep])
        assert error.reason == "truncated"

    def test_trailing_bytes_are_rejected(self) -> None:
        error = rejected(encode_samples(batch(record())) + b"\x00")
        assert error.reason == "trailing_bytes"
        assert "1 trailing bytes" in str(error)

    @pytest.mark.parametrize("at", [15, 40, 200, -1])
    def test_a_flipped_bit_fails_the_crc(self, at: int) -> None:
        payload = bytearray(encode_samples(batch(record())))
        payload[at] ^= 0x10
        error = rejected(bytes(payload))
        assert error.reason == "corrupt"
        assert "CRC32" in str(error)

    def test_a_payload_over_the_cap_is_too_large_before_anything_is_parsed(self) -> None:
        error = rejected(codec.MAGIC + bytes(MAX_PAYLOAD_BYTES))
        assert error.reason == "too_large"

    def test_a_header_declaring_a_body_over_the_cap_is_too_large(self) -> None:
        header = HEADER.pack(codec.MAGIC, 1, codec.KIND_SAMPLES, 0, MAX_PAYLOAD_BYTES, 0)
        assert rejected(header).reason == "too_large"


class TestBodyRejection:
    """Bodies with a valid CRC but contents the encoder would never write."""

    @pytest.fixture
    def payload(self) -> bytes:
        return encode_samples(short_batch(record(tensor=np.zeros(4, np.float32))))

    def test_the_fixture_decodes_at_the_offsets_these_tests_use(self, payload: bytes) -> None:
        body = payload[HEADER.size :]
        assert body[DTYPE_AT] == codec.DTYPE_CODES[np.dtype(np.float32)]
        assert body[NDIM_AT] == 1
        assert struct.unpack_from("<I", body, DIMS_AT) == (4,)
        assert decode_samples(reframe(payload, lambda body: None)).records[0].seq == 1

    @pytest.mark.parametrize(
        ("change", "reason", "words"),
        [
            (poke(0, b"\x09"), "bad_data_class", "data class code 9"),
            (poke(2, b"P"), "bad_name", "invalid pipeline name 'P'"),
            (poke(4, b"+"), "bad_name", "invalid node name '+'"),
            (poke(4, b"\xff"), "bad_name", "not ASCII"),
            (poke(1, b"\x00"), "bad_name", "invalid pipeline name ''"),
            (poke(8, struct.pack("<I", MAX_RECORDS + 1)), "too_large", "MAX_RECORDS"),
            (poke(8, struct.pack("<I", 2)), "truncated", "record 1"),
            (poke(FIRST_RECORD, b"\x08"), "bad_flags", "record 0: unknown flag bits"),
            (poke(FIRST_RECORD, b"\x04"), "truncated", "record 0"),
            (poke(DTYPE_AT, b"\x00"), "bad_dtype", "dtype code 0"),
            (poke(DTYPE_AT, b"\x63"), "bad_dtype", "dtype code 99"),
            (poke(NDIM_AT, b"\x09"), "bad_shape", "ndim 9"),
            (poke(DIMS_AT, struct.pack("<I", 5)), "bad_shape", "needs 20 bytes, only 16 left"),
            (poke(DIMS_AT, struct.pack("<I", 3)), "trailing_bytes", "4 trailing bytes"),
            (poke(DIMS_AT, struct.pack("<I", 2**32 - 1)), "too_large", "MAX_PAYLOAD_BYTES"),
            (lambda body: body.extend(b"\x00"), "trailing_bytes", "after the last record"),
            (lambda body: body.__delitem__(slice(10, None)), "truncated", "batch header"),
        ],
    )
    def test_inconsistent_bodies_are_rejected_with_a_reason_and_a_clear_message(
        self, payload: bytes, change: Callable[[bytearray], None], reason: str, words: str
    ) -> None:
        error = rejected(reframe(payload, change))
        assert error.reason == reason
        assert words in str(error)

    def test_an_absurd_shape_of_zero_elements_is_too_large(self) -> None:
        payload = encode_samples(short_batch(record(tensor=np.zeros((0, 1, 1), np.float32))))
        huge = struct.pack("<III", 0, 2**31, 2**31)
        assert rejected(reframe(payload, poke(DIMS_AT, huge))).reason == "too_large"

    def test_every_reason_raised_is_a_documented_reason(self) -> None:
        assert {"truncated", "corrupt", "bad_magic", "too_large", "bad_dtype"} <= codec.REASONS


class TestEncodeRejection:
    @pytest.mark.parametrize(
        ("sample_batch", "reason", "words"),
        [
            (SampleBatch("Line7", "n", "v1", DataClass.PUBLIC, ()), "bad_name", "pipeline"),
            (SampleBatch("p", "cam/#", "v1", DataClass.PUBLIC, ()), "bad_name", "node"),
            (SampleBatch("p", "n", "", DataClass.PUBLIC, ()), "bad_name", "version"),
            (
                SampleBatch("p", "n", "v1", "secret", ()),  # type: ignore[arg-type]
                "bad_data_class",
                "unknown data class 'secret'",
            ),
            (
                short_batch(record(tensor=np.zeros(2, np.complex64))),
                "bad_dtype",
                "complex64 has no wire code",
            ),
            (
                short_batch(record(tensor=np.array(["a"], dtype=object))),
                "bad_dtype",
                "no wire code",
            ),
            (short_batch(record(tensor=[1.0, 2.0])), "bad_dtype", "numpy array"),  # type: ignore[arg-type]
            (short_batch(record(tensor=np.zeros((1,) * 9))), "bad_shape", "ndim 9"),
            (short_batch(record(seq=-1)), "bad_value", "seq must be an integer"),
            (short_batch(record(seq=2**64)), "bad_value", "seq must be"),
            (short_batch(record(seq=1.5)), "bad_value", "record 0"),  # type: ignore[arg-type]
            (short_batch(record(prediction=2**31)), "bad_value", "prediction"),
            (short_batch(record(label=-(2**31) - 1)), "bad_value", "label"),
            (short_batch(record(confidence=1e39)), "bad_value", "record 0"),
            (
                short_batch(record(tensor=np.zeros(MAX_PAYLOAD_BYTES // 4 + 1, np.float32))),
                "too_large",
                "MAX_PAYLOAD_BYTES",
            ),
            (
                short_batch(
                    *(record(s, np.zeros(MAX_PAYLOAD_BYTES // 8, np.uint8)) for s in range(9))
                ),
                "too_large",
                "at record 7",
            ),
        ],
    )
    def test_encode_refuses_what_decode_would_reject(
        self, sample_batch: SampleBatch, reason: str, words: str
    ) -> None:
        with pytest.raises(ProtocolError) as info:
            encode_samples(sample_batch)
        assert info.value.reason == reason
        assert words in str(info.value)

    def test_the_largest_payload_encode_allows_is_one_decode_accepts(self) -> None:
        # frame header 15 + batch header 12 + record fields 29 (one dimension) + tensor bytes
        largest = MAX_PAYLOAD_BYTES - 15 - 12 - 29
        payload = encode_samples(short_batch(record(tensor=np.zeros(largest, np.uint8))))
        assert len(payload) == MAX_PAYLOAD_BYTES
        assert decode_samples(payload).records[0].tensor.nbytes == largest
        with pytest.raises(ProtocolError, match="MAX_PAYLOAD_BYTES") as info:
            encode_samples(short_batch(record(tensor=np.zeros(largest + 1, np.uint8))))
        assert info.value.reason == "too_large"

    def test_encode_refuses_more_than_max_records(self) -> None:
        tiny = record(tensor=np.zeros(0, np.uint8))
        with pytest.raises(ProtocolError, match="MAX_RECORDS") as info:
            encode_samples(short_batch(*([tiny] * (MAX_RECORDS + 1))))
        assert info.value.reason == "too_large"

    def test_a_data_class_given_as_its_string_value_is_accepted(self) -> None:
        sample_batch = SampleBatch("p", "n", "v1", "restricted", ())  # type: ignore[arg-type]
        assert decode_samples(encode_samples(sample_batch)).data_class is DataClass.RESTRICTED


class TestFeedback:
    def test_items_round_trip_in_order(self) -> None:
        items = ((1, 4), (2**64 - 1, -(2**31)), (7, 2**31 - 1), (7, 0))
        original = FeedbackBatch("line-7-inspection", "cam-lux1-a", items)
        assert decode_feedback(encode_feedback(original)) == original

    def test_an_empty_feedback_batch_round_trips(self) -> None:
        original = FeedbackBatch("p", "n", ())
        assert decode_feedback(encode_feedback(original)) == original

    def test_each_item_costs_twelve_bytes(self) -> None:
        one = encode_feedback(FeedbackBatch("p", "n", ((1, 1),)))
        two = encode_feedback(FeedbackBatch("p", "n", ((1, 1), (2, 2))))
        assert len(two) - len(one) == 12

    @pytest.mark.parametrize(
        ("feedback", "reason", "words"),
        [
            (FeedbackBatch("p", "n", ((-1, 0),)), "bad_value", "feedback item 0: seq"),
            (FeedbackBatch("p", "n", ((1, 1), (2, 2**31))), "bad_value", "feedback item 1: label"),
            (FeedbackBatch("p", "n#", ()), "bad_name", "node"),
            (FeedbackBatch("p", "n", ((0, 0),) * (MAX_RECORDS + 1)), "too_large", "MAX_RECORDS"),
        ],
    )
    def test_encode_rejects_bad_feedback(
        self, feedback: FeedbackBatch, reason: str, words: str
    ) -> None:
        with pytest.raises(ProtocolError) as info:
            encode_feedback(feedback)
        assert info.value.reason == reason
        assert words in str(info.value)

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            # body: pipeline (1+1), node (1+1), count at 4, items from 8
            (poke(4, struct.pack("<I", 3)), "truncated"),
            (poke(4, struct.pack("<I", 1)), "trailing_bytes"),
            (poke(4, struct.pack("<I", MAX_RECORDS + 1)), "too_large"),
            (poke(2, b"\xc8"), "truncated"),
            (poke(1, b"/"), "bad_name"),
        ],
    )
    def test_decode_rejects_inconsistent_feedback_bodies(
        self, change: Callable[[bytearray], None], reason: str
    ) -> None:
        payload = encode_feedback(FeedbackBatch("p", "n", ((1, 2), (3, 4))))
        assert rejected(reframe(payload, change), decode_feedback).reason == reason


class TestFields:
    FIELDS = {"iban": "LU28 0019 4006 4475 0000", "operator": "Zoë", "face": b"\x89PNG\x00\xff"}

    def test_text_and_bytes_fields_round_trip_beside_the_tensor(self) -> None:
        sent = batch(record(1), replace(record(2), fields=self.FIELDS), record(3, label=4))
        got = decode_samples(encode_samples(sent))
        assert got == sent
        assert dict(got.records[1].fields) == self.FIELDS
        assert isinstance(got.records[1].fields["face"], bytes)
        assert got.records[0].fields == {} and got.records[2].fields == {}

    def test_a_record_without_fields_costs_nothing_more(self) -> None:
        plain = encode_samples(short_batch(record()))
        assert len(plain) == len(encode_samples(short_batch(replace(record(), fields={}))))
        with_one = encode_samples(short_batch(replace(record(), fields={"a": "x"})))
        # count 1 + name (1+1) + type 1 + length 4 + value 1
        assert len(with_one) - len(plain) == 9

    def test_records_differing_only_in_fields_are_not_equal(self) -> None:
        assert record() != replace(record(), fields={"a": "x"})

    def test_the_field_section_helpers_round_trip(self) -> None:
        assert dict(codec.decode_fields(codec.encode_fields(self.FIELDS))) == self.FIELDS
        assert codec.encode_fields({}) == b"" and codec.decode_fields(b"") == {}

    @pytest.mark.parametrize(
        ("fields", "reason", "words"),
        [
            ({"IBAN": "x"}, "bad_name", "invalid field name 'IBAN'"),
            ({"": "x"}, "bad_name", "invalid field name ''"),
            ({"a" * 65: "x"}, "bad_name", "invalid field name"),
            ({"amount": 12.5}, "bad_value", "stringify numbers"),
            ({"name": "\ud800"}, "bad_value", "not valid text"),
            ({"crop": b"x" * (codec.MAX_FIELD_BYTES + 1)}, "too_large", "MAX_FIELD_BYTES"),
            ({f"f{i}": "x" for i in range(codec.MAX_FIELDS + 1)}, "too_large", "MAX_FIELDS"),
        ],
    )
    def test_encode_refuses_fields_the_wire_cannot_carry(
        self, fields: dict[str, Any], reason: str, words: str
    ) -> None:
        with pytest.raises(ProtocolError) as info:
            encode_samples(short_batch(replace(record(), fields=fields)))
        assert info.value.reason == reason
        assert words in str(info.value)

    @pytest.fixture
    def payload(self) -> bytes:
        return encode_samples(
            short_batch(replace(record(tensor=np.zeros(4, np.float32)), fields={"a": "xy"}))
        )

    # The field section starts after the 16 tensor bytes: dims end at DIMS_AT + 4.
    SECTION = DIMS_AT + 4 + 16

    @pytest.mark.parametrize(
        ("change", "reason", "words"),
        [
            (poke(SECTION, b"\x00"), "bad_value", "field count 0"),
            (poke(SECTION, b"\x41"), "too_large", "MAX_FIELDS"),
            (poke(SECTION, b"\x02"), "truncated", "record 0"),
            (poke(SECTION + 2, b"A"), "bad_name", "invalid field name 'A'"),
            (poke(SECTION + 3, b"\x07"), "bad_value", "unknown type code 7"),
            (poke(SECTION + 4, struct.pack("<I", 3)), "truncated", "record 0"),
            (poke(SECTION + 4, struct.pack("<I", 1)), "trailing_bytes", "after the last record"),
            (poke(SECTION + 4, struct.pack("<I", 2**31)), "too_large", "MAX_FIELD_BYTES"),
            (poke(SECTION + 8, b"\xff"), "bad_value", "not valid UTF-8"),
            (lambda body: body.__delitem__(slice(-3, None)), "truncated", "record 0"),
        ],
    )
    def test_decode_rejects_damaged_field_sections_with_a_reason(
        self, payload: bytes, change: Callable[[bytearray], None], reason: str, words: str
    ) -> None:
        error = rejected(reframe(payload, change))
        assert error.reason == reason
        assert words in str(error)

    def test_repeated_or_unsorted_names_are_rejected(self) -> None:
        section = codec.encode_fields({"a": "1", "b": "2"})
        swapped = section[:1] + section[9:] + section[1:9]  # each field is 8 bytes here
        with pytest.raises(ProtocolError) as info:
            codec.decode_fields(swapped)
        assert info.value.reason == "bad_name"
        assert "repeated or out of order" in str(info.value)


# ---- property-based tests -------------------------------------------------------------------

names = st.from_regex(NAME_PATTERN, fullmatch=True)
wire_dtypes = st.sampled_from(
    [*codec.DTYPE_CODES, *(d.newbyteorder(">") for d in codec.DTYPE_CODES if d.itemsize > 1)]
)
tensors = wire_dtypes.flatmap(
    lambda dtype: hnp.arrays(
        dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
    )
)
records = st.builds(
    SampleRecord,
    seq=st.integers(0, 2**64 - 1),
    captured_at_ns=st.integers(-(2**63), 2**63 - 1),
    tensor=tensors,
    prediction=st.integers(-(2**31), 2**31 - 1),
    confidence=st.floats(width=32, allow_nan=True, allow_infinity=True),
    label=st.none() | st.integers(-(2**31), 2**31 - 1),
)
field_values = st.text(max_size=40) | st.binary(max_size=40)
records_with_fields = st.builds(
    SampleRecord,
    seq=st.integers(0, 2**64 - 1),
    captured_at_ns=st.integers(-(2**63), 2**63 - 1),
    tensor=tensors,
    label=st.none() | st.integers(-(2**31), 2**31 - 1),
    fields=st.dictionaries(names, field_values, max_size=5),
)
sample_batches = st.builds(
    SampleBatch,
    pipeline=names,
    node=names,
    model_version=names,
    data_class=st.sampled_from(DataClass),
    records=st.lists(records | records_with_fields, max_size=6).map(tuple),
)
feedback_batches = st.builds(
    FeedbackBatch,
    pipeline=names,
    node=names,
    items=st.lists(
        st.tuples(st.integers(0, 2**64 - 1), st.integers(-(2**31), 2**31 - 1)), max_size=20
    ).map(tuple),
)
fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_protocol_error(payload: bytes, decode: Callable[[bytes], object]) -> None:
    try:
        decode(payload)
    except ProtocolError as error:
        assert error.reason in codec.REASONS


class TestProperties:
    @fuzz
    @given(sample_batches)
    def test_valid_sample_batches_round_trip_exactly(self, original: SampleBatch) -> None:
        decoded = decode_samples(encode_samples(original))
        assert decoded == original
        for got, sent in zip(decoded.records, original.records, strict=True):
            assert got.tensor.dtype == sent.tensor.dtype.newbyteorder("<")

    @fuzz
    @given(feedback_batches)
    def test_valid_feedback_batches_round_trip_exactly(self, original: FeedbackBatch) -> None:
        assert decode_feedback(encode_feedback(original)) == original

    @fuzz
    @given(st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: codec.MAGIC + b))
    def test_random_bytes_only_ever_raise_protocol_error(self, payload: bytes) -> None:
        decodes_or_protocol_error(payload, decode_samples)
        decodes_or_protocol_error(payload, decode_feedback)

    @fuzz
    @given(sample_batches, st.data())
    def test_bit_flips_and_truncations_are_always_rejected(
        self, original: SampleBatch, data: st.DataObject
    ) -> None:
        payload = encode_samples(original)
        cut = data.draw(st.integers(0, len(payload) - 1), label="cut")
        with pytest.raises(ProtocolError):
            decode_samples(payload[:cut])
        flipped = bytearray(payload)
        bit = data.draw(st.integers(0, 8 * len(payload) - 1), label="bit")
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ProtocolError):
            decode_samples(bytes(flipped))

    @fuzz
    @given(sample_batches, st.data())
    def test_body_mutations_behind_a_valid_crc_never_raise_anything_else(
        self, original: SampleBatch, data: st.DataObject
    ) -> None:
        payload = encode_samples(original)
        body_len = len(payload) - HEADER.size
        at = data.draw(st.integers(0, body_len), label="at")
        junk = data.draw(st.binary(min_size=0, max_size=8), label="junk")
        drop = data.draw(st.integers(0, 8), label="drop")

        def mutate(body: bytearray) -> None:
            body[at : at + drop] = junk

        decodes_or_protocol_error(reframe(payload, mutate), decode_samples)

    @fuzz
    @given(st.dictionaries(names, field_values, min_size=1, max_size=5), st.data())
    def test_damaged_field_sections_only_ever_raise_protocol_error(
        self, fields: dict[str, str | bytes], data: st.DataObject
    ) -> None:
        section = codec.encode_fields(fields)
        assert dict(codec.decode_fields(section)) == fields
        cut = data.draw(st.integers(0, len(section) - 1), label="cut")
        with pytest.raises(ProtocolError):
            codec.decode_fields(section[:cut] if cut else b"\x01")
        at = data.draw(st.integers(0, len(section)), label="at")
        junk = data.draw(st.binary(min_size=1, max_size=8), label="junk")
        damaged = bytearray(section)
        damaged[at : at + len(junk)] = junk
        try:
            codec.decode_fields(bytes(damaged))
        except ProtocolError as error:
            assert error.reason in codec.REASONS

    @fuzz
    @given(feedback_batches, st.data())
    def test_damaged_feedback_never_raises_anything_but_protocol_error(
        self, original: FeedbackBatch, data: st.DataObject
    ) -> None:
        payload = encode_feedback(original)
        at = data.draw(st.integers(0, len(payload) - HEADER.size), label="at")
        junk = data.draw(st.binary(max_size=8), label="junk")
        decodes_or_protocol_error(reframe(payload, poke(at, junk)), decode_feedback)
        decodes_or_protocol_error(
            payload[: data.draw(st.integers(0, len(payload)))], decode_feedback
        )


@st.composite
def uniform_batches(draw: st.DrawFn) -> SampleBatch:
    """Batches an edge uplink sends: one dtype and shape, labels on all records or none;
    predictions narrow, wide or mixed (a mixed batch is not one layout)."""
    dtype = draw(wire_dtypes)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
    labelled = draw(st.booleans())
    predictions = draw(
        st.sampled_from(
            [
                st.integers(-(2**15), 2**15 - 1),
                st.integers(2**15, 2**31 - 1),
                st.integers(-(2**31), 2**31 - 1),
            ]
        )
    )
    count = draw(st.integers(1, 8))
    return SampleBatch(
        pipeline="p",
        node="n",
        model_version="v1",
        data_class=DataClass.INTERNAL,
        records=tuple(
            SampleRecord(
                seq=draw(st.integers(0, 2**64 - 1)),
                captured_at_ns=draw(st.integers(-(2**63), 2**63 - 1)),
                tensor=draw(hnp.arrays(dtype, shape)),
                prediction=draw(predictions),
                confidence=draw(st.floats(width=32, allow_nan=False)),
                label=draw(st.integers(-(2**31), 2**31 - 1)) if labelled else None,
            )
            for _ in range(count)
        ),
    )


def record_by_record(original: SampleBatch) -> bytes:
    """``encode_samples`` as it packs a batch whose records do not share one layout."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec, "_uniform_records", lambda records: None)
        return encode_samples(original)


class TestUniformEncoding:
    """A batch of one layout is packed as one array: the same bytes as record by record."""

    @fuzz
    @given(uniform_batches() | sample_batches)
    def test_the_bytes_are_those_of_the_record_path(self, original: SampleBatch) -> None:
        payload = encode_samples(original)
        assert payload == record_by_record(original)
        assert decode_samples(payload) == original

    def test_a_batch_of_one_layout_takes_the_array_path(self) -> None:
        records = (record(1), record(2, label=4), record(3))
        assert codec._uniform_records(records[::2]) is not None
        assert codec._uniform_records(records) is None  # labelled and not: two layouts

    @pytest.mark.parametrize(
        ("bad", "message"),
        [
            ({"seq": -1}, "seq"),
            ({"seq": 1.5}, "seq"),
            ({"prediction": 2**31}, "prediction"),
            ({"confidence": 1e39}, "record 1"),
            ({"confidence": "high"}, "record 1"),
        ],
    )
    def test_a_bad_value_in_a_uniform_batch_is_named_as_by_the_record_path(
        self, bad: dict[str, Any], message: str
    ) -> None:
        good = record(1)
        wrong = replace(record(2), **bad)
        with pytest.raises(ProtocolError, match=message) as info:
            encode_samples(short_batch(good, wrong))
        assert "record 1" in str(info.value)

    @pytest.mark.parametrize("uniform", [True, False])
    def test_a_body_past_the_join_threshold_frames_alike(self, uniform: bool) -> None:
        # 64 RGB frames of 32x32 float32 (786 KiB): CRC taken part by part, joined once.
        rng = np.random.default_rng(7)
        records = tuple(
            record(seq, rng.standard_normal((3, 32, 32)).astype(np.float32), label=seq % 2)
            for seq in range(64)
        )
        if not uniform:
            records = (*records[:-1], replace(records[-1], label=None))
        original = batch(*records)
        payload = encode_samples(original)
        assert len(payload) > 2 * 128 * 1024
        assert payload == record_by_record(original)
        assert decode_samples(payload) == original
        body = payload[HEADER.size :]
        assert struct.unpack_from("<I", payload, HEADER.size - 4)[0] == zlib.crc32(
            body, zlib.crc32(payload[: HEADER.size - 4])
        )
