"""The fraud example's fixed data: one simulated bank history cut into disjoint splits.

Period one (days 0-50, no drift) is split at random into ``train`` (what the first model
learns), ``validation`` (calibration of the operating point and the gate's reference
holdout), ``stream_before`` (what the branch terminals replay) and the RESERVED
``test_before``.  Period two (days 50-65) has the account-takeover wave at ``DRIFT_BRANCH``
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
from pipelines.fraud.transactions import BRANCHES, DRIFT_BRANCH, Transactions, simulate

__all__ = ["FraudSplits", "Split", "load_splits", "reference_holdout"]

#: Legitimate rows simulated per period; the fraud comes on top (``transactions``).
N_BEFORE = 90_000
N_AFTER = 40_000
#: Shares of period one: train, validation, stream_before; the rest is test_before.
BEFORE_SHARES = (0.5, 0.15, 0.15)
DRIFT_DAY = 50.0
AFTER_DAYS = 15.0


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
    before = simulate(N_BEFORE, day0=0.0, days=DRIFT_DAY, seed=seed)
    after = simulate(
        N_AFTER, day0=DRIFT_DAY, days=AFTER_DAYS, seed=seed + 1000, drift_onset_day=DRIFT_DAY
    )
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

    Recall at 1 % FPR needs many negatives and some positives: about 13,500 rows with about
    40 frauds, of the known patterns only; the gate's edge slice brings the new ones.
    """
    validation = load_splits(seed).validation
    return validation.x.copy(), validation.y.copy()
