"""Which drifted samples, picked how, and which retraining recipe bring the digits model back.

Offline rehearsal of the demo's loop, with no broker and no Ray: a model trained on the training
split serves a camera that develops a fault; a budget of the drifted stream is "uplinked" with
its true labels; a retrain must recover accuracy on the *reserved* test split under the same
fault (never streamed, never uplinked, never used to choose anything).

Three disjoint parts of the data (``pipelines.digits.data.load_splits``):

- the training split (700), on which each seed's serving model is trained from scratch;
- the stream pool (650), seen through the fault, cut per seed into a **selection pool** (500:
  what the camera streams, and what the picks choose from) and a **validation split** (150,
  labelled, under the same fault);
- the **reserved test split** (447), under the fault with its own draw, read once at the end.

Tuning: every candidate recipe (a way to pick ``--budget`` samples from the selection pool,
times a fine-tuning recipe) is scored on the validation split over ``--tune-seeds`` seeds; the
best mean is the chosen recipe.  Report: on ``--seeds`` other seeds, the chosen recipe against
the picks a sceptic would try at the same budget and with the same training (random, lowest
confidence, highest entropy, smallest margin, core-set: k-center greedy on the serving
model's penultimate embeddings), a no-label adaptation (the model has no batch-norm, so its
equivalent: the drifted inputs re-standardised per pixel to the training split's mean and
std, the input-layer batch-norm statistics re-estimated), the serving model with no loop,
and every pool sample uplinked (what a budget can at most buy).  Means over seeds with
t 95% intervals, and paired differences (the same seed's base model and draws) to the
chosen recipe; verdicts are computed from them.

Run (2 cores): ``python benchmarks/selection_recovery.py`` (10 seeds: about 10 minutes on an
idle machine, most of it training the ten serving models; ``--json PATH`` for the result),
``--quick`` for a smoke run (2 seeds, 1 tuning seed, fewer candidates).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import stats

from pipelines.digits.data import DRIFT_KINDS, Splits, apply_drift, load_splits
from pipelines.digits.model import DigitsCNN
from pipelines.digits.train import FINE_TUNE, SCRATCH, Recipe, accuracy, fit, predict_proba

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness

DEMO_DRIFT = ("blur_contrast", 1.0)
POOL = 500  # of the 650 stream-pool images; the other 150 are the validation split
BUDGET = 100
TUNE_SEED_BASE = 1000  # tuning seeds never coincide with report seeds

Images = NDArray[np.float32]
Selector = Callable[["World", int, np.random.Generator], NDArray[np.int64]]


# -- picks ------------------------------------------------------------------------------------


def pick_random(world: World, n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """Uniform picks: what a drift boost that sends a share of every frame amounts to."""
    return rng.choice(len(world.pool_x), size=n, replace=False).astype(np.int64)


def pick_low_confidence(world: World, n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """Hard-example mining: the n frames with the lowest top probability."""
    return np.argsort(world.pool_probs.max(axis=1), kind="stable")[:n].astype(np.int64)


def pick_entropy(world: World, n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """The n frames of highest predictive entropy."""
    p = np.clip(world.pool_probs.astype(np.float64), 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=1)
    return np.argsort(-entropy, kind="stable")[:n].astype(np.int64)


def pick_margin(world: World, n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """The n frames of smallest top-1 minus top-2 probability."""
    top2 = np.sort(world.pool_probs, axis=1)[:, -2:]
    return np.argsort(top2[:, 1] - top2[:, 0], kind="stable")[:n].astype(np.int64)


def pick_coreset(world: World, n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """k-center greedy on the serving model's embeddings (Sener & Savarese's core-set)."""
    emb = world.pool_emb
    first = int(rng.integers(len(emb)))
    picked = [first]
    nearest = np.linalg.norm(emb - emb[first], axis=1)
    for _ in range(n - 1):
        far = int(np.argmax(nearest))
        picked.append(far)
        nearest = np.minimum(nearest, np.linalg.norm(emb - emb[far], axis=1))
    return np.asarray(picked, dtype=np.int64)


def pick_mixed(world: World, n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """Half lowest-confidence, half random among the rest (the demo's policy's shape)."""
    hard = pick_low_confidence(world, n // 2, rng)
    rest = np.setdiff1d(np.arange(len(world.pool_x)), hard)
    extra = rng.choice(rest, size=n - len(hard), replace=False)
    return np.concatenate([hard, extra]).astype(np.int64)


def pick_margin_random(world: World, n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """Half smallest-margin, half random among the rest."""
    hard = pick_margin(world, n // 2, rng)
    rest = np.setdiff1d(np.arange(len(world.pool_x)), hard)
    extra = rng.choice(rest, size=n - len(hard), replace=False)
    return np.concatenate([hard, extra]).astype(np.int64)


SELECTORS: dict[str, Selector] = {
    "random": pick_random,
    "lowest confidence": pick_low_confidence,
    "highest entropy": pick_entropy,
    "smallest margin": pick_margin,
    "core-set (k-center)": pick_coreset,
    "half low-conf + half random": pick_mixed,
    "half margin + half random": pick_margin_random,
}
RECIPES: dict[str, Recipe] = {
    "fine-tune 15 ep, x5": FINE_TUNE,
    "fine-tune 8 ep, x3": replace(FINE_TUNE, epochs=8, oversample=3),
}


# -- one seed's world -------------------------------------------------------------------------


@dataclass
class World:
    """One seed: its serving model, the drifted selection pool, validation and test images."""

    splits: Splits
    base_state: dict[str, torch.Tensor]
    pool_x: Images
    pool_y: NDArray[np.int64]
    pool_probs: NDArray[np.float32]
    pool_emb: NDArray[np.float32]
    val_x: Images
    val_y: NDArray[np.int64]
    test_x: Images
    clean_acc: float


def embeddings(model: DigitsCNN, x: Images) -> NDArray[np.float32]:
    """The serving model's penultimate activations (64 per image), for core-set picks."""
    model.eval()
    with torch.no_grad():
        h = model.features(torch.from_numpy(x))
        for layer in list(model.head)[:-1]:  # up to the last ReLU, without the classifier
            h = layer(h)
    out: NDArray[np.float32] = h.numpy().astype(np.float32)
    return out


