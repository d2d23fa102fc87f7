"""What the edge agent's inference path costs on top of a bare ONNX Runtime loop.

Side by side in one run, per model:

- **bare ORT, batch 1**: ``onnxruntime.InferenceSession.run`` on one frame at a time, in a
  loop, with the session options the agent's backend uses (one intra-op thread, all graph
  optimisations).  Latency is the ``run`` call.
- **bare ORT, batch N**: the same on N frames at once: what batching alone buys on this
  machine (each frame's latency is its batch's ``run``).
- **agent, batch 1**: the real ``edge_agent.runtime.PipelineRuntime`` (source thread ->
  micro-batcher queue -> ``OnnxRuntimeBackend`` -> drift monitor and uplink policy ->
  durable SQLite ``Outbox`` -> metrics) with ``max_batch=1``.  Latencies come from a run
  whose source keeps one frame in flight (no queueing); frames/s from a run whose source
  yields as fast as the agent takes frames.
- **agent, micro-batch <= N**: ``max_batch=N``, fed as fast as the agent takes frames (a
  saturated camera); its latency includes the wait in the frame queue and in the batch.
  The backend is opened as the agent opens it (``plan_batches``): at load it times each
  batch size whole and frame by frame, and runs it the faster way (the runtime hands it
  the frames as they are, ``infer_frames``: a batch run frame by frame is never stacked);
  the batch sizer then settles on the size that costs least per frame over the whole cycle.
- **T cores** (SqueezeNet, T = the CPUs this process may use): three hand-written bare
  loops, the best of which a user would pick: one session with T intra-op threads at batch
  1, and T one-thread sessions on T threads (what a user writes to use T cores) at batch 1
  and at batch N; against them the micro-batched agent with T ONNX Runtime replicas of one
  thread each (the agent's ``inference_replicas``).  The agent is judged against the best
  of the three in each round.

Each agent run starts a fresh runtime and backend; its first quarter of frames warms them
up (the batch sizer tries its sizes, the session its first runs) and is not measured, as the
bare loop's session is warm.  The periodic re-probes of a running agent are measured.

Two latencies per frame, both from its arrival at the agent: **result** until the model's
output is back (the agent's own latency metric, and what the bare loop measures) and
**path** until the whole path, selection and outbox write included, is done.

The uplink policy is ``drift(psi) | random(0.05)``: a PSI drift monitor runs on the
confidences and about 5% of frames go to the outbox (nothing drains it here: the uplink
pump is not on this path).  The tiny CNN also gets a row in which every frame goes to the
outbox.

Models: the demo's digits CNN (``pipelines.digits.model``, untrained weights, exported with
``export_onnx``) on scikit-learn's 8x8 digits, and SqueezeNet 1.0 at 224x224 from the onnx
wheel (``onnx/backend/test/data/light/light_squeezenet.onnx``, the real architecture with
constant "light" weights), given a dynamic batch axis and a flattened (N, 1000) output.

Every verdict is computed from this run's rounds (``benchmarks/_harness.py``): a per-round
figure (the agent's p50 minus the bare loop's p50 of the same round, or their ratio), judged
on its median over rounds, except where a goal says "every round" (then on the worst round).

Run: ``python benchmarks/edge_overhead.py`` (about three minutes on 2 cores; ``--quick`` for
a smoke run; ``--json PATH`` for the result).  Timings are wall clock on whatever else the
machine is doing: the cases run in alternating rounds (ABBA) so that background load hits
them alike; compare within one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from continuum import Pipeline, drift, select
from continuum.backends import open_backend
from continuum.select import Policy
from continuum.signing import sha256_file
from continuum.sources import Frame
from continuum.wire.messages import Telemetry
from edge_agent.metrics import AgentMetrics
from edge_agent.model_manager import ServingModel
from edge_agent.outbox import Outbox
from edge_agent.runtime import PipelineRuntime

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness

#: Frames per measured round (tiny CNN, SqueezeNet) and rounds per case.
FRAMES = {"cnn": 2400, "squeezenet": 160}
ROUNDS = 9
MICRO_BATCH = {"cnn": 32, "squeezenet": 8}
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


# -- the run ----------------------------------------------------------------------------------


def policy_of(share: float) -> Policy:
    """The benchmark's uplink policy: a drift boost (PSI monitor) or a random ``share``."""
    return select.drift(drift.psi(0.25), rate=0.5) | select.random(share)


