"""The outputs signal: ``DriftMonitor`` runs a PSI or KS detector over the model's
per-frame confidences (its max probability)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from continuum.drift._buffers import ReferenceWindow
from continuum.drift._monitor import NOT_READY, MonitorBase
from continuum.drift._specs import DriftState, KSSpec, PSISpec
from continuum.drift._stats import PSI_EPSILON, FloatArray, ks_sorted, values_of


class DriftMonitor(MonitorBase[PSISpec | KSSpec]):
    """Run one PSI or KS detector over a stream of per-sample confidences.

    The first ``spec.reference`` values after construction or ``reset()`` form the
    reference; the values after them fill a ring buffer of the last ``spec.window`` values.
    The monitor is ``ready`` once both are full; ``drifted`` is only ever true when ready.
    Each update costs O(window log window).  Not thread-safe: one monitor per stream.
    """

    def __init__(self, spec: PSISpec | KSSpec) -> None:
        super().__init__(
            spec,
            (PSISpec, KSSpec),
            what="an outputs",
            fix="pass drift.psi(...) or drift.ks(...) (monitor_for(spec) takes any detector)",
        )
        self._buffers = ReferenceWindow(spec.reference, spec.window, 1)
        self._sorted_reference: FloatArray | None = None
        self._edges: FloatArray | None = None
        self._reference_hist: FloatArray | None = None
        #: The reference histogram's shares, floored as ``population_stability_index``
        #: floors them: computed once per reference, not on every rescoring of the window.
        self._reference_share: FloatArray | None = None

    def reset(self) -> None:
        """Forget everything; the next ``spec.reference`` values become the new reference."""
        self._buffers.reset()
        self._sorted_reference = None
        self._edges = None
        self._reference_hist = None
        self._reference_share = None
        self._state = NOT_READY

    def update(self, confidences: npt.ArrayLike) -> DriftState:
        """Add a batch of confidences and return the detector's state."""
        values = values_of(confidences, "confidences")
        if self._buffers.push(values.reshape(-1, 1)):
            self._freeze_reference(self._buffers.reference[:, 0])
        if self._buffers.ready:
            self._state = self._score(self._buffers.window[:, 0])
        return self._state

    def _freeze_reference(self, reference: FloatArray) -> None:
        spec = self._spec
        if isinstance(spec, KSSpec):
            self._sorted_reference = np.sort(reference)
            return
        if spec.binning == "uniform":
            edges = np.linspace(0.0, 1.0, spec.bins + 1)[1:-1]
        else:
            inner = np.linspace(0.0, 1.0, spec.bins + 1)[1:-1]
            edges = np.unique(np.quantile(reference, inner))
        self._edges = edges
        self._reference_hist = self._histogram(reference)
        self._reference_share = np.maximum(
            self._reference_hist / self._reference_hist.sum(), PSI_EPSILON
        )

    def _histogram(self, values: FloatArray) -> FloatArray:
        assert self._edges is not None
        # side="right": a value equal to an edge counts in the bin above it, so a reference
        # piled up at 1.0 keeps its own top bin.
        index = np.searchsorted(self._edges, values, side="right")
        return np.bincount(index, minlength=self._edges.size + 1).astype(np.float64)

    def _score(self, window: FloatArray) -> DriftState:
        spec = self._spec
        if isinstance(spec, KSSpec):
            assert self._sorted_reference is not None
            result = ks_sorted(self._sorted_reference, np.sort(window))
            return DriftState(
                score=result.statistic,
                drifted=result.pvalue < spec.alpha,
                ready=True,
                p_value=result.pvalue,
            )
        expected = self._reference_share
        assert expected is not None
        # population_stability_index on histograms this monitor made itself (non-negative
        # counts of finite values, neither empty), without checking them again on every
        # rescoring: the same sum, term for term.
        actual = np.maximum(self._histogram(window) / window.size, PSI_EPSILON)
        score = float(np.sum((actual - expected) * np.log(actual / expected)))
        return DriftState(score=score, drifted=score > spec.threshold, ready=True)