def make_world(seed: int, kind: str, severity: float) -> World:
    """Train seed's serving model and draw its drifted pool, validation and test images."""
    splits = load_splits(0)
    model = fit(splits.train_x, splits.train_y, recipe=SCRATCH, seed=seed, threads=2)
    order = np.random.default_rng(seed + 300).permutation(len(splits.stream_x))
    pool, val = order[:POOL], order[POOL:]
    stream = apply_drift(splits.stream_x, kind, severity, np.random.default_rng(seed + 200))
    test = apply_drift(splits.test_x, kind, severity, np.random.default_rng(seed + 100))
    return World(
        splits=splits,
        base_state={k: v.clone() for k, v in model.state_dict().items()},
        pool_x=stream[pool],
        pool_y=splits.stream_y[pool],
        pool_probs=predict_proba(model, stream[pool]),
        pool_emb=embeddings(model, stream[pool]),
        val_x=stream[val],
        val_y=splits.stream_y[val],
        test_x=test,
        clean_acc=accuracy(model, splits.test_x, splits.test_y),
    )


def retrain(world: World, picks: NDArray[np.int64], recipe: Recipe, seed: int) -> DigitsCNN:
    """Fine-tune the serving model on the training split plus the picked samples."""
    return fit(
        world.splits.train_x,
        world.splits.train_y,
        new_x=world.pool_x[picks],
        new_y=world.pool_y[picks],
        base_state=world.base_state,
        recipe=recipe,
        seed=seed,
        threads=2,
    )


def serving(world: World) -> DigitsCNN:
    model = DigitsCNN()
    model.load_state_dict(world.base_state)
    return model.eval()


def restandardised(world: World, x: Images) -> Images:
    """``x`` mapped per pixel to the training split's mean and std (no labels, no training).

    The pool is what the camera streams: its statistics are re-estimated there, as a
    batch-norm layer's would be on the drifted inputs.
    """
    ref_mean, ref_std = world.splits.train_x.mean(axis=0), world.splits.train_x.std(axis=0)
    mean, std = world.pool_x.mean(axis=0), world.pool_x.std(axis=0)
    scaled = (x - mean) / np.maximum(std, 1e-3) * ref_std + ref_mean
    out: Images = np.clip(scaled, 0.0, 1.0).astype(np.float32)
    return out


# -- statistics -------------------------------------------------------------------------------


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and t 95% interval of the mean over seeds."""
    a = np.asarray(values, dtype=np.float64)
    mean = float(a.mean())
    if len(a) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))
    return mean, mean - half, mean + half


def fmt_interval(values: list[float], signed: bool = False) -> str:
    mean, low, high = interval(values)
    spec = "+.3f" if signed else ".3f"
    return f"{mean:{spec}} [{low:{spec}}, {high:{spec}}]"


# -- the run ----------------------------------------------------------------------------------


def tune(
    worlds: list[World], candidates: list[tuple[str, str]], budget: int
) -> tuple[tuple[str, str], dict[tuple[str, str], list[float]]]:
    """Score every candidate on the validation split; return the best (by mean) and all."""
    scores: dict[tuple[str, str], list[float]] = {}
    for selector, recipe in candidates:
        for world_no, world in enumerate(worlds):
            seed = TUNE_SEED_BASE + world_no
            picks = SELECTORS[selector](world, budget, np.random.default_rng(seed))
            model = retrain(world, picks, RECIPES[recipe], seed)
            scores.setdefault((selector, recipe), []).append(
                accuracy(model, world.val_x, world.val_y)
            )
        print(f"  {selector + ', ' + recipe:<50} {fmt_interval(scores[(selector, recipe)])}")
    best = max(scores, key=lambda c: float(np.mean(scores[c])))
    return best, scores


def report_on_test(
    worlds: list[World], chosen: tuple[str, str], budget: int
) -> dict[str, list[float]]:
    """Every arm's reserved-test accuracy under the fault, one value per seed."""
    selector, recipe = chosen
    arms: dict[str, list[float]] = {}
    baselines = [s for s in SELECTORS if s != selector and "+" not in s] + [
        s for s in SELECTORS if "+" in s and s != selector
    ]
    for seed, world in enumerate(worlds):
        y = world.splits.test_y
        base = serving(world)
        arms.setdefault("no loop (serving model)", []).append(accuracy(base, world.test_x, y))
        arms.setdefault("no labels: inputs re-standardised", []).append(
            accuracy(base, restandardised(world, world.test_x), y)
        )
        for name in [selector, *baselines]:
            picks = SELECTORS[name](world, budget, np.random.default_rng(seed))
            model = retrain(world, picks, RECIPES[recipe], seed)
            arm = f"chosen: {name}" if name == selector else name
            arms.setdefault(arm, []).append(accuracy(model, world.test_x, y))
        model = retrain(world, np.arange(len(world.pool_x)), RECIPES[recipe], seed)
        arms.setdefault(f"every pool sample ({POOL})", []).append(accuracy(model, world.test_x, y))
        arms.setdefault("clean, before the fault", []).append(world.clean_acc)
        print(f"  seed {seed}: done", flush=True)
    return arms


