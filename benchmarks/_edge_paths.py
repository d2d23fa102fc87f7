"""The measured paths of ``edge_overhead.py``: the two models, the bare ONNX Runtime loop and the
real agent runtime observed frame by frame, and the per-round results they fill.

Kept apart from the script, which runs the rounds and judges them, so that each stays a
readable size; see ``edge_overhead.py`` for what is measured and why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from continuum import Pipeline
from continuum.backends import open_backend
from continuum.select import Policy
from continuum.signing import sha256_file
from continuum.sources import Frame
from continuum.wire.messages import Telemetry
from edge_agent.metrics import AgentMetrics
from edge_agent.model_manager import ServingModel
from edge_agent.outbox import Outbox
from edge_agent.runtime import PipelineRuntime

MAX_WAIT_MS = 5.0
#: The first 1/WARMUP_SHARE of an agent run's frames warm it up and are not measured.
WARMUP_SHARE = 4


@dataclass(frozen=True)
class Model:
    """One benchmarked model: its ONNX file and a pool of input frames (one sample each)."""

    key: str
    title: str
    path: Path
    frames: tuple[np.ndarray, ...]


@dataclass
class Result:
    """Per-frame latencies (ns) and frames over wall time of one case in one round.

    ``result_ns``: arrival until the model's output came back (the agent's own latency
    metric); ``latencies_ns``: arrival until the whole path, outbox write included, is done.
    The bare loop has no path after the model, so both are its ``run`` call.
    """

    latencies_ns: list[int] = field(default_factory=list)
    result_ns: list[int] = field(default_factory=list)
    frames: int = 0
    wall_s: float = 0.0

    def p(self, q: float, *, to_result: bool = False) -> float:
        """Return the q-th percentile latency in microseconds."""
        values = self.result_ns if to_result else self.latencies_ns
        return float(np.percentile(np.asarray(values, dtype=np.float64), q)) / 1e3

    @property
    def fps(self) -> float:
        """Frames per second over the round."""
        return self.frames / self.wall_s


@dataclass
class Case:
    """One case's rounds.  Figures are medians over rounds, and ratios to another case are
    medians of the per-round ratios: the two ran back to back in each round, under the same
    background load, so a busy round moves both and leaves their ratio."""

    name: str
    rounds: list[Result] = field(default_factory=list)

    def p50(self, *, to_result: bool = False) -> float:
        """Median over rounds of the round's p50 latency, in microseconds."""
        return float(np.median([r.p(50, to_result=to_result) for r in self.rounds]))

    def p99(self) -> float:
        """p99 of the whole path over all rounds' frames, in microseconds."""
        pooled = Result(latencies_ns=[v for r in self.rounds for v in r.latencies_ns])
        return pooled.p(99)

    @property
    def fps(self) -> float:
        """Median over rounds of frames per second."""
        return float(np.median([r.fps for r in self.rounds]))

    @property
    def frames(self) -> int:
        """Latency samples over all rounds."""
        return sum(len(r.latencies_ns) for r in self.rounds)

    def p50_ratio(self, base: Case, *, to_result: bool = False) -> float:
        """Median over rounds of this case's p50 over ``base``'s p50 in the same round."""
        pairs = zip(self.rounds, base.rounds, strict=True)
        return float(np.median([a.p(50, to_result=to_result) / b.p(50) for a, b in pairs]))

    def fps_ratio(self, base: Case) -> float:
        """Median over rounds of this case's frames/s over ``base``'s in the same round."""
        pairs = zip(self.rounds, base.rounds, strict=True)
        return float(np.median([a.fps / b.fps for a, b in pairs]))


# -- models -----------------------------------------------------------------------------------


def digits_cnn(folder: Path) -> Model:
    """Export the demo CNN (untrained, seeded) and load the digits as its input frames."""
    import torch
    from sklearn.datasets import load_digits

    from pipelines.digits.model import DigitsCNN, export_onnx

    torch.manual_seed(0)
    path = export_onnx(DigitsCNN(), folder / "digits_cnn.onnx")
    images = (load_digits().images / 16.0).astype(np.float32)[:256]
    return Model("cnn", "digits CNN, 1x8x8", path, tuple(i[None] for i in images))


def squeezenet(folder: Path) -> Model:
    """Return SqueezeNet 1.0 from the onnx wheel with a dynamic batch and (N, 1000) output."""
    source = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
    model = onnx.load(str(source))
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    data = next(i for i in graph.input if i.name not in weights)
    data.type.tensor_type.shape.dim[0].dim_param = "N"
    old_output = graph.output[0]
    graph.node.append(helper.make_node("Flatten", [old_output.name], ["probs"], axis=1))
    graph.output.remove(old_output)
    graph.output.append(helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["N", 1000]))
    onnx.checker.check_model(model)
    path = folder / "squeezenet.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(0)
    frames = tuple(rng.random((3, 224, 224), dtype=np.float32) for _ in range(16))
    return Model("squeezenet", "SqueezeNet 1.0, 3x224x224", path, frames)


# -- the bare baseline ------------------------------------------------------------------------


