"""Drift detection on the edge, three ways: the model's outputs, its inputs, its errors.

A detector spec says what to watch and how to test it: ``psi`` and ``ks`` watch the model's
confidences (``signal == "outputs"``), ``inputs`` the tensors it is fed, ``labels`` the
error rate of frames whose delayed ground truth came back.  A monitor runs one detector
over its stream (``monitor_for(spec)``): the first ``reference`` values after a (re)start,
e.g. right after a model swap, form the reference, and the last ``window`` values are
compared with it.  Only numpy is used at runtime, so the slim edge install (no scipy) can
run every detector.

A model that is confidently wrong (a mirrored camera, say) leaves its confidences as they
were: only the inputs or the labels show it, which is why a pipeline may run all three.
"""

from __future__ import annotations

from continuum.drift._inputs import InputDriftMonitor, InputFeatures
from continuum.drift._labels import LabelDriftMonitor
from continuum.drift._outputs import DriftMonitor
from continuum.drift._specs import (
    DETECTOR_FIX,
    DETECTOR_TYPES,
    Detector,
    DriftSpec,
    DriftState,
    InputsSpec,
    KSSpec,
    LabelsSpec,
    PSISpec,
    Signal,
    inputs,
    ks,
    labels,
    psi,
)
from continuum.drift._stats import (
    PSI_EPSILON,
    KSResult,
    ks_two_sample,
    population_stability_index,
)
from continuum.errors import SpecError

__all__ = [
    "DETECTOR_FIX",
    "DETECTOR_TYPES",
    "PSI_EPSILON",
    "Detector",
    "DriftMonitor",
    "DriftSpec",
    "DriftState",
    "InputDriftMonitor",
    "InputFeatures",
    "InputsSpec",
    "KSResult",
    "KSSpec",
    "LabelDriftMonitor",
    "LabelsSpec",
    "Monitor",
    "PSISpec",
    "Signal",
    "inputs",
    "ks",
    "ks_two_sample",
    "labels",
    "monitor_for",
    "population_stability_index",
    "psi",
]

#: A monitor of any signal; its ``update`` takes confidences, input tensors or outcomes.
Monitor = DriftMonitor | InputDriftMonitor | LabelDriftMonitor


def monitor_for(spec: Detector) -> Monitor:
    """Return the monitor that runs ``spec`` over its signal's stream.

    Raises:
        SpecError: ``spec`` is not a drift detector.
    """
    if isinstance(spec, PSISpec | KSSpec):
        return DriftMonitor(spec)
    if isinstance(spec, InputsSpec):
        return InputDriftMonitor(spec)
    if isinstance(spec, LabelsSpec):
        return LabelDriftMonitor(spec)
    raise SpecError(
        f"expected a drift detector, got {type(spec).__name__}", field="spec", fix=DETECTOR_FIX
    )
