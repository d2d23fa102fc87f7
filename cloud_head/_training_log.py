"""A pipeline controller's training bookkeeping: every run and how it ended, and what it used.

``TrainingLog`` keeps the trigger's counters (labelled samples trained on, when the last run
began), one ``TrainingRecord`` per run and the GPU-hours used, and stores them in the
controller's ``PipelineStateStore`` at every change, so a controller built again on the same
workdir carries on where the last one stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cloud_head._pipeline_state import TRAINING_RECORD

if TYPE_CHECKING:
    from cloud_head._pipeline_state import PipelineStateStore

__all__ = ["TrainingLog", "TrainingRecord"]


@dataclass(frozen=True, kw_only=True)
class TrainingRecord:
    """One retraining attempt and how it ended."""

    started_at: float
    reason: str
    parent: str | None
    edge_samples: int
    finished_at: float | None = None
    outcome: str = "running"
    version: str | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    run: str | None = None
    requested_by: str | None = None
    run_s: float | None = None
    gpu_hours: float = 0.0
    #: Which pool trained it and why, the Slurm allocation, each attempt (``_training_pool``).
    placement: dict[str, Any] = field(default_factory=dict)


class TrainingLog:
    """Every training run of one pipeline, the trigger's counters and the GPU-hours used.

    Thread-safe: the training thread writes while ``status()`` reads. Every change is saved
    at once (``save`` is called by each changing method).
    """

    def __init__(self, states: PipelineStateStore, clock: Callable[[], float] = time.time) -> None:
        self._states = states
        self._clock = clock
        self._lock = threading.Lock()
        self._records: list[TrainingRecord] = []
        self._trained_on = 0
        self._last_trained_at = clock()
        self._gpu_hours_used = 0.0

    def restore(self) -> str | None:
        """Load what the last controller of this workdir stored, if anything.

        A run that was still running then registered nothing: it is recorded as interrupted.

        Returns:
            The reason to run it again, or None when no run was interrupted.
        """
        saved = self._states.load(TRAINING_RECORD)
        if saved is None:
            return None
        rerun: str | None = None
        with self._lock:
            self._trained_on = int(saved["trained_on"])
            self._last_trained_at = float(saved["last_trained_at"])
            self._gpu_hours_used = float(saved.get("gpu_hours_used", 0.0))
            self._records = [TrainingRecord(**r) for r in saved.get("records", [])]
            for i, record in enumerate(self._records):
                if record.outcome == "running":
                    self._records[i] = replace(
                        record,
                        finished_at=self._clock(),
                        outcome="interrupted: the cloud head restarted during the run",
                    )
                    rerun = f"rerun after a restart interrupted: {record.reason}"
        self.save()
        return rerun

    def save(self) -> None:
        """Store the counters and records as they are now."""
        with self._lock:
            body = {
                "trained_on": self._trained_on,
                "last_trained_at": self._last_trained_at,
                "gpu_hours_used": self._gpu_hours_used,
                "records": [asdict(r) for r in self._records],
            }
        self._states.save(TRAINING_RECORD, body)

    @property
    def trained_on(self) -> int:
        """How many labelled samples the pipeline had when its last run began."""
        with self._lock:
            return self._trained_on

    @property
    def last_trained_at(self) -> float:
        """When the last run began (when the log was made, before any run)."""
        with self._lock:
            return self._last_trained_at

    @property
    def gpu_hours_used(self) -> float:
        """The GPU-hours every run so far took: wall time times the GPUs requested."""
        with self._lock:
            return self._gpu_hours_used

    def records(self) -> list[dict[str, Any]]:
        """Return every run's record as a JSON-able mapping, oldest first."""
        with self._lock:
            return [asdict(r) for r in self._records]

    def get(self, index: int) -> TrainingRecord:
        """Return the record of run ``index`` (as ``start`` numbered it)."""
        with self._lock:
            return self._records[index]

    def last(self) -> TrainingRecord | None:
        """Return the newest run's record, if there is one."""
        with self._lock:
            return self._records[-1] if self._records else None

    def last_run_s(self) -> float | None:
        """Return the wall time of the newest run that was timed, if any."""
        with self._lock:
            lengths = [r.run_s for r in self._records if r.run_s is not None]
        return lengths[-1] if lengths else None

    def start(self, record: TrainingRecord, *, labelled_samples: int) -> int:
        """Add a run that begins now on ``labelled_samples``; store it; return its index."""
        with self._lock:
            self._records.append(record)
            index = len(self._records) - 1
            self._trained_on = labelled_samples
            self._last_trained_at = self._clock()
        self.save()
        return index

    def charge(self, index: int, seconds: float, gpus: float) -> None:
        """Add run ``index``'s wall time times its GPUs to the GPU-hours used; store it."""
        hours = gpus * seconds / 3600.0
        with self._lock:
            self._gpu_hours_used += hours
            self._records[index] = replace(self._records[index], run_s=seconds, gpu_hours=hours)
        self.save()

    def place(self, index: int, placement: dict[str, Any] | None) -> None:
        """Record where run ``index`` trained (pool, allocation, attempts); store it."""
        if not placement:
            return
        with self._lock:
            self._records[index] = replace(self._records[index], placement=dict(placement))
        self.save()

    def usage(self, index: int) -> dict[str, Any]:
        """Return run ``index``'s wall time and GPU-hours, the pipeline's total, and where it
        trained (pool and Slurm allocation) when its pipeline names a pool."""
        with self._lock:
            record = self._records[index]
            used = self._gpu_hours_used
        usage = {"run_s": record.run_s, "gpu_hours": record.gpu_hours, "gpu_hours_used": used}
        if record.placement:
            usage |= {k: record.placement.get(k) for k in ("pool", "allocation")}
            usage["attempts"] = record.placement.get("attempts", [])
        return usage

    def finish(self, index: int, outcome: str, **changes: Any) -> None:
        """Record how run ``index`` ended (and its version, gate, metrics); store it."""
        with self._lock:
            self._records[index] = replace(
                self._records[index], finished_at=self._clock(), outcome=outcome, **changes
            )
        self.save()
