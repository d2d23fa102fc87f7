"""The ramp of a rollout and how a step is judged: pure functions of the spec and the figures.

``ramp_schedule`` says how many nodes each step takes; ``judge`` decides a step whose hold
is over from its ``StepFigures``: advance, roll back (naming the rule and the figures) or
wait for enough data.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from continuum.task import metric_info

if TYPE_CHECKING:
    from continuum.spec import RollbackRules, RolloutSpec
    from continuum.wire.messages import Telemetry

__all__ = [
    "MIN_LABELLED_FOR_DECISION",
    "MIN_LATENCY_WINDOWS",
    "Judgement",
    "StepAction",
    "StepFigures",
    "accuracy_of",
    "judge",
    "node_names",
    "p95_of",
    "quality_of",
    "ramp_schedule",
]

#: What ``judge`` tells a step whose hold is over to do.
StepAction = Literal["advance", "roll back", "wait"]

#: A step's accuracy decision needs at least this many labelled frames on the candidate.
MIN_LABELLED_FOR_DECISION = 40

#: A step's latency decision needs at least this many candidate windows with a p95 figure.
MIN_LATENCY_WINDOWS = 3


class Judgement(NamedTuple):
    """What ``judge`` concluded about a step: its ``action`` and the ``reason``, with figures."""

    action: StepAction
    reason: str


@dataclass(frozen=True, kw_only=True)
class StepFigures:
    """What one step measured: the candidate on its nodes against the current version."""

    labelled: int
    candidate_accuracy: float | None
    baseline_accuracy: float | None
    latency_windows: int
    candidate_p95_ms: float | None
    baseline_p95_ms: float | None
    #: Where the baseline latency came from, for people: "v1 on cam-3, cam-4".
    latency_baseline: str = "the baseline"
    #: Windows left out of the accuracies because they began before their node's training
    #: cut of the candidate (their frames may be ones it trained on), candidate and baseline.
    windows_before_cut: int = 0
    baseline_windows_before_cut: int = 0
    #: Labelled frames the baseline accuracy is over.
    baseline_labelled: int = 0

    def left_out_text(self) -> str:
        """Say how many windows the accuracies left out: "2 window(s) before the training cut
        left out (1 of the baseline)", or that every frame counted came after the cut."""
        left_out = self.windows_before_cut + self.baseline_windows_before_cut
        if not left_out:
            return "every frame counted came after the training cut"
        text = f"{left_out} window(s) before the training cut left out"
        if self.baseline_windows_before_cut:
            text += f" ({self.baseline_windows_before_cut} of the baseline)"
        return text


def ramp_schedule(rollout: RolloutSpec, nodes: int) -> list[tuple[float, int]]:
    """Return ``(share, node count)`` per step of a rollout over ``nodes`` target nodes.

    The first step is the canary (at least one node); a share that adds no node to the
    step before it is skipped; the last step has every node (the promotion).
    ``ramp_schedule(RolloutSpec(canary=0.1), 10) == [(0.1, 1), (0.2, 2), (0.4, 4),
    (0.8, 8), (1.0, 10)]``.
    """
    plan: list[tuple[float, int]] = []
    for share in rollout.ramp_shares():
        # Rounded first so that 0.7 * 10 counts 7 nodes, not 8.
        count = min(nodes, max(1, math.ceil(round(share * nodes, 9))))
        if plan and count <= plan[-1][1]:
            continue
        plan.append((share, count))
    return plan


