"""A simulated branch terminal: one branch's transactions replayed at a fixed rate, drift onset.

``BranchTerminal`` is an edge-agent source (``continuum.sources``): its keyword arguments are
plain JSON so an agent config can name it.  It replays the stream splits only (never a
reserved test row), in time order: ``stream_before`` until the drift onset, then
``stream_after``, where the account-takeover wave runs at ``DRIFT_BRANCH``.

Labels are what the bank learns later, as it learns them:

* a fraud the customer disputes comes back as a chargeback (a recall for a SEPA transfer)
  after ``chargeback_delay_s`` (weeks in reality, seconds in the demo) with label 1;
* a transaction nobody disputes is presumed legitimate when the dispute window closes,
  ``dispute_window_s`` after capture, with label 0;
* ``missed_share`` of frauds are never disputed (a customer who does not read statements,
  a small amount written off) and therefore come back as 0 at the window's close, as the
  bank would record them.  15 % by default: the order of magnitude of fraud that card
  issuers report as found only through later analysis, not by the cardholder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from continuum.errors import ConfigError
from continuum.sources import Frame
from pipelines._pacing import paced
from pipelines.fraud.data import Split, load_splits
from pipelines.fraud.transactions import BRANCHES, make_bank


class BranchTerminal:
    """Yield one branch's transactions as frames at ``tps``, each with its delayed label.

    The drift starts at ``drift_start_unix`` (wall clock), ``drift_after_s`` after the first
    frame, or at frame ``drift_after_frames``, whichever comes first; with none of them the
    terminal never drifts.  ``max_frames`` ends the stream (None: endless, each split
    replayed from its start again).  Every frame carries the fields ``iban`` and
    ``customer_name``: the pipeline gives them their data class, the agent's residency plan
    decides what leaves the branch.
    """

    def __init__(
        self,
        branch: str = "lux-gare",
        tps: float = 50.0,
        seed: int = 0,
        chargeback_delay_s: float = 3.0,
        dispute_window_s: float = 6.0,
        missed_share: float = 0.15,
        drift_start_unix: float | None = None,
        drift_after_s: float | None = None,
        drift_after_frames: int | None = None,
        max_frames: int | None = None,
        split_seed: int = 0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if branch not in BRANCHES:
            raise ConfigError(f"branch {branch!r} is not one of the bank's: {', '.join(BRANCHES)}")
        if not 0 < tps <= 10_000:
            raise ConfigError(f"tps (transactions per second) must be in (0, 10000], got {tps}")
        if not 0 <= chargeback_delay_s <= dispute_window_s:
            raise ConfigError(
                "chargeback_delay_s must be >= 0 and at most dispute_window_s (a dispute "
                f"arrives within the window), got {chargeback_delay_s} and {dispute_window_s}"
            )
        if not 0.0 <= missed_share <= 1.0:
            raise ConfigError(f"missed_share must be in [0, 1], got {missed_share}")
        for name, value in (("drift_after_frames", drift_after_frames), ("max_frames", max_frames)):
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0 or null, got {value}")
        self.branch = branch
        self.tps = float(tps)
        self.chargeback_delay_s = float(chargeback_delay_s)
        self.dispute_window_s = float(dispute_window_s)
        self.missed_share = float(missed_share)
        self.drift_start_unix = drift_start_unix
        self.drift_after_s = drift_after_s
        self.drift_after_frames = drift_after_frames
        self.max_frames = max_frames
        self.seed = seed
        self._clock = clock
        self._sleep = sleep
        splits = load_splits(split_seed)
        self._before = splits.stream_before.at_branch(branch)
        self._after = splits.stream_after.at_branch(branch)
        self._bank = make_bank()
        self._rng = np.random.default_rng([seed, 5])
        self.novelty = (
            "account-takeover SEPA transfers at night, unseen in training"
            if branch == "lux-gare"
            else "no new pattern at this branch (the known ones go on)"
        )

    def _drifted(self, now: float, first_at: float, n: int) -> bool:
        return (
            (self.drift_start_unix is not None and now >= self.drift_start_unix)
            or (self.drift_after_s is not None and now >= first_at + self.drift_after_s)
            or (self.drift_after_frames is not None and n >= self.drift_after_frames)
        )

    def _frame(self, split: Split, i: int, now: float) -> Frame:
        customer = int(split.rows.customer[i])
        fraud = bool(split.y[i])
        disputed = fraud and self._rng.random() >= self.missed_share
        return Frame(
            tensor=np.array(split.x[i], dtype=np.float32),
            label=1 if disputed else 0,
            label_delay_s=self.chargeback_delay_s if disputed else self.dispute_window_s,
            captured_at_ns=int(now * 1e9),
            fields={
                "iban": self._bank.ibans[customer],
                "customer_name": self._bank.names[customer],
            },
        )

    def __iter__(self) -> Iterator[Frame]:
        """Yield frames paced at ``tps``; a late consumer is not made up for with a burst."""
        first_at = self._clock()
        cursor = {"before": 0, "after": 0}
        for n, now in paced(self.tps, self._clock, self._sleep, self.max_frames):
            key = "after" if self._drifted(now, first_at, n) else "before"
            split = self._after if key == "after" else self._before
            i = cursor[key] % len(split.y)
            cursor[key] += 1
            yield self._frame(split, i, now)
