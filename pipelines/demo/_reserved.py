"""Each model version's accuracy on the reserved test split, under each site's camera condition.

The reserved split is never streamed or uplinked, so its accuracy is what a model learned, not
what it remembers of the frames it was retrained on. The live view shows it beside the live
accuracy the agents report while the run goes, and the report scores every version with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    version to its ``clean`` and ``drifted`` accuracy (under ``drift_kind``) and its registry
    facts (status, parent, gate, lineage), as the report keeps them.
    """

    def __init__(self, workdir: Path, tenant: str, pipeline: str, drift_kind: str) -> None:
        self._workdir = workdir
        self._tenant = tenant
        self._pipeline = pipeline
        self._drift_kind = drift_kind
        self._images: Any = None
        self.scores: dict[str, dict[str, Any]] = {}

    def _conditions(self) -> Any:
        if self._images is None:
            self._images = reserved_images(self._drift_kind)
        return self._images

    def refresh(self) -> dict[str, dict[str, Any]]:
        """Score the versions not scored yet and refresh every version's registry facts."""
        from cloud_head.paths import HeadPaths
        from continuum.backends import open_backend

        # The demo's head took its registry URL from the same environment (HeadPaths' default).
        registry = HeadPaths(self._workdir / "cloud").open_registry()
        try:
            versions = registry.list(self._tenant, self._pipeline)
        finally:
            registry.close()
        for version in versions:
            known = self.scores.get(version.version)
            if known is None:
                clean_x, drifted_x, labels = self._conditions()
                backend = open_backend("onnxruntime", version.artifact_path, max_batch=1024)
                try:
                    known = {
                        "clean": float((backend.infer(clean_x).argmax(axis=1) == labels).mean()),
                        "drifted": float(
                            (backend.infer(drifted_x).argmax(axis=1) == labels).mean()
                        ),
                    }
                finally:
                    backend.close()
            self.scores[version.version] = known | {
                "status": version.status,
                "parent": version.parent,
                "created_at": version.created_at,
                "gate": version.gate,
                "lineage": version.lineage,
            }
        return self.scores

    def accuracy(self, version: str | None, drifted: bool) -> float | None:
        """The reserved accuracy of ``version`` under the clean or the drifted condition."""
        score = self.scores.get(version or "")
        return None if score is None else score["drifted" if drifted else "clean"]
