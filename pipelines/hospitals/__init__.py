"""The hospitals example: breast-cancer screening at three hospitals whose data may not leave
them (issue 17).

Offline (``benchmarks/federated.py``, figures in the README): accuracy on the reserved
per-site test rows pooled, central training on all sites' reference rows (the oracle the
policy forbids) 0.98; federated averaging over the three sites 0.96-0.97; each site alone
0.92-0.96.  The drift site's recalibrated device takes the federated model there from 0.93 to
0.74; federated rounds with its uplinked, pathology-labelled rows bring it back to about 0.90.

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
