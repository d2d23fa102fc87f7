"""Fraud scoring at a bank in Luxembourg: the example pipeline of ``pipelines.fraud``.

Each branch's terminal (``pipelines.fraud.terminal.BranchTerminal``) sends its card payments
and SEPA transfers as a 24-value feature vector; a small MLP answers P(fraud), calibrated in
its exported graph so that the declared threshold 0.5 is 1 % false positives on validation:
the task is ``binary(threshold=0.5)`` and the gate scores recall at 1 % FPR.  Labels are the
chargebacks (a customer disputes the payment) and, when the dispute window closes without
one, "legitimate": delayed feedback, seconds in the demo for weeks in reality.

The IBAN and the customer's name travel beside the tensor as fields.  Under the demo's
residency policy the name is restricted (dropped at the branch before a sample is queued) and
the IBAN confidential (pseudonymised with the tenant's salt before it leaves Luxembourg), so
no raw identifier leaves the country; the behaviour features themselves are internal.

Concept drift: an account-takeover wave (night-time transfers to new payees from new devices)
at lux-gare.  It is 1.2 % of that branch's rows, so the inputs barely move (feature-wise
PSI < 0.01) and the takeovers score low, far from the threshold; what shows it is the error
rate of the chargebacks that come back (0.96 % -> 2.18 % with the first model), which the
labels detector reports, and the chargebacks themselves: ``select.mistakes()`` uplinks each
transaction whose label shows the model wrong when that label arrives.  Offline
(``benchmarks/fraud_offline.py``, figures in ``pipelines.fraud``): recall at 1 % FPR 0.71
before the drift, 0.08 at lux-gare right after it, 0.87 after a fine-tune on near-threshold
rows, a 2 % random share and the chargebacks, at 7 % of the branch's rows.
"""

from __future__ import annotations

from continuum import Pipeline, drift, select, task
from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER
from pipelines.fraud.features import N_FEATURES

pipe = Pipeline("card-fraud", tenant="acme", data_class="internal")

pipe.edge(
    model="fraud-mlp",
    backend="auto",  # TensorRT where there is an NVIDIA GPU, else ONNX Runtime
    input={
        "shape": (N_FEATURES,),
        "dtype": "float32",
        "fields": {"iban": "confidential", "customer_name": "restricted"},
    },
    task=task.binary(threshold=0.5),  # the trainer folds the 1 % FPR calibration into the graph
    where={TIER: "edge", SITE: "lux-*", COUNTRY: "LU", JURISDICTION: "LU"},
    max_batch=32,
    max_wait_ms=5.0,
)

pipe.uplink(
    # Scores within 0.4 of the threshold ([0.1, 0.9]: about 3 % of rows), every transaction
    # whose chargeback (or the dispute window closing) shows the model wrong, when that label
    # comes back - the takeovers score low and only their chargebacks find them - and a random
    # share for an unbiased view.  Offline that recovers recall at 1 % FPR from 0.08 to 0.87
    # at ~7 % of the branch's rows, where a labels-triggered boost of half of everything
    # needed 53 % (benchmarks/fraud_offline.py).
    select.near_threshold(0.4) | select.mistakes(hold_s=600) | select.random(0.02),
    budget_kbps=128,
    # The chargebacks' error rate rises about one point at the branch: the detector judges
    # long windows of outcomes and reports the drift in telemetry, to the retrain trigger.
    drift=drift.labels(min_increase=0.005, window=1500, reference=3000, alpha=1e-3),
)
pipe.label(source="delayed_feedback")  # chargebacks; "legitimate" when the window closes
pipe.retrain(
    trainer="pipelines.fraud.train:train_loop_per_worker",
    when="300 new samples or manual",
    cpus=1,
    where={TIER: "cloud"},
)
pipe.gate(
    metric="recall_at_fpr_0.01", min_gain=0.0, holdout="pipelines.fraud.data:reference_holdout"
)
pipe.rollout(
    canary=0.25,
    promote_after="10 s",
    ramp_factor=2.0,
    step_after="10 s",
    # Frauds are rare: a telemetry window holds few, so only a large drop of recall counts.
    rollback_on="recall drop 0.2",
)
