"""Offline figures of the maintenance pipeline: before drift, right after it, after retraining.

Usage: ``python benchmarks/maintenance_offline.py [--drift machine_b|sensor_ageing|all]
[--seeds N]``.

1. The first model learns the training split (type-A machines, fresh sensors).
2. Precision and recall at the calibrated threshold (score > 1.0) on the RESERVED test split.
3. One site drifts (``data.DRIFTS``): a new machine type B installed, or its sensors aged.
   Figures on that site's reserved test windows, right after the drift.
4. The site's gateway streams 600 windows; an uplink policy picks some: every window whose
   score is above the rolling ``q`` quantile of the last 200 scores, plus a random share
   (``policy``), or a random share alone at the same count (``random``).  The maintenance
   records label them; the model is fine-tuned (``train.FINE_TUNE``) on the training split
   replayed plus the uplinked normal windows, and scored again on both reserved splits.

Prints one table row per (drift, budget, policy), averaged over seeds.  The figures of a run
(``--seeds 2``, 2 cores) are in ``pipelines/maintenance/__init__.py``; it takes about 3 min.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numpy.typing import NDArray

from pipelines.maintenance.data import DRIFTS, drifted_split, load_splits
from pipelines.maintenance.train import (
    FINE_TUNE,
    SCRATCH,
    fit,
    precision_recall,
    scores,
)

#: (rolling quantile, random share) of the uplink policy: the budgets compared.
POLICIES = ((0.95, 0.02), (0.9, 0.05), (0.7, 0.1))
ROLLING = 200


def select(
    stream_scores: NDArray[np.float32], quantile: float, share: float, rng: np.random.Generator
) -> NDArray[np.bool_]:
    """Return which windows the policy uplinks: above the rolling quantile, or drawn at random."""
    picked = np.zeros(len(stream_scores), dtype=bool)
    for i, score in enumerate(stream_scores):
        recent = stream_scores[max(0, i - ROLLING) : i]
        above = len(recent) >= 20 and score > np.quantile(recent, quantile)
        picked[i] = above or rng.random() < share
    return picked


def _fmt(pr: tuple[float, float]) -> str:
    return f"{pr[0]:.2f}/{pr[1]:.2f}"


def run(drift: str, seed: int) -> list[tuple[str, str, str, str, str]]:
    """Return rows (stage, uplinked, test P/R, drifted-site P/R, seconds) for one seed."""
    splits = load_splits()
    test, site_test = splits.test, drifted_split(drift, "test")
    started = time.monotonic()
    base = fit(splits.train.x, splits.train.y, recipe=SCRATCH, seed=seed, threads=2)
    rows = [
        (
            "before drift",
            "-",
            _fmt(precision_recall(base, test.x, test.y)),
            "-",
            f"{time.monotonic() - started:.1f}",
        ),
        (
            "right after drift",
            "-",
            _fmt(precision_recall(base, test.x, test.y)),
            _fmt(precision_recall(base, site_test.x, site_test.y)),
            "-",
        ),
    ]
    stream = drifted_split(drift, "stream", seed=seed)
    stream_scores = scores(base, stream.x)
    state = base.state_dict()
    for quantile, share in POLICIES:
        rng = np.random.default_rng(seed)
        picked = select(stream_scores, quantile, share, rng)
        n = int(picked.sum())
        at_random = np.zeros(len(picked), dtype=bool)
        at_random[rng.choice(len(picked), size=n, replace=False)] = True
        for name, mask in (("policy", picked), ("random", at_random)):
            started = time.monotonic()
            model = fit(
                splits.train.x,
                splits.train.y,
                new_x=stream.x[mask],
                new_y=stream.y[mask],
                base_state=state,
                recipe=FINE_TUNE,
                seed=seed,
                threads=2,
            )
            rows.append(
                (
                    f"retrained, {name} q={quantile} r={share}",
                    f"{n} ({n / len(picked):.0%}, {int((stream.y[mask] == 0).sum())} normal)",
                    _fmt(precision_recall(model, test.x, test.y)),
                    _fmt(precision_recall(model, site_test.x, site_test.y)),
                    f"{time.monotonic() - started:.1f}",
                )
            )
    return rows


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drift", default="all", choices=[*DRIFTS, "all"])
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    drifts = list(DRIFTS) if args.drift == "all" else [args.drift]
    header = ("stage", "uplinked of 600", "test P/R", "site P/R", "fit s")
    for drift in drifts:
        print(f"\n## drift: {drift}  (P/R = precision/recall at score > 1.0, mean of seeds)")
        per_seed = [run(drift, seed) for seed in range(args.seeds)]
        print(" | ".join(header))
        for i, row in enumerate(per_seed[0]):
            cells = list(row)
            for col in (2, 3):
                values = [r[i][col] for r in per_seed]
                if values[0] != "-":
                    p = np.mean([float(v.split("/")[0]) for v in values])
                    r = np.mean([float(v.split("/")[1]) for v in values])
                    cells[col] = f"{p:.2f}/{r:.2f}"
            print(" | ".join(cells))


if __name__ == "__main__":
    main()
