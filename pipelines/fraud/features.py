"""The numeric feature vector the fraud model sees: ``N_FEATURES`` float32 values per row.

Identifiers (IBAN, customer name) are never in it: they travel beside the tensor as frame
fields, which the pipeline classes restricted or confidential so the residency policy keeps
them in Luxembourg.  The branch is not in it either, so a pattern learnt at one branch
carries to the others.  The layout, in order (``FEATURE_NAMES``):

=====================  =====================================================================
log_amount             log(1 + amount in EUR)
amount_vs_usual        log(amount / the customer's usual amount at that category)
hour_sin, hour_cos     the hour of day on the unit circle (23:59 sits next to 00:00)
night                  1 between 00:00 and 05:00
channel_*              one-hot: card_present, ecommerce, sepa_transfer
mcc_*                  one-hot over the nine merchant categories of ``transactions.MCCS``
foreign                1 when the merchant or payee is outside Luxembourg
new_counterparty       1 on the customer's first payment to this merchant or payee
new_device             1 when e-banking or 3-D Secure saw a device new to this customer
txn_1h, txn_24h        log(1 + the customer's transactions in the hour / day before)
gap                    log(1 + minutes since the customer's previous transaction)
tenure                 log(1 + days since the account was opened)
=====================  =====================================================================
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pipelines.fraud.transactions import CHANNELS, MCCS, Transactions

__all__ = ["FEATURE_NAMES", "N_FEATURES", "SHAPE", "features"]

FEATURE_NAMES: tuple[str, ...] = (
    "log_amount",
    "amount_vs_usual",
    "hour_sin",
    "hour_cos",
    "night",
    *(f"channel_{c}" for c in CHANNELS),
    *(f"mcc_{m.name}" for m in MCCS),
    "foreign",
    "new_counterparty",
    "new_device",
    "txn_1h",
    "txn_24h",
    "gap",
    "tenure",
)
N_FEATURES = len(FEATURE_NAMES)
#: The model input shape of one row, as the pipeline declares it.
SHAPE = (N_FEATURES,)


def features(tx: Transactions) -> NDArray[np.float32]:
    """Return the (n, ``N_FEATURES``) float32 feature matrix of ``tx`` (see the module table)."""
    n = len(tx)
    angle = 2 * np.pi * tx.hour / 24.0
    columns = [
        np.log1p(tx.amount),
        tx.amount_vs_usual,
        np.sin(angle),
        np.cos(angle),
        tx.hour < 5.0,
        *(tx.channel == i for i in range(len(CHANNELS))),
        *(tx.mcc == i for i in range(len(MCCS))),
        tx.foreign,
        tx.new_counterparty,
        tx.new_device,
        np.log1p(tx.txn_1h),
        np.log1p(tx.txn_24h),
        np.log1p(tx.gap_min),
        np.log1p(tx.tenure_days),
    ]
    out = np.empty((n, N_FEATURES), dtype=np.float32)
    for i, column in enumerate(columns):
        out[:, i] = column
    return out
