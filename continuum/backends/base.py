"""The one protocol every inference backend implements, and the input check they share.

A backend loads one model file and runs batches through it.  It knows the
model's input and output tensors (``TensorMeta``) and refuses a batch whose
rank, fixed dimensions or dtype do not match, before the runtime sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from continuum.errors import BackendError, InputMismatchError

#: The backend names a pipeline may ask for; "auto" resolves to one of the others.
BackendKind = Literal["auto", "onnxruntime", "tensorrt"]


@dataclass(frozen=True)
class TensorMeta:
    """Name, shape and dtype of one model input or output.

    ``shape`` includes the batch dimension; ``None`` marks a dynamic dimension
    (any size accepted).  ``dtype`` is a numpy dtype name such as ``"float32"``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    @property
    def rank(self) -> int:
        """Return the number of dimensions, batch included."""
        return len(self.shape)

    def describe(self) -> str:
        """Return a compact spelling such as ``float32[N,1,8,8]`` (``N``/``?`` are dynamic)."""
        dims = [
            str(d) if d is not None else ("N" if axis == 0 else "?")
            for axis, d in enumerate(self.shape)
        ]
        return f"{self.dtype}[{','.join(dims)}]"

    @cached_property
    def _fast_check(self) -> tuple[np.dtype[Any], int | None, tuple[int, ...]] | None:
        """(dtype, fixed batch size or None, the other dims) when those dims are all fixed.

        Lets ``check_batch`` accept the usual batch with a dtype and a tuple comparison;
        None (a dynamic non-batch dim, or a dtype numpy lacks) leaves the full check.
        """
        tail = self.shape[1:]
        if not self.shape or any(d is None for d in tail):
            return None
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            return None
        return dtype, self.shape[0], tuple(d for d in tail if d is not None)


def describe_array(array: np.ndarray) -> str:
    """Return the spelling of an actual array in the same form as ``TensorMeta.describe``."""
    return f"{array.dtype.name}[{','.join(str(d) for d in array.shape)}]"


def check_batch(batch: object, meta: TensorMeta, *, max_batch: int | None = None) -> np.ndarray:
    """Return ``batch`` as a C-contiguous array if it fits ``meta``, else raise.

    Args:
        batch: the tensor handed to ``infer``; its first axis is the batch.
        meta: the model's input.
        max_batch: the largest batch the backend can run (TensorRT's profile), if bounded.

    Raises:
        InputMismatchError: wrong type, rank, fixed dimension, dtype or batch size; the
            message names the expected and the actual tensor.
    """
    fast = meta._fast_check
    if fast is not None and type(batch) is np.ndarray:
        dtype, size, tail = fast
        shape = batch.shape
        if (
            batch.dtype == dtype
            and shape[1:] == tail
            and len(shape) == len(tail) + 1
            and (shape[0] == size if size is not None else shape[0] >= 1)
            and (max_batch is None or shape[0] <= max_batch)
        ):
            return batch if batch.flags.c_contiguous else np.ascontiguousarray(batch)
    if not isinstance(batch, np.ndarray):
        raise InputMismatchError(
            f"input {meta.name!r} must be a numpy array",
            expected=meta.describe(),
            got=type(batch).__name__,
        )
    # This runs on every inference: spell the tensors out only when there is an error.
    problem = None
    expected_suffix = ""
    if batch.ndim != meta.rank:
        problem = f"input {meta.name!r} has rank {batch.ndim}, the model takes rank {meta.rank}"
    else:
        for axis, (want, have) in enumerate(zip(meta.shape, batch.shape, strict=True)):
            if want is not None and want != have:
                problem = (
                    f"input {meta.name!r} has size {have} on axis {axis}, the model takes {want}"
                )
                break
    if problem is None and batch.dtype.name != meta.dtype:
        problem = (
            f"input {meta.name!r} has dtype {batch.dtype.name}, the model takes {meta.dtype} "
            f"(convert with .astype(np.{meta.dtype}))"
        )
    if problem is None and batch.ndim and batch.shape[0] < 1:
        problem = f"input {meta.name!r} is an empty batch"
    if problem is None and max_batch is not None and batch.ndim and batch.shape[0] > max_batch:
        problem = (
            f"input {meta.name!r} batch of {batch.shape[0]} exceeds max_batch={max_batch} "
            "(split the batch, or rebuild the engine with a larger max_batch)"
        )
        expected_suffix = f" with N<={max_batch}"
    if problem is not None:
        raise InputMismatchError(
            problem, expected=meta.describe() + expected_suffix, got=describe_array(batch)
        )
    return np.ascontiguousarray(batch)


