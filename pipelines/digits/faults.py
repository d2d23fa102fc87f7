"""Camera faults and sensor jitter for the digits example, drawn afresh for every image.

A real camera never shows the same frame twice: the part lands a fraction of a pixel elsewhere,
the sensor adds its read noise, and a fault (a defocused lens, a knocked mount, a stuck sensor
row) varies a little from frame to frame.  ``apply_drift`` simulates the faults, ``site_condition``
adds the sensor jitter every frame gets; both draw their random parts per image from ``rng``, so
a batch is reproducible given the generator and no two images share a draw.

Everything is vectorised numpy over the batch (an affine warp, separable blur matrices), so the
camera can call it on one frame at a time at 20 fps on a small box.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

IMAGE_SHAPE = (1, 8, 8)
FloatImages = NDArray[np.float32]

#: The faults the example's cameras can develop.  Severity 1 is a fault that clearly hurts the
#: first model (``benchmarks/augmentation_choice.py --faults`` prints the table); 0 is none.
DRIFT_KINDS = (
    "blur",
    "contrast",
    "blur_contrast",
    "rotation",
    "inversion",
    "noise",
    "occlusion",
    "brightness",
    "shift",
    "zoom",
    "mirror",
    "dead_pixels",
    "gamma",
    "salt_pepper",
    "motion_blur",
    "banding",
    "vignetting",
)

#: What the trainer can augment for (``Recipe.augment``); each simulates the fault of its name.
AUGMENTATIONS = ("shift", "noise", "occlusion", "blur", "contrast")

#: The augmentations the trainer uses by default: the set ``benchmarks/augmentation_choice.py``
#: chose on a validation split carved from the training split (figures in ``Recipe``'s docstring).
DEFAULT_AUGMENT: tuple[str, ...] = ("shift",)

#: Sensor jitter every frame gets, clean or faulty: the part's placement (shift, scale) and the
#: sensor's read noise.  Small enough that the first model stays >= 0.95 on clean frames.
JITTER_SHIFT_PX = 0.5
JITTER_SCALE = 0.05
JITTER_NOISE_SIGMA = 0.03

_CENTRE = (IMAGE_SHAPE[1] - 1) / 2.0
_GRID = (
    np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij"), axis=-1).reshape(-1, 2)
    - _CENTRE
)


def augmented_kinds(augment: Iterable[str]) -> tuple[str, ...]:
    """Return the fault kinds a trainer augmenting with ``augment`` has seen simulated.

    A kind is covered when every part of it is: ``blur_contrast`` needs both ``blur`` and
    ``contrast``.  The rest of ``DRIFT_KINDS`` are faults the model never trained for.
    """
    names = set(augment)
    unknown = names - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(
            f"unknown augmentation(s) {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(AUGMENTATIONS)}"
        )
    covered = [kind for kind in DRIFT_KINDS if kind in names]
    if {"blur", "contrast"} <= names:
        covered.append("blur_contrast")
    return tuple(k for k in DRIFT_KINDS if k in covered)


#: The fault kinds the default trainer augments for; the drift suite also needs the others.
AUGMENTED_KINDS = augmented_kinds(DEFAULT_AUGMENT)


def _check_images(x: FloatImages) -> FloatImages:
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"expected images shaped (n, 1, 8, 8), got {x.shape}")
    return np.array(x, dtype=np.float32, copy=True)


def _jitter(n: int, rng: np.random.Generator, spread: float) -> NDArray[np.float64]:
    """Per-image factors around 1 (within ``1 ± spread``): a fault is never the same twice."""
    return 1.0 + rng.uniform(-spread, spread, size=n)


def warp(x: FloatImages, matrix: NDArray[np.float64], offset: NDArray[np.float64]) -> FloatImages:
    """Resample each image through its own affine map (bilinear, zero outside the frame).

    Output pixel ``p`` (centred coordinates) reads the input at ``matrix[i] @ p + offset[i]``:
    ``matrix`` is (n, 2, 2), ``offset`` (n, 2) in pixels (row, column).
    """
    n = x.shape[0]
    src = np.einsum("nij,pj->npi", matrix, _GRID) + offset[:, None, :] + _CENTRE
    r0 = np.floor(src[..., 0])
    c0 = np.floor(src[..., 1])
    fr = src[..., 0] - r0
    fc = src[..., 1] - c0
    # Pad by one zero pixel all round; any read further out lands on the padding.
    padded = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
    rows = np.arange(n)[:, None]

    def at(r: NDArray[np.float64], c: NDArray[np.float64]) -> NDArray[np.float32]:
        ri = np.clip(r, -1, 8).astype(np.intp) + 1
        ci = np.clip(c, -1, 8).astype(np.intp) + 1
        return padded[rows, ri, ci]

    out = (
        at(r0, c0) * (1 - fr) * (1 - fc)
        + at(r0, c0 + 1) * (1 - fr) * fc
        + at(r0 + 1, c0) * fr * (1 - fc)
        + at(r0 + 1, c0 + 1) * fr * fc
    )
    return np.asarray(out.reshape(n, *IMAGE_SHAPE), dtype=np.float32)


def _rotation(angles_deg: NDArray[np.float64]) -> NDArray[np.float64]:
    a = np.deg2rad(angles_deg)
    cos, sin = np.cos(a), np.sin(a)
    return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)


def _scaling(factors: NDArray[np.float64]) -> NDArray[np.float64]:
    """Matrices that magnify by ``factors`` (the output reads the input at p / factor)."""
    return np.eye(2)[None] / factors[:, None, None]


def gaussian_blur(x: FloatImages, sigma: NDArray[np.float64]) -> FloatImages:
    """Blur each image with its own Gaussian ``sigma`` (px), zero outside, peak kept."""
    taps = np.arange(8.0)
    distance = taps[:, None] - taps[None, :]
    s = np.maximum(sigma, 1e-3)[:, None, None]
    kernel = np.exp(-0.5 * (distance[None] / s) ** 2)
    # Normalise over the kernel's whole support, so what falls outside the frame is lost.
    support = np.arange(-16.0, 17.0)
    kernel /= np.exp(-0.5 * (support[None] / s[:, 0]) ** 2).sum(axis=1)[:, None, None]
    out = np.einsum("nij,njk,nlk->nil", kernel, x[:, 0], kernel)[:, None]
    # A defocused lens spreads the stroke; renormalise the peak so blur alone does not darken.
    peak = out.max(axis=(1, 2, 3), keepdims=True)
    src_peak = x.max(axis=(1, 2, 3), keepdims=True)
    renormalised = np.where(peak > 0, out * (src_peak / np.maximum(peak, 1e-6)), out)
    return np.asarray(renormalised, dtype=np.float32)


def _random_directions(n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    theta = rng.uniform(0.0, 2 * math.pi, size=n)
    return np.stack([np.sin(theta), np.cos(theta)], axis=-1)


def _geometric(x: FloatImages, kind: str, s: float, rng: np.random.Generator) -> FloatImages:
    n = x.shape[0]
    eye = np.broadcast_to(np.eye(2), (n, 2, 2))
    if kind == "rotation":
        # The mount turned by ~35 degrees at severity 1; each frame a little more or less.
        return warp(x, _rotation(35.0 * s * _jitter(n, rng, 0.2)), np.zeros((n, 2)))
    if kind == "shift":
        # A knocked mount: 1.5-2 px off centre at severity 1, wobbling in direction.
        distance = 2.0 * s * np.asarray(rng.uniform(0.75, 1.0, size=n))
        return warp(x, eye, _random_directions(n, rng) * distance[:, None])
    if kind == "zoom":
        # A lens or distance change: the digit magnified by ~1.45 at severity 1, edges cut.
        return warp(x, _scaling(1.0 + 0.45 * s * _jitter(n, rng, 0.15)), np.zeros((n, 2)))
    # motion_blur: the exposure sees the part move ~3 px along a per-frame direction.
    steps = 7
    length = 3.0 * s * _jitter(n, rng, 0.2)
    along = np.linspace(-0.5, 0.5, steps)[None, :, None] * length[:, None, None]
    offsets = (along * _random_directions(n, rng)[:, None, :]).reshape(-1, 2)
    copies = warp(np.repeat(x, steps, axis=0), np.repeat(eye, steps, axis=0), offsets)
    return np.asarray(copies.reshape(n, steps, *IMAGE_SHAPE).mean(axis=1), dtype=np.float32)


def _dead_pixels(x: FloatImages, s: float, rng: np.random.Generator) -> FloatImages:
    """Stuck sensor lines and pixels (dead at 0 or hot at 1), placed per frame."""
    out = x.copy()
    n = x.shape[0]
    lines = round(s)
    pixels = round(3 * s)
    for i in range(n):
        for _ in range(lines):
            value = float(rng.integers(0, 2))
            index = int(rng.integers(0, 8))
            if rng.integers(0, 2):
                out[i, 0, index, :] = value
            else:
                out[i, 0, :, index] = value
        if pixels:
            flat = rng.choice(64, size=min(pixels, 64), replace=False)
            out[i, 0].flat[flat] = rng.integers(0, 2, size=len(flat)).astype(np.float32)
    return out


def _occlusion(x: FloatImages, s: float, rng: np.random.Generator) -> FloatImages:
    """Dirt on the lens: a dark square (3x3 at severity 1) at a random place per image."""
    out = x.copy()
    size = min(8, max(1, round(3 * s)))
    corners = rng.integers(0, 8 - size + 1, size=(x.shape[0], 2))
    for i, (r, c) in enumerate(corners):
        out[i, :, r : r + size, c : c + size] = 0.0
    return out


def _vignetting(x: FloatImages, s: float, rng: np.random.Generator) -> FloatImages:
    """A lens that darkens towards the edges, its centre a little off per frame."""
    n = x.shape[0]
    centre = rng.uniform(-1.0, 1.0, size=(n, 1, 2))
    radius2 = ((_GRID[None] - centre) ** 2).sum(axis=-1) / (2 * _CENTRE**2)
    strength = 1.4 * s * _jitter(n, rng, 0.15)[:, None]
    gain = np.clip(1.0 - strength * radius2, 0.0, 1.0)
    return np.asarray(x * gain.reshape(n, *IMAGE_SHAPE), dtype=np.float32)


def _photometric(x: FloatImages, kind: str, s: float, rng: np.random.Generator) -> FloatImages:
    n = x.shape[0]
    per_image = (n, 1, 1, 1)
    if kind == "contrast":
        # A washed-out sensor: pixel values pulled towards grey (30% less contrast at 1).
        keep = np.clip(1.0 - 0.3 * s * _jitter(n, rng, 0.15), 0.0, 1.0).reshape(per_image)
        return (0.5 + (x - 0.5) * keep).astype(np.float32)
    if kind == "inversion":
        # A swapped sensor mode: negative images (blended in below severity 1) whose black
        # level wanders a little from frame to frame.
        level = np.asarray(rng.uniform(0.9, 1.0, size=n)).reshape(per_image)
        return (s * (level - x) + (1.0 - s) * x).astype(np.float32)
    if kind == "noise":
        return x + rng.normal(0.0, 0.25 * s, size=x.shape).astype(np.float32)
    if kind == "brightness":
        return x + (0.35 * s * _jitter(n, rng, 0.15)).reshape(per_image).astype(np.float32)
    if kind == "gamma":
        # A wrong gamma table: faint strokes lifted to nearly full ink (x ** 0.3 at 1).
        exponent = np.exp(-1.2 * s * _jitter(n, rng, 0.15)).reshape(per_image)
        return np.power(np.clip(x, 0.0, 1.0), exponent).astype(np.float32)
    if kind == "salt_pepper":
        # Bit errors on the sensor link: 12% of pixels forced to 0 or 1 at severity 1.
        hit = rng.random(x.shape) < min(1.0, 0.12 * s)
        return np.where(hit, rng.integers(0, 2, size=x.shape), x).astype(np.float32)
    if kind == "banding":
        # Row noise from an unstable readout: each row of each frame offset on its own.
        rows = rng.normal(0.0, 0.2 * s, size=(n, 1, 8, 1))
        return (x + rows).astype(np.float32)
    raise AssertionError(kind)  # pragma: no cover - apply_drift checks the kind


_GEOMETRIC = ("rotation", "shift", "zoom", "motion_blur")


def apply_drift(
    x: FloatImages,
    kind: str,
    severity: float = 1.0,
    rng: np.random.Generator | None = None,
) -> FloatImages:
    """Return a copy of images ``x`` (n, 1, 8, 8) as a camera with fault ``kind`` would see them.

    ``severity`` scales the fault (0 = none, 1 = a fault that clearly hurts the first model);
    the result keeps the shape and stays float32 in [0, 1].  The fault's random parts (angle,
    direction, noise, the place of dirt or dead lines) are drawn per image from ``rng``
    (default: a fixed seed), so the same generator state gives the same images.

    Raises:
        ValueError: ``kind`` is not one of ``DRIFT_KINDS`` or ``x`` is not (n, 1, 8, 8).
    """
    if kind not in DRIFT_KINDS:
        raise ValueError(f"unknown drift kind {kind!r}; choose one of {', '.join(DRIFT_KINDS)}")
    out = _check_images(x)
    rng = rng if rng is not None else np.random.default_rng(0)
    s = float(severity)
    if s <= 0 or len(out) == 0:
        return out
    n = out.shape[0]
    if kind in ("blur", "blur_contrast"):
        # A defocused lens: sigma 0.75 px at severity 1.
        out = gaussian_blur(out, 0.75 * s * _jitter(n, rng, 0.15))
    if kind == "blur_contrast":
        out = _photometric(out, "contrast", s, rng)
    elif kind in _GEOMETRIC:
        out = _geometric(out, kind, s, rng)
    elif kind == "mirror":
        # A sensor read out right to left; below severity 1 only that share of frames.
        flip = rng.random(n) < s
        out[flip] = out[flip][..., ::-1]
    elif kind == "occlusion":
        out = _occlusion(out, s, rng)
    elif kind == "dead_pixels":
        out = _dead_pixels(out, s, rng)
    elif kind == "vignetting":
        out = _vignetting(out, s, rng)
    elif kind != "blur":
        out = _photometric(out, kind, s, rng)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def site_condition(
    x: FloatImages,
    kind: str | None = None,
    severity: float = 1.0,
    rng: np.random.Generator | None = None,
) -> FloatImages:
    """Return images ``x`` as a site's camera shows them: jittered, with fault ``kind`` if any.

    Every image gets its own placement (shift <= ``JITTER_SHIFT_PX``, scale within
    ``JITTER_SCALE``), then the fault drawn afresh (``apply_drift``), then sensor noise
    (sigma ``JITTER_NOISE_SIGMA``).  The camera calls it for every frame, and the report scores
    the reserved split through it with a fixed seed, so both see the same conditions.

    Raises:
        ValueError: ``kind`` is neither None nor one of ``DRIFT_KINDS``, or ``x`` is not
            (n, 1, 8, 8).
    """
    if kind is not None and kind not in DRIFT_KINDS:
        raise ValueError(f"unknown drift kind {kind!r}; choose one of {', '.join(DRIFT_KINDS)}")
    out = _check_images(x)
    rng = rng if rng is not None else np.random.default_rng(0)
    n = out.shape[0]
    scale = _scaling(_jitter(n, rng, JITTER_SCALE))
    offset = _random_directions(n, rng) * JITTER_SHIFT_PX * np.sqrt(rng.random(n))[:, None]
    out = warp(out, scale, offset)
    if kind is not None:
        out = apply_drift(out, kind, severity, rng)
    out = out + rng.normal(0.0, JITTER_NOISE_SIGMA, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


#: How the camera avoids repeating a frame, for the report (``DigitsCamera.novelty``).
NOVELTY = (
    f"per-frame fault draws + jitter (shift <= {JITTER_SHIFT_PX:g} px, "
    f"scale +-{JITTER_SCALE:.0%}, noise sigma={JITTER_NOISE_SIGMA:g})"
)
