"""What every drift monitor shares: the spec it runs, checked once, and its latest state."""

from __future__ import annotations

from typing import Generic, TypeVar

from continuum.drift._specs import DriftState
from continuum.errors import SpecError

NOT_READY = DriftState(score=0.0, drifted=False, ready=False)

SpecT = TypeVar("SpecT")


class MonitorBase(Generic[SpecT]):
    """Hold a monitor's detector spec (refused with ``fix`` unless one of ``kinds``) and the
    state after its latest update (``NOT_READY`` until the first score)."""

    def __init__(self, spec: SpecT, kinds: tuple[type, ...], *, what: str, fix: str) -> None:
        if not isinstance(spec, kinds):
            raise SpecError(
                f"expected {what} drift detector, got {type(spec).__name__}",
                field="spec",
                fix=fix,
            )
        self._spec = spec
        self._state = NOT_READY

    @property
    def spec(self) -> SpecT:
        """The detector spec this monitor runs."""
        return self._spec

    @property
    def state(self) -> DriftState:
        """The state after the latest update."""
        return self._state
