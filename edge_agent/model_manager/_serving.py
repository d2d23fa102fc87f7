"""What the model manager hands out and what it needs: a verified, loaded model for the
runtime, the link it subscribes through, and the function that opens a backend."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from continuum.backends import InferenceBackend

BackendOpener = Callable[..., InferenceBackend]


class Subscriber(Protocol):
    """What the manager needs from the MQTT link."""

    def subscribe(self, topics: Iterable[str], qos: int = 1) -> None:
        """Keep these topics subscribed (across reconnects)."""
        ...

    def unsubscribe(self, topics: Iterable[str]) -> None:
        """Stop receiving these topics."""
        ...

    def resubscribe(self, topics: Iterable[str]) -> None:
        """Subscribe again so the broker resends their retained messages."""
        ...


@dataclass(frozen=True, slots=True)
class ServingModel:
    """A verified, loaded model ready for the runtime to swap in."""

    pipeline: str
    model: str
    version: str
    sha256: str
    signature: str
    path: Path
    backend: InferenceBackend = field(compare=False, repr=False)