def bare_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """Open ``path`` with the options ``OnnxRuntimeBackend`` uses (``threads`` intra-op)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_bare(
    session: ort.InferenceSession, model: Model, frames: int, result: Result, batch: int = 1
) -> None:
    """Run ``frames`` frames through ``session`` in batches of ``batch``; add to ``result``.

    Every frame of a batch gets the batch's ``run`` time as its latency.
    """
    name = session.get_inputs()[0].name
    size = len(model.frames)
    pool = [np.stack([model.frames[(i + j) % size] for j in range(batch)]) for i in range(size)]
    clock = time.perf_counter_ns
    runs = max(1, frames // batch)
    started = clock()
    for i in range(runs):
        t0 = clock()
        session.run(None, {name: pool[i % size]})
        took = clock() - t0
        result.latencies_ns.extend([took] * batch)
        result.result_ns.extend([took] * batch)
    result.wall_s += (clock() - started) / 1e9
    result.frames += runs * batch


# -- the agent --------------------------------------------------------------------------------


class _Frames:
    """A source over a pool of tensors; with ``inflight`` it waits for frames to finish."""

    def __init__(self, pool: Sequence[np.ndarray], count: int, inflight: int | None) -> None:
        self._frames = [Frame(tensor=t) for t in pool]
        self._count = count
        self._slots = threading.Semaphore(inflight) if inflight is not None else None

    def done(self, n: int) -> None:
        if self._slots is not None:
            self._slots.release(n)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self._count):
            if self._slots is not None:
                self._slots.acquire()
            yield self._frames[i % len(self._frames)]


class _TimedRuntime(PipelineRuntime):
    """The real runtime, observed: per frame, the time from its arrival until the model's
    output and until its batch left the outbox step; and a hook that lets a closed-loop
    source send the next frame.

    The first ``warmup`` frames are not measured: a fresh runtime's batch sizer first tries
    its sizes (1, 2, 4, ...) and a fresh session its first runs, where the bare loop's session
    is already warm.  What is measured is the agent as it runs for hours: its periodic
    re-probes of the batch size are in it.
    """

    source: _Frames
    result: Result
    warmup = 0
    finished_frames = 0
    measured_frames = 0
    measure_from_ns = 0
    last_done_ns = 0

    def _finish(self, model, kept, tensors, output, done_ns) -> None:  # type: ignore[no-untyped-def]
        super()._finish(model, kept, tensors, output, done_ns)
        now = time.monotonic_ns()
        self.finished_frames += len(kept)
        if self.finished_frames > self.warmup:
            counted = kept[-min(len(kept), self.finished_frames - self.warmup) :]
            self.result.latencies_ns.extend(now - arrived for _, arrived in counted)
            self.result.result_ns.extend(done_ns - arrived for _, arrived in counted)
            if self.measure_from_ns:
                self.measured_frames += len(kept)  # frames/s: those done after the first
                self.last_done_ns = now
            else:
                self.measure_from_ns = now
        self.source.done(len(kept))


def run_agent(
    model: Model,
    *,
    frames: int,
    max_batch: int,
    inflight: int | None,
    policy: Policy,
    outbox: Outbox,
    result: Result,
    count_latency: bool = True,
    count_rate: bool = True,
    replicas: int = 1,
) -> None:
    """Run ``frames`` frames through a fresh ``PipelineRuntime``; add to ``result``.

    ``inflight`` bounds the frames between the source and the end of the path (None: the
    source yields as fast as the runtime's frame queue takes them).
    """
    pipe = Pipeline(f"bench-{model.key}", tenant="bench", data_class="internal")
    pipe.edge(
        model=model.key,
        backend="onnxruntime",
        shape=model.frames[0].shape,
        max_batch=max_batch,
        max_wait_ms=MAX_WAIT_MS,
    )
    pipe.uplink(policy)
    source = _Frames(model.frames, frames, inflight)
    telemetry: list[Telemetry] = []
    runtime = _TimedRuntime(
        spec=pipe.spec,
        node="bench-node",
        source=source,
        outbox=outbox,
        metrics=AgentMetrics(),
        on_telemetry=telemetry.append,
        batches_in_flight=replicas,
    )
    backend = open_backend(
        "onnxruntime", model.path, max_batch=max_batch, replicas=replicas, plan_batches=True
    )
    backend.infer(np.stack(model.frames[:max_batch]))  # warm up before the clock starts
    runtime.source, runtime.result, runtime.warmup = source, Result(), frames // WARMUP_SHARE
    serving = ServingModel(
        pipe.spec.name, model.key, "v1", sha256_file(model.path), "", model.path, backend
    )
    runtime.swap_model(serving)
    runtime.start()
    while not runtime.finished:
        time.sleep(0.01)
    runtime.close()
    done = runtime.result
    assert runtime.finished_frames == frames, "the runtime did not infer every frame"
    if count_latency:
        result.latencies_ns.extend(done.latencies_ns)
        result.result_ns.extend(done.result_ns)
    if count_rate:
        # From the end of the warm-up to the last frame's outbox write: the runtime's idle
        # poll before it notices that the source ended is not part of the path.
        result.wall_s += (runtime.last_done_ns - runtime.measure_from_ns) / 1e9
        result.frames += runtime.measured_frames
