"""Training-time augmentation for the digits trainer, in torch on the whole batch.

Each augmentation simulates the camera fault of its name (``faults.AUGMENTATIONS``) with its
own random strength per image, so a model learns what a digit is rather than how the training
camera happened to show it.  Everything runs on the batch at once: a few tensor ops per step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from continuum.errors import ConfigError
from pipelines.digits.faults import AUGMENTATIONS

#: The share of images each of blur, contrast and occlusion touches; shift and noise touch all
#: (at a random strength that may be near zero), so the clean look stays in every batch.
_SHARE = 0.3
_MAX_SHIFT_PX = 1.0
_MAX_NOISE_SIGMA = 0.15
_BLUR_SIGMA = (0.3, 1.0)
_CONTRAST_KEEP = (0.5, 1.0)


def check_augment(names: Iterable[str]) -> tuple[str, ...]:
    """Return ``names`` as a tuple in the trainer's order; refuse names it does not know.

    Raises:
        ConfigError: a name is not one of ``faults.AUGMENTATIONS`` or is not a string.
    """
    if isinstance(names, str):
        raise ConfigError(
            f"augment must be a list of names, got the string {names!r}; "
            f'write e.g. ["shift", "noise"] (choose from {", ".join(AUGMENTATIONS)})'
        )
    given = list(names)
    unknown = [n for n in given if n not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(
            f"augment: unknown augmentation(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(AUGMENTATIONS)}, or [] for none"
        )
    return tuple(n for n in AUGMENTATIONS if n in given)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _chosen(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < _SHARE


def _blur(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Defocus a share of the images, each with its own sigma (separable, zero outside)."""
    n = batch.shape[0]
    sigma = _uniform(n, *_BLUR_SIGMA, generator)[:, None, None]
    taps = torch.arange(8.0)
    kernel = torch.exp(-0.5 * ((taps[:, None] - taps[None, :])[None] / sigma) ** 2)
    support = torch.arange(-16.0, 17.0)
    kernel = kernel / torch.exp(-0.5 * (support[None] / sigma[:, 0]) ** 2).sum(1)[:, None, None]
    blurred = torch.einsum("nij,njk,nlk->nil", kernel, batch[:, 0], kernel)[:, None]
    # As the lens fault does: renormalise the peak, so blur alone does not darken.
    peak = blurred.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    blurred = blurred * batch.amax(dim=(1, 2, 3), keepdim=True) / peak
    return torch.where(_chosen(n, generator)[:, None, None, None], blurred, batch)


def _contrast(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pull a share of the images towards grey by a random amount."""
    n = batch.shape[0]
    keep = _uniform(n, *_CONTRAST_KEEP, generator)
    keep = torch.where(_chosen(n, generator), keep, torch.ones(n))[:, None, None, None]
    return 0.5 + (batch - 0.5) * keep


def _shift(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to 1 px per axis, sub-pixel (bilinear, zero padded)."""
    n = batch.shape[0]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    # Normalised coordinates span 2 over 8 pixels.
    theta[:, :, 2] = (torch.rand(n, 2, generator=generator) * 2 - 1) * _MAX_SHIFT_PX * 2 / 8
    grid = nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    return nn.functional.grid_sample(
        batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def _occlusion(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Black out a 2x2 or 3x3 square at a random place on a share of the images."""
    n = batch.shape[0]
    size = torch.randint(2, 4, (n,), generator=generator)
    top = (torch.rand(n, generator=generator) * (9 - size)).long()
    left = (torch.rand(n, generator=generator) * (9 - size)).long()
    pos = torch.arange(8)
    rows = (pos[None] >= top[:, None]) & (pos[None] < (top + size)[:, None])
    cols = (pos[None] >= left[:, None]) & (pos[None] < (left + size)[:, None])
    patch = rows[:, :, None] & cols[:, None, :] & _chosen(n, generator)[:, None, None]
    return batch.masked_fill(patch[:, None], 0.0)


def _noise(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Add Gaussian sensor noise, each image at its own sigma in [0, 0.15]."""
    sigma = _uniform(batch.shape[0], 0.0, _MAX_NOISE_SIGMA, generator)[:, None, None, None]
    return batch + sigma * torch.randn(batch.shape, generator=generator)


# Optics first (blur, contrast), then placement (shift), dirt (occlusion), sensor (noise).
_STEPS = {
    "blur": _blur,
    "contrast": _contrast,
    "shift": _shift,
    "occlusion": _occlusion,
    "noise": _noise,
}


def augment_batch(
    batch: torch.Tensor, names: Iterable[str], generator: torch.Generator
) -> torch.Tensor:
    """Return a new batch (N, 1, 8, 8) with the augmentations ``names`` drawn per image.

    Raises:
        ConfigError: a name is not one of ``faults.AUGMENTATIONS``.
    """
    chosen = check_augment(names)
    if not chosen:
        return batch
    out = batch
    for name in sorted(chosen, key=list(_STEPS).index):
        out = _STEPS[name](out, generator)
    return out.clamp(0.0, 1.0)
