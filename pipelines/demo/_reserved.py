"""Each model version's task metric on the reserved test split, under each site's condition.

The reserved split is never streamed or uplinked, so its score is what a model learned, not
what it remembers of the records it was retrained on. The live view shows it beside the live
metric the agents report while the run goes, and the report scores every version with it.
The scenario (``_scenarios``) gives the split under the clean and the drifted condition and
the metric; the pipeline's task reads the model's outputs (``continuum.task.score``), as the
gate does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.demo._scenarios import Reserved, Scenario, scenario_named

__all__ = ["CONDITION_SEED", "ReservedScores", "reserved_images"]

#: The seed of the faults drawn on the reserved split: every version is scored on the same
#: faulty images, so their figures compare.
CONDITION_SEED = 12345


def reserved_images(drift_kind: str) -> tuple[Any, Any, Any]:
    """Return the reserved split as the clean sites' cameras show it, as the drifted site's
    camera shows it under ``drift_kind``, and its labels; the same images on every call."""
    import numpy as np

    from pipelines.digits.data import load_splits
    from pipelines.digits.faults import site_condition

    splits = load_splits()
    rng = np.random.default_rng(CONDITION_SEED)
    clean = site_condition(splits.test_x, None, rng=rng)
    return clean, site_condition(splits.test_x, drift_kind, rng=rng), splits.test_y


class ReservedScores:
    """Score the registered versions of one pipeline on the reserved split, once each.

    ``refresh()`` scores the versions registered since the last call; ``scores`` maps each
    version to its ``clean`` and ``drifted`` score (the scenario's metric, under
    ``drift_kind``) and its registry facts (status, parent, gate, lineage), as the report
    keeps them.  ``scenario`` defaults to digits (accuracy on the camera's faults).
    """

    def __init__(
        self,
        workdir: Path,
        tenant: str,
        pipeline: str,
        drift_kind: str,
        scenario: Scenario | None = None,
    ) -> None:
        self._workdir = workdir
        self._tenant = tenant
        self._pipeline = pipeline
        self._drift_kind = drift_kind
        self._scenario = scenario or scenario_named("digits")
        self._reserved: Reserved | None = None
        self._task: Any = None
        self.scores: dict[str, dict[str, Any]] = {}

    def _conditions(self) -> Reserved:
        if self._reserved is None:
            self._reserved = self._scenario.reserved(self._drift_kind)
        return self._reserved

    def _task_of(self) -> Any:
        """The pipeline's task, which reads the models' outputs as the edge and the gate do."""
        if self._task is None:
            import importlib

            from continuum.spec import load_pipeline

            module = importlib.import_module(self._scenario.pipeline_module)
            self._task = load_pipeline(Path(module.__file__ or "")).edge.task
        return self._task

    def _score(self, artifact: Path) -> dict[str, float]:
        from continuum.backends import open_backend
        from continuum.task import score

        reserved, task, metric = self._conditions(), self._task_of(), self._scenario.metric
        backend = open_backend("onnxruntime", artifact, max_batch=1024)
        try:
            clean = task.read(_infer(backend, reserved.clean_x))
            drifted = task.read(_infer(backend, reserved.drifted_x))
            return {
                "clean": score(metric, reserved.clean_y, clean),
                "drifted": score(metric, reserved.drifted_y, drifted),
            }
        finally:
            backend.close()

    def refresh(self) -> dict[str, dict[str, Any]]:
        """Score the versions not scored yet and refresh every version's registry facts."""
        from cloud_head.paths import HeadPaths

        # The demo's head took its registry URL from the same environment (HeadPaths' default).
        registry = HeadPaths(self._workdir / "cloud").open_registry()
        try:
            versions = registry.list(self._tenant, self._pipeline)
        finally:
            registry.close()
        for version in versions:
            known = self.scores.get(version.version)
            if known is None:
                known = self._score(Path(version.artifact_path))
            self.scores[version.version] = known | {
                "status": version.status,
                "parent": version.parent,
                "created_at": version.created_at,
                "gate": version.gate,
                "lineage": version.lineage,
            }
        return self.scores

    def accuracy(self, version: str | None, drifted: bool) -> float | None:
        """The reserved score of ``version`` under the clean or the drifted condition."""
        score = self.scores.get(version or "")
        return None if score is None else score["drifted" if drifted else "clean"]


def _infer(backend: Any, x: Any) -> Any:
    """Run ``x`` through ``backend`` in batches of at most 1,024 rows."""
    import numpy as np

    return np.concatenate([backend.infer(x[i : i + 1024]) for i in range(0, len(x), 1024)])
