"""The ONNX Runtime backend: CPU everywhere, CUDA and TensorRT execution providers where present.

``onnxruntime`` is imported when a model is loaded, not when this module is,
so ``continuum.backends`` imports on a core install.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from continuum.backends.base import TensorMeta, check_batch, single_input
from continuum.errors import BackendError, BackendUnavailableError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: Provider preference when none is named: the fastest that this onnxruntime build offers.
PREFERRED_PROVIDERS: tuple[str, ...] = (TENSORRT, CUDA, CPU)

#: ONNX Runtime's type strings mapped to numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'onnxruntime' is unavailable: the python package 'onnxruntime' is not "
            "installed (fix: pip install continuum[edge])"
        ) from exc
    return onnxruntime


def onnxruntime_available() -> bool:
    """Return whether ``onnxruntime`` imports here."""
    try:
        _import_onnxruntime()
    except BackendUnavailableError:
        return False
    return True


def available_providers() -> list[str]:
    """Return the execution providers continuum would use here, fastest first."""
    ort = _import_onnxruntime()
    offered = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in offered]


def _meta(arg: Any) -> TensorMeta:
    # ORT reports a dynamic dimension as a symbol ("N", "batch") or None.
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return TensorMeta(name=arg.name, shape=shape, dtype=_ORT_TYPES.get(arg.type, arg.type))


class OnnxRuntimeBackend:
    """Run an ONNX model with ONNX Runtime.

    Args:
        intra_op_threads: threads one inference may use; 1 by default because an edge box
            runs several pipelines side by side and each should keep to one core.
        providers: execution providers in order of preference; by default TensorRT, CUDA
            and CPU, each only where ``onnxruntime.get_available_providers()`` lists it.
        device_id: the GPU the CUDA and TensorRT providers use.
        engine_cache_dir: where the TensorRT provider keeps the engines it builds.
        replicas: sessions of the model, so that as many ``infer`` calls run at once, each
            on its own session (ONNX Runtime lets calls share one session, but each then
            waits on the other's memory arena). The edge runtime keeps as many micro-batches
            in flight: on a CPU, small convolutions split poorly across intra-op threads
            but well across batches. Each replica holds its own copy of the weights.
    """

    name = "onnxruntime"

    def __init__(
        self,
        *,
        intra_op_threads: int = 1,
        providers: Sequence[str] | None = None,
        device_id: int = 0,
        engine_cache_dir: Path | None = None,
        replicas: int = 1,
    ) -> None:
        if intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self._intra_op_threads = intra_op_threads
        self._replicas = replicas
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._requested = tuple(providers) if providers is not None else None
        self._device_id = device_id
        self._engine_cache_dir = engine_cache_dir
        self._session: Any = None
        self._inputs: list[TensorMeta] = []
        self._outputs: list[TensorMeta] = []
        self._input: TensorMeta | None = None
        self._output_names: list[str] = []
        self._path: Path | None = None
        self._lock = threading.Lock()

    def _provider_list(self, ort: Any) -> list[Any]:
        offered = set(ort.get_available_providers())
        if self._requested is None:
            chosen = [p for p in PREFERRED_PROVIDERS if p in offered]
        else:
            missing = [p for p in self._requested if p not in offered]
            if missing:
                raise BackendUnavailableError(
                    f"onnxruntime here offers {sorted(offered)}, not {missing} (fix: install "
                    "onnxruntime-gpu for CUDA/TensorRT, or leave providers unset)"
                )
            chosen = list(self._requested)
        result: list[Any] = []
        for provider in chosen:
            if provider == CUDA:
                result.append((CUDA, {"device_id": str(self._device_id)}))
            elif provider == TENSORRT:
                options = {"device_id": str(self._device_id), "trt_fp16_enable": "True"}
                if self._engine_cache_dir is not None:
                    self._engine_cache_dir.mkdir(parents=True, exist_ok=True)
                    options["trt_engine_cache_enable"] = "True"
                    options["trt_engine_cache_path"] = str(self._engine_cache_dir)
                result.append((TENSORRT, options))
            else:
                result.append(provider)
        return result

    def load(self, path: Path) -> None:
        """Load the ONNX model at ``path``.

        Raises:
            BackendError: the file is missing, unreadable, not ONNX, or has other than one input.
            BackendUnavailableError: onnxruntime or a requested provider is missing.
        """
        path = Path(path)
        ort = _import_onnxruntime()
        if not path.is_file():
            reason = "is a directory" if path.is_dir() else "file not found"
            raise BackendError(f"cannot load ONNX model {path}: {reason}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: a warning per load floods edge logs
        providers = self._provider_list(ort)
        try:
            sessions = [
                ort.InferenceSession(str(path), sess_options=options, providers=providers)
                for _ in range(self._replicas)
            ]
        except Exception as exc:  # ORT raises its own pybind classes, none of them exported
            raise BackendError(f"cannot load ONNX model {path}: {_ort_reason(exc)}") from exc
        session = sessions[0]
        inputs = [_meta(a) for a in session.get_inputs()]
        outputs = [_meta(a) for a in session.get_outputs()]
        model_input = single_input(inputs, path)
        if not outputs:
            raise BackendError(f"cannot use model {path}: it has no outputs")
        idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for replica in sessions:
            idle.put(replica)
        with self._lock:
            self._session = session
            self._idle = idle
            self._inputs, self._outputs, self._input = inputs, outputs, model_input
            self._output_names = [outputs[0].name]
            self._path = path

    @property
    def inputs(self) -> list[TensorMeta]:
        """Return the model's inputs (batch dimension first)."""
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorMeta]:
        """Return the model's outputs (batch dimension first)."""
        return list(self._outputs)

    @property
    def providers(self) -> list[str]:
        """Return the providers the loaded session actually uses, fastest first."""
        if self._session is None:
            return []
        return list(self._session.get_providers())

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch and return the model's first output.

        Raises:
            InputMismatchError: the batch's rank, fixed dimensions or dtype do not fit.
            BackendError: no model is loaded, or the runtime failed.
        """
        session, model_input, idle = self._session, self._input, self._idle
        if session is None or model_input is None:
            raise BackendError("no model loaded: call load(path) first")
        array = check_batch(batch, model_input)
        # With replicas, each call takes a free session (waiting while all are busy) and
        # gives it back; the queue taken above is the loaded model's, even if a close or a
        # load replaces it meanwhile.
        runner = session if self._replicas == 1 else idle.get()
        try:
            first = runner.run(self._output_names, {model_input.name: array})[0]
        except Exception as exc:
            raise BackendError(f"inference failed on {self._path}: {_ort_reason(exc)}") from exc
        finally:
            if self._replicas > 1:
                idle.put(runner)
        return first if type(first) is np.ndarray else np.asarray(first)

    def close(self) -> None:
        """Drop the session; ``load`` may be called again."""
        with self._lock:
            self._session = None
            self._idle = queue.SimpleQueue()
            self._input = None


def _ort_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Failed to load ..." -> keep the useful tail.
    if text.startswith("[ONNXRuntimeError]"):
        parts = [p.strip() for p in text.split(" : ", 3)]
        if len(parts) == 4:
            return f"{parts[3]} ({parts[2].lower()})"
    return text or type(exc).__name__
