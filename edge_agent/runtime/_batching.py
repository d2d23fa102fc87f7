"""The micro-batch size: measured, and settled on the one that costs least per frame."""

from __future__ import annotations

from collections import deque

#: The batch sizer measures a candidate size on this many cost samples (full batches, or
#: windows of them: see ``BatchSizer``) before judging it,
#: and keeps the cheapest of them (background load only ever adds time).
_PROBE_SAMPLES = 3
#: After this many cost samples at its chosen size, the sizer tries a neighbouring size
#: again, so that the choice follows a change of load or model.
_REPROBE_AFTER_SAMPLES = 64
#: How much cheaper per frame a larger batch size must measure to be chosen over a smaller.
_LARGER_BATCH_GAIN = 0.01
#: With batches overlapping on the model, one cost sample spans this many times as many
#: full batches as are in flight.
_OVERLAP_WINDOW = 4
#: Weight of the newest batch in ``BatchSizer.frame_cost_s``.
_COST_SMOOTHING = 0.1


class BatchSizer:
    """Settles the micro-batch size on the one that costs least per frame, measured.

    Batching pays where a model is small or the accelerator wide (the digits CNN runs 3x
    the frames per second at batch 32 on one CPU core); where one frame already fills the
    core (SqueezeNet at 224x224 on a CPU) the backend runs a batch frame by frame, and
    what a larger batch still saves is the runtime's own per-batch work.
    Candidates are 1, 2, 4, ... and ``max_batch``.  Starting at 1, the sizer climbs to the
    next size while that one measures cheaper per frame, then stays, and after every
    ``_REPROBE_AFTER_SAMPLES`` cost samples tries the sizes on either side again.  Only full
    batches count: a batch the source could not fill says nothing about the size.  The cost
    of a batch is the whole cycle (inputs, inference, selection, outbox, metrics), so fixed
    per-batch work is amortised in the comparison as it is in reality.

    A larger size must measure ``_LARGER_BATCH_GAIN`` cheaper to be taken, and a smaller
    one is taken back unless it measures that much dearer: where two sizes cost about the
    same, the smaller wins, since every frame of a larger batch waits longer for it.

    With ``overlap`` batches on the model at once, one batch's time (between two finishes)
    says nothing alone: batches that ran side by side finish almost together, so the times
    alternate between near zero and a whole run.  The sizer then measures
    ``_OVERLAP_WINDOW * overlap`` consecutive full batches as one sample, and leaves out
    the first ``overlap`` full batches at a new size (and at the start), which ran beside
    batches of the old size (or on a cold model).
    """

    def __init__(self, max_batch: int, *, overlap: int = 1) -> None:
        if overlap < 1:
            raise ValueError(f"overlap must be >= 1, got {overlap}")
        sizes = {1, max_batch}
        size = 2
        while size < max_batch:
            sizes.add(size)
            size *= 2
        #: The candidate sizes, ascending.
        self.sizes: list[int] = sorted(sizes)
        self._costs: list[deque[float]] = [deque(maxlen=_PROBE_SAMPLES) for _ in self.sizes]
        self._chosen = 0
        self._probe: int | None = None
        self._climbing = True
        self._since_probe = 0
        self._next_side = -1
        self._window = 1 if overlap == 1 else _OVERLAP_WINDOW * overlap
        self._settle = 0 if overlap == 1 else overlap
        self._settling = self._settle  # full batches still to leave out
        self._window_frames = 0
        self._window_s = 0.0
        self._window_batches = 0
        #: The most frames the next batch may take.
        self.cap = 1
        #: Smoothed seconds per frame of the batches recorded lately, whatever their size
        #: (0.0 before the first): what a frame costs the runtime from the model on.
        self.frame_cost_s = 0.0

    @property
    def chosen(self) -> int:
        """The size the sizer has settled on (``cap`` differs from it while probing)."""
        return self.sizes[self._chosen]

    def record(self, frames: int, seconds: float) -> None:
        """Note that a batch of ``frames`` took ``seconds`` to process, and set ``cap``."""
        if frames > 0:
            per_frame = seconds / frames
            if self.frame_cost_s == 0.0:
                self.frame_cost_s = per_frame
            else:
                self.frame_cost_s += _COST_SMOOTHING * (per_frame - self.frame_cost_s)
        if frames != self.cap:
            return
        if self._settling:
            self._settling -= 1
            return
        self._window_frames += frames
        self._window_s += seconds
        self._window_batches += 1
        if self._window_batches < self._window:
            return
        cost = self._window_s / self._window_frames
        self._window_frames, self._window_s, self._window_batches = 0, 0.0, 0
        index = self._chosen if self._probe is None else self._probe
        self._costs[index].append(cost)
        if self._probe is not None:
            if len(self._costs[index]) >= _PROBE_SAMPLES:
                self._judge(index)
        elif len(self._costs[index]) >= _PROBE_SAMPLES and len(self.sizes) > 1:
            self._since_probe += 1
            if self._climbing:
                self._start_probe(index + 1)
            elif self._since_probe >= _REPROBE_AFTER_SAMPLES:
                # Alternate below and above; at either end, the one neighbour there is.
                side = self._next_side
                self._next_side = -side
                inside = 0 <= index + side < len(self.sizes)
                self._start_probe(index + side if inside else index - side)
        cap = self.sizes[self._chosen if self._probe is None else self._probe]
        if cap != self.cap:
            self.cap = cap
            self._settling = self._settle
            self._window_frames, self._window_s, self._window_batches = 0, 0.0, 0

    def _start_probe(self, index: int) -> None:
        if 0 <= index < len(self.sizes):
            self._costs[index].clear()
            self._probe = index
        else:
            self._climbing = False

    def _judge(self, probe: int) -> None:
        direction = 1 if probe > self._chosen else -1
        self._probe = None
        self._since_probe = 0
        probe_cost, chosen_cost = min(self._costs[probe]), min(self._costs[self._chosen])
        if direction > 0:
            better = probe_cost < chosen_cost * (1.0 - _LARGER_BATCH_GAIN)
        else:
            better = probe_cost <= chosen_cost * (1.0 + _LARGER_BATCH_GAIN)
        if better:
            self._chosen = probe
            self._start_probe(probe + direction)  # keep going while it pays
        else:
            self._climbing = False
