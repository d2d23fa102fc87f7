"""What a retraining run learns from and is gated on: the pipeline's labelled edge samples.

``load_training_data`` reads the labelled samples, leaves out labels that are no class of the
model, and splits off the gate's holdout by a stable hash of each sample's id, so no sample
ever moves from the holdout into training; ``gate_holdout`` adds the pipeline's reference
holdout to the held-out edge samples.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud_head.labelling import labelled, to_xy
from continuum.spec import resolve_ref

if TYPE_CHECKING:
    from cloud_head.labelling import LabelStore
    from cloud_head.registry import ModelVersion
    from cloud_head.store import SampleStore
    from continuum.spec import PipelineSpec

__all__ = ["HOLDOUT_EVERY", "TrainingData", "gate_holdout", "is_holdout", "load_training_data"]

log = logging.getLogger("cloud_head.controller")

#: One labelled edge sample in this many is held out of training for the gate.
HOLDOUT_EVERY = 5


def is_holdout(sample_id: str) -> bool:
    """Return whether a labelled edge sample belongs to the gate's holdout, never to training.

    A stable hash keeps the split the same across retrainings, so no sample moves from
    the holdout into training later.
    """
    digest = hashlib.blake2b(sample_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HOLDOUT_EVERY == 0


@dataclass(frozen=True, kw_only=True)
class TrainingData:
    """A pipeline's usable labelled edge samples, split into training and the gate's holdout.

    ``rows`` counts the labelled samples the store had (the trigger counts from it);
    ``out_of_range`` those left out for a label that is no class of the model.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    holdout_x: np.ndarray
    holdout_y: np.ndarray
    rows: int
    out_of_range: int

    def snapshot(self, partitions: list[str]) -> dict[str, Any]:
        """Return what the run was given, for its audit record and the model's lineage."""
        return {
            "store_partitions": partitions,
            "store_rows": self.rows,
            "trained_on_edge_samples": len(self.train_y),
            "holdout_edge_samples": len(self.holdout_y),
            "labels_out_of_range": self.out_of_range,
        }


def load_training_data(
    spec: PipelineSpec, store: SampleStore, labels: LabelStore, current: ModelVersion | None
) -> TrainingData:
    """Read ``spec``'s labelled samples as tensors and split them (see the module)."""
    table = labelled(store, labels, spec.tenant, spec.name)
    shape = tuple(spec.edge.input.shape)
    x, y, ids = to_xy(table, shape=shape, dtype=spec.edge.input.dtype)
    x, y, ids, out_of_range = _usable_labels(x, y, ids, current)
    held = np.array([is_holdout(i) for i in ids], dtype=bool)
    return TrainingData(
        train_x=x[~held],
        train_y=y[~held],
        holdout_x=x[held],
        holdout_y=y[held],
        rows=int(table.num_rows),
        out_of_range=out_of_range,
    )


def _usable_labels(
    x: np.ndarray, y: np.ndarray, ids: list[str], current: ModelVersion | None
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Leave out samples whose label is not a class of the pipeline's model; count them.

    Labels arrive from edge feedback and stored samples, where a faulty or hostile node can
    put any integer: one such label would fail every retraining from then on. The model's
    output width bounds the classes (without a model yet, only negatives are left out).
    """
    classes = None if current is None else current.classes()
    ok = (y >= 0) & (y < classes) if classes is not None else y >= 0
    dropped = int((~ok).sum())
    if dropped:
        log.warning(
            "left %d sample(s) out of training: their label is not a class of the model (0..%s)",
            dropped,
            "?" if classes is None else classes - 1,
        )
        x, y = x[ok], y[ok]
        ids = [i for i, keep in zip(ids, ok.tolist(), strict=True) if keep]
    return x, y, ids, dropped


def gate_holdout(spec: PipelineSpec, data: TrainingData) -> tuple[np.ndarray, np.ndarray]:
    """Mix the pipeline's reference holdout with the held-out recent edge samples."""
    edge_x, edge_y = data.holdout_x, data.holdout_y
    ref = spec.gate.holdout
    if ref is None:
        return edge_x, edge_y
    ref_x, ref_y = resolve_ref(ref, field="gate.holdout")()
    return (
        np.concatenate(
            [np.asarray(ref_x, dtype=edge_x.dtype).reshape(-1, *edge_x.shape[1:]), edge_x]
        ),
        np.concatenate([np.asarray(ref_y, dtype=np.int64), edge_y]),
    )
