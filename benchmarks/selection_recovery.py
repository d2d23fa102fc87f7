"""How much drifted data, picked how, and which retraining recipe bring the digits model back.

Offline rehearsal of the demo's loop, with no broker and no Ray: a model trained on the training
split serves a camera that develops a fault; some of the drifted stream is "uplinked" with its
true labels; a retrain must recover accuracy on the *reserved* test split under the same fault
(never streamed, never uplinked) while staying accurate on clean images, because one model per
pipeline also serves the clean sites.

It prints, side by side, the chosen recipe (fine-tune the serving model, new samples oversampled,
uncertainty mixed with random picks) against its baselines: random picks, lowest-confidence
picks, and retraining from scratch.  Run:

    python benchmarks/selection_recovery.py            # the decision table (a few minutes)
    python benchmarks/selection_recovery.py --sweep    # also the drift-severity and recipe sweeps
    python benchmarks/selection_recovery.py --drift mirror --seeds 1 --budgets 200  # another fault

Training seconds are wall time on whatever else the machine is doing; read them as an order of
magnitude.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from pipelines.digits.data import DRIFT_KINDS, Splits, apply_drift, load_splits
from pipelines.digits.train import FINE_TUNE, SCRATCH, Recipe, accuracy, fit, predict_proba

DEMO_DRIFT = ("blur_contrast", 1.0)
#: The demo's targets (issue): pre-drift accuracy, drop right after drift, recovery tolerance.
TARGET_CLEAN = 0.95
TARGET_DROP = 0.15
TARGET_RECOVERY = 0.05
#: ``continuum demo`` defaults: 3 cameras x 20 fps x 150 s.
DEMO_FRAMES = 3 * 20 * 150

Selector = Callable[[NDArray[np.float32], int, np.random.Generator], NDArray[np.int64]]


def pick_random(probs: NDArray[np.float32], n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """Uniform picks: what a drift-triggered boost that sends every frame amounts to."""
    return rng.choice(len(probs), size=min(n, len(probs)), replace=False).astype(np.int64)


def pick_lowest_confidence(
    probs: NDArray[np.float32], n: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Hard-example mining alone: the n frames the model is least sure about."""
    return np.argsort(probs.max(axis=1))[:n].astype(np.int64)


