"""The fraud-scoring example of a bank in Luxembourg: transactions, features, data, terminal.

Measured offline (``benchmarks/fraud_offline.py``, 3 seeds; recall at 1 % FPR on reserved
rows): the first model scores recall 0.71 (ROC-AUC 0.97) before the drift; at lux-gare right
after the account-takeover wave starts, recall 0.08 (ROC-AUC 0.51); after a fine-tune on the
rows near the threshold, a 2 % random share and the chargebacks (7 % of the branch's rows),
recall 0.87 (ROC-AUC 0.99) there and 0.71 on the pre-drift test.

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
