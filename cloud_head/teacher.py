"""The cloud teacher: a larger model that labels uplinked samples no one has labelled yet.

Edge feedback is not always there (no inspector at the line, or labels that come weeks
later). A teacher model, too big for the edge but cheap on a cloud pool, labels what was
uplinked: confident answers become labels (source ``teacher``, the least trusted source, so
feedback and humans still override them), the rest wait in the human review queue with the
teacher's guess attached (``continuum label``). This is the approach of Shoggoth and AMS.

The teacher is a registered ONNX model (``teacher_model`` in the pipeline's label spec names
its registry entry), scored with ONNX Runtime like the gate. A sample it has seen has a
proposal in the label database; each pass takes the stored samples with neither a label nor
a proposal, so a restarted teacher neither repeats nor skips samples, whatever order the
ingest workers flushed them in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from cloud_head.labelling import LabelStore
from cloud_head.registry import ModelRegistry
from cloud_head.store import SampleStore, to_numpy
from continuum.errors import ConfigError, InputMismatchError, NotFoundError
from continuum.spec import PipelineSpec
from continuum.task import check_label_source

__all__ = ["Teacher", "TeacherPass", "teacher_artifact"]

_log = logging.getLogger(__name__)

#: Rows per ONNX Runtime call: bounds memory whatever the backlog.
BATCH = 256


@dataclass(frozen=True, slots=True)
class TeacherPass:
    """What one pass over new samples did."""

    seen: int  # samples it looked at: stored, unlabelled, not proposed before
    labelled: int
    proposed: int
    skipped: int


def teacher_artifact(registry: ModelRegistry, tenant: str, name: str) -> tuple[Path, str]:
    """Return the current artifact and version of the teacher model ``name`` in the registry.

    Raises:
        NotFoundError: no version of ``name`` is registered or none is current.
    """
    current = registry.current(tenant, name)
    if current is None:
        raise NotFoundError(
            f"teacher model {name!r} of tenant {tenant!r} has no current version in the registry; "
            "register it first (the pipeline's label spec names it as teacher_model)"
        )
    return current.artifact_path, current.version


class Teacher:
    """Label a pipeline's new samples with a cloud model; confident answers become labels.

    Args:
        accept_confidence: a teacher answer at or above this probability is recorded as a
            label; below, it is only a proposal for the human review queue.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        samples: SampleStore,
        labels: LabelStore,
        model_path: Path,
        *,
        model_name: str,
        accept_confidence: float = 0.95,
    ) -> None:
        if not 0.0 < accept_confidence <= 1.0:
            raise ConfigError(
                f"accept_confidence must be in (0, 1], got {accept_confidence!r}; "
                "use e.g. 0.95 (higher sends more samples to human review)"
            )
        check_label_source(spec.edge.task, "teacher", field="teacher")
        from continuum.backends import open_backend

        self.spec = spec
        self.samples = samples
        self.labels = labels
        self.model_name = model_name
        self.accept_confidence = accept_confidence
        self._backend = open_backend("onnxruntime", model_path, max_batch=BATCH)
        self._shape = spec.edge.input.shape
        # The teacher answers in the pipeline's task: a class, or 0/1 at a binary task's
        # threshold with max(p, 1 - p) as its confidence (a softmax over one column would
        # say "0, certain" for every sample).
        self._task = spec.edge.task
        self._dtype = spec.edge.input.dtype

    def run_once(self) -> TeacherPass:
        """Label every stored sample that has neither a label nor a teacher proposal yet."""
        tenant, pipeline = self.spec.tenant, self.spec.name
        table = self.samples.read(
            tenant, pipeline, columns=["sample_id", "label", "dtype", "shape", "tensor"]
        )
        done = (
            self.labels.labels(tenant, pipeline).keys()
            | self.labels.proposals(tenant, pipeline).keys()
        )
        ids_all = table.column("sample_id").to_pylist()
        labels_all = table.column("label").to_pylist()
        keep = [
            i
            for i, (sid, edge) in enumerate(zip(ids_all, labels_all, strict=True))
            if edge is None and sid not in done
        ]
        wanted = table.take(pa.array(keep, type=pa.int64()))
        skipped = 0
        labelled = proposed = 0
        for start in range(0, wanted.num_rows, BATCH):
            chunk = wanted.slice(start, BATCH)
            try:
                x, ids = to_numpy(chunk, shape=self._shape, dtype=self._dtype)
            except InputMismatchError as error:
                # Ingest validated the schema; a mismatch means the spec changed since.
                _log.warning("teacher skips %d samples: %s", chunk.num_rows, error)
                skipped += chunk.num_rows
                continue
            outputs = self._task.read(self._backend.infer(x))
            guess = outputs.prediction.astype(np.int64)
            confidence = outputs.confidence
            assert confidence is not None  # a classification or binary task (checked at start)
            items = [
                (sid, int(g), float(c)) for sid, g, c in zip(ids, guess, confidence, strict=True)
            ]
            proposed += self.labels.propose(tenant, pipeline, items, model=self.model_name)
            sure = [(sid, g) for sid, g, c in items if c >= self.accept_confidence]
            labelled += self.labels.put_many(tenant, pipeline, sure, source="teacher")
        return TeacherPass(wanted.num_rows, labelled, proposed, skipped)
