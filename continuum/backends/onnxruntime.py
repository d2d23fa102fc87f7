"""The ONNX Runtime backend: CPU everywhere, CUDA and TensorRT execution providers where present.

``onnxruntime`` is imported when a model is loaded, not when this module is,
so ``continuum.backends`` imports on a core install.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from continuum.backends.base import TensorMeta, check_batch, check_frames, single_input
from continuum.backends.tensorrt import tensorrt_version
from continuum.errors import BackendError, BackendUnavailableError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: Provider preference when none is named: the fastest that this onnxruntime build offers.
PREFERRED_PROVIDERS: tuple[str, ...] = (TENSORRT, CUDA, CPU)

#: The CPU batch plan (``_plan_batches``) times each batch size this many times each way
#: and keeps the fastest run of each (load only ever adds time), within this much time in
#: all; sizes it had no time for follow the largest size it measured.
_PLAN_RUNS = 3
_PLAN_BUDGET_S = 2.0

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


def _plan_batches(
    session: Any, model_input: TensorMeta, output_names: list[str], max_batch: int
) -> tuple[bool, ...]:
    """Time each batch size up to ``max_batch`` run whole and frame by frame; return, per
    size (as index), whether frame by frame was faster.

    On a CPU, one frame of a convolutional net at 224x224 already fills a core, and a
    batch runs slower per frame than its frames one at a time: its activations no longer
    fit the caches (SqueezeNet 1.0 on one core: batch 8 at 0.90x the frames/s of batch 1).
    Batching still pays on small models (the digits CNN: 3x at batch 32).  Running a
    micro-batch frame by frame where that is faster keeps the model at its best speed while
    the edge runtime still spreads its own per-batch work (selection, outbox, metrics) over
    the micro-batch.  Sizes measured are 2, 4, ... and ``max_batch`` (the batch sizer's
    candidates), on synthetic frames, once at load; a size in between follows the largest
    measured size below it.  Returns ``()`` (always whole) where a dimension besides the
    batch is dynamic or the input type has no numpy dtype.
    """
    tail = tuple(d for d in model_input.shape[1:] if d is not None)
    if max_batch < 2 or len(tail) != len(model_input.shape) - 1:
        return ()
    try:
        dtype = np.dtype(model_input.dtype)
    except TypeError:
        return ()
    rng = np.random.default_rng(0)
    frames = rng.random((max_batch, *tail)).astype(dtype) if dtype.kind == "f" else None
    if frames is None:
        frames = np.zeros((max_batch, *tail), dtype=dtype)
    name = model_input.name

    def timed(batch: np.ndarray, frame_by_frame: bool) -> float:
        started = time.perf_counter()
        if frame_by_frame:
            for i in range(len(batch)):
                session.run(output_names, {name: batch[i : i + 1]})
        else:
            session.run(output_names, {name: batch})
        return time.perf_counter() - started

    session.run(output_names, {name: frames})  # warm up at the largest shape first
    sizes = {2**k for k in range(1, max_batch.bit_length()) if 2**k < max_batch}
    split = [False] * (max_batch + 1)
    deadline = time.perf_counter() + _PLAN_BUDGET_S
    decided = False
    for size in sorted({*sizes, max_batch}):
        if time.perf_counter() < deadline:
            batch = frames[:size]
            # Alternating, so that load which comes and goes weighs on both ways alike.
            whole_s = split_s = math.inf
            for _ in range(_PLAN_RUNS):
                whole_s = min(whole_s, timed(batch, frame_by_frame=False))
                split_s = min(split_s, timed(batch, frame_by_frame=True))
            decided = split_s < whole_s
        for n in range(size, max_batch + 1):
            split[n] = decided
    return tuple(split)


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
        plan_batches_up_to: the largest batch the caller will pass, if it wants each batch
            size run the faster of two ways on the CPU provider: whole, or frame by frame,
            as timed at load (about 2 s at most; see ``_plan_batches``). The outputs are
            the same either way. 1 (the default) always runs batches whole.
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
        plan_batches_up_to: int = 1,
    ) -> None:
        if intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        if plan_batches_up_to < 1:
            raise ValueError(f"plan_batches_up_to must be >= 1, got {plan_batches_up_to}")
        self._intra_op_threads = intra_op_threads
        self._replicas = replicas
        self._plan_up_to = plan_batches_up_to
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
        self._split: tuple[bool, ...] = ()  # per batch size: run it frame by frame
        self._stack_buffers: dict[int, np.ndarray] = {}  # id(session) -> its batch buffer
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
                    # ONNX Runtime names its engine files by model and GPU, not by TensorRT
                    # version, and an engine does not survive a TensorRT upgrade (a JetPack
                    # update): one folder per ONNX Runtime and TensorRT version.
                    folder = self._engine_cache_dir / ort_engine_folder(
                        str(getattr(ort, "__version__", "unknown")), tensorrt_version()
                    )
                    folder.mkdir(parents=True, exist_ok=True)
                    options["trt_engine_cache_enable"] = "True"
                    options["trt_engine_cache_path"] = str(folder)
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
        split: tuple[bool, ...] = ()
        on_cpu = session.get_providers()[0] == CPU
        if self._plan_up_to > 1 and on_cpu and model_input.shape[0] is None:
            try:
                split = _plan_batches(session, model_input, [outputs[0].name], self._plan_up_to)
            except Exception as exc:  # ORT's own pybind classes
                raise BackendError(
                    f"cannot run model {path} on a synthetic batch: {_ort_reason(exc)}"
                ) from exc
            if any(split):
                log.info(
                    "%s: batches of %s run faster frame by frame on this CPU; they run so",
                    path.name,
                    ", ".join(str(n) for n in range(len(split)) if split[n]),
                )
        with self._lock:
            self._split = split
            self._stack_buffers = {}
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
        loaded = self._loaded()
        array = check_batch(batch, loaded[2])
        size = array.shape[0]
        if self._runs_frame_by_frame(size):
            return self._run(loaded, [array[i : i + 1] for i in range(size)])
        return self._run(loaded, [array])

    def infer_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Run ``frames`` (one sample each) as one batch; return the first output.

        Where the batch plan runs this many frames one by one (and always for one frame),
        each is run as it is, never copied into a batch first.

        Raises:
            InputMismatchError: no frames, or a frame whose shape or dtype does not fit.
            BackendError: no model is loaded, or the runtime failed.
        """
        loaded = self._loaded()
        checked = check_frames(frames, loaded[2])
        if len(checked) == 1 or self._runs_frame_by_frame(len(checked)):
            return self._run(loaded, [frame[np.newaxis] for frame in checked])
        return self._run(loaded, checked, stack=True)

    def _loaded(self) -> tuple[Any, queue.SimpleQueue[Any], TensorMeta]:
        """Return the loaded session, its replicas' queue and its input, read together.

        A call keeps what it read here even if a close or a load replaces them meanwhile.
        """
        session, idle, model_input = self._session, self._idle, self._input
        if session is None or model_input is None:
            raise BackendError("no model loaded: call load(path) first")
        return session, idle, model_input

    def _stack_buffer(self, runner: Any, frames: list[np.ndarray]) -> np.ndarray:
        """Take ``runner``'s batch buffer for ``frames`` (a new one if it has none that fits).

        Taken out while in use and put back after (``_run``): two threads calling one
        session at once each get a buffer of their own.
        """
        buffer = self._stack_buffers.pop(id(runner), None)
        first = frames[0]
        if (
            buffer is None
            or buffer.shape[0] < len(frames)
            or buffer.shape[1:] != first.shape
            or buffer.dtype != first.dtype
        ):
            buffer = np.empty((len(frames), *first.shape), first.dtype)
        return buffer

    def _runs_frame_by_frame(self, size: int) -> bool:
        split = self._split
        return bool(split) and split[min(size, len(split) - 1)]

    def _run(
        self,
        loaded: tuple[Any, queue.SimpleQueue[Any], TensorMeta],
        batches: list[np.ndarray],
        *,
        stack: bool = False,
    ) -> np.ndarray:
        """Run ``batches`` on one session in turn; return their first outputs, concatenated.

        With ``stack``, ``batches`` are frames, stacked into one batch in a buffer kept per
        session: a fresh multi-megabyte array per batch would be a fresh mmap, page-faulted
        on each use.  With replicas, the call takes a free session (waiting while all are
        busy) and gives it back to the queue it came from.
        """
        session, idle, model_input = loaded
        names, name = self._output_names, model_input.name
        runner = session if self._replicas == 1 else idle.get()
        buffer = self._stack_buffer(runner, batches) if stack else None
        try:
            if buffer is not None:
                batches = [np.stack(batches, out=buffer[: len(batches)])]
            if len(batches) == 1:
                first = runner.run(names, {name: batches[0]})[0]
            else:
                first = np.concatenate([runner.run(names, {name: b})[0] for b in batches])
        except Exception as exc:
            raise BackendError(f"inference failed on {self._path}: {_ort_reason(exc)}") from exc
        finally:
            if buffer is not None:
                self._stack_buffers[id(runner)] = buffer
            if self._replicas > 1:
                idle.put(runner)
        return first if type(first) is np.ndarray else np.asarray(first)

    def close(self) -> None:
        """Drop the session; ``load`` may be called again."""
        with self._lock:
            self._session = None
            self._idle = queue.SimpleQueue()
            self._input = None
            self._stack_buffers = {}


def _ort_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Failed to load ..." -> keep the useful tail.
    if text.startswith("[ONNXRuntimeError]"):
        parts = [p.strip() for p in text.split(" : ", 3)]
        if len(parts) == 4:
            return f"{parts[3]} ({parts[2].lower()})"
    return text or type(exc).__name__


def ort_engine_folder(ort_version: str, trt_version: str | None) -> str:
    """Return the engine-cache subfolder of ONNX Runtime's TensorRT provider for these versions."""
    return f"ort-{ort_version}-trt-{trt_version or 'unknown'}"
