"""Which augmentations should the digits trainer use?  Chosen on a validation split, not the test.

A validation split is carved, stratified, out of the TRAINING split (the reserved test split is
never read here).  For each candidate set of augmentations (``faults.AUGMENTATIONS``) a model is
trained from scratch on the rest of the training split with a few seeds, then scored on the
validation split as the site's cameras show it (``faults.site_condition``: sensor jitter, and
each fault kind at severity 1 drawn per image), including the kinds no augmentation simulates.

The chosen set has the best mean accuracy over clean and every fault kind, among the sets
whose clean accuracy is within 0.01 of the best clean one.  Run:

    python benchmarks/augmentation_choice.py            # all candidates, 3 seeds (~5 min, 2 cores)
    python benchmarks/augmentation_choice.py --quick    # fewer candidates, 2 seeds (~1 min)
    python benchmarks/augmentation_choice.py --faults   # also the first model's severity table
    python benchmarks/augmentation_choice.py --fine-tune  # also: does a fine-tune gain from it?
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from pipelines.digits.data import load_splits
from pipelines.digits.faults import AUGMENTATIONS, DRIFT_KINDS, augmented_kinds, site_condition
from pipelines.digits.train import FINE_TUNE, SCRATCH, accuracy, fit

VALIDATION_SHARE = 0.25
CLEAN_SLACK = 0.01
CONDITION_SEED = 99


@dataclass(frozen=True)
class Carved:
    """The training split cut in two: what the candidates learn from and what scores them."""

    fit_x: NDArray[np.float32]
    fit_y: NDArray[np.int64]
    val_x: NDArray[np.float32]
    val_y: NDArray[np.int64]


def carve(seed: int = 0) -> Carved:
    """Return a stratified validation split of ``VALIDATION_SHARE`` of the training split."""
    splits = load_splits(seed)
    rng = np.random.default_rng(1000 + seed)
    val = np.concatenate(
        [
            (members := rng.permutation(np.flatnonzero(splits.train_y == c)))[
                : round(VALIDATION_SHARE * len(members))
            ]
            for c in range(10)
        ]
    )
    keep = np.setdiff1d(np.arange(len(splits.train_y)), val)
    return Carved(
        splits.train_x[keep], splits.train_y[keep], splits.train_x[val], splits.train_y[val]
    )


def conditions(carved: Carved) -> dict[str, NDArray[np.float32]]:
    """The validation split as the cameras show it: clean (jittered) and under every fault."""
    rng = np.random.default_rng(CONDITION_SEED)
    out = {"clean": site_condition(carved.val_x, None, 1.0, rng)}
    for kind in DRIFT_KINDS:
        out[kind] = site_condition(carved.val_x, kind, 1.0, rng)
    return out


def candidates(quick: bool) -> list[tuple[str, ...]]:
    """The sets tried: none, growing sets, and all but one."""
    growing = [tuple(AUGMENTATIONS[:i]) for i in range(len(AUGMENTATIONS) + 1)]
    if quick:
        return [(), ("shift",), ("shift", "noise"), tuple(AUGMENTATIONS)]
    leave_one_out = [tuple(a for a in AUGMENTATIONS if a != left) for left in AUGMENTATIONS]
    return list(dict.fromkeys(growing + leave_one_out + [("shift", "blur", "contrast")]))


@dataclass(frozen=True)
class Score:
    augment: tuple[str, ...]
    by_condition: dict[str, float]  # mean over seeds
    seconds: float

    @property
    def clean(self) -> float:
        return self.by_condition["clean"]

    @property
    def overall(self) -> float:
        return float(np.mean(list(self.by_condition.values())))

    @property
    def unseen(self) -> float:
        """Mean over the fault kinds this set does not simulate: how it generalises."""
        seen = set(augmented_kinds(self.augment))
        return float(
            np.mean([v for k, v in self.by_condition.items() if k not in seen | {"clean"}])
        )


def score(
    augment: tuple[str, ...], carved: Carved, views: dict[str, NDArray[np.float32]], seeds: int
) -> Score:
    started = time.monotonic()
    per_seed = []
    for seed in range(seeds):
        model = fit(
            carved.fit_x,
            carved.fit_y,
            recipe=replace(SCRATCH, augment=augment),
            seed=seed,
            threads=2,
        )
        per_seed.append({k: accuracy(model, x, carved.val_y) for k, x in views.items()})
    means = {k: float(np.mean([s[k] for s in per_seed])) for k in views}
    return Score(augment, means, (time.monotonic() - started) / seeds)


def choose(scores: list[Score]) -> Score:
    """Best overall among the sets within ``CLEAN_SLACK`` of the best clean accuracy."""
    best_clean = max(s.clean for s in scores)
    eligible = [s for s in scores if s.clean >= best_clean - CLEAN_SLACK]
    return max(eligible, key=lambda s: s.overall)


def name(augment: tuple[str, ...]) -> str:
    return "+".join(augment) or "(none)"


def print_table(scores: list[Score], chosen: Score) -> None:
    kinds = ["clean", *DRIFT_KINDS]
    print(f"\n{'augment':38s} " + " ".join(f"{k[:6]:>6s}" for k in kinds) + "   mean unseen  s/fit")
    for s in scores:
        mark = "*" if s is chosen else " "
        cells = " ".join(f"{s.by_condition[k]:6.3f}" for k in kinds)
        print(
            f"{mark}{name(s.augment):37s} {cells}  {s.overall:.3f}  {s.unseen:.3f}  {s.seconds:.1f}"
        )
    print(
        f"\nchosen: {chosen.augment} -- clean {chosen.clean:.3f}, mean over clean and "
        f"{len(DRIFT_KINDS)} faults {chosen.overall:.3f}, mean over the "
        f"{len(DRIFT_KINDS) - len(augmented_kinds(chosen.augment))} kinds it does not simulate "
        f"{chosen.unseen:.3f}"
    )


def fault_table(carved: Carved, augments: list[tuple[str, ...]]) -> None:
    """The first model (whole fit split) under each fault at a few severities, on validation."""
    for augment in augments:
        model = fit(
            carved.fit_x, carved.fit_y, recipe=replace(SCRATCH, augment=augment), seed=0, threads=2
        )
        rng = np.random.default_rng(CONDITION_SEED)
        clean = accuracy(model, site_condition(carved.val_x, None, 1.0, rng), carved.val_y)
        print(f"\n== first model, augment {name(augment)}: validation accuracy by severity ==")
        print(f"  {'clean+jitter':14s} {clean:.3f}")
        for kind in DRIFT_KINDS:
            cells = [
                accuracy(model, site_condition(carved.val_x, kind, sev, rng), carved.val_y)
                for sev in (0.5, 1.0, 1.5)
            ]
            print(
                f"  {kind:14s} "
                + "  ".join(f"@{s}: {a:.3f}" for s, a in zip((0.5, 1, 1.5), cells, strict=True))
            )


def fine_tune_check(carved: Carved, augment: tuple[str, ...], kinds: list[str], seeds: int) -> None:
    """Fine-tune the first model on 200 faulty stream frames with and without ``augment``."""
    splits = load_splits(0)
    print(f"\n== fine-tune on 200 faulty stream frames: augment {name(augment)} vs none ==")
    for kind in kinds:
        cells = []
        for tune_augment in (augment, ()):
            accs = []
            for seed in range(seeds):
                base = fit(
                    carved.fit_x,
                    carved.fit_y,
                    recipe=replace(SCRATCH, augment=augment),
                    seed=seed,
                    threads=2,
                )
                rng = np.random.default_rng(500 + seed)
                pick = rng.choice(len(splits.stream_y), size=200, replace=False)
                new_x = site_condition(splits.stream_x[pick], kind, 1.0, rng)
                model = fit(
                    carved.fit_x,
                    carved.fit_y,
                    new_x=new_x,
                    new_y=splits.stream_y[pick],
                    base_state=base.state_dict(),
                    recipe=replace(FINE_TUNE, augment=tune_augment),
                    seed=seed,
                    threads=2,
                )
                view = site_condition(
                    carved.val_x, kind, 1.0, np.random.default_rng(CONDITION_SEED)
                )
                accs.append(accuracy(model, view, carved.val_y))
            cells.append(f"{name(tune_augment)}: {np.mean(accs):.3f} (min {min(accs):.3f})")
        print(f"  {kind:14s} " + "   ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 candidates, 2 seeds")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--faults", action="store_true", help="first model's severity table")
    parser.add_argument("--fine-tune", action="store_true", help="fine-tune with and without")
    args = parser.parse_args()
    seeds = args.seeds or (2 if args.quick else 3)
    carved = carve()
    views = conditions(carved)
    print(
        f"training split cut into {len(carved.fit_y)} to fit and {len(carved.val_y)} to validate; "
        f"{seeds} seeds; every view through site_condition (jitter, faults at severity 1)"
    )
    scores = []
    for augment in candidates(args.quick):
        scores.append(score(augment, carved, views, seeds))
        print(f"  {name(augment):38s} mean {scores[-1].overall:.3f}", flush=True)
    chosen = choose(scores)
    print_table(scores, chosen)
    if args.faults:
        fault_table(carved, [(), chosen.augment])
    if args.fine_tune:
        unseen = [k for k in DRIFT_KINDS if k not in augmented_kinds(chosen.augment)]
        fine_tune_check(carved, chosen.augment, ["blur_contrast", *unseen[:4]], max(1, seeds - 1))


if __name__ == "__main__":
    main()