BARE_1 = "bare ORT, batch 1"
AGENT_1 = "agent, batch 1"
AGENT_1_ALL = "agent, batch 1, every frame to outbox"


def bare_n(batch: int) -> str:
    return f"bare ORT, batch {batch}"


def agent_n(batch: int) -> str:
    return f"agent, micro-batch <= {batch}"


def bare_threads_name(threads: int) -> str:
    return f"bare ORT, batch 1, 1 session x {threads} threads"


def bare_sessions_name(batch: int, threads: int) -> str:
    return f"bare ORT, batch {batch}, {threads} sessions x 1 thread"


def micro_threads_name(batch: int, threads: int) -> str:
    return f"agent, micro-batch <= {batch}, {threads} replicas"


def run_bare_sessions(
    sessions: Sequence[ort.InferenceSession], model: Model, frames: int, result: Result, batch: int
) -> None:
    """Run ``frames`` frames split over ``sessions``, one Python thread each, at once.

    What a user writes to use T cores with ONNX Runtime by hand: T one-thread sessions, each
    looping on its own thread (``run`` releases the GIL).  Frames/s is all frames over the
    wall time from the common start to the last thread's end.
    """
    parts = [Result() for _ in sessions]
    start = threading.Barrier(len(sessions) + 1)

    def loop(session: ort.InferenceSession, part: Result) -> None:
        start.wait()
        run_bare(session, model, frames // len(sessions), part, batch=batch)

    threads = [
        threading.Thread(target=loop, args=(s, p), daemon=True)
        for s, p in zip(sessions, parts, strict=True)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter_ns()
    for thread in threads:
        thread.join()
    result.wall_s += (time.perf_counter_ns() - began) / 1e9
    for part in parts:
        result.frames += part.frames
        result.latencies_ns.extend(part.latencies_ns)
        result.result_ns.extend(part.result_ns)


def measure(model: Model, frames: int, workdir: Path, rounds: int) -> dict[str, Case]:
    """Run every case for ``model`` in ``rounds`` rounds; return the cases by name.

    Each round runs every case once, in the opposite order to the round before (ABBA), so
    that load which drifts during a round weighs on all cases alike.  The agent's batch-1
    rows take their latencies from a run with one frame in flight (no queueing) and their
    frames/s from a run fed as fast as the agent takes frames.  Bare and agent use the same
    session options (``bare_session`` spells out what ``OnnxRuntimeBackend`` sets).
    """
    threads = len(os.sched_getaffinity(0))
    batch = MICRO_BATCH[model.key]
    # name -> (batch, intra-op threads, sessions)
    bare_cases: dict[str, tuple[int, int, int]] = {BARE_1: (1, 1, 1), bare_n(batch): (batch, 1, 1)}
    # name -> (max_batch, uplink policy, replicas)
    agent_cases: dict[str, tuple[int, Policy, int]] = {AGENT_1: (1, policy_of(0.05), 1)}
    if model.key == "cnn":
        agent_cases[AGENT_1_ALL] = (1, select.random(1.0), 1)
    agent_cases[agent_n(batch)] = (batch, policy_of(0.05), 1)
    if model.key == "squeezenet" and threads > 1:
        bare_cases[bare_threads_name(threads)] = (1, threads, 1)
        bare_cases[bare_sessions_name(1, threads)] = (1, 1, threads)
        bare_cases[bare_sessions_name(batch, threads)] = (batch, 1, threads)
        agent_cases[micro_threads_name(batch, threads)] = (batch, policy_of(0.05), threads)
    pools = {
        (t, n): [bare_session(model.path, t) for _ in range(n)] for _, t, n in bare_cases.values()
    }
    for pool in pools.values():
        for session in pool:
            run_bare(session, model, 20, Result())  # warm up
    cases = {name: Case(name) for name in [*bare_cases, *agent_cases]}
    runs = 0

    def run_case(name: str, result: Result) -> None:
        nonlocal runs
        if name in bare_cases:
            size, intra, count = bare_cases[name]
            pool = pools[(intra, count)]
            if count == 1:
                run_bare(pool[0], model, frames, result, batch=size)
            else:
                run_bare_sessions(pool, model, frames, result, batch=size)
            return
        max_batch, policy, count = agent_cases[name]
        modes = [(1, True, False), (None, False, True)] if max_batch == 1 else [(None, True, True)]
        for inflight, count_latency, count_rate in modes:
            runs += 1
            path = workdir / f"{model.key}-{runs}.sqlite3"
            with Outbox(path, max_bytes=1 << 34, ttl_s=86_400.0) as outbox:
                run_agent(
                    model,
                    frames=frames,
                    max_batch=max_batch,
                    inflight=inflight,
                    policy=policy,
                    outbox=outbox,
                    result=result,
                    count_latency=count_latency,
                    count_rate=count_rate,
                    replicas=count,
                )

    for round_no in range(rounds):
        names = list(cases) if round_no % 2 == 0 else list(reversed(cases))
        for name in names:
            result = Result()
            run_case(name, result)
            cases[name].rounds.append(result)
    return cases


def print_results(model: Model, cases: dict[str, Case]) -> None:
    """Print one model's table: latency percentiles, frames/s and ratios to the bare loop."""
    bare = cases[BARE_1]
    unit, scale = ("us", 1.0) if model.key == "cnn" else ("ms", 1e-3)
    rounds = len(bare.rounds)
    print(
        f"\n{model.title}  ({bare.frames // rounds:,} frames per case per round, {rounds} rounds;"
        f" an agent run's first 1/{WARMUP_SHARE} warms it up, unmeasured)"
    )
    header = (
        f"{'case':<46} {'p50 result':>10} {'p50 path':>9} {'p99 path':>9} {'frames/s':>9}"
        f" {'result/bare':>11} {'path/bare':>9} {'fps/bare':>9}"
    )
    print(f"{'':<46} {'(' + unit + ')':>10} {'(' + unit + ')':>9} {'(' + unit + ')':>9}")
    print(header)
    print("-" * len(header))
    for name, c in cases.items():
        print(
            f"{name:<46} {c.p50(to_result=True) * scale:>10.2f} {c.p50() * scale:>9.2f}"
            f" {c.p99() * scale:>9.2f} {c.fps:>9,.0f}"
            f" {c.p50_ratio(bare, to_result=True):>11.3f} {c.p50_ratio(bare):>9.3f}"
            f" {c.fps_ratio(bare):>9.2f}"
        )
    print("(medians over rounds; ratios are medians of the per-round ratios)")


def record(report: harness.Report, model: Model, cases: dict[str, Case]) -> None:
    """Put every case's per-round p50s and frames/s into the report (and its JSON)."""
    for name, c in cases.items():
        report.case(
            f"{model.key}: {name}: frames/s",
            [r.fps for r in c.rounds],
            "frames/s",
            p50_result_us=[r.p(50, to_result=True) for r in c.rounds],
            p50_path_us=[r.p(50) for r in c.rounds],
            p99_path_us=c.p99(),
        )


def added_us(agent: Case, bare: Case, *, to_result: bool) -> list[float]:
    """Per round: the agent's p50 minus the bare loop's p50 of the same round, microseconds."""
    return [
        a.p(50, to_result=to_result) - b.p(50)
        for a, b in zip(agent.rounds, bare.rounds, strict=True)
    ]


def fps_ratios(case: Case, base: Case) -> harness.Spread:
    """Per round: ``case``'s frames/s over ``base``'s."""
    return harness.ratios([r.fps for r in case.rounds], [r.fps for r in base.rounds])


def judge_cnn(report: harness.Report, cnn: dict[str, Case]) -> None:
    """The tiny CNN's verdicts: added cost at batch 1, and micro-batched throughput."""
    bare, agent, full = cnn[BARE_1], cnn[AGENT_1], cnn[AGENT_1_ALL]
    n = MICRO_BATCH["cnn"]
    to_result = harness.Spread.of(added_us(agent, bare, to_result=True))
    path = harness.Spread.of(added_us(agent, bare, to_result=False))
    every = harness.Spread.of(added_us(full, bare, to_result=False))
    report.verdict(harness.at_most("tiny CNN b1: added p50 to the result", to_result, 30, " us"))
    report.verdict(harness.at_most("tiny CNN b1: added p50 for the whole path", path, 60, " us"))
    print(
        f"\nTiny CNN at batch 1, agent p50 minus bare p50 per round: {to_result.fmt(unit=' us')}"
        f" to the result, {path.fmt(unit=' us')} for the whole path"
        f" ({every.fmt(unit=' us')} when every frame is durably written to the outbox)."
    )
    batched = fps_ratios(cnn[agent_n(n)], cnn[bare_n(n)])
    report.verdict(
        harness.at_least(f"tiny CNN micro-batch <= {n}: fps / bare batch {n}", batched, 0.7, "x")
    )
    gain = fps_ratios(cnn[bare_n(n)], bare)
    print(
        f"Tiny CNN micro-batched (<= {n}): {batched.fmt(unit='x')} the frames/s of bare ORT at "
        f"batch {n}; bare batch {n} itself runs at {gain.fmt(unit='x')} bare batch 1."
    )


def judge_squeezenet(report: harness.Report, sq: dict[str, Case]) -> None:
    """SqueezeNet's verdicts: batch-1 path in every round, and T cores against T sessions."""
    n = MICRO_BATCH["squeezenet"]
    bare, agent = sq[BARE_1], sq[AGENT_1]
    path = [a.p(50) / b.p(50) for a, b in zip(agent.rounds, bare.rounds, strict=True)]
    worst = max(path)
    report.verdict(
        harness.Verdict(
            name="SqueezeNet b1: whole path p50 / bare p50, every round",
            target="<= 1.05 in each round",
            measured=f"worst {worst:.3f}, median {float(np.median(path)):.3f}",
            met=worst <= 1.05,
        )
    )
    gain = fps_ratios(sq[bare_n(n)], bare)
    batched = fps_ratios(sq[agent_n(n)], bare)
    print(
        f"\nSqueezeNet, one core: bare batch {n} runs at {gain.fmt(unit='x')} the frames/s of "
        f"bare batch 1 (what batching buys on this CPU, measured); the micro-batched agent at "
        f"{batched.fmt(unit='x')}."
    )
    threads = len(os.sched_getaffinity(0))
    if threads < 2:
        return
    agent_t = sq[micro_threads_name(n, threads)]
    bares = [
        sq[bare_threads_name(threads)],
        sq[bare_sessions_name(1, threads)],
        sq[bare_sessions_name(n, threads)],
    ]
    best = [max(c.rounds[i].fps for c in bares) for i in range(len(agent_t.rounds))]
    versus_best = harness.ratios([r.fps for r in agent_t.rounds], best)
    versus_sessions = fps_ratios(agent_t, sq[bare_sessions_name(1, threads)])
    report.verdict(
        harness.at_least(
            f"SqueezeNet {threads} cores: agent fps / best bare {threads}-core loop",
            versus_best,
            0.9,
            "x",
        )
    )
    print(
        f"SqueezeNet, {threads} cores: the agent with {threads} replicas moves "
        f"{versus_sessions.fmt(unit='x')} the frames/s of {threads} one-thread sessions at "
        f"batch 1 and {versus_best.fmt(unit='x')} the best hand-written {threads}-core loop of "
        "each round (1 session x T threads, T sessions at batch 1 or at batch N)."
    )


def main() -> None:
    """Build both models, run every case and print the tables, the verdicts and the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the frames (smoke run)")
    parser.add_argument(
        "--models",
        default="cnn,squeezenet",
        help="comma-separated: cnn, squeezenet (default both; verdicts of the models run)",
    )
    harness.add_arguments(parser, rounds=ROUNDS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    started = time.perf_counter()
    rounds = 3 if args.quick else args.rounds
    with tempfile.TemporaryDirectory(prefix="ctm-edge-bench-") as tmp:
        workdir = Path(tmp)
        report = harness.Report("edge_overhead", paths=[workdir])
        print(
            f"edge agent inference path vs bare onnxruntime {ort.__version__} on "
            f"{platform.machine()}; 1 intra-op thread unless a case says more"
        )
        headline: dict[str, dict[str, Case]] = {}
        builds = {"cnn": digits_cnn, "squeezenet": squeezenet}
        chosen = [m.strip() for m in args.models.split(",") if m.strip()]
        if not chosen or set(chosen) - set(builds):
            parser.error(f"--models takes some of {', '.join(builds)}, got {args.models!r}")
        for key in chosen:
            model = builds[key](workdir)
            frames = max(10, FRAMES[model.key] // (10 if args.quick else 1))
            cases = measure(model, frames, workdir, rounds)
            print_results(model, cases)
            record(report, model, cases)
            headline[model.key] = cases
    if "cnn" in headline:
        judge_cnn(report, headline["cnn"])
    if "squeezenet" in headline:
        judge_squeezenet(report, headline["squeezenet"])
    print(f"(took {time.perf_counter() - started:.0f} s)")
    report.finish(args.json)


if __name__ == "__main__":
    main()
