"""The TensorRT backend: build an engine from the ONNX artifact on the device, cache it, run it.

``tensorrt`` and ``pycuda`` are imported inside functions, so this module
imports on machines without them; only ``load`` needs them.  Engines are
specific to the model, the TensorRT version and the GPU, so the on-disk cache
is keyed by all three (``engine_cache_key``): a new TensorRT or another GPU
rebuilds instead of failing to deserialize.  Written against the TensorRT 10
Python API (named I/O tensors, ``set_input_shape``/``set_tensor_address``,
``execute_async_v3``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from continuum._fs import atomic_write
from continuum.backends.base import TensorMeta, check_batch, check_frames, single_input
from continuum.errors import BackendError, BackendUnavailableError
from continuum.signing import sha256_file

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp16", "fp32"]

#: Bumped when the way continuum builds engines changes, so old cache entries are not reused.
ENGINE_FORMAT = "continuum-trt-engine-v1"

#: Device nodes of a discrete NVIDIA GPU (nvidia0) and of a Jetson's integrated GPU (nvhost).
GPU_DEVICE_NODES: tuple[str, ...] = ("/dev/nvidia0", "/dev/nvhost-gpu", "/dev/nvhost-ctrl-gpu")

DEFAULT_WORKSPACE_BYTES = 256 << 20

_FIX = 'pip install continuum[tensorrt], or use backend="onnxruntime"'


# --- engine cache key (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class EngineSpec:
    """Everything a built engine depends on; two equal specs can share one cached engine."""

    model_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    max_batch: int
    precision: Precision


def engine_cache_key(spec: EngineSpec) -> str:
    """Return the cache key (hex sha256) of an engine built for ``spec``."""
    fields = {"format": ENGINE_FORMAT, **asdict(spec)}
    fields["compute_capability"] = list(spec.compute_capability)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def engine_cache_path(cache_dir: Path, spec: EngineSpec) -> Path:
    """Return where the engine for ``spec`` lives in ``cache_dir``."""
    return Path(cache_dir) / f"{engine_cache_key(spec)}.engine"


def default_engine_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/continuum/engines`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "continuum" / "engines"


def fast_fp16(compute_capability: tuple[int, int]) -> bool:
    """Return whether a GPU of this compute capability has fast native FP16.

    Used when TensorRT no longer answers ``platform_has_fast_fp16``: sm_53 (Jetson Nano),
    sm_60, sm_62 (Jetson TX2) and sm_70 onwards do; sm_61 consumer Pascal and older do not.
    """
    return compute_capability in {(5, 3), (6, 0), (6, 2)} or compute_capability >= (7, 0)


# --- availability probes ----------------------------------------------------------------------


def nvidia_gpu_present(*, timeout_s: float = 5.0) -> bool:
    """Return whether an NVIDIA GPU is visible: device node, ``nvidia-smi -L``, or pycuda."""
    if any(Path(node).exists() for node in GPU_DEVICE_NODES):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            listed = subprocess.run(
                [smi, "-L"], capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            pass
        else:
            if listed.returncode == 0 and "GPU" in listed.stdout:
                return True
    if importlib.util.find_spec("pycuda") is not None:
        try:
            import pycuda.driver as cuda

            cuda.init()
            return int(cuda.Device.count()) > 0
        except Exception:  # no driver, no device: pycuda raises its own error classes
            return False
    return False


@functools.cache
def tensorrt_unavailable_reason() -> str | None:
    """Return why the TensorRT backend cannot run here (with the fix), or None when it can.

    Probed once per process: packages and GPUs do not come and go under a running agent.
    """
    missing = [name for name in ("tensorrt", "pycuda") if importlib.util.find_spec(name) is None]
    if missing:
        return f"python package(s) {', '.join(missing)} not installed (fix: {_FIX})"
    if not nvidia_gpu_present():
        return (
            f"no NVIDIA GPU visible (checked {', '.join(GPU_DEVICE_NODES)}, nvidia-smi, pycuda) "
            '(fix: run on a node with an NVIDIA GPU, or use backend="onnxruntime")'
        )
    try:
        _modules()
    except Exception as exc:  # e.g. OSError: libnvinfer.so.10 missing
        return f"tensorrt or pycuda failed to import: {exc} (fix: {_FIX})"
    return None


def tensorrt_version() -> str | None:
    """Return the installed TensorRT version, or None when it does not import."""
    try:
        trt, _ = _modules()
    except Exception:
        return None
    return str(trt.__version__)


def _modules() -> tuple[Any, Any]:
    import pycuda.driver as cuda
    import tensorrt as trt

    return trt, cuda


@functools.cache
def _trt_logger() -> Any:
    # One logger per process: TensorRT keeps the first one it sees and warns about others.
    trt, _ = _modules()
    return trt.Logger(trt.Logger.WARNING)


# --- engine build -----------------------------------------------------------------------------


def _numpy_dtype(trt: Any, trt_dtype: Any, name: str) -> np.dtype[Any]:
    try:
        dtype: np.dtype[Any] = np.dtype(trt.nptype(trt_dtype))
    except TypeError as exc:  # BF16, FP8, INT4 have no numpy dtype
        raise BackendError(
            f"tensor {name!r} has TensorRT type {trt_dtype}, which numpy cannot hold"
        ) from exc
    return dtype


def _use_fp16(trt: Any, builder: Any, spec: EngineSpec) -> bool:
    if spec.precision == "fp32":
        return False
    if spec.precision == "fp16":
        return True
    with warnings.catch_warnings():
        # Deprecated in recent TensorRT 10 releases; the answer is still right where present.
        warnings.simplefilter("ignore", DeprecationWarning)
        answer = getattr(builder, "platform_has_fast_fp16", None)
    return bool(answer) if answer is not None else fast_fp16(spec.compute_capability)


def build_engine(
    trt: Any, logger: Any, onnx_path: Path, spec: EngineSpec, *, workspace_bytes: int
) -> bytes:
    """Return a serialized TensorRT engine built from the ONNX model at ``onnx_path``.

    The batch axis may be dynamic: it gets an optimisation profile from 1 to
    ``spec.max_batch`` (optimised for ``max_batch``, what a busy micro-batcher sends).

    Raises:
        BackendError: the ONNX file does not parse, a non-batch axis is dynamic, or
            TensorRT cannot build the network (its log says why).
    """
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse ONNX model {onnx_path}: {errors or 'unknown'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if _use_fp16(trt, builder, spec):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = [int(d) for d in tensor.shape]
        if any(d < 0 for d in dims[1:]):
            raise BackendError(
                f"cannot build a TensorRT engine for {onnx_path}: input {tensor.name!r} has "
                f"shape {dims}; only the batch axis may be dynamic (export fixed sizes)"
            )
        rest = tuple(dims[1:])
        if dims and dims[0] < 0:
            low, high = (1, *rest), (spec.max_batch, *rest)
        else:
            low = high = tuple(dims)
        profile.set_shape(tensor.name, low, high, high)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(
            f"TensorRT could not build an engine for {onnx_path}; see the TensorRT log above"
        )
    return bytes(plan)


# --- runtime state ----------------------------------------------------------------------------


@dataclass
class _Loaded:
    """One deserialized engine with its context, stream and buffers, on one CUDA context."""

    path: Path
    cuda_context: Any
    runtime: Any
    engine: Any
    context: Any
    stream: Any
    host: dict[str, np.ndarray]
    device: dict[str, Any]
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]
    max_batch: int


class TensorRTBackend:
    """Run an ONNX model as a TensorRT engine built on this GPU and cached on disk.

    Args:
        max_batch: the largest batch the engine accepts when the batch axis is dynamic.
        engine_cache_dir: where engines are cached (default ``default_engine_cache_dir()``).
        precision: "auto" (FP16 where the GPU has fast FP16), "fp16" or "fp32".
        workspace_bytes: the builder's workspace memory pool limit.
        device_id: the CUDA device to build for and run on.
    """

    name = "tensorrt"

    def __init__(
        self,
        *,
        max_batch: int = 8,
        engine_cache_dir: Path | None = None,
        precision: Precision = "auto",
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        device_id: int = 0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._max_batch = max_batch
        self._cache_dir = engine_cache_dir
        self._precision: Precision = precision
        self._workspace_bytes = workspace_bytes
        self._device_id = device_id
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()
        self.engine_path: Path | None = None
        #: True when the last ``load`` built the engine, False when it came from the cache.
        self.built_engine = False

    # -- loading ---------------------------------------------------------------------------

    def load(self, path: Path) -> None:
        """Build or fetch the engine for the ONNX model at ``path`` and prepare its buffers.

        Raises:
            BackendUnavailableError: tensorrt, pycuda or a GPU is missing (the message says
                which, and the fix).
            BackendError: the model file is missing or cannot become an engine.
        """
        path = Path(path)
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"backend 'tensorrt' is unavailable here: {reason}")
        if not path.is_file():
            reason = "is a directory" if path.is_dir() else "file not found"
            raise BackendError(f"cannot load ONNX model {path}: {reason}")
        trt, cuda = _modules()
        cuda.init()
        device = cuda.Device(self._device_id)
        cuda_context = device.retain_primary_context()
        cuda_context.push()
        try:
            major, minor = device.compute_capability()
            spec = EngineSpec(
                model_sha256=sha256_file(path),
                tensorrt_version=str(trt.__version__),
                gpu_name=str(device.name()),
                compute_capability=(int(major), int(minor)),
                max_batch=self._max_batch,
                precision=self._precision,
            )
            loaded = self._prepare(trt, cuda, path, spec, cuda_context)
        except BackendError:
            cuda_context.pop()
            cuda_context.detach()
            raise
        except Exception as exc:  # pycuda and TensorRT raise their own error classes
            cuda_context.pop()
            cuda_context.detach()
            raise BackendError(f"cannot load {path} with TensorRT: {exc}") from exc
        cuda_context.pop()
        with self._lock:
            previous, self._loaded = self._loaded, loaded
        if previous is not None:
            _release(previous)

    def _engine(self, trt: Any, logger: Any, runtime: Any, path: Path, spec: EngineSpec) -> Any:
        cache_dir = self._cache_dir or default_engine_cache_dir()
        engine_file = engine_cache_path(cache_dir, spec)
        self.engine_path = engine_file
        if engine_file.is_file():
            engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
            if engine is not None:
                self.built_engine = False
                return engine
            log.warning("cached TensorRT engine %s does not deserialize; rebuilding", engine_file)
        log.info("building TensorRT engine for %s (%s, %s)", path, spec.gpu_name, spec.precision)
        plan = build_engine(trt, logger, path, spec, workspace_bytes=self._workspace_bytes)
        engine_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(engine_file, plan)
        sidecar = {"format": ENGINE_FORMAT, "model_path": str(path), **asdict(spec)}
        atomic_write(engine_file.with_suffix(".json"), json.dumps(sidecar, indent=2))
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise BackendError(f"TensorRT built an engine for {path} but cannot deserialize it")
        self.built_engine = True
        return engine

    def _prepare(
        self, trt: Any, cuda: Any, path: Path, spec: EngineSpec, cuda_context: Any
    ) -> _Loaded:
        logger = _trt_logger()
        runtime = trt.Runtime(logger)
        engine = self._engine(trt, logger, runtime, path, spec)
        context = engine.create_execution_context()
        if context is None:
            raise BackendError(f"TensorRT cannot create an execution context for {path}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        output_names = [n for n in names if n not in input_names]

        def meta(name: str) -> TensorMeta:
            dims = tuple(int(d) for d in engine.get_tensor_shape(name))
            dtype = _numpy_dtype(trt, engine.get_tensor_dtype(name), name)
            return TensorMeta(name, tuple(d if d >= 0 else None for d in dims), dtype.name)

        inputs = [meta(n) for n in input_names]
        outputs = [meta(n) for n in output_names]
        model_input = single_input(inputs, path)
        if not outputs:
            raise BackendError(f"cannot use model {path}: it has no outputs")

        # Size every buffer for the largest batch of profile 0, once; infer only slices them.
        max_shapes: dict[str, tuple[int, ...]] = {}
        for name in input_names:
            largest = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[2])
            if not context.set_input_shape(name, largest):
                raise BackendError(f"TensorRT rejects shape {largest} for input {name!r}")
            max_shapes[name] = largest
        for name in output_names:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError(
                    f"output {name!r} of {path} has a data-dependent shape {shape}; "
                    "the TensorRT backend needs outputs sized by the input shape"
                )
            max_shapes[name] = shape
        host: dict[str, np.ndarray] = {}
        device: dict[str, Any] = {}
        for name in names:
            dtype = _numpy_dtype(trt, engine.get_tensor_dtype(name), name)
            volume = max(1, math.prod(max_shapes[name]))
            host[name] = cuda.pagelocked_empty(volume, dtype)
            device[name] = cuda.mem_alloc(volume * dtype.itemsize)
            context.set_tensor_address(name, int(device[name]))
        max_batch = max_shapes[model_input.name][0] if model_input.shape else 1
        return _Loaded(
            path=path,
            cuda_context=cuda_context,
            runtime=runtime,
            engine=engine,
            context=context,
            stream=cuda.Stream(),
            host=host,
            device=device,
            inputs=inputs,
            outputs=outputs,
            max_batch=max_batch,
        )

    # -- serving ---------------------------------------------------------------------------

    @property
    def inputs(self) -> list[TensorMeta]:
        """Return the engine's inputs (batch dimension first; ``None`` is dynamic)."""
        loaded = self._loaded
        return list(loaded.inputs) if loaded is not None else []

    @property
    def outputs(self) -> list[TensorMeta]:
        """Return the engine's outputs (batch dimension first; ``None`` is dynamic)."""
        loaded = self._loaded
        return list(loaded.outputs) if loaded is not None else []

    @property
    def max_batch(self) -> int:
        """Return the largest batch the loaded engine accepts (the constructor's before load)."""
        loaded = self._loaded
        return loaded.max_batch if loaded is not None else self._max_batch

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch on the GPU and return the engine's first output.

        Raises:
            InputMismatchError: wrong rank, fixed dimension or dtype, or a batch larger than
                the engine's ``max_batch``.
            BackendError: no engine is loaded, or TensorRT/CUDA failed.
        """
        with self._lock:
            loaded = self._loaded_engine()
            array = check_batch(batch, loaded.inputs[0], max_batch=loaded.max_batch)
            return self._on_device(loaded, array.shape, lambda staged: np.copyto(staged, array))

    def infer_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Run ``frames`` (one sample each) as one batch on the GPU; return the first output.

        The frames are stacked straight into the page-locked input buffer: one copy, where
        a batch built first and then staged would take two.

        Raises:
            InputMismatchError: no frames, more than ``max_batch``, or a frame whose shape or
                dtype does not fit.
            BackendError: no engine is loaded, or TensorRT/CUDA failed.
        """
        with self._lock:
            loaded = self._loaded_engine()
            checked = check_frames(frames, loaded.inputs[0], max_batch=loaded.max_batch)
            shape = (len(checked), *checked[0].shape)
            return self._on_device(loaded, shape, lambda staged: np.stack(checked, out=staged))

    def _loaded_engine(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            raise BackendError("no model loaded: call load(path) first")
        return loaded

    @staticmethod
    def _on_device(
        loaded: _Loaded, shape: tuple[int, ...], fill: Callable[[np.ndarray], object]
    ) -> np.ndarray:
        """Run one batch of ``shape`` that ``fill`` writes into the staging buffer."""
        loaded.cuda_context.push()
        try:
            return _run(loaded, loaded.inputs[0].name, shape, fill)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"TensorRT inference failed on {loaded.path}: {exc}") from exc
        finally:
            loaded.cuda_context.pop()

    def close(self) -> None:
        """Free the engine and its GPU buffers; ``load`` may be called again."""
        with self._lock:
            loaded, self._loaded = self._loaded, None
        if loaded is not None:
            _release(loaded)


