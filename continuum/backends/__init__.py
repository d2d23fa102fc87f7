"""Inference backends behind one protocol: ONNX Runtime everywhere, TensorRT on NVIDIA GPUs.

``open_backend("auto", path)`` picks TensorRT where it runs and ONNX Runtime
elsewhere; both take the same ONNX artifact.
"""

from __future__ import annotations

from continuum.backends._auto import (
    BACKEND_PREFERENCE,
    available_backends,
    open_backend,
    select_backend,
)
from continuum.backends.base import BackendKind, InferenceBackend, TensorMeta, check_batch
from continuum.backends.onnxruntime import OnnxRuntimeBackend
from continuum.backends.tensorrt import (
    EngineSpec,
    TensorRTBackend,
    engine_cache_key,
    nvidia_gpu_present,
    tensorrt_unavailable_reason,
    tensorrt_version,
)

__all__ = [
    "BACKEND_PREFERENCE",
    "BackendKind",
    "EngineSpec",
    "InferenceBackend",
    "OnnxRuntimeBackend",
    "TensorMeta",
    "TensorRTBackend",
    "available_backends",
    "check_batch",
    "engine_cache_key",
    "nvidia_gpu_present",
    "open_backend",
    "select_backend",
    "tensorrt_unavailable_reason",
    "tensorrt_version",
]
