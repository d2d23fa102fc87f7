"""Labels for stored samples, and the join that turns samples into a labelled training set.

Labels arrive on their own (delayed feedback from the edge, a cloud teacher, a human) and
may arrive before or after the sample they belong to; they are kept by sample id in SQLite
and joined with the sample store when a training set is read.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cloud_head.store import SampleStore, to_numpy
from continuum._fs import private_dir, private_file
from continuum.errors import ConfigError
from continuum.task import Anomaly, Binary, Regression, Task
from continuum.wire import topics
from continuum.wire.codec import FeedbackBatch, sample_id

__all__ = [
    "Label",
    "LabelSource",
    "LabelStore",
    "Proposal",
    "ReviewItem",
    "fit_label",
    "labelled",
    "review_queue",
    "to_xy",
]

LabelSource = Literal["delayed_feedback", "teacher", "human", "edge"]

# A label never replaces one from a more trusted source: a teacher's guess must not overwrite
# the ground truth that came back from the line, nor that a human's correction. "edge" is the
# label a sample carried when it was captured; it lives in the sample store, not here.
_PRIORITY: dict[str, int] = {"teacher": 0, "edge": 1, "delayed_feedback": 1, "human": 2}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    label INTEGER NOT NULL,
    source TEXT NOT NULL,
    priority INTEGER NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (tenant, pipeline, sample_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS proposals (
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    label INTEGER NOT NULL,
    confidence REAL NOT NULL,
    model TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (tenant, pipeline, sample_id)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Label:
    """One sample's label, where it came from and when it was recorded (Unix seconds).

    A class (int), or a regression's value (float).
    """

    sample_id: str
    label: int | float
    source: str
    ts: float


@dataclass(frozen=True, slots=True)
class Proposal:
    """A label a model proposed for a sample, with its confidence; a human may accept it."""

    sample_id: str
    label: int
    confidence: float
    model: str
    ts: float


class LabelStore:
    """Keep labels by (tenant, pipeline, sample id) in SQLite; the most trusted source wins.

    Next to the labels it keeps proposals: a teacher's guess for every sample it saw, with
    its confidence. The human review queue shows them, and a sample with a proposal is one
    the teacher has done, so a restarted teacher neither repeats nor skips work.
    """

    def __init__(self, path: str | Path) -> None:
        """Open (or create) the label database at ``path``."""
        self._path = Path(path)
        private_file(private_dir(self._path.parent) / self._path.name)  # 0600 in 0700
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Ingest acks feedback once it is recorded: sync on commit so an ack survives a crash.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    def record(
        self,
        tenant: str,
        batch: FeedbackBatch,
        *,
        source: LabelSource = "delayed_feedback",
        ts: float | None = None,
    ) -> int:
        """Record every (seq, label) of a feedback batch; return how many labels were written."""
        items = ((sample_id(batch.node, seq), label) for seq, label in batch.items)
        return self.put_many(tenant, batch.pipeline, items, source=source, ts=ts)

    def put(
        self,
        tenant: str,
        pipeline: str,
        sample_id: str,
        label: int | float,
        *,
        source: LabelSource,
        ts: float | None = None,
    ) -> bool:
        """Record one label; return False if a more trusted label was already there."""
        return self.put_many(tenant, pipeline, [(sample_id, label)], source=source, ts=ts) == 1

    def put_many(
        self,
        tenant: str,
        pipeline: str,
        items: Iterable[tuple[str, int | float]],
        *,
        source: LabelSource,
        ts: float | None = None,
    ) -> int:
        """Record labels in one transaction; return how many were written (not outranked).

        A label is a class (int) or a regression's value (float, finite); SQLite keeps
        either in the one column.
        """
        if source not in get_args(LabelSource):
            raise ValueError(f"unknown label source {source!r}; use one of {get_args(LabelSource)}")
        topics.check_name(tenant, "tenant")
        topics.check_name(pipeline, "pipeline")
        stamp = time.time() if ts is None else ts
        priority = _PRIORITY[source]
        rows = [
            (tenant, pipeline, sample_id, _label_value(label), source, priority, stamp)
            for sample_id, label in items
        ]
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (tenant, pipeline, sample_id) DO UPDATE SET "
                    "label = excluded.label, source = excluded.source, "
                    "priority = excluded.priority, ts = excluded.ts "
                    "WHERE excluded.priority >= labels.priority",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._db.total_changes - before

    def get(self, tenant: str, pipeline: str, sample_id: str) -> Label | None:
        """Return one sample's label, or None when it has none yet."""
        with self._lock:
            row = self._db.execute(
                "SELECT sample_id, label, source, ts FROM labels "
                "WHERE tenant = ? AND pipeline = ? AND sample_id = ?",
                (tenant, pipeline, sample_id),
            ).fetchone()
        return (
            None if row is None else Label(row[0], _label_value(row[1]), str(row[2]), float(row[3]))
        )

    def labels(self, tenant: str, pipeline: str) -> dict[str, Label]:
        """Return every label of one pipeline by sample id."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sample_id, label, source, ts FROM labels WHERE tenant = ? AND pipeline = ?",
                (tenant, pipeline),
            ).fetchall()
        return {r[0]: Label(r[0], _label_value(r[1]), str(r[2]), float(r[3])) for r in rows}

    def count(self, tenant: str, pipeline: str) -> int:
        """Return the number of labelled sample ids of one pipeline."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM labels WHERE tenant = ? AND pipeline = ?",
                (tenant, pipeline),
            ).fetchone()
        return int(row[0])

    def propose(
        self,
        tenant: str,
        pipeline: str,
        items: Iterable[tuple[str, int, float]],
        *,
        model: str,
        ts: float | None = None,
    ) -> int:
        """Record ``(sample_id, label, confidence)`` proposals of ``model``; return how many.

        A newer proposal for the same sample replaces the older one (a better teacher may
        have been registered since).
        """
        topics.check_name(tenant, "tenant")
        topics.check_name(pipeline, "pipeline")
        stamp = time.time() if ts is None else ts
        rows = []
        for sample, label, confidence in items:
            if not 0.0 <= float(confidence) <= 1.0:
                raise ValueError(
                    f"confidence of {sample} must be a probability in [0, 1], got {confidence!r}"
                )
            rows.append((tenant, pipeline, sample, int(label), float(confidence), model, stamp))
        with self._lock:
            before = self._db.total_changes
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO proposals VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                )
            return self._db.total_changes - before

    def proposals(self, tenant: str, pipeline: str) -> dict[str, Proposal]:
        """Return every proposal of one pipeline by sample id."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sample_id, label, confidence, model, ts FROM proposals "
                "WHERE tenant = ? AND pipeline = ?",
                (tenant, pipeline),
            ).fetchall()
        return {r[0]: Proposal(r[0], int(r[1]), float(r[2]), str(r[3]), float(r[4])) for r in rows}

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _label_value(label: int | float) -> int | float:
    """Return ``label`` as the store keeps it: an int, or a finite float; refuse the rest."""
    if isinstance(label, float):
        if not math.isfinite(label):
            raise ValueError(f"a label must be a finite number, got {label!r}")
        return label
    return int(label)


def labelled(
    samples: SampleStore,
    labels: LabelStore,
    tenant: str,
    pipeline: str,
    *,
    edge_labels: bool = True,
) -> pa.Table:
    """Return the stored samples of a pipeline that have a label, with ``label`` filled in.

    A label from the label store wins; otherwise, with ``edge_labels``, the label the sample
    carried from the edge is used. The table has the store's columns plus ``label_source``,
    ordered by ingest time then sample id, ready for ``ray.data.from_arrow`` or ``to_xy``.
    """
    table = samples.read(tenant, pipeline)
    known = labels.labels(tenant, pipeline)
    ids = pa.array(list(known), type=pa.string())
    # A regression's labels are values: the label column is then float64, the edge's
    # (integer) labels cast to it; classes stay int64.
    floats = any(isinstance(lab.label, float) for lab in known.values())
    label_type = pa.float64() if floats else pa.int64()
    values = pa.array([lab.label for lab in known.values()], type=label_type)
    sources = pa.array([lab.source for lab in known.values()], type=pa.string())
    index = pc.index_in(table.column("sample_id"), value_set=ids)
    joined = pc.take(values, index)
    joined_source = pc.take(sources, index)
    if edge_labels:
        edge = table.column("label").cast(label_type)
        label = pc.coalesce(joined, edge)
        source = pc.if_else(
            pc.is_valid(joined), joined_source, pc.if_else(pc.is_valid(edge), "edge", None)
        )
    else:
        label, source = joined, joined_source
    column = table.schema.get_field_index("label")
    table = table.set_column(column, pa.field("label", label_type), label)
    table = table.append_column(pa.field("label_source", pa.string()), source)
    table = table.filter(pc.is_valid(table.column("label")))
    return table.sort_by([("ingested_at_ns", "ascending"), ("sample_id", "ascending")])


def to_xy(
    table: pa.Table, *, shape: tuple[int, ...] | None = None, dtype: str | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rebuild ``(x, y, sample_ids)`` from a labelled table (see ``labelled``)."""
    x, ids = to_numpy(table, shape=shape, dtype=dtype)
    floats = pa.types.is_floating(table.schema.field("label").type)
    y = np.asarray(table.column("label").to_pylist(), dtype=np.float64 if floats else np.int64)
    return x, y, ids


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """One stored sample that has no trusted label yet, as the review queue shows it.

    ``confidence`` is what the edge recorded beside its prediction, the task's score: the
    top probability of a classifier, P(positive) of a binary scorer, an anomaly score.
    ``doubt`` is how sure the best guess is in the task's terms (lower is reviewed first):
    see ``review_queue``.
    """

    sample_id: str
    node: str
    captured_at_ns: int
    model_version: str
    prediction: int
    confidence: float
    proposal: Proposal | None
    doubt: float