def _run(
    loaded: _Loaded,
    input_name: str,
    shape: tuple[int, ...],
    fill: Callable[[np.ndarray], object],
) -> np.ndarray:
    import pycuda.driver as cuda

    context, stream = loaded.context, loaded.stream
    if not context.set_input_shape(input_name, shape):
        raise BackendError(f"TensorRT rejects shape {shape} for input {input_name!r}")
    staged = loaded.host[input_name][: math.prod(shape)]
    fill(staged.reshape(shape))  # a view of the page-locked buffer
    cuda.memcpy_htod_async(loaded.device[input_name], staged, stream)
    if not context.execute_async_v3(stream.handle):
        raise BackendError(f"TensorRT execute_async_v3 failed on {loaded.path}")
    first = loaded.outputs[0].name
    out_shape = tuple(int(d) for d in context.get_tensor_shape(first))
    result = loaded.host[first][: math.prod(out_shape)]
    cuda.memcpy_dtoh_async(result, loaded.device[first], stream)
    stream.synchronize()
    return result.reshape(out_shape).copy()


def _release(loaded: _Loaded) -> None:
    loaded.cuda_context.push()
    try:
        for allocation in loaded.device.values():
            allocation.free()
        loaded.device.clear()
        loaded.host.clear()
        # Context before engine before runtime: TensorRT objects must die in that order.
        loaded.context = None
        loaded.engine = None
        loaded.runtime = None
        loaded.stream = None
    finally:
        loaded.cuda_context.pop()
        loaded.cuda_context.detach()
