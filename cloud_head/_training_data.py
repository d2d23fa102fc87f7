"""What a retraining run learns from and is gated on: the pipeline's labelled edge samples.

``load_training_data`` reads the labelled samples, leaves out labels that are no class of the
model, and splits off the gate's holdout by time (``is_holdout``); ``gate_holdout`` adds the
pipeline's reference holdout to the most recent held-out edge samples of each node.

Why split by time, per node, in whole blocks: consecutive frames of one camera are nearly the
same picture (the same part, the same fault, the same light), and a demo camera may even
loop over a fixed set of images. A split by a hash of each sample's id put one frame in
training and its near-twin a second later in the holdout, so the gate measured memory, not
learning. Instead each node's stream is cut into blocks of ``HOLDOUT_BLOCK_S`` seconds of
its own capture time (edge clock), and one block in each cycle of ``HOLDOUT_EVERY`` is held
out, whole. Correlated neighbours share a block, and so a side of the split. Which block of
a cycle is held out comes from a hash of the node's name and the cycle's number: nodes are
staggered, and a node that uplinks at a fixed period cannot keep missing its held-out block
(a fixed position would alias with a period of the cycle's length). The rule depends only on
the node and the capture time, so it is the same at every retraining and no sample ever
moves from the holdout into training; a node that sends throughout ``2 * HOLDOUT_EVERY - 1``
blocks in a row (a cycle, wherever it starts) has held-out samples, a quiet drifted node
included.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud_head._training_cut import LINEAGE_KEY, TrainingCut
from cloud_head.gate import GateHoldout
from cloud_head.labelling import labelled, to_xy
from continuum.spec import resolve_ref

if TYPE_CHECKING:
    from cloud_head.labelling import LabelStore
    from cloud_head.registry import ModelVersion
    from cloud_head.store import SampleStore
    from continuum.spec import PipelineSpec
    from continuum.task import Task

__all__ = [
    "GATE_EDGE_PER_NODE",
    "HOLDOUT_BLOCK_S",
    "HOLDOUT_EVERY",
    "TrainingData",
    "gate_holdout",
    "holdout_mask",
    "is_holdout",
    "load_training_data",
]

log = logging.getLogger("cloud_head.controller")

#: Each node holds out one time block of its samples in each cycle of this many, for the gate.
HOLDOUT_EVERY = 5

#: The length of a holdout block in seconds of capture time: far longer than the few seconds
#: over which a camera's frames look alike, short enough that a node sending for under a
#: minute and a half (``2 * HOLDOUT_EVERY - 1`` blocks) surely has held-out samples.
HOLDOUT_BLOCK_S = 10.0

#: The gate's edge slice takes at most this many of each node's most recent held-out samples,
#: so a chatty node does not drown a quiet, drifted one.
GATE_EDGE_PER_NODE = 200

_BLOCK_NS = int(HOLDOUT_BLOCK_S * 1e9)


def _held_block(node: str, cycle: int) -> int:
    """The block (0..HOLDOUT_EVERY-1) of ``node``'s cycle number ``cycle`` that is held out."""
    digest = hashlib.blake2b(f"{node}/{cycle}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HOLDOUT_EVERY


def is_holdout(node: str, captured_at_ns: int) -> bool:
    """Return whether a sample that ``node`` captured at ``captured_at_ns`` (edge clock) is held
    out for the gate, never trained on: the rule is the module's."""
    block = captured_at_ns // _BLOCK_NS
    return block % HOLDOUT_EVERY == _held_block(node, block // HOLDOUT_EVERY)


def holdout_mask(nodes: Sequence[str], captured_at_ns: np.ndarray) -> np.ndarray:
    """Return ``is_holdout`` of each (node, capture time) pair as a boolean array."""
    blocks = np.asarray(captured_at_ns, dtype=np.int64) // _BLOCK_NS
    cycles = (blocks // HOLDOUT_EVERY).tolist()
    known: dict[tuple[str, int], int] = {}
    held = np.empty(len(nodes), dtype=np.int64)
    for row, key in enumerate(zip(nodes, cycles, strict=True)):
        if key not in known:
            known[key] = _held_block(*key)
        held[row] = known[key]
    return np.asarray(blocks % HOLDOUT_EVERY == held, dtype=bool)


@dataclass(frozen=True, kw_only=True)
class TrainingData:
    """A pipeline's usable labelled edge samples: training, and the gate's edge slice.

    ``holdout_x``/``holdout_y`` are the gate's edge slice: the most recent held-out samples of
    each node, at most ``GATE_EDGE_PER_NODE`` each (``edge_per_node`` counts them); ``held_out``
    counts every held-out sample, the slice's and older ones, none ever trained on. ``cuts``
    is each node's training cut (its newest sample trained on). ``rows`` counts the labelled
    samples the store had (the trigger counts from it); ``out_of_range`` those left out for a
    label that is no class of the model.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    holdout_x: np.ndarray
    holdout_y: np.ndarray
    rows: int
    out_of_range: int
    held_out: int = 0
    edge_per_node: dict[str, int] = field(default_factory=dict)
    cuts: dict[str, TrainingCut] = field(default_factory=dict)

    def snapshot(self, partitions: list[str]) -> dict[str, Any]:
        """Return what the run was given, for its audit record and the model's lineage."""
        return {
            "store_partitions": partitions,
            "store_rows": self.rows,
            "trained_on_edge_samples": len(self.train_y),
            "holdout_edge_samples": self.held_out,
            "gate_edge_slice": dict(self.edge_per_node),
            "holdout_rule": {
                "block_s": HOLDOUT_BLOCK_S,
                "every": HOLDOUT_EVERY,
                "gate_per_node": GATE_EDGE_PER_NODE,
            },
            "labels_out_of_range": self.out_of_range,
            LINEAGE_KEY: {node: cut.to_record() for node, cut in sorted(self.cuts.items())},
        }


def load_training_data(
    spec: PipelineSpec, store: SampleStore, labels: LabelStore, current: ModelVersion | None
) -> TrainingData:
    """Read ``spec``'s labelled samples as tensors and split them (see the module)."""
    table = labelled(store, labels, spec.tenant, spec.name)
    shape = tuple(spec.edge.input.shape)
    x, y, _ = to_xy(table, shape=shape, dtype=spec.edge.input.dtype)
    nodes = [str(n) for n in table.column("node").to_pylist()]
    captured = np.asarray(table.column("captured_at_ns").to_pylist(), dtype=np.int64)
    seqs = np.asarray(table.column("seq").to_pylist(), dtype=np.int64)
    ok, out_of_range = _usable_labels(y, current, spec.edge.task)
    x, y, captured, seqs = x[ok], y[ok], captured[ok], seqs[ok]
    nodes = [n for n, keep in zip(nodes, ok.tolist(), strict=True) if keep]
    held = holdout_mask(nodes, captured)
    gate_rows, per_node = _recent_per_node(nodes, captured, held)
    return TrainingData(
        train_x=x[~held],
        train_y=y[~held],
        holdout_x=x[gate_rows],
        holdout_y=y[gate_rows],
        rows=int(table.num_rows),
        out_of_range=out_of_range,
        held_out=int(held.sum()),
        edge_per_node=per_node,
        cuts=_cuts(nodes, captured, seqs, ~held),
    )


def _recent_per_node(
    nodes: list[str], captured: np.ndarray, held: np.ndarray
) -> tuple[np.ndarray, dict[str, int]]:
    """Return the rows of each node's ``GATE_EDGE_PER_NODE`` newest held-out samples, by node."""
    rows: list[int] = []
    per_node: dict[str, int] = {}
    by_node: dict[str, list[int]] = {}
    for row in np.flatnonzero(held).tolist():
        by_node.setdefault(nodes[row], []).append(row)
    for node in sorted(by_node):
        newest = sorted(by_node[node], key=lambda r: int(captured[r]), reverse=True)
        chosen = newest[:GATE_EDGE_PER_NODE]
        rows.extend(sorted(chosen))
        per_node[node] = len(chosen)
    return np.asarray(rows, dtype=np.int64), per_node


def _cuts(
    nodes: list[str], captured: np.ndarray, seqs: np.ndarray, trained: np.ndarray
) -> dict[str, TrainingCut]:
    """Return each node's training cut: the latest capture time and highest seq trained on."""
    latest: dict[str, int] = {}
    highest: dict[str, int] = {}
    for row in np.flatnonzero(trained).tolist():
        node = nodes[row]
        latest[node] = max(latest.get(node, int(captured[row])), int(captured[row]))
        highest[node] = max(highest.get(node, int(seqs[row])), int(seqs[row]))
    return {n: TrainingCut(captured_at_ns=latest[n], seq=highest[n]) for n in latest}


def _usable_labels(
    y: np.ndarray, current: ModelVersion | None, task: Task
) -> tuple[np.ndarray, int]:
    """Return which samples have a label the task can learn from, and how many do not.

    Labels arrive from edge feedback and stored samples, where a faulty or hostile node can
    put any number: one such label would fail every retraining from then on.  A
    classifier's output width bounds its classes (without a model yet, only negatives are
    left out); a binary or anomaly label is 0 or 1; a regression's is any finite value.
    """
    if task.kind == "regression":
        ok = np.isfinite(y)
    elif task.kind in ("binary", "anomaly"):
        ok = (y == 0) | (y == 1)
    else:
        classes = None if current is None else current.classes()
        whole = np.isfinite(y) & (y == np.floor(y))  # a value stored by mistake is no class
        ok = whole & (y >= 0) & (y < classes) if classes is not None else whole & (y >= 0)
    dropped = int((~ok).sum())
    if dropped:
        log.warning(
            "left %d sample(s) out of training: their label does not fit the task %s",
            dropped,
            task.describe(),
        )
    return np.asarray(ok, dtype=bool), dropped


def gate_holdout(spec: PipelineSpec, data: TrainingData) -> GateHoldout:
    """Return the gate's holdout: the pipeline's reference holdout and the edge slice."""
    edge_x, edge_y = data.holdout_x, data.holdout_y
    ref = spec.gate.holdout
    if ref is None:
        return GateHoldout(edge_x=edge_x, edge_y=edge_y, edge_per_node=data.edge_per_node)
    ref_x, ref_y = resolve_ref(ref, field="gate.holdout")()
    shape = tuple(spec.edge.input.shape)
    return GateHoldout(
        edge_x=edge_x,
        edge_y=edge_y,
        reference_x=np.asarray(ref_x, dtype=spec.edge.input.dtype).reshape(-1, *shape),
        reference_y=np.asarray(
            ref_y, dtype=np.int64 if spec.edge.task.integer_labels else np.float64
        ).reshape(-1),
        edge_per_node=data.edge_per_node,
    )
