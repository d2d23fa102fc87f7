"""The evaluation gate: score ONNX models on a holdout and decide whether a candidate may ship.

Models are scored with ONNX Runtime, the same runtime and artifact the edge runs, so the gate
judges exactly what would be rolled out. A retraining run's holdout has two parts
(``GateHoldout``): the pipeline's fixed reference holdout and a time-split slice of recent
edge samples the candidate never trained on. The verdict is taken on both together; each
part is also scored on its own (``PartScore``), so a reader sees whether a candidate won on
the sites' recent data, on the reference, or on one at the other's expense.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from continuum import task as tasks
from continuum.errors import InputMismatchError
from continuum.metrics import f1_macro
from continuum.spec import GateMetric, GateSpec
from continuum.task import Task, TaskOutputs

__all__ = [
    "GateHoldout",
    "GateResult",
    "PartScore",
    "evaluate",
    "f1_macro",
    "gate",
    "gate_scores",
    "score",
]

#: Rows per ONNX Runtime call; bounds memory on large holdouts.
EVAL_BATCH = 512


@dataclass(frozen=True, kw_only=True)
class GateHoldout:
    """The gate's holdout of one run: the reference part and the held-out edge slice.

    ``reference_x``/``reference_y`` are the pipeline's declared reference holdout (None when
    it declares none); ``edge_x``/``edge_y`` the recent held-out edge samples, of which
    ``edge_per_node`` says how many each node gave.
    """

    edge_x: NDArray[np.generic]
    edge_y: NDArray[np.generic]
    reference_x: NDArray[np.generic] | None = None
    reference_y: NDArray[np.generic] | None = None
    edge_per_node: Mapping[str, int] = field(default_factory=dict)

    def parts(self) -> dict[str, tuple[NDArray[np.generic], NDArray[np.generic]]]:
        """Return the non-empty parts by name: "reference", then "edge"."""
        found: dict[str, tuple[NDArray[np.generic], NDArray[np.generic]]] = {}
        if self.reference_x is not None and self.reference_y is not None and len(self.reference_y):
            found["reference"] = (self.reference_x, self.reference_y)
        if len(self.edge_y):
            found["edge"] = (self.edge_x, self.edge_y)
        return found

    def combined(self) -> tuple[NDArray[np.generic], NDArray[np.generic]]:
        """Return both parts as one holdout (reference first), the one the verdict is on."""
        parts = list(self.parts().values())
        if not parts:
            return self.edge_x, self.edge_y
        shape = parts[0][0].shape[1:]
        x = np.concatenate([np.asarray(px).reshape(-1, *shape) for px, _ in parts])
        y = np.concatenate([np.asarray(py).reshape(-1) for _, py in parts])
        return x, y

    def size(self) -> int:
        """Return the number of samples in both parts."""
        return sum(len(y) for _, y in self.parts().values())


@dataclass(frozen=True, kw_only=True)
class PartScore:
    """Both models' scores on one part of the holdout and its size (for readers only)."""

    size: int
    candidate_score: float | None
    current_score: float | None


@dataclass(frozen=True, kw_only=True)
class GateResult:
    """The gate's verdict: scores of both models, the required gain and why it passed or not.

    ``margin`` is the gain the spec requires (``GateSpec.min_gain``); ``gain`` is what the
    candidate achieved over the current model (None when there is no current model).
    ``parts`` scores each part of a ``GateHoldout`` on its own ("reference", "edge");
    ``edge_per_node`` is how many edge samples each node gave the slice. Both are empty for
    a plain ``(x, y)`` holdout.
    """

    passed: bool
    candidate_score: float
    current_score: float | None
    margin: float
    reason: str
    gain: float | None = None
    parts: Mapping[str, PartScore] = field(default_factory=dict)
    edge_per_node: Mapping[str, int] = field(default_factory=dict)


