"""Sensor readings into model windows: the gateway payload forms, channel alignment and the
window/stride cut.  Pure logic, no network, no threads: ``edge_agent.gateway`` feeds it.

Payload forms a gateway publishes on a channel's topic (JSON, UTF-8):

- a chunk of a high-rate channel: ``{"ts": <epoch s of the first value>, "values": [..],
  "rate_hz": <samples per s, optional>}``;
- one reading of a slow channel: ``{"ts": <epoch s>, "value": x}``;
- a bare JSON number (``41.2``), as many gateways publish a plain reading; it is stamped on
  arrival.

``ts`` is optional (arrival time when absent).  Any form may carry the maintenance record the
plant will know later: ``"label": <int >= 0>`` and ``"label_delay_s": <s >= 0>``.  In the
demo the simulated gateway attaches it; in a plant the CMMS bridge publishes it the same way
(or the delayed-feedback path sends it later).  Anything else is malformed.

Alignment is hold-last on the clock channel (the first listed, the high-rate one): every clock
sample becomes a row holding the latest value of each other channel.  A slow quantity
(temperature, RMS current) stays what it last read until the next reading, which is what it
physically does between readings; resampling the fast channel instead would alias it, and
waiting for the next slow reading to interpolate would delay every window by a reading period.
Clock samples that arrive before every channel has read once, or while a channel's last
reading is older than ``max_stale_s``, make no row (counted): a window never holds a value
from a sensor that went silent.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["MalformedReadingError", "Reading", "Window", "Windower", "parse_reading"]

#: A chunk longer than this is refused: it would make one window hold seconds of one message.
MAX_CHUNK_VALUES = 65_536
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class MalformedReadingError(ValueError):
    """A payload that is none of the accepted forms; ``reason`` names the problem."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Reading:
    """One parsed payload: its values, the time of the first, the rate, and any label."""

    values: NDArray[np.float64]
    ts: float
    rate_hz: float | None = None
    label: int | None = None
    label_delay_s: float = 0.0


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedReadingError(f"{what} is {type(value).__name__}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise MalformedReadingError(f"{what} is not finite")
    return number


def parse_reading(payload: bytes | bytearray, now: float) -> Reading:
    """Parse one message of a channel's topic (the forms in the module docstring).

    Raises:
        MalformedReadingError: not JSON, not one of the forms, a value not a finite number, or a
            bad ``ts``, ``rate_hz``, ``label`` or ``label_delay_s``.
    """
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedReadingError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        bare = _number(body, "the reading")
        if abs(bare) > _FLOAT32_MAX:
            raise MalformedReadingError("the reading is beyond float32's range")
        return Reading(values=np.array([bare]), ts=now)
    if ("value" in body) == ("values" in body):
        raise MalformedReadingError(
            'needs exactly one of "value" (a reading) or "values" (a chunk)'
        )
    if "value" in body:
        values = np.array([_number(body["value"], "value")])
    else:
        raw = body["values"]
        if not isinstance(raw, list) or not raw or len(raw) > MAX_CHUNK_VALUES:
            raise MalformedReadingError(
                f'"values" must be a list of 1 to {MAX_CHUNK_VALUES} numbers'
            )
        values = np.array([_number(v, "an item of values") for v in raw])
    if np.abs(values).max() > _FLOAT32_MAX:
        raise MalformedReadingError("a value is beyond float32's range (the tensor's dtype)")
    ts = _number(body["ts"], "ts") if "ts" in body else now
    rate = body.get("rate_hz")
    rate_hz = None if rate is None else _number(rate, "rate_hz")
    if rate_hz is not None and rate_hz <= 0:
        raise MalformedReadingError("rate_hz must be > 0")
    label = body.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
        raise MalformedReadingError("label must be an integer >= 0 (e.g. 0 normal, 1 faulty)")
    delay = _number(body.get("label_delay_s", 0.0), "label_delay_s")
    if delay < 0:
        raise MalformedReadingError("label_delay_s must be >= 0")
    return Reading(values=values, ts=ts, rate_hz=rate_hz, label=label, label_delay_s=delay)


@dataclass(frozen=True, slots=True)
class Window:
    """One cut window: ``tensor`` (channels, window) float32, the time of its last sample,
    and the largest label any of its rows carried (None: none did)."""

    tensor: NDArray[np.float32]
    ts: float
    label: int | None
    label_delay_s: float


class Windower:
    """Align channels hold-last on the clock channel and cut windows of ``window`` rows every
    ``stride`` rows.  Call ``feed`` with each reading; it returns the windows completed."""

    def __init__(
        self,
        channels: Sequence[str],
        window: int,
        stride: int,
        max_stale_s: float | None = None,
    ) -> None:
        if len(channels) < 1 or len(set(channels)) != len(channels):
            raise ValueError(f"channels must be distinct names, got {list(channels)}")
        if window < 1 or stride < 1:
            raise ValueError(f"window and stride must be >= 1, got {window=} {stride=}")
        self.channels = tuple(channels)
        self.window = window
        self.stride = stride
        self.max_stale_s = max_stale_s
        self._held: dict[str, tuple[float, float]] = {}  # channel -> (value, ts)
        self._label: tuple[int, float] | None = None  # the latest label and its delay
        n = len(self.channels)
        self._rows = np.zeros((n, 0), dtype=np.float32)
        self._row_ts = np.zeros(0)
        self._row_labels = np.zeros(0, dtype=np.int64)
        self._row_delays = np.zeros(0)
        self._skip = 0  # rows still to drop before the next window (stride > window)
        #: Clock samples that made no row: a channel had not read yet, or was stale.
        self.samples_unaligned = 0

    def feed(self, channel: str, reading: Reading) -> list[Window]:
        """Take one reading of ``channel``; return the windows it completed (often none).

        Raises:
            KeyError: ``channel`` is not one of ``channels``.
        """
        if channel not in self.channels:
            raise KeyError(channel)
        if reading.label is not None:
            self._label = (reading.label, reading.label_delay_s)
        if channel != self.channels[0]:
            self._held[channel] = (float(reading.values[-1]), reading.ts)
            return []
        return self._add_clock_samples(reading)

    def _add_clock_samples(self, reading: Reading) -> list[Window]:
        n = len(reading.values)
        step = 0.0 if reading.rate_hz is None else 1.0 / reading.rate_hz
        ts = reading.ts + step * np.arange(n)
        others = self.channels[1:]
        last_ts = float(ts[-1])
        missing = [c for c in others if c not in self._held]
        stale = self.max_stale_s is not None and any(
            last_ts - self._held[c][1] > self.max_stale_s for c in others if c in self._held
        )
        if missing or stale:
            self.samples_unaligned += n
            return []
        block = np.empty((len(self.channels), n), dtype=np.float32)
        block[0] = reading.values
        for row, channel in enumerate(others, start=1):
            block[row] = self._held[channel][0]
        label, delay = self._label if self._label is not None else (-1, 0.0)
        self._rows = np.concatenate([self._rows, block], axis=1)
        self._row_ts = np.concatenate([self._row_ts, ts])
        self._row_labels = np.concatenate([self._row_labels, np.full(n, label, dtype=np.int64)])
        self._row_delays = np.concatenate([self._row_delays, np.full(n, delay)])
        return self._cut()

    def _drop(self, k: int) -> None:
        self._rows = self._rows[:, k:]
        self._row_ts = self._row_ts[k:]
        self._row_labels = self._row_labels[k:]
        self._row_delays = self._row_delays[k:]

    def _cut(self) -> list[Window]:
        out: list[Window] = []
        while True:
            if self._skip:
                k = min(self._skip, self._rows.shape[1])
                self._drop(k)
                self._skip -= k
                if self._skip:
                    return out
            if self._rows.shape[1] < self.window:
                return out
            labels = self._row_labels[: self.window]
            top = int(labels.max())
            out.append(
                Window(
                    tensor=np.ascontiguousarray(self._rows[:, : self.window]),
                    ts=float(self._row_ts[self.window - 1]),
                    label=top if top >= 0 else None,
                    label_delay_s=float(self._row_delays[: self.window].max()),
                )
            )
            advance = min(self.stride, self.window)
            self._drop(advance)
            self._skip = self.stride - advance


def wall_clock() -> float:
    """Return the wall-clock time in epoch seconds (the default stamp of unstamped readings)."""
    return time.time()


Clock = Callable[[], float]
