"""A simulated inspection camera: the digits stream pool at a fixed frame rate, with a fault onset.

``DigitsCamera`` is an edge-agent source (``continuum.sources``): its keyword arguments are
plain JSON so an agent config can name it.  It never shows the reserved test split, and it never
shows the same frame twice: every frame is the pool image through ``faults.site_condition``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from continuum.errors import ConfigError
from continuum.sources import Frame
from pipelines._pacing import paced
from pipelines.digits.data import load_splits
from pipelines.digits.faults import DRIFT_KINDS, NOVELTY, site_condition


class DigitsCamera:
    """Yield the stream pool's digits as frames at ``fps``, each with its delayed true label.

    Every camera walks the pool in its own order (``seed``), a fresh order each pass.  Like a
    real camera it never repeats a frame: each one gets its own sensor jitter (placement and
    read noise), and from the drift onset on (``drift_start_unix``, a wall-clock time, or
    ``drift_after_s`` after the first frame) fault ``drift_kind`` at ``drift_severity`` drawn
    afresh for that frame (``faults.site_condition``).  ``novelty`` says so in one line for the
    report.  ``max_frames`` ends the stream (None: endless).

    ``fields`` gives every frame named side values, as a form or a badge reader next to the
    camera would: name -> template formatted with the frame number ``n`` and the camera's
    ``seed``, e.g. ``{"patient_id": "P-{seed:02d}{n:06d}"}``.  The pipeline's input schema
    gives them a data class, and the agent's residency plan decides what leaves the site.
    """

    def __init__(
        self,
        fps: float = 20.0,
        seed: int = 0,
        label_delay_s: float = 3.0,
        drift_kind: str | None = None,
        drift_start_unix: float | None = None,
        drift_after_s: float | None = None,
        drift_severity: float = 1.0,
        max_frames: int | None = None,
        fields: Mapping[str, str] | None = None,
        split_seed: int = 0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 < fps <= 10_000:
            raise ConfigError(f"fps must be in (0, 10000], got {fps}")
        if label_delay_s < 0:
            raise ConfigError(f"label_delay_s must be >= 0, got {label_delay_s}")
        if drift_kind is not None and drift_kind not in DRIFT_KINDS:
            raise ConfigError(
                f"drift_kind {drift_kind!r} is not a camera fault; use one of "
                f"{', '.join(DRIFT_KINDS)} or null"
            )
        if drift_kind is not None and drift_start_unix is None and drift_after_s is None:
            raise ConfigError("drift_kind needs an onset: drift_start_unix or drift_after_s")
        if drift_severity < 0:
            raise ConfigError(
                f"drift_severity must be >= 0 (0: no fault, 1: the demo's level), "
                f"got {drift_severity}"
            )
        if max_frames is not None and max_frames < 0:
            raise ConfigError(f"max_frames must be >= 0 or null, got {max_frames}")
        self.fps = float(fps)
        self.label_delay_s = float(label_delay_s)
        self.drift_kind = drift_kind
        self.drift_start_unix = drift_start_unix
        self.drift_after_s = drift_after_s
        self.drift_severity = float(drift_severity)
        self.max_frames = max_frames
        self.fields = dict(fields or {})
        for name, template in self.fields.items():
            try:
                template.format(n=0, seed=seed)
            except (KeyError, IndexError, ValueError, AttributeError) as error:
                raise ConfigError(
                    f"fields.{name}: template {template!r} does not format ({error!r}); "
                    "use {n} (frame number) and {seed}, e.g. 'P-{seed:02d}{n:06d}'"
                ) from None
        self.seed = seed
        self._clock = clock
        self._sleep = sleep
        splits = load_splits(split_seed)
        self._images = splits.stream_x
        self._labels = splits.stream_y
        self._order_rng = np.random.default_rng(seed)
        # The frames' own draws come from a stream of their own, so the order stays the seed's.
        self._frame_rng = np.random.default_rng([seed, 1])
        self.novelty = f"{NOVELTY} over a {len(self._labels)}-image pool"

    def _onset(self, first_frame_at: float) -> float | None:
        if self.drift_kind is None:
            return None
        onsets = [
            t
            for t in (
                self.drift_start_unix,
                None if self.drift_after_s is None else first_frame_at + self.drift_after_s,
            )
            if t is not None
        ]
        return min(onsets)

    def __iter__(self) -> Iterator[Frame]:
        """Yield frames paced at ``fps``; a late consumer is not made up for with a burst."""
        onset = self._onset(self._clock())
        order = self._order_rng.permutation(len(self._labels))
        for n, now in paced(self.fps, self._clock, self._sleep, self.max_frames):
            if n and n % len(order) == 0:
                order = self._order_rng.permutation(len(self._labels))
            index = int(order[n % len(order)])
            drifted = onset is not None and now >= onset
            tensor = site_condition(
                self._images[index : index + 1],
                self.drift_kind if drifted else None,
                self.drift_severity,
                self._frame_rng,
            )[0]
            yield Frame(
                tensor=tensor,
                label=int(self._labels[index]),
                label_delay_s=self.label_delay_s,
                captured_at_ns=int(now * 1e9),
                fields={k: t.format(n=n, seed=self.seed) for k, t in self.fields.items()},
            )
