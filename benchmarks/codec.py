"""Benchmark the sample codec against a stacked ``.npy``, Arrow IPC and safetensors.

Run: ``python benchmarks/codec.py`` (about a minute; ``--json PATH`` writes the result).

Every format carries the same batch with the same metadata: the batch header (pipeline, node,
model version, data class) and per sample its seq, capture time, prediction and confidence.
Ours also carries a CRC32 of the whole payload; none of the others checks its bytes.

- stacked npy: one ``np.save`` of the stacked tensors ``(n, *shape)``, after a length-prefixed
  JSON of the metadata (columns as lists);
- Arrow IPC: one record batch (uint64/int64/int32/float64 columns and a fixed-size-list tensor
  column), the batch header as schema metadata, written as an IPC stream;
- safetensors: the stacked tensors and one array per metadata column, the batch header as
  its ``__metadata__``.

Encoding starts from what an edge agent holds, a ``SampleBatch`` of records (the baselines
pay for stacking it into columns); decoding ends with columns (``decode_sample_columns`` for
ours: one array per field, tensors as one ``(n, *shape)`` view).  Throughput is measured on
batches of 64, each case timed for ~0.1 s per round, the cases alternated within each round.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import _harness as harness
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import safetensors.numpy

from continuum.spec import DataClass
from continuum.wire.codec import (
    SampleBatch,
    SampleRecord,
    decode_sample_columns,
    encode_samples,
)

SHAPES: dict[str, tuple[int, ...]] = {
    "1 KiB f32 (256,)": (256,),
    "8x8 digit f32": (1, 8, 8),
    "32x32 RGB f32": (3, 32, 32),
}
BATCH_SIZES = (1, 8, 64)
THROUGHPUT_BATCH = 64
VERDICT_SHAPE = "8x8 digit f32"
TARGET_S = 0.1  # seconds per timed loop


def make_batch(shape: tuple[int, ...], n: int, seed: int = 0) -> SampleBatch:
    """Return a batch of ``n`` random float32 samples with realistic names and metadata."""
    rng = np.random.default_rng(seed)
    records = tuple(
        SampleRecord(
            seq=1_000_000 + i,
            captured_at_ns=time.time_ns(),
            tensor=rng.random(shape, dtype=np.float32),
            prediction=int(rng.integers(10)),
            confidence=float(rng.random()),
        )
        for i in range(n)
    )
    return SampleBatch("line-7-inspection", "cam-lux1-a", "v12", DataClass.CONFIDENTIAL, records)


def _header(batch: SampleBatch) -> dict[str, str]:
    return {
        "pipeline": batch.pipeline,
        "node": batch.node,
        "model_version": batch.model_version,
        "data_class": batch.data_class.value,
    }


def _columns(batch: SampleBatch) -> dict[str, npt.NDArray[Any]]:
    records = batch.records
    return {
        "seq": np.fromiter((r.seq for r in records), np.uint64, len(records)),
        "captured_at_ns": np.fromiter((r.captured_at_ns for r in records), np.int64, len(records)),
        "prediction": np.fromiter((r.prediction for r in records), np.int32, len(records)),
        "confidence": np.fromiter((r.confidence for r in records), np.float64, len(records)),
        "tensor": np.stack([r.tensor for r in records]),
    }


# -- the baselines: encode from a SampleBatch, decode to columns -----------------------------


def npy_encode(batch: SampleBatch) -> bytes:
    """A length-prefixed JSON of the metadata, then one ``np.save`` of the stacked tensors."""
    cols = _columns(batch)
    meta = {"header": _header(batch)} | {k: v.tolist() for k, v in cols.items() if k != "tensor"}
    head = json.dumps(meta).encode()
    buffer = io.BytesIO()
    buffer.write(struct.pack("<I", len(head)))
    buffer.write(head)
    np.save(buffer, cols["tensor"], allow_pickle=False)
    return buffer.getvalue()


def npy_decode(payload: bytes) -> dict[str, Any]:
    """Read the metadata JSON and the stacked tensors back as columns."""
    (size,) = struct.unpack_from("<I", payload)
    meta = json.loads(payload[4 : 4 + size])
    out: dict[str, Any] = {"header": meta.pop("header")}
    dtypes = {"seq": np.uint64, "captured_at_ns": np.int64, "prediction": np.int32}
    for key, values in meta.items():
        out[key] = np.asarray(values, dtype=dtypes.get(key, np.float64))
    out["tensor"] = np.load(io.BytesIO(payload[4 + size :]), allow_pickle=False)
    return out


def arrow_encode(batch: SampleBatch) -> bytes:
    """One Arrow record batch (tensor as a fixed-size list), written as an IPC stream."""
    cols = _columns(batch)
    tensor = cols.pop("tensor")
    width = int(np.prod(tensor.shape[1:]))
    arrays = [pa.array(v) for v in cols.values()]
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(tensor.reshape(-1)), width))
    schema = pa.schema(
        [pa.field(k, a.type) for k, a in zip([*cols, "tensor"], arrays, strict=True)],
        metadata=_header(batch) | {"shape": json.dumps(tensor.shape[1:])},
    )
    record = pa.RecordBatch.from_arrays(arrays, schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(record)
    return bytes(sink.getvalue())


def arrow_decode(payload: bytes) -> dict[str, Any]:
    """Read the IPC stream back; columns as numpy views where Arrow allows."""
    reader = pa.ipc.open_stream(payload)
    record = reader.read_next_batch()
    meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
    shape = tuple(json.loads(meta.pop("shape")))
    out: dict[str, Any] = {"header": meta}
    for name in ("seq", "captured_at_ns", "prediction", "confidence"):
        out[name] = record.column(name).to_numpy()
    flat = record.column("tensor").values.to_numpy()
    out["tensor"] = flat.reshape(len(record), *shape)
    return out


def safetensors_encode(batch: SampleBatch) -> bytes:
    """The stacked tensors and one array per metadata column; the header as metadata."""
    return bytes(safetensors.numpy.save(_columns(batch), metadata=_header(batch)))


def safetensors_decode(payload: bytes) -> dict[str, Any]:
    """Load the arrays and parse the header's ``__metadata__`` (``load`` does not return it)."""
    (size,) = struct.unpack_from("<Q", payload)
    out: dict[str, Any] = dict(safetensors.numpy.load(payload))
    out["header"] = json.loads(payload[8 : 8 + size])["__metadata__"]
    return out


