"""Benchmark the sample codec against ``numpy.save`` per tensor: payload size and throughput.

Run: ``python benchmarks/codec.py`` (about 10 s).  The baseline carries the tensor only
(``.npy`` header + data); our payload also carries the batch header and, per record, the
seq, capture time, prediction, confidence, label and a CRC32 of the whole payload.
"""

from __future__ import annotations

import io
import os
import platform
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from continuum.spec import DataClass
from continuum.wire.codec import SampleBatch, SampleRecord, decode_samples, encode_samples

SHAPES: dict[str, tuple[int, ...]] = {
    "1 KiB float32 (256,)": (256,),
    "8x8 digit (1,8,8) f32": (1, 8, 8),
}
BATCH_SIZES = (1, 8, 64)
THROUGHPUT_BATCH = 64
TARGET_S = 0.2  # seconds per timed loop; each measurement takes the best of 5 loops


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


def npy_encode(tensors: Sequence[npt.NDArray[Any]]) -> list[bytes]:
    """Encode each tensor with ``numpy.save`` into its own buffer (the baseline)."""
    payloads = []
    for tensor in tensors:
        buffer = io.BytesIO()
        np.save(buffer, tensor, allow_pickle=False)
        payloads.append(buffer.getvalue())
    return payloads


def npy_decode(payloads: Sequence[bytes]) -> list[npt.NDArray[Any]]:
    """Decode ``.npy`` payloads with ``numpy.load``."""
    return [np.load(io.BytesIO(p), allow_pickle=False) for p in payloads]


def seconds_per_call(fn: Callable[[], object], repeats: int = 5) -> float:
    """Return the best mean time of one call of ``fn`` over ``repeats`` loops of ~TARGET_S."""
    loops, elapsed = 1, 0.0
    while elapsed < TARGET_S / 10:  # calibrate (and warm up)
        loops *= 4
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - start
    loops = max(1, round(loops * TARGET_S / elapsed))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def size_table() -> list[list[str]]:
    """Return rows of payload size and overhead, ours vs. the baseline."""
    rows = []
    for label, shape in SHAPES.items():
        for n in BATCH_SIZES:
            batch = make_batch(shape, n)
            raw = sum(r.tensor.nbytes for r in batch.records)
            ours = len(encode_samples(batch))
            npy = sum(len(p) for p in npy_encode([r.tensor for r in batch.records]))
            rows.append(
                [
                    label,
                    str(n),
                    f"{raw:,}",
                    f"{ours:,}",
                    f"{100 * (ours - raw) / raw:.1f}%",
                    f"{npy:,}",
                    f"{100 * (npy - raw) / raw:.1f}%",
                    f"{ours / npy:.2f}",
                ]
            )
    return rows


def throughput_table() -> list[list[str]]:
    """Return rows of encode/decode throughput, ours vs. the baseline, for one batch size."""
    rows = []
    for label, shape in SHAPES.items():
        batch = make_batch(shape, THROUGHPUT_BATCH)
        tensors = [r.tensor for r in batch.records]
        raw = sum(t.nbytes for t in tensors)
        payload = encode_samples(batch)
        npy_payloads = npy_encode(tensors)
        encode_base_s = seconds_per_call(partial(npy_encode, tensors))
        # np.load returns fresh writable arrays: the like-for-like row is "decode copy=True".
        decode_base_s = seconds_per_call(partial(npy_decode, npy_payloads))
        cases: list[tuple[str, Callable[[], object], float]] = [
            ("encode", partial(encode_samples, batch), encode_base_s),
            ("decode (views)", partial(decode_samples, payload), decode_base_s),
            ("decode copy=True", partial(decode_samples, payload, copy=True), decode_base_s),
        ]
        for op, ours_fn, base_s in cases:
            ours_s = seconds_per_call(ours_fn)
            rows.append(
                [
                    label,
                    op,
                    f"{THROUGHPUT_BATCH / ours_s:,.0f}",
                    f"{raw / ours_s / 1e6:,.0f}",
                    f"{THROUGHPUT_BATCH / base_s:,.0f}",
                    f"{raw / base_s / 1e6:,.0f}",
                    f"{base_s / ours_s:.1f}x",
                ]
            )
    return rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """Print a plain-text table with right-aligned numeric columns."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def main() -> None:
    """Run both tables and print them."""
    started = time.perf_counter()
    print(
        f"continuum codec vs numpy.save per tensor | python {platform.python_version()}, "
        f"numpy {np.__version__}, {platform.machine()}, {os.cpu_count()} CPUs"
    )
    print_table(
        "Payload size (overhead = bytes beyond the raw tensor bytes)",
        ["tensor", "samples", "raw B", "ours B", "ours ovh", "npy B", "npy ovh", "ours/npy"],
        size_table(),
    )
    print_table(
        f"Throughput, batches of {THROUGHPUT_BATCH} samples (MB/s of tensor data; "
        "ratio = ours/baseline, >1 means ours is faster)",
        ["tensor", "op", "ours smp/s", "ours MB/s", "npy smp/s", "npy MB/s", "ratio"],
        throughput_table(),
    )
    print(f"\n(took {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
