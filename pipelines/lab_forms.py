"""Lab forms: a hospital reads handwritten tube numbers from lab request forms.

The second tenant of ``continuum demo``: another organisation on the same broker, Ray
cluster and store, kept apart by its own credentials, namespace, keys and audit log. Its
frames carry the patient id and the technician from the form; the images themselves are
internal, but the patient id is restricted (it never leaves the hospital: dropped before a
sample is queued for uplink) and the technician's name confidential (it stays in
Luxembourg: pseudonymised with the tenant's salt when the store is elsewhere). The
residency policy, not this file, decides which; ``continuum policy explain`` shows it.
"""

from __future__ import annotations

from continuum import Pipeline, select
from continuum.labels import COUNTRY, JURISDICTION, SITE, TIER

pipe = Pipeline("lab-forms", tenant="medica", data_class="internal")

pipe.edge(
    model="digits-cnn",
    backend="auto",
    input={
        "shape": (1, 8, 8),
        "dtype": "float32",
        "fields": {"patient_id": "restricted", "technician": "confidential"},
    },
    where={TIER: "edge", SITE: "lux-*", COUNTRY: "LU", JURISDICTION: "LU"},
    max_batch=8,
    max_wait_ms=5.0,
)

pipe.uplink(select.low_confidence(0.8) | select.random(0.05), budget_kbps=64)
pipe.label(source="delayed_feedback")
pipe.retrain(
    trainer="pipelines.digits.train:train_loop_per_worker",
    when="manual",
    cpus=1,
    where={TIER: "cloud"},
)
pipe.gate(metric="accuracy", min_gain=0.0, holdout="pipelines.digits.data:reference_holdout")
pipe.rollout(canary=0.5, promote_after="20 s", rollback_on="accuracy drop 0.05")
