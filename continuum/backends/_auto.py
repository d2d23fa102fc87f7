"""Which backends run here, what "auto" means, and opening a backend by name."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from continuum.backends.base import BackendKind, InferenceBackend
from continuum.backends.onnxruntime import OnnxRuntimeBackend, onnxruntime_available
from continuum.backends.tensorrt import Precision, TensorRTBackend, tensorrt_unavailable_reason
from continuum.errors import BackendUnavailableError, ConfigError

ConcreteKind = Literal["onnxruntime", "tensorrt"]

#: Preference order for "auto": TensorRT where it can run, else ONNX Runtime.
BACKEND_PREFERENCE: tuple[ConcreteKind, ...] = ("tensorrt", "onnxruntime")


def available_backends() -> list[str]:
    """Return the backends that can run on this machine, preferred first."""
    found: list[str] = []
    if tensorrt_unavailable_reason() is None:
        found.append("tensorrt")
    if onnxruntime_available():
        found.append("onnxruntime")
    return found


def select_backend(kind: BackendKind | str = "auto") -> ConcreteKind:
    """Return the concrete backend for ``kind``; "auto" is tensorrt if it runs, else onnxruntime.

    Raises:
        ConfigError: ``kind`` is not a backend name.
        BackendUnavailableError: the named backend (or, for "auto", any backend) cannot run
            here; the message says what is missing and the fix.
    """
    if kind == "auto":
        if tensorrt_unavailable_reason() is None:
            return "tensorrt"
        if onnxruntime_available():
            return "onnxruntime"
        raise BackendUnavailableError(
            "no inference backend runs here: neither tensorrt nor onnxruntime is usable "
            "(fix: pip install continuum[edge])"
        )
    if kind == "tensorrt":
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"backend 'tensorrt' is unavailable here: {reason}")
        return "tensorrt"
    if kind == "onnxruntime":
        if not onnxruntime_available():
            raise BackendUnavailableError(
                "backend 'onnxruntime' is unavailable: the python package 'onnxruntime' is not "
                "installed (fix: pip install continuum[edge])"
            )
        return "onnxruntime"
    raise ConfigError(f"unknown backend {kind!r}: use 'auto', 'onnxruntime' or 'tensorrt'")


def open_backend(
    kind: BackendKind | str,
    path: Path | str,
    *,
    intra_op_threads: int = 1,
    replicas: int = 1,
    max_batch: int = 8,
    engine_cache_dir: Path | None = None,
    precision: Precision = "auto",
    device_id: int = 0,
    plan_batches: bool = False,
) -> InferenceBackend:
    """Return a backend of ``kind`` with the model at ``path`` loaded.

    Args:
        kind: "auto", "onnxruntime" or "tensorrt".
        path: the ONNX model (both backends take the same artifact).
        intra_op_threads: ONNX Runtime threads per inference (1: edge boxes share cores).
        replicas: ONNX Runtime sessions, so that as many batches run at once (see
            ``OnnxRuntimeBackend``); TensorRT runs one batch at a time on its stream.
        max_batch: the largest batch ``infer`` will be given (TensorRT builds its engine
            for it).
        engine_cache_dir: where built TensorRT engines are kept.
        precision: TensorRT precision: "auto" (FP16 where fast), "fp16" or "fp32".
        device_id: the GPU to use.
        plan_batches: on ONNX Runtime's CPU provider, time each batch size up to
            ``max_batch`` whole and frame by frame at load, and run it the faster way (the
            edge runtime's micro-batches; see ``OnnxRuntimeBackend``).

    Raises:
        BackendUnavailableError, ConfigError: as ``select_backend``.
        BackendError: the model cannot be loaded (the message names the path and why).
    """
    backend: InferenceBackend
    if select_backend(kind) == "tensorrt":
        backend = TensorRTBackend(
            max_batch=max_batch,
            engine_cache_dir=engine_cache_dir,
            precision=precision,
            device_id=device_id,
        )
    else:
        backend = OnnxRuntimeBackend(
            intra_op_threads=intra_op_threads,
            replicas=replicas,
            device_id=device_id,
            engine_cache_dir=engine_cache_dir,
            plan_batches_up_to=max_batch if plan_batches else 1,
        )
    backend.load(Path(path))
    return backend
