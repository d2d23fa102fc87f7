"""Where one pipeline's rollout stands: its stage, the steps of its ramp, and why.

``RolloutState`` is what the rollout stores (before the step it announces is carried out),
what ``status()`` and ``continuum rollout status`` show, and what a controller built again
on the same file resumes from; ``RampStep`` is one step of its ramp.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

__all__ = ["RampStep", "RolloutState", "Stage"]

#: Where a rollout stands: "waiting" while a candidate has no eligible node for its canary,
#: "canary" while it is on some nodes (canary or ramp step).
Stage = Literal["idle", "waiting", "canary", "promoted", "rolled_back"]


@dataclass(frozen=True)
class RampStep:
    """One step of a rollout: the share of the target nodes that run the candidate, and why.

    ``index`` 0 is the canary; ``share`` is the step's share in the spec's ramp (1.0: every
    node, the promotion); ``nodes`` are all the nodes told to run the candidate in this step.
    """

    index: int
    share: float
    nodes: tuple[str, ...]
    started_at: float
    reason: str

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RampStep:
        """Rebuild a step from its ``asdict`` mapping."""
        return cls(
            index=int(record["index"]),
            share=float(record["share"]),
            nodes=tuple(record.get("nodes", ())),
            started_at=float(record["started_at"]),
            reason=str(record.get("reason", "")),
        )


@dataclass(frozen=True, kw_only=True)
class RolloutState:
    """Where the rollout of one pipeline stands, and why.

    ``canary_nodes`` are the nodes that run the candidate at the current step (the canaries
    at step 0, more at each ramp step); ``steps`` is every step of this candidate's rollout,
    the current one last; ``order`` is the ranking the steps take their nodes from;
    ``verdict`` says what the last ``tick`` concluded at the current step (holding until
    ``decide_at``, waiting for data) and the ``*_accuracy`` figures and latencies are its
    figures: the ``*_accuracy`` ones hold ``metric`` (accuracy, or the task's: recall,
    MAE...) over ``canary_labelled_frames`` and ``baseline_labelled_frames`` unseen frames,
    from windows that began after the candidate's training cut; ``windows_before_cut`` and
    ``baseline_windows_before_cut`` count the windows left out for beginning before it.
    In stage "waiting" the candidate is on no node yet: ``started_at`` is when the wait
    began, ``reason`` says what it waits for, and ``baseline`` serves on meanwhile.
    """

    pipeline: str
    stage: Stage = "idle"
    candidate: str | None = None
    baseline: str | None = None
    canary_nodes: tuple[str, ...] = ()
    started_at: float = 0.0
    decided_at: float | None = None
    canary_accuracy: float | None = None
    baseline_accuracy: float | None = None
    reason: str = "no rollout yet"
    history: tuple[str, ...] = field(default=())
    steps: tuple[RampStep, ...] = field(default=())
    order: tuple[str, ...] = field(default=())
    canary_latency_p95_ms: float | None = None
    baseline_latency_p95_ms: float | None = None
    verdict: str = ""
    decide_at: float | None = None
    canary_labelled_frames: int = 0
    baseline_labelled_frames: int = 0
    windows_before_cut: int = 0
    baseline_windows_before_cut: int = 0
    #: The task metric the ``*_accuracy`` figures hold (the rollout's rollback metric).
    metric: str = "accuracy"

    def figures_record(self) -> dict[str, Any]:
        """Return the step's figures as the audit records of its decision keep them."""
        return {
            "metric": self.metric,
            "canary_accuracy": self.canary_accuracy,
            "baseline_accuracy": self.baseline_accuracy,
            "canary_labelled_frames": self.canary_labelled_frames,
            "baseline_labelled_frames": self.baseline_labelled_frames,
            "windows_before_training_cut": self.windows_before_cut,
            "baseline_windows_before_training_cut": self.baseline_windows_before_cut,
            "canary_latency_p95_ms": self.canary_latency_p95_ms,
            "baseline_latency_p95_ms": self.baseline_latency_p95_ms,
        }

    def to_record(self) -> dict[str, Any]:
        """Return the state as a JSON-able mapping (``from_record`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RolloutState:
        """Rebuild a state from ``to_record``'s mapping; keys it does not know are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        values["canary_nodes"] = tuple(values.get("canary_nodes", ()))
        values["history"] = tuple(values.get("history", ()))
        values["order"] = tuple(values.get("order", ()))
        values["steps"] = tuple(RampStep.from_record(s) for s in values.get("steps", ()))
        return cls(**values)