def review_queue(
    samples: SampleStore,
    labels: LabelStore,
    tenant: str,
    pipeline: str,
    *,
    limit: int | None = 50,
    task: Task | None = None,
) -> list[ReviewItem]:
    """Return the stored samples a human should label, least certain first.

    A sample is pending when no label was recorded for it from any source and it carried
    none from the edge. A teacher label counts as recorded: only the teacher's proposals
    below its acceptance confidence stay pending, and those come first, as they are where
    a human's answer teaches the model most.

    What "least certain" means is the pipeline's ``task``'s: a binary or anomaly score is
    decided at its threshold, so the scores closest to it come first (a fraud score of 0.49
    or 0.51 at threshold 0.5, not the 0.01 a top-probability order would put first); a
    classifier's top probability (the teacher's, else the edge's) is the lowest first; a
    regression records no spread with its samples, so they come oldest first. Without a
    task (one not known yet) the queue orders as a classifier's.
    """
    columns = ["sample_id", "node", "captured_at_ns", "model_version", "prediction"]
    table = samples.read(tenant, pipeline, columns=[*columns, "confidence", "label"])
    known = labels.labels(tenant, pipeline)
    proposals = labels.proposals(tenant, pipeline)
    items = []
    for row in table.filter(pc.is_null(table.column("label"))).to_pylist():
        if row["sample_id"] in known:
            continue
        recorded = float(row["confidence"])
        confidence = recorded if np.isfinite(recorded) else 0.0
        proposal = proposals.get(row["sample_id"])
        items.append(
            ReviewItem(
                sample_id=row["sample_id"],
                node=row["node"],
                captured_at_ns=int(row["captured_at_ns"]),
                model_version=row["model_version"],
                prediction=int(row["prediction"]),
                confidence=confidence,
                proposal=proposal,
                doubt=_doubt(task, recorded, proposal),
            )
        )
    items.sort(key=lambda item: (item.doubt, item.captured_at_ns, item.sample_id))
    return items if limit is None else items[:limit]


