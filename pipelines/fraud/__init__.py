"""The fraud-scoring example of a bank in Luxembourg: transactions, features, data, terminal.

Only the torch-free parts are re-exported, so a branch's edge box that imports the terminal
needs neither torch nor Ray; ``pipelines.fraud.model`` and ``pipelines.fraud.train`` bring
torch.
"""

from __future__ import annotations

from pipelines.fraud.data import FraudSplits, load_splits, reference_holdout
from pipelines.fraud.features import FEATURE_NAMES, N_FEATURES, features
from pipelines.fraud.transactions import BRANCHES, DRIFT_BRANCH, iban_is_valid

__all__ = [
    "BRANCHES",
    "DRIFT_BRANCH",
    "FEATURE_NAMES",
    "N_FEATURES",
    "FraudSplits",
    "features",
    "iban_is_valid",
    "load_splits",
    "reference_holdout",
]
