"""The digits data of the example: fixed splits of scikit-learn's 8x8 digits and camera faults.

The 1,797 images are split once, stratified by class, into a training set (what the first model
learns from), a stream pool (what the cameras show, and the only source of uplinked samples) and a
reserved test split that is never streamed or uplinked.  ``apply_drift`` simulates the faults a
real camera develops: defocus, lost contrast, a knocked mount, a swapped sensor mode, noise, dirt.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

N_TRAIN = 700
N_STREAM = 650
N_TEST = 447
IMAGE_SHAPE = (1, 8, 8)
N_CLASSES = 10

DRIFT_KINDS = (
    "blur",
    "contrast",
    "blur_contrast",
    "rotation",
    "inversion",
    "noise",
    "occlusion",
    "brightness",
)

FloatImages = NDArray[np.float32]
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


def apply_drift(
    x: FloatImages,
    kind: str,
    severity: float = 1.0,
    rng: np.random.Generator | None = None,
) -> FloatImages:
    """Return a copy of images ``x`` (n, 1, 8, 8) as a camera with fault ``kind`` would see them.

    ``severity`` scales the fault (0 = none, 1 = the demo's level); the result keeps the shape
    and stays float32 in [0, 1].  ``rng`` drives the random faults (noise, occlusion).

    Raises:
        ValueError: ``kind`` is not one of ``DRIFT_KINDS`` or ``x`` is not (n, 1, 8, 8).
    """
    from scipy import ndimage

    if kind not in DRIFT_KINDS:
        raise ValueError(f"unknown drift kind {kind!r}; choose one of {', '.join(DRIFT_KINDS)}")
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"expected images shaped (n, 1, 8, 8), got {x.shape}")
    rng = rng if rng is not None else np.random.default_rng(0)
    out = np.array(x, dtype=np.float32, copy=True)
    s = float(severity)
    if s <= 0:
        return out
    if kind in ("blur", "blur_contrast"):
        # A defocused lens: Gaussian blur within each image only.
        out = ndimage.gaussian_filter(out, sigma=(0, 0, 0.75 * s, 0.75 * s), mode="constant")
        # Renormalise the peak so blur alone does not also darken the image.
        peak = out.max(axis=(1, 2, 3), keepdims=True)
        src_peak = x.max(axis=(1, 2, 3), keepdims=True)
        out = np.where(peak > 0, out * (src_peak / np.maximum(peak, 1e-6)), out)
    if kind in ("contrast", "blur_contrast"):
        # A washed-out sensor: pixel values pulled towards grey.
        keep = max(0.0, 1.0 - 0.3 * s)
        out = 0.5 + (out - 0.5) * keep
    elif kind == "rotation":
        angle = 35.0 * s
        out = ndimage.rotate(out, angle, axes=(2, 3), reshape=False, order=1, mode="constant")
    elif kind == "inversion":
        out = s * (1.0 - out) + (1.0 - s) * out
    elif kind == "noise":
        out = out + rng.normal(0.0, 0.25 * s, size=out.shape).astype(np.float32)
    elif kind == "occlusion":
        # Dirt on the lens: a 3x3 dark patch at a random place per image.
        size = max(1, round(3 * s))
        for i in range(out.shape[0]):
            r, c = rng.integers(0, 8 - size + 1, size=2)
            out[i, :, r : r + size, c : c + size] = 0.0
    elif kind == "brightness":
        out = out + 0.35 * s
    return np.clip(out, 0.0, 1.0).astype(np.float32)
