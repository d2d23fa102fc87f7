"""What a selection policy decides on: class probabilities and one seed per sample.

``Probabilities`` checks a model's outputs once; ``SelectionContext`` carries the seeds and
the drift verdicts; ``splitmix64`` and ``below_rate`` turn a seed into a reproducible random
pick.  ``continuum.select`` is their public home.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from continuum.drift import Detector
from continuum.errors import InputMismatchError

__all__ = [
    "PROBS_ATOL",
    "SMALL_BATCH",
    "SMALL_VALUES",
    "Mask",
    "Probabilities",
    "Probs",
    "Reasons",
    "ScoreHistory",
    "Seeds",
    "SelectionContext",
    "below_rate",
    "check_probs",
    "seed_from_id",
    "splitmix64",
]

#: How far a row of ``probs`` may sum from 1 (float16/float32 softmax rounding).
PROBS_ATOL = 1e-3
#: Up to this many rows, outputs are checked and read on Python floats rather than numpy
#: arrays: an edge at batch 1 pays per numpy call (several microseconds each right after a
#: model run), not per element.
SMALL_BATCH = 4
#: ... and up to this many values in all: Python floats cost per element, so a wide output
#: (an ImageNet model's 1000 classes) is read faster by numpy even at batch 1 (measured:
#: 111 us against 15 us for one 1000-class row; 13 us against 22 us for one 10-class row).
#: ``continuum.task``'s reads of a batch's outputs follow the same two limits.
SMALL_VALUES = 256

Mask = npt.NDArray[np.bool_]
Seeds = npt.NDArray[np.uint64]
Probs = npt.NDArray[np.float64]
Reasons = npt.NDArray[np.object_]

_F64 = np.dtype(np.float64)
_U64 = np.dtype(np.uint64)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(values: npt.ArrayLike) -> Seeds:
    """Return the SplitMix64 hash of each uint64 (the generator's first output for that seed)."""
    z = np.atleast_1d(np.asarray(values, dtype=np.uint64)) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def seed_from_id(sample_id: str) -> int:
    """Return a stable 64-bit seed for a sample id (BLAKE2b, the same on every machine)."""
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


#: Up to this many seeds, Python integers hash faster than nine numpy calls (about 1 us
#: each on small arrays): the edge at batch 1 pays per call, not per element.
_SCALAR_HASH_MAX = 4
_MASK64 = 2**64 - 1


def _splitmix64_int(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def below_rate(seeds: npt.NDArray[np.integer[Any]], rate: float, salt: np.uint64) -> Mask:
    """Return True for each seed whose salted hash falls in the lowest ``rate`` share."""
    if rate <= 0.0:
        return np.zeros(seeds.shape, dtype=np.bool_)
    if rate >= 1.0:
        return np.ones(seeds.shape, dtype=np.bool_)
    cutoff = min(int(rate * 2.0**64), 2**64 - 1)
    if seeds.shape[0] <= _SCALAR_HASH_MAX:
        key = int(salt)
        picks = [_splitmix64_int(int(s) ^ key) < cutoff for s in seeds.tolist()]
        return np.array(picks, dtype=np.bool_).reshape(seeds.shape)
    return splitmix64(seeds.astype(np.uint64, copy=False) ^ salt) < np.uint64(cutoff)


@dataclass(frozen=True)
class SelectionContext:
    """Per-batch facts a policy may use besides the probabilities.

    ``seeds`` holds one integer per sample (e.g. ``seed_from_id(sample_id)``), stored as
    uint64.  ``drifted`` holds the detectors whose verdict for this stream is drift now:
    each ``drift(detector)`` leaf fires while its own detector is among them.
    ``drift_active`` makes every ``drift(...)`` leaf fire whatever its detector (a context
    built without per-detector verdicts: a replay, a test); ``drift_score`` is informative.
    ``recent_scores`` are the stream's last scores (``ScoreHistory``), which a rolling
    quantile leaf compares the batch with.
    """

    seeds: npt.NDArray[np.integer[Any]]
    drift_active: bool = False
    drift_score: float = 0.0
    drifted: frozenset[Detector] = frozenset()
    recent_scores: npt.NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        seeds = self.seeds
        if isinstance(seeds, np.ndarray) and seeds.dtype == _U64 and seeds.ndim == 1:
            return  # already in canonical form: the per-batch case, keep it cheap
        seeds = np.asarray(seeds)
        if seeds.ndim != 1 or not (seeds.size == 0 or np.issubdtype(seeds.dtype, np.integer)):
            raise InputMismatchError(
                "SelectionContext.seeds must hold one integer per sample",
                expected="a 1-D integer array (uint64)",
                got=f"shape {seeds.shape} dtype {seeds.dtype}",
            )
        if seeds.dtype == np.int64:
            seeds = seeds.view(np.uint64)  # keep all 64 bits of negative seeds
        object.__setattr__(self, "seeds", seeds.astype(np.uint64, copy=False))

    @classmethod
    def for_ids(
        cls,
        sample_ids: Sequence[str],
        *,
        drift_active: bool = False,
        drift_score: float = 0.0,
        drifted: frozenset[Detector] = frozenset(),
    ) -> SelectionContext:
        """Build a context whose seeds are ``seed_from_id`` of each sample id."""
        seeds = np.fromiter((seed_from_id(i) for i in sample_ids), dtype=np.uint64)
        return cls(seeds=seeds, drift_active=drift_active, drift_score=drift_score, drifted=drifted)

    @classmethod
    def for_node(
        cls,
        node: str,
        seqs: range | Sequence[int],
        *,
        drift_active: bool = False,
        drift_score: float = 0.0,
        drifted: frozenset[Detector] = frozenset(),
        recent_scores: npt.NDArray[np.float64] | None = None,
    ) -> SelectionContext:
        """Build a context for samples ``seqs`` of ``node``: seed = ``seed_from_id(node) + seq``.

        This is how the edge runtime seeds its samples: one hash per node instead of one per
        sample, and a vector add per batch.  The seed is still a pure function of the sample
        id (node and seq), so a replay selects the same samples; consecutive seqs give
        consecutive seeds, which SplitMix64 (a counter-based generator) is built to mix.
        """
        key = _node_key(node)
        if isinstance(seqs, range) and seqs.step == 1 and seqs.start >= 0:
            if seqs.stop + int(key) < 2**64:  # the usual case: one numpy call, no wrap
                first = seqs.start + int(key)
                seeds = np.arange(first, first + len(seqs), dtype=np.uint64)
                return cls(
                    seeds=seeds,
                    drift_active=drift_active,
                    drift_score=drift_score,
                    drifted=drifted,
                    recent_scores=recent_scores,
                )
            offsets = np.arange(seqs.start, seqs.stop, dtype=np.uint64)
        else:
            values = np.asarray(seqs)
            if values.ndim != 1 or not (
                values.size == 0 or np.issubdtype(values.dtype, np.integer)
            ):
                raise InputMismatchError(
                    "seqs must hold one integer per sample",
                    expected="a 1-D sequence of sample seqs (integers >= 0)",
                    got=f"shape {values.shape} dtype {values.dtype}",
                )
            if values.size and int(values.min()) < 0:
                raise InputMismatchError(
                    "seqs must not be negative",
                    expected="sample seqs >= 0",
                    got=f"{int(values.min())}",
                )
            offsets = values.astype(np.uint64)
        seeds = offsets + key  # wraps modulo 2**64, as intended
        return cls(
            seeds=seeds,
            drift_active=drift_active,
            drift_score=drift_score,
            drifted=drifted,
            recent_scores=recent_scores,
        )


class ScoreHistory:
    """The last ``size`` scores of one stream, for rolling-quantile selection.

    A ring buffer: ``push`` costs one or two slice copies, ``values`` returns a view of
    what is filled.  Not thread-safe: one history per stream, fed by its inference thread.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a score history holds at least one score, got size {size}")
        self._buffer = np.zeros(size, dtype=np.float64)
        self._next = 0
        self._filled = 0

    def push(self, scores: npt.ArrayLike) -> None:
        """Add a batch of scores, forgetting the oldest beyond ``size``."""
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        size = self._buffer.shape[0]
        if values.shape[0] >= size:
            self._buffer[:] = values[-size:]
            self._next, self._filled = 0, size
            return
        end = self._next + values.shape[0]
        if end <= size:
            self._buffer[self._next : end] = values
        else:
            split = size - self._next
            self._buffer[self._next :] = values[:split]
            self._buffer[: end - size] = values[split:]
        self._next = end % size
        self._filled = min(size, self._filled + values.shape[0])

    def values(self) -> npt.NDArray[np.float64]:
        """Return the scores held (in no particular order)."""
        return self._buffer[: self._filled]


@functools.lru_cache(maxsize=256)
def _node_key(node: str) -> np.uint64:
    return np.uint64(seed_from_id(node))


@dataclass(frozen=True, slots=True, eq=False)
class Probabilities:
    """A model's outputs as class probabilities, checked once so that policies need not.

    Build one with ``Probabilities.from_outputs``: ``values`` is then a read-only float64
    array (batch, classes) of finite rows in [0, 1] summing to 1 (within ``PROBS_ATOL``).
    ``Policy.decide`` and ``explain`` take it as is, checking only its shape against the
    seeds, which is what keeps selection cheap on the edge's per-batch path.
    """

    values: Probs

    def __post_init__(self) -> None:
        values = self.values
        if not (isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype == _F64):
            raise InputMismatchError(
                "Probabilities.values must be a float64 (batch, classes) array",
                expected="Probabilities.from_outputs(model_outputs)",
                got=f"{type(values).__name__} {getattr(values, 'shape', '')}",
            )

    @classmethod
    def from_outputs(cls, outputs: npt.ArrayLike) -> Probabilities:
        """Return ``outputs`` (batch, classes) as probabilities, applying a softmax to logits.

        Models are expected to end in a softmax; a model that returns logits (or rows that
        are not probabilities) gets one here, so that confidence, drift and selection still
        mean what they say.

        Raises:
            InputMismatchError: ``outputs`` is not 2-D, or holds NaN or infinite values.
        """
        out = np.asarray(outputs)
        if (
            out.ndim == 2
            and 0 < out.shape[0] <= SMALL_BATCH
            and out.size <= SMALL_VALUES
            and out.dtype.kind == "f"
        ):
            small = _small_probabilities(out)
            if small is not None:
                return cls(values=small)
        if out.dtype.kind != "f":  # integers, booleans: as probabilities they are float64
            out = np.asarray(out, dtype=np.float64)
        if out.ndim != 2:
            raise InputMismatchError(
                "model output must be (batch, classes)",
                expected="a 2-D array (batch, classes)",
                got=f"shape {out.shape}",
            )
        softmax = clip = False
        if out.size:
            # Checked in the model's own precision (float32, mostly) and converted once: at
            # batch 1 this runs right after a model run has evicted the caches, where each
            # numpy call costs ~10 us, so it makes as few as it can.  A NaN or an infinity
            # makes its row's sum NaN or infinite, which fails the sum test and is told
            # apart below.
            low = float(out.min())
            sums = out.sum(axis=1, dtype=np.float64)
            if sums.shape[0] == 1:
                low_sum = high_sum = float(sums[0])
            else:
                low_sum, high_sum = float(sums.min()), float(sums.max())
            if not (low >= 0.0 and low_sum >= 1.0 - PROBS_ATOL and high_sum <= 1.0 + PROBS_ATOL):
                if not (math.isfinite(low) and math.isfinite(low_sum + high_sum)):
                    raise InputMismatchError(
                        "model output holds NaN or infinite values",
                        expected="finite values",
                        got=f"{int(np.count_nonzero(~np.isfinite(out)))} non-finite",
                    )
                softmax = True
            else:
                clip = high_sum > 1.0  # a rounding overshoot may leave a value above 1
        if out.dtype == _F64 and not (softmax or clip):
            values = out.view()  # read-only below without touching the caller's flags
        else:
            values = out.astype(np.float64)  # our own array: never the caller's
            if softmax:
                np.exp(values - values.max(axis=1, keepdims=True), out=values)
                values /= values.sum(axis=1, keepdims=True)
            elif clip:
                np.minimum(values, 1.0, out=values)
        values.flags.writeable = False
        return cls(values=values)


def _small_probabilities(out: npt.NDArray[np.floating[Any]]) -> Probs | None:
    """Return a few rows that already are probabilities as read-only float64, else None.

    The same test as ``from_outputs`` on Python floats: right after a model run each numpy
    call costs several microseconds (the run evicted the caches) and the test makes six,
    where one ``tolist`` gives the rows.  Anything else (logits, NaN, infinities) returns
    None and takes the numpy path, which tells them apart.
    """
    rows = out.tolist()
    clip = False
    for row in rows:
        total = sum(row)
        if not (min(row) >= 0.0 and 1.0 - PROBS_ATOL <= total <= 1.0 + PROBS_ATOL):
            return None
        clip = clip or total > 1.0
    values = np.array(rows, dtype=np.float64)
    if clip:
        np.minimum(values, 1.0, out=values)
    values.flags.writeable = False
    return values


def _seeds_mismatch(rows: int, ctx: SelectionContext) -> InputMismatchError:
    return InputMismatchError(
        "ctx.seeds must hold one seed per row of probs",
        expected=f"{rows} seeds",
        got=f"{ctx.seeds.shape[0]} seeds",
    )


def _check_shape(array: Probs, ctx: SelectionContext) -> None:
    """Raise unless ``array`` is (batch, classes >= 2) with one row per seed of ``ctx``."""
    if array.ndim != 2 or array.shape[1] < 2:
        raise InputMismatchError(
            "probs must be the model's class probabilities, one row per sample",
            expected="shape (batch, classes) with classes >= 2",
            got=f"shape {array.shape}",
        )
    if array.shape[0] != ctx.seeds.shape[0]:
        raise _seeds_mismatch(array.shape[0], ctx)


def check_probs(probs: npt.ArrayLike | Probabilities, ctx: SelectionContext) -> Probs:
    """Return ``probs`` as float64 rows of probabilities, one per seed of ``ctx``.

    Raises:
        InputMismatchError: the shape, the seeds or a row is wrong; the message names it.
    """
    if isinstance(probs, Probabilities):
        _check_shape(probs.values, ctx)
        return probs.values
    try:
        array = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputMismatchError(
            "probs must be numbers", expected="a float array (batch, classes)", got=repr(probs)
        ) from error
    _check_shape(array, ctx)
    if array.size == 0:
        return array
    # The common case, valid probabilities, costs four reductions; the row-by-row search
    # below only runs to name the offending row (or to clip a rounding overshoot).
    low, high = float(array.min()), float(array.max())
    sums = array.sum(axis=1)
    if (
        low >= 0.0
        and high <= 1.0
        and float(sums.min()) >= 1.0 - PROBS_ATOL
        and float(sums.max()) <= 1.0 + PROBS_ATOL
    ):
        return array
    if not np.all(np.isfinite(array)):
        bad = int(np.argmin(np.all(np.isfinite(array), axis=1)))
        raise InputMismatchError(
            "probs must be finite", expected="finite probabilities", got=f"NaN/inf in row {bad}"
        )
    off = np.abs(sums - 1.0) > PROBS_ATOL
    out_of_range = np.any((array < -PROBS_ATOL) | (array > 1.0 + PROBS_ATOL), axis=1)
    bad_rows = off | out_of_range
    if np.any(bad_rows):
        row = int(np.argmax(bad_rows))
        raise InputMismatchError(
            "probs rows must be probabilities (apply softmax to logits first)",
            expected=f"values in [0, 1] summing to 1 (±{PROBS_ATOL})",
            got=f"row {row} sums to {sums[row]:.6g}",
        )
    return np.clip(array, 0.0, 1.0)
