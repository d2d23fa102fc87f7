"""The labels signal: ``LabelDriftMonitor`` runs a ``labels`` detector over the outcomes
(1 = wrong, 0 = right) of frames whose delayed ground truth has come back."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from continuum.drift._buffers import ReferenceWindow
from continuum.drift._monitor import NOT_READY, MonitorBase
from continuum.drift._specs import DriftState, LabelsSpec
from continuum.drift._stats import rise_p_value, values_of
from continuum.errors import InputMismatchError


class LabelDriftMonitor(MonitorBase[LabelsSpec]):
    """Run one ``labels`` detector (see ``LabelsSpec``) over a stream of outcomes.

    Only outcomes that have actually arrived may be fed: feeding a label before it would
    be known detects from the future.  Each update costs O(window).  Not thread-safe.
    """

    def __init__(self, spec: LabelsSpec) -> None:
        super().__init__(spec, (LabelsSpec,), what="a labels", fix="pass drift.labels(...)")
        self._buffers = ReferenceWindow(spec.reference, spec.window, 1)
        self._reference_rate = 0.0

    def reset(self) -> None:
        """Forget everything; the next ``spec.reference`` outcomes become the reference."""
        self._buffers.reset()
        self._reference_rate = 0.0
        self._state = NOT_READY

    def update(self, errors: npt.ArrayLike) -> DriftState:
        """Add a batch of outcomes (1 or True: the prediction was wrong) and return the state.

        Raises:
            InputMismatchError: an outcome is not 0 or 1.
        """
        values = values_of(errors, "errors")
        if values.size and not np.all((values == 0.0) | (values == 1.0)):
            raise InputMismatchError(
                "errors must be 1 (wrong) or 0 (right) per labelled frame",
                expected="values in {0, 1}",
                got=np.array2string(np.unique(values), threshold=6),
            )
        if self._buffers.push(values.reshape(-1, 1)):
            self._reference_rate = float(self._buffers.reference.mean())
        if self._buffers.ready:
            self._state = self._score(float(self._buffers.window.mean()))
        return self._state

    def _score(self, recent_rate: float) -> DriftState:
        spec = self._spec
        rise = recent_rate - self._reference_rate
        p_value = rise_p_value(self._reference_rate, spec.reference, recent_rate, spec.window)
        return DriftState(
            score=max(0.0, rise),
            drifted=rise >= spec.min_increase and rise > 0.0 and p_value < spec.alpha,
            ready=True,
            p_value=p_value,
        )
