"""Digits inspection: the example pipeline that ``continuum demo`` runs end to end.

Cameras at two sites read handwritten digits (scikit-learn's bundled 8x8 digits, no
download). The edge runs a small CNN; it uplinks a third of the frames while any of its
drift detectors fires (on the model's confidences, on the frames themselves, or on the error
rate of delayed labels), because DESIGN §11 measured that spending the budget where and when
the drift is recovers accuracy best; besides, only the frames it is very unsure about and a
1% random share for an unbiased view. Labels come back from the line's inspectors as delayed
feedback; the cloud fine-tunes on Ray Train, gates against a validation split plus recent
edge samples, and canaries the winner before promoting it to every camera.

Where the uplink goes (benchmarks/learning_loop.py, three camera faults, 170 s runs; issue
18): the earlier ``low_confidence(0.7) | drift(..., rate=0.5) | random(0.02)`` sent 18-20%
of all frames for the recovery that uploading everything buys.  Per site and phase, about
40% of it went on frames of healthy cameras that the model was merely unsure of (7-13% of
clean frames have a confidence under 0.7; under 0.4 it is 0.4-1.4%), and the fault's own
episode cost ``trigger + rate x fps x (training + canary)``: the boost keeps sending until
the retrained model is served (the detectors restart on every model swap, so nothing is
boosted after it), about 30 s after the retraining trigger fires.  A smaller trigger (200
new samples: the first retraining starts about as early at a third of the rate) and a
third-rate boost halve that episode; the frames sent while the first retraining runs fill
the second one's trigger, which refines the model on about twice as many faulty frames.
Measured after it (one run per arm, 2 shared cores): ours sent 0.088 / 0.078 / 0.078 of
the all arm's bytes for 0.96 / 1.03 / 0.97 of its accuracy gain (inversion, rotation,
mirror), +0.074 / +0.078 / +0.253 over random picks at the same share.

The images of parts are the factory's internal data: under the demo's residency policy
they may be stored and trained on anywhere in the EU, so the central pool in Frankfurt
may take them; ``continuum policy explain`` shows the rules that decide it.
"""

from __future__ import annotations

from continuum import Pipeline, drift, select
from continuum.labels import COUNTRY, SITE, TIER

pipe = Pipeline("digits-inspection", tenant="acme", data_class="internal")

pipe.edge(
    model="digits-cnn",
    backend="auto",  # TensorRT where there is an NVIDIA GPU, else ONNX Runtime
    shape=(1, 8, 8),
    dtype="float32",
    where={TIER: "edge", SITE: "lux-*", COUNTRY: "LU"},
    max_batch=8,
    max_wait_ms=5.0,
)

# Drift is watched three ways, because a camera fault may leave the model confidently wrong:
# its confidences (outputs), the frames' own statistics (inputs) and the error rate of the
# inspectors' delayed labels (labels). Each fires its own boost of the uplink; the boosts
# draw the same frames (one hash), so together they send a third while any one fires.
pipe.uplink(
    select.low_confidence(0.4)
    | select.drift(drift.psi(0.25), rate=0.35)
    | select.drift(drift.inputs(), rate=0.35)
    | select.drift(drift.labels(), rate=0.35)
    | select.random(0.01),
    budget_kbps=256,
)
pipe.label(source="delayed_feedback")
pipe.retrain(
    trainer="pipelines.digits.train:train_loop_per_worker",
    when="200 new samples or manual",
    cpus=1,
    where={TIER: "cloud"},
    # Chosen on a validation split cut from the training split, never the reserved test
    # split: benchmarks/augmentation_choice.py (the figures are in pipelines.digits.train).
    options={"augment": ["shift"]},
)
pipe.gate(metric="accuracy", min_gain=0.0, holdout="pipelines.digits.data:reference_holdout")
pipe.rollout(
    canary=0.25,
    promote_after="10 s",
    ramp_factor=2.0,
    step_after="10 s",
    rollback_on="accuracy drop 0.05",
)