def judge(rules: RollbackRules, figures: StepFigures) -> Judgement:
    """Decide a step whose hold is over: advance, roll back (naming the rule) or wait.

    A rule rolls back as soon as it has enough data and fires, even while the other rule
    still waits for data; the step advances when every rule has enough data and none fires.
    A rule without a baseline figure cannot fire.
    """
    missing: list[str] = []
    held: list[str] = []
    drop = rules.accuracy_drop
    if drop is not None:
        # The task's metric (accuracy, recall, MAE...): worse is lower, or for an error
        # metric higher.
        metric = rules.metric
        higher_is_better = metric_info(metric).higher_is_better
        cand, base = figures.candidate_accuracy, figures.baseline_accuracy
        if figures.labelled < MIN_LABELLED_FOR_DECISION:
            missing.append(f"{figures.labelled} of {MIN_LABELLED_FOR_DECISION} labelled frames")
        elif (
            cand is not None
            and base is not None
            and (cand < base - drop if higher_is_better else cand > base + drop)
        ):
            way = "fell more than" if higher_is_better else "rose more than"
            side = "below" if higher_is_better else "above"
            return Judgement(
                "roll back",
                f"{metric} {cand:.3f} {way} {drop:g} {side} the baseline's {base:.3f} "
                f"(over {figures.labelled} labelled frames)",
            )
        else:
            held.append(
                f"{metric} {_figure(cand, '.3f')} vs baseline {_figure(base, '.3f')} "
                f"over {figures.labelled} labelled frames"
            )
    rise = rules.latency_rise
    if rise is not None:
        cand_ms, base_ms = figures.candidate_p95_ms, figures.baseline_p95_ms
        if figures.latency_windows < MIN_LATENCY_WINDOWS:
            missing.append(
                f"{figures.latency_windows} of {MIN_LATENCY_WINDOWS} windows with latency"
            )
        elif cand_ms is not None and base_ms is not None and cand_ms > base_ms * (1.0 + rise):
            return Judgement(
                "roll back",
                f"p95 latency {cand_ms:.3g} ms rose more than {rise * 100:g}% above "
                f"{figures.latency_baseline}'s {base_ms:.3g} ms "
                f"(+{_percent(cand_ms, base_ms)}, over {figures.latency_windows} windows)",
            )
        else:
            held.append(
                f"p95 latency {_figure(cand_ms, '.3g')} ms vs {_figure(base_ms, '.3g')} ms "
                f"({figures.latency_baseline})"
            )
    if missing:
        return Judgement("wait", f"not enough data yet: {', '.join(missing)}")
    return Judgement("advance", "; ".join(held))


def _figure(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _percent(value: float, base: float) -> str:
    return "inf%" if base <= 0 else f"{(value / base - 1.0) * 100:.0f}%"


def accuracy_of(windows: Sequence[Telemetry], version: str) -> tuple[float | None, int]:
    """Return the accuracy of ``version`` over the windows' labelled frames, and how many."""
    return quality_of(windows, version, "accuracy")


def quality_of(windows: Sequence[Telemetry], version: str, metric: str) -> tuple[float | None, int]:
    """Return ``metric`` of ``version`` over the windows' labelled frames, and how many.

    The windows carry counts, not rates, so the figure is over every labelled frame
    rather than an average of windows: accuracy = correct / labelled; precision, recall
    and F1 at the task's threshold from the positive counts; MAE and RMSE from the error
    sums.  None where the counts leave it undefined (no labelled frame; no flagged frame
    for precision; no positive label for recall).
    """
    mine = [w for w in windows if w.model_version == version]
    labelled = sum(w.labelled for w in mine)
    if not labelled:
        return None, 0
    tp = sum(w.true_positive for w in mine)
    flagged = sum(w.predicted_positive for w in mine)
    positive = sum(w.labelled_positive for w in mine)
    value: float | None
    if metric == "accuracy":
        value = sum(w.correct for w in mine) / labelled
    elif metric == "precision":
        value = tp / flagged if flagged else None
    elif metric == "recall":
        value = tp / positive if positive else None
    elif metric == "f1":
        value = 2 * tp / (flagged + positive) if flagged + positive else None
    elif metric == "mae":
        value = sum(w.abs_error_sum for w in mine) / labelled
    elif metric == "rmse":
        value = math.sqrt(sum(w.squared_error_sum for w in mine) / labelled)
    else:
        raise ValueError(f"{metric!r} is not computed per telemetry window")
    return value, labelled


def p95_of(windows: Sequence[Telemetry]) -> tuple[float | None, int]:
    """Return the median of the windows' p95 latencies (robust to one slow window), and n."""
    figures = [w.latency_p95_ms for w in windows if w.latency_p95_ms is not None]
    return (statistics.median(figures) if figures else None), len(figures)


def node_names(nodes: Sequence[str], most: int = 3) -> str:
    """Return up to ``most`` node names, and how many more: ``cam-1, cam-2 and 5 more``."""
    shown = ", ".join(nodes[:most])
    return shown if len(nodes) <= most else f"{shown} and {len(nodes) - most} more"