def pick_mixed(probs: NDArray[np.float32], n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """Half lowest-confidence, half random among the rest."""
    hard = pick_lowest_confidence(probs, n // 2, rng)
    rest = np.setdiff1d(np.arange(len(probs)), hard)
    extra = rng.choice(rest, size=min(n - len(hard), len(rest)), replace=False)
    return np.concatenate([hard, extra]).astype(np.int64)


SELECTORS: dict[str, Selector] = {
    "random": pick_random,
    "low-conf": pick_lowest_confidence,
    "mixed": pick_mixed,
}


@dataclass(frozen=True)
class Outcome:
    drifted: float  # reserved test, drifted, after retraining
    clean: float  # reserved test, clean, after retraining
    seconds: float


def retrain(
    splits: Splits,
    base_state: dict[str, object] | None,
    new_x: NDArray[np.float32],
    new_y: NDArray[np.int64],
    recipe: Recipe,
    test_drifted: NDArray[np.float32],
    seed: int,
) -> Outcome:
    started = time.monotonic()
    model = fit(
        splits.train_x,
        splits.train_y,
        new_x=new_x,
        new_y=new_y,
        base_state=base_state,  # type: ignore[arg-type]
        recipe=recipe,
        seed=seed,
        threads=2,
    )
    seconds = time.monotonic() - started
    return Outcome(
        drifted=accuracy(model, test_drifted, splits.test_y),
        clean=accuracy(model, splits.test_x, splits.test_y),
        seconds=seconds,
    )


@dataclass
class World:
    """One seed's base model and drifted data for one drift."""

    splits: Splits
    base_state: dict[str, object]
    clean_acc: float
    drifted_acc: float
    stream_drifted: NDArray[np.float32]
    stream_probs: NDArray[np.float32]
    test_drifted: NDArray[np.float32]


def make_world(seed: int, kind: str, severity: float, base_cache: dict[int, object]) -> World:
    splits = load_splits(0)
    if seed not in base_cache:
        base_cache[seed] = fit(splits.train_x, splits.train_y, recipe=SCRATCH, seed=seed, threads=2)
    base = base_cache[seed]
    stream_drifted = apply_drift(splits.stream_x, kind, severity, np.random.default_rng(seed + 200))
    test_drifted = apply_drift(splits.test_x, kind, severity, np.random.default_rng(seed + 100))
    return World(
        splits=splits,
        base_state={k: v.clone() for k, v in base.state_dict().items()},  # type: ignore[attr-defined]
        clean_acc=accuracy(base, splits.test_x, splits.test_y),  # type: ignore[arg-type]
        drifted_acc=accuracy(base, test_drifted, splits.test_y),  # type: ignore[arg-type]
        stream_drifted=stream_drifted,
        stream_probs=predict_proba(base, stream_drifted),  # type: ignore[arg-type]
        test_drifted=test_drifted,
    )


def run_cell(
    worlds: list[World], selector: str, n: int, recipe: Recipe, fine_tune: bool
) -> list[Outcome]:
    out = []
    for seed, world in enumerate(worlds):
        rng = np.random.default_rng(1000 + seed)
        if n >= len(world.stream_drifted):
            idx = np.arange(len(world.stream_drifted))
        else:
            idx = SELECTORS[selector](world.stream_probs, n, rng)
        out.append(
            retrain(
                world.splits,
                world.base_state if fine_tune else None,
                world.stream_drifted[idx],
                world.splits.stream_y[idx],
                recipe,
                world.test_drifted,
                seed,
            )
        )
    return out


def fmt(outcomes: list[Outcome]) -> str:
    d = np.array([o.drifted for o in outcomes])
    c = np.array([o.clean for o in outcomes])
    return f"{d.mean():.3f} (min {d.min():.3f}) | clean {c.mean():.3f} (min {c.min():.3f})"


def decision_table(
    seeds: int, budgets: list[int], chosen_n: int, drift: tuple[str, float] = DEMO_DRIFT
) -> None:
    kind, severity = drift
    cache: dict[int, object] = {}
    worlds = [make_world(s, kind, severity, cache) for s in range(seeds)]
    clean = np.array([w.clean_acc for w in worlds])
    drifted = np.array([w.drifted_acc for w in worlds])
    print(f"\n== drift {kind} severity {severity}; {seeds} seeds; reserved test split (447) ==")
    print(f"pre-drift accuracy   {clean.mean():.3f} (min {clean.min():.3f})")
    print(f"drifted, before fix  {drifted.mean():.3f} (max {drifted.max():.3f})")
    print(
        f"drop                 {(clean - drifted).mean():.3f} (min {(clean - drifted).min():.3f})"
    )
    print("\nrecovered accuracy on the reserved test split under the drift, mean over seeds")
    chosen: list[Outcome] = []
    scratch_all = replace(SCRATCH, oversample=FINE_TUNE.oversample)
    rows: list[tuple[str, str, Recipe, bool]] = [
        ("chosen: fine-tune, mixed picks", "mixed", FINE_TUNE, True),
        ("fine-tune, random picks", "random", FINE_TUNE, True),
        ("fine-tune, lowest-confidence", "low-conf", FINE_TUNE, True),
        ("scratch, mixed picks, same oversample", "mixed", scratch_all, False),
        ("scratch, random picks, no oversample", "random", SCRATCH, False),
    ]
    for n in budgets:
        print(f"\n-- {n} uplinked drifted samples ({n / 650:.0%} of the stream pool) --")
        for title, selector, recipe, fine_tune in rows:
            outcomes = run_cell(worlds, selector, n, recipe, fine_tune)
            secs = np.mean([o.seconds for o in outcomes])
            print(f"  {title:40s} {fmt(outcomes)}  [{secs:.1f} s train]")
            if n == chosen_n and selector == "mixed" and fine_tune:
                chosen = outcomes
    print(f"\n== targets with the chosen recipe at {chosen_n} drifted samples (worst seed) ==")
    worst_recovered = min(o.drifted for o in chosen)
    worst_clean_after = min(o.clean for o in chosen)
    checks = [
        ("pre-drift accuracy >= 0.95", clean.min(), clean.min() >= TARGET_CLEAN),
        (
            "drop right after drift >= 0.15",
            (clean - drifted).min(),
            bool((clean - drifted).min() >= TARGET_DROP),
        ),
        (
            "recovered within 0.05 of pre-drift",
            min(o.drifted - c for o, c in zip(chosen, clean, strict=True)),
            all(o.drifted >= c - TARGET_RECOVERY for o, c in zip(chosen, clean, strict=True)),
        ),
        ("clean accuracy after retraining >= 0.95", worst_clean_after, worst_clean_after >= 0.95),
    ]
    for what, value, ok in checks:
        print(f"  {'ok ' if ok else 'MISS'} {what:42s} {value:+.3f}")
    print(f"  recovered accuracy under drift (worst seed) {worst_recovered:.3f}")
    share = chosen_n / DEMO_FRAMES
    print(
        f"  uplink: {chosen_n} drifted samples are {share:.1%} of the {DEMO_FRAMES} frames of "
        "`continuum demo` (3 cameras x 20 fps x 150 s); the budget is < 30%"
    )


def sweep(seeds: int) -> None:
    cache: dict[int, object] = {}
    print("\n== drift kinds and severities: base model accuracy on the drifted reserved test ==")
    for kind in DRIFT_KINDS:
        cells = []
        for severity in (0.5, 0.75, 1.0):
            ws = [make_world(s, kind, severity, cache) for s in range(seeds)]
            acc = np.array([w.drifted_acc for w in ws])
            cells.append(f"@{severity}: {acc.mean():.2f} [{acc.min():.2f}-{acc.max():.2f}]")
        print(f"  {kind:14s} " + "  ".join(cells))
    kind, severity = DEMO_DRIFT
    worlds = [make_world(s, kind, severity, cache) for s in range(seeds)]
    print(f"\n== fine-tune recipe sweep, {kind}@{severity}, mixed picks, 130 samples ==")
    for epochs in (5, 10, 15, 20):
        for oversample in (1, 3, 5, 8):
            for lr in (3e-3,):
                recipe = Recipe(epochs=epochs, lr=lr, oversample=oversample)
                outcomes = run_cell(worlds, "mixed", 130, recipe, True)
                secs = np.mean([o.seconds for o in outcomes])
                print(
                    f"  epochs {epochs:2d} oversample {oversample} lr {lr:.0e}: "
                    f"{fmt(outcomes)}  [{secs:.1f} s]"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", type=int, nargs="+", default=[65, 130, 200, 325, 650])
    parser.add_argument("--chosen", type=int, default=200, help="the budget the demo aims at")
    parser.add_argument("--sweep", action="store_true", help="also sweep drifts and recipes")
    parser.add_argument("--no-table", action="store_true", help="skip the decision table")
    parser.add_argument(
        "--drift", choices=DRIFT_KINDS, default=DEMO_DRIFT[0], help="the decision table's fault"
    )
    parser.add_argument("--severity", type=float, default=DEMO_DRIFT[1])
    args = parser.parse_args()
    if args.sweep:
        sweep(args.seeds)
    if not args.no_table:
        decision_table(args.seeds, args.budgets, args.chosen, (args.drift, args.severity))


if __name__ == "__main__":
    main()
