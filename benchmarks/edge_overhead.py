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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from continuum import drift, select
from continuum.select import Policy
from edge_agent.outbox import Outbox

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness
from _edge_paths import (
    WARMUP_SHARE,
    Case,
    Model,
    Result,
    bare_session,
    digits_cnn,
    run_agent,
    run_bare,
    squeezenet,
)

#: Frames per measured round (tiny CNN, SqueezeNet) and rounds per case.
FRAMES = {"cnn": 2400, "squeezenet": 160}
ROUNDS = 9
MICRO_BATCH = {"cnn": 32, "squeezenet": 8}

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