def main() -> None:
    """Tune on validation, report once on the reserved test split, print verdicts and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="report seeds (10)")
    parser.add_argument("--tune-seeds", type=int, default=2, help="tuning seeds (2)")
    parser.add_argument("--budget", type=int, default=BUDGET, help=f"picks ({BUDGET} of {POOL})")
    parser.add_argument("--drift", choices=DRIFT_KINDS, default=DEMO_DRIFT[0])
    parser.add_argument("--severity", type=float, default=DEMO_DRIFT[1])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1 tuning seed")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.tune_seeds = 2, 1
    if not 1 <= args.budget < POOL:
        parser.error(f"--budget must be between 1 and {POOL - 1}, got {args.budget}")
    started = time.monotonic()
    report = harness.Report("selection_recovery")
    print(
        f"drift {args.drift} at {args.severity}; budget {args.budget} of a {POOL}-image pool; "
        f"tuned on {args.tune_seeds} seed(s) x 150 validation images, reported on "
        f"{args.seeds} seeds x 447 reserved test images"
    )
    candidates = [(s, r) for s in SELECTORS for r in RECIPES]
    if args.quick:
        candidates = [(s, r) for s, r in candidates if r == next(iter(RECIPES))][:3]
    print(f"\ntuning ({len(candidates)} candidates, validation accuracy, mean [t 95%]):")
    tune_worlds = [
        make_world(TUNE_SEED_BASE + i, args.drift, args.severity) for i in range(args.tune_seeds)
    ]
    chosen, _ = tune(tune_worlds, candidates, args.budget)
    print(f"chosen on validation: {chosen[0]}, {chosen[1]}")
    print(f"\nreported once on the reserved test split ({args.seeds} seeds):")
    worlds = [make_world(seed, args.drift, args.severity) for seed in range(args.seeds)]
    arms = report_on_test(worlds, chosen, args.budget)
    chosen_arm = f"chosen: {chosen[0]}"
    rows = []
    for arm, values in arms.items():
        diff = [a - c for a, c in zip(values, arms[chosen_arm], strict=True)]
        mean, low, high = interval(values)
        report.case(arm, values, "accuracy", mean=mean, ci95=[low, high])
        rows.append(
            [arm, fmt_interval(values), "-" if arm == chosen_arm else fmt_interval(diff, True)]
        )
    harness.print_table(
        f"Reserved test accuracy under {args.drift}@{args.severity} (mean [t 95%] over "
        f"{args.seeds} seeds; last column: this arm minus the chosen, paired by seed)",
        ["arm", "accuracy", "minus chosen"],
        rows,
    )
    for arm, values in arms.items():
        if arm in (chosen_arm, "clean, before the fault") or arm.startswith("every pool"):
            continue
        diff = [c - a for a, c in zip(values, arms[chosen_arm], strict=True)]
        mean, low, high = interval(diff)
        report.verdict(
            harness.Verdict(
                name=f"chosen beats {arm}",
                target="paired 95% interval of the gain above 0",
                measured=f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]",
                met=low > 0.0,
            )
        )
    gain = [c - b for c, b in zip(arms[chosen_arm], arms["no loop (serving model)"], strict=True)]
    full = arms[f"every pool sample ({POOL})"]
    oracle_gain = [f - b for f, b in zip(full, arms["no loop (serving model)"], strict=True)]
    share = float(np.mean(gain)) / max(float(np.mean(oracle_gain)), 1e-9)
    report.verdict(
        harness.Verdict(
            name=f"chosen's share of the every-sample gain at {args.budget / POOL:.0%} of uplink",
            target=">= 0.9",
            measured=f"{share:.2f}",
            met=share >= 0.9,
        )
    )
    print(f"(took {time.monotonic() - started:.0f} s)")
    report.finish(args.json)


if __name__ == "__main__":
    main()
