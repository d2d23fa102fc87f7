"""The fraud example's fixed data: one simulated bank history cut into disjoint splits.

The history is simulated in one pass (a warm-up week, then 72 days at one steady rate), so
the behaviour features (transactions in the last hour or day, minutes since the previous one)
run on without a seam at the drift onset: the only change there is the new pattern.

Period one (days 0-50, no drift) is split at random into ``train`` (what the first model
learns), ``validation`` (calibration of the operating point and the gate's reference
holdout), ``stream_before`` (what the branch terminals replay) and the RESERVED
``test_before``.  Period two (days 50-72) has the account-takeover wave at ``DRIFT_BRANCH``
from its first day and is split into ``stream_after`` (replayed after the drift onset) and
the RESERVED ``test_after``.  No terminal ever streams a reserved row, and no trainer reads
one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipelines.fraud.features import features
from pipelines.fraud.transactions import (
    BRANCHES,
    DAY_S,
    DRIFT_BRANCH,
    Transactions,
    simulate,
)

__all__ = ["FraudSplits", "Split", "load_splits", "reference_holdout"]

#: Legitimate rows simulated per day; the fraud comes on top (``transactions``).
PER_DAY = 1_800
WARM_UP_DAYS = 7.0
#: Shares of period one: train, validation, stream_before; the rest is test_before.
BEFORE_SHARES = (0.45, 0.2, 0.15)
DRIFT_DAY = 50.0
AFTER_DAYS = 22.0


@dataclass(frozen=True)
class Split:
    """One split: the rows, their features (n, N_FEATURES) float32 and labels 0/1 int64."""

    rows: Transactions
    x: NDArray[np.float32]
    y: NDArray[np.int64]

    def at_branch(self, branch: str) -> Split:
        """Return the rows of this split seen at ``branch``."""
        keep = np.flatnonzero(self.rows.branch == BRANCHES.index(branch))
        return Split(self.rows.take(keep), self.x[keep], self.y[keep])


@dataclass(frozen=True)
class FraudSplits:
    """Every split of one history (see the module docstring)."""

    train: Split
    validation: Split
    stream_before: Split
    test_before: Split
    stream_after: Split
    test_after: Split

    @property
    def test_after_drift_branch(self) -> Split:
        """Return the reserved post-drift rows of the drift branch, where the new pattern is."""
        return self.test_after.at_branch(DRIFT_BRANCH)


def _split(rows: Transactions, index: NDArray[np.int64]) -> Split:
    # Each split stays in time order, as a terminal would replay it.
    taken = rows.take(np.sort(index))
    return Split(taken, features(taken), taken.fraud.astype(np.int64))


@functools.cache
def load_splits(seed: int = 0) -> FraudSplits:
    """Simulate the history for ``seed`` and split it (cached: the arrays are shared, read only)."""
    days = WARM_UP_DAYS + DRIFT_DAY + AFTER_DAYS
    history = simulate(
        int(PER_DAY * days), day0=-WARM_UP_DAYS, days=days, seed=seed, drift_onset_day=DRIFT_DAY
    )
    day = history.time_s / DAY_S
    before = history.take(np.flatnonzero((day >= 0) & (day < DRIFT_DAY)))
    after = history.take(np.flatnonzero(day >= DRIFT_DAY))
    rng = np.random.default_rng([seed, 3])
    order = rng.permutation(len(before))
    cuts = np.cumsum(np.array(BEFORE_SHARES) * len(before)).astype(int)
    train, validation, stream, test = np.split(order, cuts)
    half = rng.permutation(len(after))
    splits = FraudSplits(
        train=_split(before, train),
        validation=_split(before, validation),
        stream_before=_split(before, stream),
        test_before=_split(before, test),
        stream_after=_split(after, half[: len(half) // 2]),
        test_after=_split(after, half[len(half) // 2 :]),
    )
    for split in vars(splits).values():
        split.x.setflags(write=False)
        split.y.setflags(write=False)
    return splits


def reference_holdout(seed: int = 0) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Return the gate's fixed labelled set: the validation split (never the reserved tests).

    Recall at 1 % FPR needs many negatives and some positives: about 18,000 rows with about
    50 frauds, of the known patterns only; the gate's edge slice brings the new ones.
    """
    validation = load_splits(seed).validation
    return validation.x.copy(), validation.y.copy()
