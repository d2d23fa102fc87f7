"""The predictive-maintenance example: simulated bearings, a line gateway, fixed splits, a
spectral autoencoder and its trainer.  The pipeline is ``pipelines/predictive_maintenance.py``.

- ``bearings``: the physics-based degradation simulator (BPFO/BPFI lines growing with wear,
  machine types A and B, sensor ageing);
- ``gateway``: a simulated line gateway publishing its readings on a real MQTT broker, read by
  ``edge_agent.gateway.SensorGatewaySource``;
- ``data``: fixed train / validation / RESERVED test windows, drifted sites, the gate's
  ``reference_holdout``;
- ``model`` and ``train`` (torch): the autoencoder, its calibrated ONNX score, ``fit`` and the
  Ray Train loop.

Offline figures (``benchmarks/maintenance_offline.py --seeds 2``, precision/recall at the
calibrated threshold, mean of 2 seeds; uplinked counts of seed 0, of 600 streamed windows):

====================================  ==============  ==========  ==================
stage                                 uplinked        test P/R    drifted site P/R
====================================  ==============  ==========  ==================
before drift (type-A fleet)           -               0.95/0.78   -
machine_b: right after                -               0.95/0.78   0.21/1.00
machine_b: above q0.95 + 2% random    47 (8%)         0.97/0.77   0.88/0.98
machine_b: random, same count         47 (8%)         0.97/0.77   0.89/0.95
machine_b: above q0.9 + 5% random     79 (13%)        0.96/0.81   0.91/0.98
machine_b: above q0.7 + 10% random    228 (38%)       0.96/0.83   0.95/0.96
sensor_ageing: right after            -               0.95/0.78   0.28/1.00
sensor_ageing: above q0.95 + 2%       38 (6%)         0.96/0.79   0.66/0.71
sensor_ageing: random, same count     38 (6%)         0.97/0.78   0.84/0.70
sensor_ageing: above q0.7 + 10%       228 (38%)       0.97/0.82   0.92/0.69
====================================  ==============  ==========  ==================

A drift shows as false alarms (every window of the drifted site scores above 1.0), not as
missed faults.  A new machine type (the demo's drift) is learned back from a few dozen of
its normal windows; aged sensors make every window look strange, so the highest scores are
mostly the faulty windows the autoencoder may not learn from, and a random share matters
more than the quantile (as DESIGN §11 found for the digits).
"""

from __future__ import annotations

from pipelines.maintenance.bearings import CHANNELS, FAULT_WEAR, FS_HZ, WINDOW
from pipelines.maintenance.data import (
    DRIFTS,
    INPUT_SHAPE,
    drifted_split,
    load_splits,
    reference_holdout,
)

__all__ = [
    "CHANNELS",
    "DRIFTS",
    "FAULT_WEAR",
    "FS_HZ",
    "INPUT_SHAPE",
    "WINDOW",
    "drifted_split",
    "load_splits",
    "reference_holdout",
]
