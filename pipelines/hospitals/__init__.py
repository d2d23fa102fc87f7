"""The hospitals example: breast-cancer screening at three hospitals whose data may not leave
them (issue 17).

Offline (``benchmarks/federated.py``, data seed 0): accuracy on the reserved per-site test
rows pooled, central training on every site's reference rows (the oracle the policy forbids)
0.979; federated averaging over the three sites 0.965 (within 0.02 after 5 rounds); each
site alone 0.951-0.965.  In ``continuum demo --scenario hospitals`` the drift site's
recalibrated device takes the first federated model there from 0.95 to 0.67, and federated
retraining on its uplinked, pathology-labelled rows brings it back to 0.90 (README).

Only the torch-free parts are re-exported, so a site's edge box that imports the scanner
needs neither torch nor Ray; ``pipelines.hospitals.model`` and ``.train`` bring torch.
"""

from __future__ import annotations

from pipelines.hospitals.data import (
    DRIFT_SITE,
    N_FEATURES,
    SITES,
    HospitalSplits,
    load_splits,
    recalibrated,
    reference_holdout,
)

__all__ = [
    "DRIFT_SITE",
    "N_FEATURES",
    "SITES",
    "HospitalSplits",
    "load_splits",
    "recalibrated",
    "reference_holdout",
]
