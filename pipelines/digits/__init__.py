"""The digits inspection example: data and camera faults, the small CNN, the camera, the trainer.

Only the data names are re-exported here, so an edge box that imports the camera needs neither
torch nor Ray; ``pipelines.digits.model`` and ``pipelines.digits.train`` bring torch.
"""

from __future__ import annotations

from pipelines.digits.data import (
    DRIFT_KINDS,
    Splits,
    apply_drift,
    load_splits,
    reference_holdout,
)

__all__ = ["DRIFT_KINDS", "Splits", "apply_drift", "load_splits", "reference_holdout"]
