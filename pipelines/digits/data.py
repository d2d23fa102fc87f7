"""The digits data of the example: fixed splits of scikit-learn's 8x8 digits.

The 1,797 images are split once, stratified by class, into a training set (what the first model
learns from), a stream pool (what the cameras show, and the only source of uplinked samples) and a
reserved test split that is never streamed or uplinked.  The camera faults are in
``pipelines.digits.faults``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipelines.digits.faults import DRIFT_KINDS, IMAGE_SHAPE, FloatImages, apply_drift

# The camera faults live in ``faults``; their names stay importable from here for old callers.
__all__ = [
    "DRIFT_KINDS",
    "IMAGE_SHAPE",
    "N_STREAM",
    "N_TEST",
    "N_TRAIN",
    "Splits",
    "apply_drift",
    "load_splits",
    "reference_holdout",
]

N_TRAIN = 700
N_STREAM = 650
N_TEST = 447
N_CLASSES = 10

Labels = NDArray[np.int64]


@dataclass(frozen=True)
class Splits:
    """The three disjoint splits; images are float32 in [0, 1] shaped (n, 1, 8, 8)."""

    train_x: FloatImages
    train_y: Labels
    stream_x: FloatImages
    stream_y: Labels
    test_x: FloatImages
    test_y: Labels
    train_idx: NDArray[np.int64]
    stream_idx: NDArray[np.int64]
    test_idx: NDArray[np.int64]


@functools.cache
def _digits() -> tuple[FloatImages, Labels]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (np.asarray(digits.images, dtype=np.float32) / 16.0).reshape(-1, *IMAGE_SHAPE)
    return images, np.asarray(digits.target, dtype=np.int64)


def load_splits(seed: int = 0) -> Splits:
    """Load the digits and split them 700 / 650 / 447, stratified by class and fixed by ``seed``.

    Each call returns fresh arrays (the raw data set is read once per process).
    """
    images, labels = _digits()
    rng = np.random.default_rng(seed)
    # Stratify by hand: walk the shuffled members class by class and give each to the split
    # furthest below its share, so every split sees every class in proportion and the result
    # is a pure function of the seed.
    sizes = np.array([N_TRAIN, N_STREAM, N_TEST])
    parts: list[list[int]] = [[], [], []]
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in range(N_CLASSES)])
    quotas = sizes / sizes.sum()
    counts = np.zeros(3)
    for position, index in enumerate(order):
        target = quotas * (position + 1) - counts
        split = int(np.argmax(target))
        parts[split].append(int(index))
        counts[split] += 1
    train_idx, stream_idx, test_idx = (rng.permutation(np.array(p, dtype=np.int64)) for p in parts)
    return Splits(
        train_x=images[train_idx],
        train_y=labels[train_idx],
        stream_x=images[stream_idx],
        stream_y=labels[stream_idx],
        test_x=images[test_idx],
        test_y=labels[test_idx],
        train_idx=train_idx,
        stream_idx=stream_idx,
        test_idx=test_idx,
    )


def reference_holdout(size: int = 200, seed: int = 0) -> tuple[FloatImages, Labels]:
    """Return a fixed clean labelled set for the gate: the first ``size`` of the stream pool.

    It is the kind of labelled history a team keeps; with it the gate refuses a candidate that
    fixed the drifted site by forgetting the clean ones.  Never the reserved test split.
    """
    splits = load_splits(seed)
    return splits.stream_x[:size], splits.stream_y[:size]