def _doubt(task: Task | None, score: float, proposal: Proposal | None) -> float:
    """How sure the best guess of one sample is under ``task`` (lower: reviewed sooner).

    An unknown score (NaN) is the least sure of all.
    """
    if isinstance(task, Binary | Anomaly):
        return abs(score - task.threshold) if math.isfinite(score) else 0.0
    if isinstance(task, Regression):
        return 0.0
    if proposal is not None:
        return proposal.confidence
    return score if math.isfinite(score) else 0.0


def fit_label(task: Task | None, label: int | float, *, classes: int | None = None) -> int | float:
    """Return ``label`` as a pipeline of ``task`` keeps it, or refuse one it cannot learn from.

    A binary or anomaly label is 0 or 1 (1: the positive, e.g. fraud; 1.0 is taken as 1), a
    class a whole number from 0 (below ``classes``, the current model's output width, when
    known), a regression's label any finite value. Without a task only ``classes`` bounds a
    class. Training would leave such a label out silently (``_training_data``); a reviewer
    typing it is told here instead.

    Raises:
        ConfigError: the label does not fit; the message names the values that do.
    """
    value = _label_value(label)
    if isinstance(task, Binary | Anomaly):
        if value not in (0, 1):
            binary = isinstance(task, Binary)
            positive, negative = ("fraud", "legitimate") if binary else ("anomalous", "normal")
            raise ConfigError(
                f"label {label!r} does not fit the pipeline's task {task.describe()}: its "
                f"labels are 0 or 1 only (fix: give 1 for a positive sample, e.g. {positive}, "
                f"or 0 for a negative one, e.g. {negative})"
            )
        return int(value)
    if isinstance(task, Regression):
        return float(value)
    whole = not isinstance(value, float) or value.is_integer()
    if task is not None and (not whole or value < 0):
        raise ConfigError(
            f"label {label!r} does not fit the pipeline's task {task.describe()}: its labels "
            "are class indexes, whole numbers from 0 (fix: give the class index, e.g. 3)"
        )
    if classes is not None and not 0 <= value < classes:
        raise ConfigError(
            f"label {label!r} is not a class of the pipeline: its model has {classes} classes "
            f"(fix: give a class index from 0 to {classes - 1})"
        )
    return int(value) if task is not None else value
