"""The digits inspection example: data and camera faults, the small CNN, the camera, the trainer.

Only the data and fault names are re-exported here, so an edge box that imports the camera
needs neither torch nor Ray; ``pipelines.digits.model`` and ``pipelines.digits.train`` bring
torch.
"""

from __future__ import annotations

from pipelines.digits.data import Splits, load_splits, reference_holdout
from pipelines.digits.faults import (
    AUGMENTED_KINDS,
    DRIFT_KINDS,
    apply_drift,
    site_condition,
)

__all__ = [
    "AUGMENTED_KINDS",
    "DRIFT_KINDS",
    "Splits",
    "apply_drift",
    "load_splits",
    "reference_holdout",
    "site_condition",
]
