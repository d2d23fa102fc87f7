"""The two samples every detector compares: a frozen reference and a sliding window."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatRows = npt.NDArray[np.float64]


class ReferenceWindow:
    """The first ``reference`` rows after a reset, then a ring of the last ``window`` rows.

    Rows are ``width`` floats each (one per value a detector tests).  ``push`` returns
    whether this call completed the reference, so a detector can precompute what it needs
    from it once.
    """

    def __init__(self, reference: int, window: int, width: int) -> None:
        self._reference = np.empty((reference, width), dtype=np.float64)
        self._window = np.empty((window, width), dtype=np.float64)
        self._reference_count = 0
        self._window_count = 0
        self._next = 0

    @property
    def reference(self) -> FloatRows:
        """The reference rows (complete once ``reference_full``)."""
        return self._reference

    @property
    def window(self) -> FloatRows:
        """The window rows, in no particular order (complete once ``ready``)."""
        return self._window

    @property
    def reference_full(self) -> bool:
        """Whether the reference is complete."""
        return self._reference_count == self._reference.shape[0]

    @property
    def ready(self) -> bool:
        """Whether both the reference and the window are complete."""
        return self.reference_full and self._window_count == self._window.shape[0]

    def reset(self) -> None:
        """Forget every row: the next ones form a new reference."""
        self._reference_count = 0
        self._window_count = 0
        self._next = 0

    def push(self, rows: FloatRows) -> bool:
        """Add ``rows`` (n, width): first to the reference, then to the window."""
        completed = False
        missing = self._reference.shape[0] - self._reference_count
        if missing > 0:
            taken = rows[:missing]
            start = self._reference_count
            self._reference[start : start + taken.shape[0]] = taken
            self._reference_count += taken.shape[0]
            rows = rows[taken.shape[0] :]
            completed = self.reference_full
        if rows.shape[0]:
            self._push_window(rows)
        return completed

    def _push_window(self, rows: FloatRows) -> None:
        size = self._window.shape[0]
        if rows.shape[0] >= size:
            self._window[:] = rows[-size:]
            self._next = 0
            self._window_count = size
            return
        # At most two slices (up to the ring's end, then from its start): no index array.
        start, count = self._next, rows.shape[0]
        head = min(count, size - start)
        self._window[start : start + head] = rows[:head]
        if head < count:
            self._window[: count - head] = rows[head:]
        self._next = (start + count) % size
        self._window_count = min(size, self._window_count + rows.shape[0])
