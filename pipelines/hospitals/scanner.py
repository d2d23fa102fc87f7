"""A simulated imaging station at one hospital: the site's stream rows replayed at a fixed rate.

``SiteScanner`` is an edge-agent source (``continuum.sources``): its keyword arguments are
plain JSON so an agent config can name it.  It replays only its site's ``stream`` rows
(never a reserved ``test`` row), as the site's device reads them; from the drift onset the
drift site's device reads them recalibrated (``data.recalibrated``).  Each frame's label is
the pathology confirmation, known ``label_delay_s`` after the scan (days in reality, seconds
in the demo): delayed feedback that, like the sample, stays at the site.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from continuum.errors import ConfigError
from continuum.sources import Frame
from pipelines._pacing import paced
from pipelines.hospitals.data import DRIFT_SITE, SITES, load_splits, recalibrated


class SiteScanner:
    """Yield one site's measurement rows as frames at ``rate``, each with its delayed label.

    The drift (the drift site's recalibration; other sites never drift) starts at
    ``drift_start_unix`` (wall clock) or at frame ``drift_after_frames``, whichever first.
    ``max_frames`` ends the stream (None: endless, the rows replayed in a new order each
    pass).
    """

    def __init__(
        self,
        site: str = DRIFT_SITE,
        rate: float = 5.0,
        seed: int = 0,
        label_delay_s: float = 3.0,
        drift_start_unix: float | None = None,
        drift_after_frames: int | None = None,
        max_frames: int | None = None,
        split_seed: int = 0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if site not in SITES:
            raise ConfigError(f"site {site!r} is not one of the hospitals: {', '.join(SITES)}")
        if not 0 < rate <= 10_000:
            raise ConfigError(f"rate (rows per second) must be in (0, 10000], got {rate}")
        if label_delay_s < 0:
            raise ConfigError(f"label_delay_s must be >= 0, got {label_delay_s}")
        for name, value in (("drift_after_frames", drift_after_frames), ("max_frames", max_frames)):
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0 or null, got {value}")
        self.site = site
        self.rate = float(rate)
        self.label_delay_s = float(label_delay_s)
        self.drift_start_unix = drift_start_unix if site == DRIFT_SITE else None
        self.drift_after_frames = drift_after_frames if site == DRIFT_SITE else None
        self.max_frames = max_frames
        self._clock = clock
        self._sleep = sleep
        stream = load_splits(split_seed).stream[site]
        self._x, self._y = stream.x, stream.y
        self._rng = np.random.default_rng([seed, 11])
        self.novelty = (
            "the site's imaging device recalibrated: sizes read 0.65x, areas 0.42x"
            if site == DRIFT_SITE
            else "no change at this site"
        )

    def _drifted(self, now: float, n: int) -> bool:
        return (self.drift_start_unix is not None and now >= self.drift_start_unix) or (
            self.drift_after_frames is not None and n >= self.drift_after_frames
        )

    def __iter__(self) -> Iterator[Frame]:
        """Yield frames paced at ``rate``; a late consumer is not made up for with a burst."""
        order = self._rng.permutation(len(self._y))
        for n, now in paced(self.rate, self._clock, self._sleep, self.max_frames):
            if n and n % len(order) == 0:
                order = self._rng.permutation(len(self._y))
            i = int(order[n % len(order)])
            row = self._x[i : i + 1]
            if self._drifted(now, n):
                row = recalibrated(row)
            yield Frame(
                tensor=np.array(row[0], dtype=np.float32),
                label=int(self._y[i]),
                label_delay_s=self.label_delay_s,
                captured_at_ns=int(now * 1e9),
            )
