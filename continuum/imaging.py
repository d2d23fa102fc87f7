"""Image preprocessing declared in the pipeline: ``ImagePrep`` turns a camera frame into
the model's input.

It is part of the spec, not code in a preprocess function, so the cloud knows exactly what
the edge fed the model (crop, size, colour order, normalisation) and trains on the same.
Pure numpy: the core runs on a bare edge install with no OpenCV.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator
from typing_extensions import Self

from continuum._spec_base import FrozenSpec, bounded
from continuum.errors import SpecError

__all__ = ["ImagePrep"]

Colour = Literal["gray", "rgb", "bgr"]
Layout = Literal["chw", "hwc"]
Resample = Literal["bilinear", "area"]

#: ITU-R BT.601 luma weights (what OpenCV, PIL and FFmpeg use for RGB -> gray).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_EXAMPLE = 'ImagePrep(resize=(224, 224), colour="rgb", layout="chw", scale=1/255)'


class ImagePrep(FrozenSpec):
    """Crop, resize, colour, normalise and lay out one HWC uint8 RGB frame.

    The steps run in that order: ``crop`` (x, y, width, height in frame pixels), ``resize``
    to (height, width), ``colour`` (``gray`` by BT.601 luma, or channel order ``rgb``/``bgr``),
    then ``(pixel * scale - mean) / std`` per channel, ``layout`` and ``dtype``.
    """

    crop: tuple[int, int, int, int] | None = Field(
        default=None, description="Region (x, y, width, height) in frame pixels; null: all."
    )
    resize: tuple[int, int] | None = Field(
        default=None, description="Output (height, width) in pixels; null: keep the size."
    )
    resample: Resample = Field(
        default="area", description="area (box average, for shrinking) or bilinear."
    )
    colour: Colour = Field(default="rgb", description="gray, rgb or bgr channel order.")
    layout: Layout = Field(default="chw", description="chw (channels first) or hwc.")
    scale: float = Field(default=1.0 / 255.0, description="Factor applied to pixels first.")
    mean: tuple[float, ...] = Field(default=(0.0,), description="Subtracted per channel.")
    std: tuple[float, ...] = Field(default=(1.0,), description="Divides per channel.")
    dtype: str = Field(default="float32", description="numpy float dtype of the output.")

    @field_validator("crop")
    @classmethod
    def _check_crop(cls, value: tuple[int, int, int, int] | None) -> Any:
        if value is not None and (min(value[:2]) < 0 or min(value[2:]) < 1):
            raise SpecError(
                f"needs x, y >= 0 and width, height >= 1, got {value!r}",
                fix="give (x, y, width, height) in frame pixels, e.g. crop=(80, 0, 480, 480)",
            )
        return value

    @field_validator("resize")
    @classmethod
    def _check_resize(cls, value: tuple[int, int] | None) -> Any:
        if value is not None and min(value) < 1:
            raise SpecError(
                f"needs positive sizes, got {value!r}",
                fix="give the output (height, width), e.g. resize=(224, 224)",
            )
        return value

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, value: float) -> float:
        return bounded(value, low=0, low_open=True, example="scale=1/255")

    @field_validator("std")
    @classmethod
    def _check_std(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for v in value:
            bounded(v, low=0, low_open=True, example="std=(0.229, 0.224, 0.225)")
        return value

    @field_validator("dtype", mode="before")
    @classmethod
    def _check_dtype(cls, value: object) -> str:
        fix = "use float32, float16 or float64"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                dtype = np.dtype(value)  # type: ignore[call-overload]
        except Exception as error:
            raise SpecError(f"numpy does not know dtype {value!r}", fix=fix) from error
        if dtype.kind != "f" or not isinstance(value, str):
            raise SpecError(f"{value!r} is not a float dtype name (pixels get normalised)", fix=fix)
        return str(dtype.name)

    @model_validator(mode="after")
    def _check_channels(self) -> Self:
        channels = self.channels
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, channels):
                raise SpecError(
                    f"has {len(values)} values for {channels} channel(s) ({self.colour})",
                    field=name,
                    fix=f"give one value for all channels or one per channel, e.g. "
                    f"{name}={(0.5,) * channels}",
                )
        return self

    @property
    def channels(self) -> int:
        """Channels of the output: 1 for gray, else 3."""
        return 1 if self.colour == "gray" else 3

    def output_shape(self, frame_size: tuple[int, int] | None = None) -> tuple[int, ...]:
        """Return the shape of one prepared sample (no batch axis).

        Args:
            frame_size: (height, width) of the incoming frames; needed only when neither
                ``resize`` nor ``crop`` fixes the output size.

        Raises:
            SpecError: the size depends on the frames and ``frame_size`` is not given.
        """
        size = frame_size
        if self.resize is not None:
            size = self.resize
        elif self.crop is not None:
            size = (self.crop[3], self.crop[2])
        if size is None:
            raise SpecError(
                "the output size is that of the frames, which are not known here",
                field="image",
                fix=f"declare the size the model takes with resize=, e.g. {_EXAMPLE}",
            )
        height, width = size
        if self.layout == "chw":
            return (self.channels, height, width)
        return (height, width, self.channels)

    def check_input(self, shape: tuple[int, ...], dtype: str) -> None:
        """Check that prepared frames fit a model input of ``shape`` and ``dtype``.

        Raises:
            SpecError: they do not; the message names both shapes and the fix.
        """
        frame_size: tuple[int, int] | None = None
        if len(shape) == 3:
            frame_size = (shape[1], shape[2]) if self.layout == "chw" else (shape[0], shape[1])
        made = self.output_shape(frame_size)
        if made != tuple(shape):
            raise SpecError(
                f"makes samples of shape {made} ({self.layout}, {self.colour}), the model "
                f"input is {tuple(shape)}",
                field="image",
                fix="make resize=(height, width), colour= and layout= match edge.input.shape, "
                "or change the input shape",
            )
        if self.dtype != dtype:
            raise SpecError(
                f"makes {self.dtype} samples, the model input is {dtype}",
                field="image",
                fix=f"use dtype={dtype!r} in the image prep",
            )

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Return the model input of one sample made from an HWC (or HW) uint8 RGB frame.

        Raises:
            ValueError: the frame is not HW, HWx1 or HWx3, or the crop lies outside it.
        """
        image = _as_hwc(frame)
        if self.crop is not None:
            x, y, w, h = self.crop
            if y + h > image.shape[0] or x + w > image.shape[1]:
                raise ValueError(
                    f"crop (x={x}, y={y}, w={w}, h={h}) reaches outside the "
                    f"{image.shape[1]}x{image.shape[0]} frame"
                )
            image = image[y : y + h, x : x + w]
        if self.resize is not None and self.resize != image.shape[:2]:
            resize = _resize_area if self.resample == "area" else _resize_bilinear
            pixels = resize(image, self.resize)
        else:
            pixels = image.astype(np.float32)
        if self.colour == "gray":
            pixels = (pixels @ _LUMA)[..., None] if pixels.shape[2] == 3 else pixels
        else:
            if pixels.shape[2] == 1:
                pixels = np.repeat(pixels, 3, axis=2)
            if self.colour == "bgr":
                pixels = pixels[..., ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        pixels = (pixels * np.float32(self.scale) - mean) / std
        if self.layout == "chw":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels, dtype=self.dtype)