def check_frames(
    frames: Sequence[object], meta: TensorMeta, *, max_batch: int | None = None
) -> list[np.ndarray]:
    """Return ``frames`` (each one sample, no batch axis) as C-contiguous arrays if together
    they are a batch that fits ``meta``, else raise.

    Raises:
        InputMismatchError: no frames, more than ``max_batch``, or a frame of the wrong type,
            shape or dtype; the message names the frame, the expected and the actual tensor.
    """
    count = len(frames)
    if count < 1:
        raise InputMismatchError(
            f"input {meta.name!r} is an empty batch", expected=meta.describe(), got="no frames"
        )
    if max_batch is not None and count > max_batch:
        raise InputMismatchError(
            f"input {meta.name!r} batch of {count} exceeds max_batch={max_batch} (split the "
            "batch, or rebuild the engine with a larger max_batch)",
            expected=f"{meta.describe()} with N<={max_batch}",
            got=f"{count} frames",
        )
    fixed = meta.shape[0] if meta.shape else None
    if fixed is not None and count != fixed:
        raise InputMismatchError(
            f"input {meta.name!r} takes batches of exactly {fixed}",
            expected=meta.describe(),
            got=f"{count} frames",
        )
    fast = meta._fast_check
    checked: list[np.ndarray] = []
    for index, frame in enumerate(frames):
        if (
            fast is not None
            and type(frame) is np.ndarray
            and frame.dtype == fast[0]
            and frame.shape == fast[2]
        ):
            checked.append(frame if frame.flags.c_contiguous else np.ascontiguousarray(frame))
            continue
        try:
            if not isinstance(frame, np.ndarray):
                raise InputMismatchError(
                    f"input {meta.name!r} must be a numpy array",
                    expected=meta.describe(),
                    got=type(frame).__name__,
                )
            one = replace(meta, shape=(None, *meta.shape[1:]))  # a frame: a batch of 1
            checked.append(check_batch(frame[np.newaxis], one)[0])
        except InputMismatchError as exc:
            raise InputMismatchError(
                f"frame {index} of {count}: {exc.problem}", expected=exc.expected, got=exc.got
            ) from None
    return checked


def single_input(inputs: Sequence[TensorMeta], path: Path) -> TensorMeta:
    """Return the model's only input; edge stages feed exactly one tensor."""
    if len(inputs) != 1:
        names = ", ".join(m.name for m in inputs) or "none"
        raise BackendError(
            f"cannot use model {path}: it has {len(inputs)} inputs ({names}); "
            "a continuum edge stage feeds exactly one tensor"
        )
    return inputs[0]


@runtime_checkable
class InferenceBackend(Protocol):
    """A loaded model that runs batches: ONNX Runtime, TensorRT, or anything alike."""

    name: str

    def load(self, path: Path) -> None:
        """Load the model at ``path``; raise ``BackendError`` naming the path and the reason."""
        ...

    @property
    def inputs(self) -> list[TensorMeta]:
        """Return the model's inputs (batch dimension first)."""
        ...

    @property
    def outputs(self) -> list[TensorMeta]:
        """Return the model's outputs (batch dimension first)."""
        ...

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output; ``InputMismatchError`` on a bad batch."""
        ...

    def infer_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Run ``frames`` (one sample each, no batch axis) as one batch; return the first
        output, a row per frame.

        What the edge runtime calls: the backend lays the frames out as it runs them best
        (stacked once into its own input buffer, or run one by one where that is faster),
        so the runtime never copies them into a batch of its own first.
        """
        ...

    def close(self) -> None:
        """Release the model and any device memory; the backend cannot infer afterwards."""
        ...
