"""What one demo run does (``DemoOptions``) and what it saw (``Timeline``), and its constants."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LAB_FPS_SHARE", "MARKER", "TENANT", "DemoOptions", "Timeline"]

#: The file that marks a working directory as the demo's own (it may be replaced).
MARKER = ".continuum-demo"
TENANT = "acme"
#: The lab's camera runs slower than the factory's: forms arrive, parts stream.
LAB_FPS_SHARE = 0.4


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """What one demo run does; every field has a command-line flag.

    The defaults are the digits scenario's; ``for_scenario`` gives another scenario's.
    """

    duration_s: float = 180.0
    agents: int = 3
    drift: str = "blur_contrast"
    drift_at_s: float = 40.0
    workdir: Path = Path("continuum-demo")
    fps: float = 20.0
    live: bool = True
    label_delay_s: float = 3.0
    chaos: bool = False
    #: Which loop runs (``_scenarios``): the digits camera inspection, fraud scoring at a
    #: bank's branches, or predictive maintenance of presses read through a line gateway.
    scenario: str = "digits"

    @classmethod
    def for_scenario(cls, name: str, **changes: Any) -> DemoOptions:
        """Return the options of scenario ``name`` on its defaults, with ``changes``."""
        from pipelines.demo._scenarios import scenario_named

        scenario = scenario_named(name)
        return cls(**{**scenario.defaults, "scenario": name, **changes})


@dataclass
class Timeline:
    """What the run saw, kept for the report."""

    stream_start: float = 0.0
    drift_at: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, what: str, **details: Any) -> None:
        """Note ``what`` happened now, with its details."""
        self.events.append({"t": time.time(), "event": what, **details})