def _as_hwc(frame: np.ndarray) -> np.ndarray:
    array = np.asarray(frame)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(
            f"frame of shape {array.shape}: image prep takes HxWx3 RGB, HxWx1 or HxW frames"
        )
    return array


def _resize_bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with pixel centres aligned (OpenCV's INTER_LINEAR, no antialias)."""
    for axis, out in enumerate(size):
        n = pixels.shape[axis]
        src = np.clip((np.arange(out, dtype=np.float64) + 0.5) * (n / out) - 0.5, 0, n - 1)
        low = np.floor(src).astype(np.intp)
        high = np.minimum(low + 1, n - 1)
        weight = _along((src - low).astype(np.float32), axis)
        a = np.take(pixels, low, axis=axis).astype(np.float32)
        b = np.take(pixels, high, axis=axis).astype(np.float32)
        pixels = a + (b - a) * weight
    return pixels.astype(np.float32, copy=False)


def _resize_area(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Box-average resize: each output pixel is the mean of the input area it covers.

    Exact for fractional boxes: output ``j`` along an axis covers input ``[j*s, (j+1)*s)``
    with ``s = n / out``; each input pixel it touches weighs by the length it shares.  The
    sum runs over at most ``ceil(s) + 1`` taps gathered at the output size, so the cost is
    about one pass over the frame, and uint8 frames are read without a float copy first.
    """
    for axis, out in enumerate(size):
        n = pixels.shape[axis]
        scale = n / out
        starts = np.arange(out, dtype=np.float64) * scale
        taps = np.floor(starts).astype(np.intp)[:, None] + np.arange(int(np.ceil(scale)) + 1)
        overlap = np.minimum(taps + 1, starts[:, None] + scale) - np.maximum(taps, starts[:, None])
        weights = (np.clip(overlap, 0.0, None) / scale).astype(np.float32)
        taps = np.minimum(taps, n - 1)  # taps past the end have weight 0
        total = np.zeros(
            [out if i == axis else d for i, d in enumerate(pixels.shape)], dtype=np.float32
        )
        for k in range(taps.shape[1]):
            total += np.take(pixels, taps[:, k], axis=axis) * _along(weights[:, k], axis)
        pixels = total
    return pixels


def _along(values: np.ndarray, axis: int) -> np.ndarray:
    """Return 1-D ``values`` shaped to broadcast along ``axis`` of an HWC image."""
    shape = [1, 1, 1]
    shape[axis] = values.shape[0]
    return values.reshape(shape)