def score(
    y_true: NDArray[np.generic], y_pred: NDArray[np.generic] | TaskOutputs, metric: GateMetric
) -> float:
    """Return ``metric`` of ``y_pred`` against ``y_true``.

    ``y_pred`` is a model's outputs read by its task, or a classifier's predicted classes
    (for accuracy and f1_macro).
    """
    if isinstance(y_pred, TaskOutputs):
        return tasks.score(metric, y_true, y_pred)
    if metric == "accuracy":
        return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))
    if metric == "f1_macro":
        return f1_macro(y_true, y_pred)
    raise ValueError(
        f"{metric!r} scores a model's outputs, not predicted classes; pass TaskOutputs"
    )


def _predict(model: Path, x: NDArray[np.generic], task: Task) -> TaskOutputs:
    """Run ``model`` on ``x`` and read its outputs by ``task``'s contract."""
    from continuum.backends import open_backend

    backend = open_backend("onnxruntime", model, max_batch=EVAL_BATCH)
    try:
        parts = [
            np.asarray(backend.infer(x[start : start + EVAL_BATCH]))
            for start in range(0, len(x), EVAL_BATCH)
        ]
    finally:
        backend.close()
    return task.read(np.concatenate(parts))


def evaluate(
    model: Path | str,
    x: NDArray[np.generic],
    y: NDArray[np.generic],
    metric: GateMetric | None = None,
    *,
    task: Task | None = None,
) -> float:
    """Score the ONNX model at ``model`` on holdout inputs ``x`` with labels ``y``.

    ``task`` (default: classification) reads the outputs; ``metric`` defaults to its own.

    Raises:
        InputMismatchError: the holdout is empty, ``x`` and ``y`` differ in length, ``x``
            does not fit the model's input, or the outputs break the task's contract.
        BackendError: the model does not load or run.
    """
    kind = task or tasks.classification()
    x, y_true = _checked(x, y, kind)
    return score(y_true, _predict(Path(model), x, kind), metric or kind.default_metric)


def _checked(
    x: NDArray[np.generic], y: NDArray[np.generic], task: Task
) -> tuple[NDArray[np.generic], NDArray[np.generic]]:
    x = np.asarray(x)
    y_true = np.asarray(y, dtype=np.int64 if task.integer_labels else np.float64).reshape(-1)
    if len(x) != len(y_true):
        raise InputMismatchError(
            "holdout images and labels differ in length",
            expected=f"{len(x)} labels",
            got=str(len(y_true)),
        )
    if len(x) == 0:
        raise InputMismatchError(
            "the holdout is empty: declare a reference holdout (pipe.gate(holdout=...)) or "
            "let the nodes send labelled samples over more time blocks",
            expected="at least one labelled sample",
            got="0",
        )
    return x, y_true


def gate(
    candidate: Path | str,
    current: Path | str | None,
    holdout: GateHoldout | tuple[NDArray[np.generic], NDArray[np.generic]],
    spec: GateSpec,
    *,
    task: Task | None = None,
) -> GateResult:
    """Decide whether ``candidate`` may replace ``current``: it must gain ``spec.min_gain``.

    Both ONNX models are scored on the same ``holdout`` with ``spec.metric`` (default: the
    task's), their outputs read by ``task`` (default: classification): a plain ``(x, y)``,
    or a ``GateHoldout`` whose parts are also scored apart.  For an error metric (mae,
    rmse) the gain is the fall of the error.  Without a current model the candidate passes
    on its score alone.

    Raises:
        InputMismatchError, BackendError: as ``evaluate``.
    """
    whole = holdout if isinstance(holdout, GateHoldout) else None
    raw_x, raw_y = holdout.combined() if isinstance(holdout, GateHoldout) else holdout
    kind = task or tasks.classification()
    x, y = _checked(raw_x, raw_y, kind)
    metric: GateMetric = spec.metric or kind.default_metric
    candidate_pred = _predict(Path(candidate), x, kind)
    current_pred = None if current is None else _predict(Path(current), x, kind)
    candidate_score = score(y, candidate_pred, metric)
    current_score = None if current_pred is None else score(y, current_pred, metric)
    parts = {} if whole is None else _part_scores(whole, y, candidate_pred, current_pred, metric)
    per_node = {} if whole is None else dict(whole.edge_per_node)
    detail = _parts_text(parts, per_node)
    return _verdict(
        candidate_score,
        current_score,
        spec,
        metric,
        holdout=f"on {len(y)} holdout samples",
        detail=detail,
        parts=parts,
        edge_per_node=per_node,
    )


