"""The maintenance data of the example: fixed splits of simulated sensor windows.

Windows ``(3, WINDOW)`` float32 come from ``bearings``; label 1 means the plant's maintenance
record calls the bearing faulty at that time (wear >= ``FAULT_WEAR``).  Each split draws its
own machines (a machine is never in two splits), so a split tells how the model does on
machines it never saw.  The RESERVED test split comes from seeds no gateway uses: the
simulated gateway (``pipelines.maintenance.gateway``) draws its machines from
``GATEWAY_SEED_BASE`` on, and ``test_split`` is never streamed or uplinked.

Wear is drawn so a split holds the hard cases too: normal windows span new to nearly faulty
(wear up to just under ``FAULT_WEAR``), faulty ones span just faulty to end of life.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipelines.maintenance.bearings import (
    CHANNELS,
    FAULT_WEAR,
    WINDOW,
    SensorState,
    make_machine,
)

__all__ = [
    "DRIFTS",
    "GATEWAY_SEED_BASE",
    "INPUT_SHAPE",
    "Split",
    "draw_windows",
    "drifted_split",
    "load_splits",
    "reference_holdout",
    "wear_for",
]

INPUT_SHAPE = (len(CHANNELS), WINDOW)
#: Machine seeds from here on belong to the simulated gateway's machines, never to a split.
GATEWAY_SEED_BASE = 1_000_000

Windows = NDArray[np.float32]
Labels = NDArray[np.int64]

#: The drifts a site can undergo: name -> (machine type, sensor state) of its machines.
DRIFTS: dict[str, tuple[str, SensorState]] = {
    "machine_b": ("B", SensorState()),  # a new machine type installed at the site
    "sensor_ageing": ("A", SensorState.aged(1.0)),  # the site's sensors a few years on
}

# (machines, windows per machine, faulty share, seed offset) of each split.
_SPLITS = {
    "train": (30, 40, 0.15, 0),
    "validation": (10, 40, 0.25, 10_000),
    "test": (15, 40, 0.25, 20_000),
}


@dataclass(frozen=True)
class Split:
    """One split: windows ``x`` (n, 3, WINDOW), labels ``y`` (1 = faulty) and true ``wear``."""

    x: Windows
    y: Labels
    wear: NDArray[np.float64]


@dataclass(frozen=True)
class Splits:
    """The three disjoint splits of type-A machines with fresh sensors."""

    train: Split
    validation: Split
    test: Split


def wear_for(faulty: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.float64]:
    """Draw a wear per window: in [0, FAULT_WEAR) for normal ones, [FAULT_WEAR, 1] for faulty."""
    normal = (FAULT_WEAR - 1e-6) * rng.uniform(0.0, 1.0, size=len(faulty)) ** 2
    worn = rng.uniform(FAULT_WEAR, 1.0, size=len(faulty))
    return np.where(faulty, worn, normal)


def draw_windows(
    n_machines: int,
    per_machine: int,
    faulty_share: float,
    seed: int,
    kind: str = "A",
    sensor: SensorState | None = None,
) -> Split:
    """Draw ``n_machines * per_machine`` windows of type ``kind`` machines seeded from ``seed``.

    A share ``faulty_share`` of each machine's windows is faulty (wear >= FAULT_WEAR).
    """
    xs, ys, wears = [], [], []
    for m in range(n_machines):
        rng = np.random.default_rng([seed + m, ord(kind)])
        machine = make_machine(kind, rng)
        faulty = rng.random(per_machine) < faulty_share
        wear = wear_for(faulty, rng)
        for w in wear:
            xs.append(machine.window(float(w), rng, sensor))
        ys.append(faulty.astype(np.int64))
        wears.append(wear)
    return Split(
        x=np.stack(xs) if xs else np.zeros((0, *INPUT_SHAPE), dtype=np.float32),
        y=np.concatenate(ys) if ys else np.zeros(0, dtype=np.int64),
        wear=np.concatenate(wears) if wears else np.zeros(0),
    )


@functools.cache
def _splits(seed: int) -> Splits:
    made = {
        name: draw_windows(n, per, share, seed * 100_000 + offset)
        for name, (n, per, share, offset) in _SPLITS.items()
    }
    return Splits(**made)


def load_splits(seed: int = 0) -> Splits:
    """Return the fixed train (1,200) / validation (400) / RESERVED test (600) windows.

    Same ``seed``, same windows; drawn once per process (treat the arrays as read-only).
    """
    if not 0 <= seed < GATEWAY_SEED_BASE // 100_000:
        raise ValueError(f"split seed must be in [0, {GATEWAY_SEED_BASE // 100_000}), got {seed}")
    return _splits(seed)


def reference_holdout(size: int = 400, seed: int = 0) -> tuple[Windows, Labels]:
    """Return a fixed labelled set for the gate: the validation split (up to ``size`` windows).

    It is the labelled history a plant keeps (maintenance records of past windows); with it
    the gate refuses a candidate that learned a new machine by forgetting the old ones.
    Never the reserved test split.
    """
    split = load_splits(seed).validation
    return split.x[:size], split.y[:size]


def drifted_split(drift: str, part: str = "test", seed: int = 0, n_machines: int = 15) -> Split:
    """Return windows of a site after ``drift`` (a ``DRIFTS`` name), 40 per machine, 25% faulty.

    ``part="test"`` is RESERVED (never streamed, like ``test``); ``part="stream"`` is what the
    drifted site's gateway would stream (gateway seeds), for offline studies of selection.
    """
    if drift not in DRIFTS:
        raise ValueError(f"drift {drift!r} is unknown; use one of {', '.join(DRIFTS)}")
    if part not in ("test", "stream"):
        raise ValueError(f'part must be "test" or "stream", got {part!r}')
    kind, sensor = DRIFTS[drift]
    base = seed * 100_000 + 30_000 if part == "test" else GATEWAY_SEED_BASE + 500_000 + seed * 1000
    return draw_windows(n_machines, 40, 0.25, base, kind=kind, sensor=sensor)