def ours_decode(payload: bytes, shape: tuple[int, ...]) -> Any:
    """Our columnar decode (what ingest does)."""
    return decode_sample_columns(payload, dtype=np.float32, shape=shape)


FORMATS: dict[str, tuple[Callable[[SampleBatch], bytes], Callable[..., Any]]] = {
    "ours": (encode_samples, ours_decode),
    "stacked npy": (npy_encode, lambda p, s: npy_decode(p)),
    "arrow ipc": (arrow_encode, lambda p, s: arrow_decode(p)),
    "safetensors": (safetensors_encode, lambda p, s: safetensors_decode(p)),
}


def check_round_trip(shape: tuple[int, ...]) -> None:
    """Every format returns the same tensors and metadata it was given (or the run stops)."""
    batch = make_batch(shape, 8)
    cols = _columns(batch)
    for name, (encode, decode) in FORMATS.items():
        back = decode(encode(batch), shape)
        tensors = back.tensors if name == "ours" else back["tensor"]
        seqs = back.seq if name == "ours" else back["seq"]
        if not (np.array_equal(tensors, cols["tensor"]) and np.array_equal(seqs, cols["seq"])):
            raise RuntimeError(f"{name} did not round-trip the batch of {shape}")


def samples_per_s(fn: Callable[[], object], n: int) -> float:
    """Return samples per second of ``fn`` (a batch of ``n``), timed over ~TARGET_S."""
    loops, elapsed = 1, 0.0
    while elapsed < TARGET_S / 10:  # calibrate (and warm up)
        loops *= 4
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - start
    loops = max(1, round(loops * TARGET_S / elapsed))
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    return n * loops / (time.perf_counter() - start)


def size_rows(report: harness.Report) -> list[list[str]]:
    """Return rows of payload bytes per format, and record them as cases."""
    rows = []
    for label, shape in SHAPES.items():
        for n in BATCH_SIZES:
            batch = make_batch(shape, n)
            raw = sum(r.tensor.nbytes for r in batch.records)
            sizes = {name: len(encode(batch)) for name, (encode, _) in FORMATS.items()}
            for name, size in sizes.items():
                report.case(f"size {name} {label} x{n}", [size], "bytes", raw=raw)
            rows.append(
                [label, str(n), f"{raw:,}"]
                + [f"{s:,} (+{100 * (s - raw) / raw:.0f}%)" for s in sizes.values()]
            )
    return rows


def throughput(rounds: int) -> dict[str, list[float]]:
    """Encode and decode samples/s of every format and shape, alternated within rounds."""
    cases: dict[str, Callable[[], float]] = {}
    for label, shape in SHAPES.items():
        batch = make_batch(shape, THROUGHPUT_BATCH)
        for name, (encode, decode) in FORMATS.items():
            payload = encode(batch)
            cases[f"{name} encode {label}"] = partial(
                samples_per_s, partial(encode, batch), THROUGHPUT_BATCH
            )
            cases[f"{name} decode {label}"] = partial(
                samples_per_s, partial(decode, payload, shape), THROUGHPUT_BATCH
            )
    return harness.alternate(
        cases, rounds, on_round=lambda r, v: print(f"  round {r + 1} done", flush=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_arguments(parser, rounds=5)
    args = parser.parse_args()
    report = harness.Report("codec")
    for shape in SHAPES.values():
        check_round_trip(shape)
    names = list(FORMATS)
    harness.print_table(
        "Payload bytes (in brackets: beyond the raw tensor bytes)",
        ["tensor", "samples", "raw B", *names],
        size_rows(report),
    )
    values = throughput(args.rounds)
    rows = []
    for label in SHAPES:
        for op in ("encode", "decode"):
            spreads = {
                name: report.case(f"{name} {op} {label}", values[f"{name} {op} {label}"], "smp/s")
                for name in names
            }
            rows.append([label, op] + [spreads[name].fmt(",.0f") for name in names])
    harness.print_table(
        f"Samples/s, batches of {THROUGHPUT_BATCH} (median over rounds, min-max)",
        ["tensor", "op", *names],
        rows,
    )
    digit = make_batch(SHAPES[VERDICT_SHAPE], THROUGHPUT_BATCH)
    ours_size = len(encode_samples(digit))
    for name in names[1:]:
        size = len(FORMATS[name][0](digit))
        report.verdict(
            harness.at_most(f"bytes ours / {name}, {VERDICT_SHAPE} x64", ours_size / size, 1.0)
        )
        for op in ("encode", "decode"):
            report.verdict(
                harness.at_least(
                    f"{op} ours / {name}, {VERDICT_SHAPE} x64",
                    harness.ratios(
                        values[f"ours {op} {VERDICT_SHAPE}"], values[f"{name} {op} {VERDICT_SHAPE}"]
                    ),
                    1.0,
                    "x",
                )
            )
    report.finish(args.json)


if __name__ == "__main__":
    main()