def gate_scores(
    candidate_score: float,
    current_score: float | None,
    spec: GateSpec,
    *,
    metric: GateMetric,
    holdout: str,
    detail: str = "",
) -> GateResult:
    """Decide on scores measured elsewhere, as ``gate`` decides on its own.

    The federated gate scores both models at each site on the site's holdout and combines
    the scores weighted by holdout size; only those numbers reach the head.  ``holdout``
    and ``detail`` say what was scored, for the reason ("on 69 holdout samples at 3
    sites", "; hospital-a 23: 0.9500 vs 0.9100").
    """
    return _verdict(candidate_score, current_score, spec, metric, holdout=holdout, detail=detail)


def _verdict(
    candidate_score: float,
    current_score: float | None,
    spec: GateSpec,
    metric: GateMetric,
    *,
    holdout: str,
    detail: str,
    parts: Mapping[str, PartScore] | None = None,
    edge_per_node: Mapping[str, int] | None = None,
) -> GateResult:
    """Pass a candidate that gains ``spec.min_gain`` over the current model (or has none)."""
    parts = dict(parts or {})
    per_node = dict(edge_per_node or {})
    if current_score is None:
        return GateResult(
            passed=True,
            candidate_score=candidate_score,
            current_score=None,
            margin=spec.min_gain,
            reason=f"no current model: the first model passes ({metric} {candidate_score:.4f}"
            f"{detail})",
            parts=parts,
            edge_per_node=per_node,
        )
    gain = tasks.gain(metric, candidate_score, current_score)
    # Compare with a tolerance so a tie at min_gain=0 is not lost to float rounding.
    passed = gain >= spec.min_gain - 1e-12
    verdict = "passes" if passed else "fails"
    reason = (
        f"{verdict}: {metric} {candidate_score:.4f} vs current {current_score:.4f} "
        f"(gain {gain:+.4f}, required {spec.min_gain:+.4f}) {holdout}{detail}"
    )
    return GateResult(
        passed=passed,
        candidate_score=candidate_score,
        current_score=current_score,
        margin=spec.min_gain,
        reason=reason,
        gain=gain,
        parts=parts,
        edge_per_node=per_node,
    )


def _part_scores(
    holdout: GateHoldout,
    y: NDArray[np.generic],
    candidate_pred: TaskOutputs,
    current_pred: TaskOutputs | None,
    metric: GateMetric,
) -> dict[str, PartScore]:
    """Score each part of the holdout from the predictions on the whole (parts in order)."""
    scores: dict[str, PartScore] = {}
    start = 0
    for name, (_, part_y) in holdout.parts().items():
        end = start + len(part_y)
        scores[name] = PartScore(
            size=end - start,
            candidate_score=_part_score(y[start:end], candidate_pred, start, end, metric),
            current_score=None
            if current_pred is None
            else _part_score(y[start:end], current_pred, start, end, metric),
        )
        start = end
    return scores


def _part_score(
    y: NDArray[np.generic], outputs: TaskOutputs, start: int, end: int, metric: GateMetric
) -> float | None:
    """Score rows ``start:end``; None where the part alone cannot be scored (e.g. a ranking
    metric on a part whose labels hold one class), since parts are for readers only."""
    try:
        return score(y, outputs.rows_between(start, end), metric)
    except InputMismatchError:
        return None


def _parts_text(parts: Mapping[str, PartScore], per_node: Mapping[str, int]) -> str:
    """Say each part's scores for the reason: "; edge 60 from 3 nodes: 0.9500 vs 0.9000"."""
    out = ""
    for name, part in parts.items():
        size = f"{part.size} from {len(per_node)} node(s)" if name == "edge" else str(part.size)
        if part.candidate_score is None:
            out += f"; {name} {size}: not scorable alone"
            continue
        versus = "" if part.current_score is None else f" vs {part.current_score:.4f}"
        out += f"; {name} {size}: {part.candidate_score:.4f}{versus}"
    return out
