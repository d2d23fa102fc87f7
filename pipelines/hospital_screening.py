"""Breast-cancer screening at three hospitals: the example pipeline of ``pipelines.hospitals``.

Each hospital's imaging station (``pipelines.hospitals.scanner.SiteScanner``) sends the 30
measurements of a fine-needle aspirate; a small MLP answers P(malignant): the task is
``binary(threshold=0.5)``, gated on accuracy.  Labels are the pathology confirmations,
delayed feedback.

The measurements are ``restricted``: under the residency policy (``same_site``) no sample
and no label leaves its hospital.  So the agents uplink to their site's broker, a site
ingest stores the samples at the site, and retraining is planned *federated*: each
hospital's on-site Ray worker trains this pipeline's ordinary Ray Train loop on its own
rows, and only model weights, row counts and metrics cross the site's border
(``continuum policy explain`` shows the plan).

Drift: one hospital's imaging device is recalibrated mid-run (sizes read 0.65x), so
malignant lumps there start to look benign; uplink selects the scores near the threshold,
every case whose pathology shows the model wrong, and a random share.
"""

from __future__ import annotations

from continuum import Pipeline, select, task
from continuum.labels import SITE, TIER
from pipelines.hospitals.data import N_FEATURES

pipe = Pipeline("hospital-screening", tenant="medica", data_class="restricted")

pipe.edge(
    model="screening-mlp",
    backend="auto",  # TensorRT where there is an NVIDIA GPU, else ONNX Runtime
    input={"shape": (N_FEATURES,), "dtype": "float32"},
    task=task.binary(threshold=0.5),
    where={TIER: "edge", SITE: "hosp-*"},
    max_batch=8,
    max_wait_ms=5.0,
)

pipe.uplink(
    # Scores within 0.3 of the threshold, every case the pathology shows wrong when its
    # confirmation arrives, and 10 % at random for an unbiased view of the site.
    select.near_threshold(0.3) | select.mistakes(hold_s=600) | select.random(0.1),
    budget_kbps=32,
)
pipe.label(source="delayed_feedback")  # pathology confirmations
pipe.retrain(
    trainer="pipelines.hospitals.train:train_loop_per_worker",
    when="40 new samples or manual",
    cpus=1,
    # Where the updates meet: the cloud pool (weights, metrics and counts may go there).
    where={TIER: "cloud"},
    # Used because the policy plans this pipeline federated: offline, three rounds of local
    # fine-tunes come within 0.02 of central training (benchmarks/federated.py); two of the
    # three hospitals make a round, so one offline site does not stop the loop.
    federated={"rounds": 3, "quorum": 2, "round_timeout_s": 300, "quorum_wait_s": 120},
)
pipe.gate(metric="accuracy", min_gain=0.0, holdout="pipelines.hospitals.data:reference_holdout")
pipe.rollout(canary=0.34, promote_after="10 s", rollback_on="accuracy drop 0.1")
