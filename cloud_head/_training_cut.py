"""The training cut: how far into each node's stream a model was trained, on the edge's clock.

A retraining run records, per node, the latest capture time and the highest seq of the
samples it trained on (``TrainingCut``, in the run's snapshot and the version's lineage).
Every frame a node captured after its cut is one the model never saw, so the canary judges
a candidate only on telemetry windows that began after it (``began_after_cut``): a camera
that loops over the same images, or a node whose recent frames were uplinked and trained
on, would otherwise measure memory rather than learning. Both times are the edge's own
clock (sample ``captured_at_ns`` and telemetry ``ts``), so no clock skew between edge and
cloud enters the comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from continuum.wire.messages import Telemetry

__all__ = ["LINEAGE_KEY", "TrainingCut", "began_after_cut", "cuts_from_lineage"]

#: The key of the per-node cuts in a run's snapshot and a version's lineage.
LINEAGE_KEY = "training_cut"


@dataclass(frozen=True, kw_only=True)
class TrainingCut:
    """The newest sample of one node a model trained on: its capture time (edge ns) and seq."""

    captured_at_ns: int
    seq: int

    @property
    def captured_at_s(self) -> float:
        """The capture time in Unix seconds, the unit of telemetry timestamps."""
        return self.captured_at_ns / 1e9

    def to_record(self) -> dict[str, int]:
        """Return the JSON-able mapping the lineage keeps."""
        return {"captured_at_ns": self.captured_at_ns, "seq": self.seq}


def cuts_from_lineage(lineage: Mapping[str, Any]) -> dict[str, TrainingCut]:
    """Return a version's training cut per node; empty for a version trained before cuts.

    A version registered by hand or before cuts were recorded has none: then no window is
    left out, as before (there is nothing to tell seen from unseen frames by).
    """
    recorded = lineage.get(LINEAGE_KEY)
    if not isinstance(recorded, Mapping):
        return {}
    return {
        str(node): TrainingCut(captured_at_ns=int(cut["captured_at_ns"]), seq=int(cut["seq"]))
        for node, cut in recorded.items()
        if isinstance(cut, Mapping) and "captured_at_ns" in cut and "seq" in cut
    }


def began_after_cut(window: Telemetry, cuts: Mapping[str, TrainingCut]) -> bool:
    """Return whether ``window`` began after its node's training cut (so saw only new frames).

    A window covers ``[ts - window_s, ts]`` on the edge's clock; a node the model trained on
    nothing from has no cut, and all its windows count.
    """
    cut = cuts.get(window.node)
    return cut is None or window.ts - window.window_s > cut.captured_at_s
