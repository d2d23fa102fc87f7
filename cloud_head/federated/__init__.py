"""Federated retraining: where the residency policy keeps the data at its sites, learning
comes to the data (DESIGN.md §6, issue 17).

``FederatedTrainer`` runs the rounds of a deployed federated ``TrainingPlan``: the pipeline's
own Ray Train loop at each site (a Ray task placed by the site's labels, reading the site's
stores, ``site_stores``), the updates checked by norm and averaged by Flower's strategy, each
round stored and audited; ``FederatedTrainer.evaluate`` scores candidate and current model at
each site on its own holdout for the gate.  Only weights, metrics and counts leave a site.

The rooms: ``site_data`` (a site's stores and split, on its node), ``_site_tasks`` (what runs
at a site), ``aggregate`` (norm check, Flower's averaging, the ONNX the aggregate is written
into), ``_rounds_state`` (sessions and rounds in SQLite) and ``rounds`` (the driver).
"""

from __future__ import annotations

from cloud_head.federated.aggregate import (
    SiteUpdate,
    UpdateCheck,
    aggregate,
    check_updates,
    dp_applies,
    state_digest,
    write_weights,
)
from cloud_head.federated.rounds import FederatedResult, FederatedTrainer, QuorumError, SiteScores
from cloud_head.federated.site_data import (
    SITE_DATA_ENV,
    SITE_LABELS_ENV,
    SiteSplit,
    SiteStores,
    site_split,
    site_stores,
)

__all__ = [
    "SITE_DATA_ENV",
    "SITE_LABELS_ENV",
    "FederatedResult",
    "FederatedTrainer",
    "QuorumError",
    "SiteScores",
    "SiteSplit",
    "SiteStores",
    "SiteUpdate",
    "UpdateCheck",
    "aggregate",
    "check_updates",
    "dp_applies",
    "site_split",
    "site_stores",
    "state_digest",
    "write_weights",
]
