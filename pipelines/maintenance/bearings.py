"""A physics-based degradation simulator of rotating machines: what a press's sensors read.

Each machine is a motor-driven shaft on rolling-element bearings, watched by three sensors:

- **vibration** (accelerometer on the bearing housing, g, sampled at ``FS_HZ``): the shaft's
  rotation harmonics (1x imbalance, 2x misalignment, 3x looseness), the bearing's defect
  frequencies whose amplitude grows with wear, and broadband noise that rises with wear;
- **temperature** (bearing housing, deg C): ambient plus load plus friction heat that grows
  with wear;
- **current** (motor RMS current, A): the load current plus the friction torque of a worn
  bearing.

The defect frequencies follow from the bearing's kinematics (Harris & Kotzalas, *Rolling
Bearing Analysis*, 5th ed., ch. 9; Randall & Antoni, "Rolling element bearing diagnostics — a
tutorial", MSSP 25 (2011), eq. 1), with shaft frequency ``f_r``, ``n`` rolling elements, ball
diameter ``d``, pitch diameter ``D`` and contact angle ``phi``::

    BPFO = (n / 2) * f_r * (1 - (d / D) * cos(phi))    # ball pass frequency, outer race
    BPFI = (n / 2) * f_r * (1 + (d / D) * cos(phi))    # ball pass frequency, inner race

An outer-race defect sits in the fixed load zone, so it shows as a steady line at BPFO and its
harmonic; an inner-race defect turns with the shaft through the load zone, so its BPFI line is
amplitude-modulated at ``f_r`` (sidebands at BPFI +- f_r).  Defect amplitude grows as
``wear ** 4``: an incipient defect hides under the noise floor, a developed one stands out
(the steep end of the usual "P-F curve").  ``wear`` runs from 0 (new bearing) to 1 (end of
life); maintenance records call a bearing faulty from ``FAULT_WEAR`` on.

Machine types differ in shaft speed and bearing geometry (``MACHINE_TYPES``: the line's "A"
presses and a newer "B" model); every machine draws its own small deviations (speed, balance,
ambient, load) from its seed.  Sensor ageing (``SensorState.aged``) drifts the accelerometer's
gain, adds a DC offset from its charge amplifier and raises its noise, and offsets the
thermometer.  Everything is reproducible from numpy seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CHANNELS",
    "FAULT_WEAR",
    "FS_HZ",
    "MACHINE_TYPES",
    "WINDOW",
    "Bearing",
    "Machine",
    "MachineType",
    "SensorState",
    "VibrationStream",
    "make_machine",
]

#: The sensor channels, in tensor row order.
CHANNELS = ("vibration", "temperature", "current")
#: Accelerometer sample rate: well above twice the highest defect line (BPFI harmonics < 400 Hz).
FS_HZ = 1024.0
#: Samples per window: 1 s of vibration (the model averages 7 half-overlapping 256-sample
#: spectra in it: 4 Hz resolution, and a noise floor steady enough to see a defect line rise).
WINDOW = 1024
#: Wear from which the plant's maintenance records call a bearing faulty.
FAULT_WEAR = 0.5
#: Vibration components with a phase of their own: 3 shaft harmonics, 2 BPFO, BPFI's
#: modulation and carrier.
_N_COMPONENTS = 7


@dataclass(frozen=True)
class Bearing:
    """Rolling-element bearing geometry: element count, ball and pitch diameters, contact angle."""

    n_elements: int
    ball_d_mm: float
    pitch_d_mm: float
    contact_deg: float = 0.0

    def _ratio(self) -> float:
        return self.ball_d_mm / self.pitch_d_mm * math.cos(math.radians(self.contact_deg))

    def bpfo(self, shaft_hz: float) -> float:
        """Return the ball pass frequency of the outer race (Hz) at ``shaft_hz``."""
        return self.n_elements / 2 * shaft_hz * (1 - self._ratio())

    def bpfi(self, shaft_hz: float) -> float:
        """Return the ball pass frequency of the inner race (Hz) at ``shaft_hz``."""
        return self.n_elements / 2 * shaft_hz * (1 + self._ratio())


@dataclass(frozen=True)
class MachineType:
    """A machine model: shaft speed, bearing, and the size of its signal components."""

    name: str
    shaft_hz: float
    bearing: Bearing
    harmonics_g: tuple[float, float, float]  # 1x, 2x, 3x shaft-rate amplitudes
    outer_defect_g: float  # BPFO amplitude at wear 1
    inner_defect_g: float  # BPFI amplitude at wear 1
    noise_g: float  # broadband vibration at wear 0
    load_current_a: float
    load_heat_c: float  # housing temperature above ambient at wear 0
    wear_heat_c: float  # extra at wear 1


MACHINE_TYPES: dict[str, MachineType] = {
    # 1,800 rpm press on a 9-ball deep-groove bearing: BPFO 94.5 Hz, BPFI 175.5 Hz.
    "A": MachineType(
        name="A",
        shaft_hz=30.0,
        bearing=Bearing(n_elements=9, ball_d_mm=12.0, pitch_d_mm=40.0),
        harmonics_g=(0.50, 0.20, 0.08),
        outer_defect_g=2.0,
        inner_defect_g=1.6,
        noise_g=0.15,
        load_current_a=12.0,
        load_heat_c=18.0,
        wear_heat_c=14.0,
    ),
    # The newer 1,500 rpm model on a 7-ball angular-contact bearing: BPFO 57.9 Hz, BPFI 117.1 Hz.
    "B": MachineType(
        name="B",
        shaft_hz=25.0,
        bearing=Bearing(n_elements=7, ball_d_mm=14.0, pitch_d_mm=40.0, contact_deg=15.0),
        harmonics_g=(0.35, 0.30, 0.12),
        outer_defect_g=1.8,
        inner_defect_g=1.4,
        noise_g=0.12,
        load_current_a=9.0,
        load_heat_c=14.0,
        wear_heat_c=12.0,
    ),
}


@dataclass(frozen=True)
class SensorState:
    """How the sensors distort the truth: accelerometer gain, DC offset and extra noise, and
    the thermometer's offset.  ``SensorState()`` is a freshly calibrated set."""

    vib_gain: float = 1.0
    vib_offset_g: float = 0.0
    vib_noise_g: float = 0.0
    temp_offset_c: float = 0.0

    @classmethod
    def aged(cls, severity: float) -> SensorState:
        """Return sensors aged by ``severity`` (0: new, 1: the demo's level, a few years).

        Piezo accelerometers lose sensitivity and their charge amplifiers pick up a bias;
        connectors corrode and add noise; thermistors drift upward.
        """
        if severity < 0:
            raise ValueError(f"severity must be >= 0, got {severity}")
        return cls(
            vib_gain=1.0 - 0.35 * severity,
            vib_offset_g=0.4 * severity,
            vib_noise_g=0.25 * severity,
            temp_offset_c=6.0 * severity,
        )


@dataclass(frozen=True)
class Machine:
    """One machine: its type and the deviations its own seed drew."""

    kind: MachineType
    speed_factor: float
    balance_factor: float
    ambient_c: float
    load_factor: float

    @property
    def shaft_hz(self) -> float:
        """The shaft frequency this machine runs at (Hz)."""
        return self.kind.shaft_hz * self.speed_factor

    def window(
        self,
        wear: float,
        rng: np.random.Generator,
        sensor: SensorState | None = None,
        n: int = WINDOW,
    ) -> NDArray[np.float32]:
        """Return one window ``(3, n)`` float32: vibration samples, and the temperature and
        current readings held over the window (as the gateway source aligns them)."""
        vibration = self.vibration(wear, rng, sensor, n)
        temperature, current = self.slow_readings(wear, rng, sensor)
        out = np.empty((len(CHANNELS), n), dtype=np.float32)
        out[0] = vibration
        out[1] = temperature
        out[2] = current
        return out

    def vibration(
        self,
        wear: float,
        rng: np.random.Generator,
        sensor: SensorState | None = None,
        n: int = WINDOW,
        fs_hz: float = FS_HZ,
    ) -> NDArray[np.float32]:
        """Return ``n`` accelerometer samples (g) at ``fs_hz`` for a bearing at ``wear``,
        starting at a random shaft angle (one independent window)."""
        offsets = rng.uniform(0, 2 * np.pi, size=_N_COMPONENTS)
        samples, _ = self.vibration_from(
            wear, float(rng.uniform(0, 2 * np.pi)), offsets, rng, sensor, n, fs_hz
        )
        return samples

    def vibration_from(
        self,
        wear: float,
        angle: float,
        offsets: NDArray[np.float64],
        rng: np.random.Generator,
        sensor: SensorState | None = None,
        n: int = WINDOW,
        fs_hz: float = FS_HZ,
    ) -> tuple[NDArray[np.float32], float]:
        """Return ``n`` samples from shaft ``angle`` (rad) and the angle after them.

        Every component is locked to the shaft angle (the defect frequencies are multiples of
        the shaft rate), so a stream that carries the angle from call to call is continuous
        (``VibrationStream``); ``offsets`` are the components' phases.
        """
        sensor = sensor or SensorState()
        kind = self.kind
        wear = float(np.clip(wear, 0.0, 1.0))
        # The speed wanders a little under load from call to call.
        fr = self.shaft_hz * (1.0 + 0.004 * rng.standard_normal())
        theta = angle + 2 * np.pi * fr * np.arange(n) / fs_hz
        x = np.zeros(n)
        for k, amplitude in enumerate(kind.harmonics_g, start=1):
            scale = self.balance_factor if k == 1 else 1.0
            x += scale * amplitude * np.sin(k * theta + offsets[k - 1])
        defect = wear**4
        bpfo, bpfi = kind.bearing.bpfo(fr) / fr, kind.bearing.bpfi(fr) / fr  # orders
        for m in (1, 2):
            x += defect * kind.outer_defect_g / m * np.sin(m * bpfo * theta + offsets[2 + m])
        modulation = 0.5 * (1.0 + np.cos(theta + offsets[5]))
        x += defect * kind.inner_defect_g * modulation * np.sin(bpfi * theta + offsets[6])
        x += kind.noise_g * (1.0 + wear) * rng.standard_normal(n)
        measured = sensor.vib_gain * x + sensor.vib_offset_g
        measured += sensor.vib_noise_g * rng.standard_normal(n)
        end = float((angle + 2 * np.pi * fr * n / fs_hz) % (2 * np.pi))
        return measured.astype(np.float32), end

    def slow_readings(
        self, wear: float, rng: np.random.Generator, sensor: SensorState | None = None
    ) -> tuple[float, float]:
        """Return one (temperature deg C, current A) reading for a bearing at ``wear``."""
        sensor = sensor or SensorState()
        kind = self.kind
        wear = float(np.clip(wear, 0.0, 1.0))
        temperature = (
            self.ambient_c
            + kind.load_heat_c * self.load_factor
            + kind.wear_heat_c * wear**2
            + 0.3 * rng.standard_normal()
            + sensor.temp_offset_c
        )
        current = kind.load_current_a * self.load_factor * (1.0 + 0.08 * wear**2)
        current += 0.1 * rng.standard_normal()
        return float(temperature), float(current)


def make_machine(kind: str, rng: np.random.Generator) -> Machine:
    """Draw one machine of type ``kind`` ("A" or "B") with its own deviations from ``rng``."""
    if kind not in MACHINE_TYPES:
        raise ValueError(f"machine type {kind!r} is unknown; use one of {', '.join(MACHINE_TYPES)}")
    return Machine(
        kind=MACHINE_TYPES[kind],
        speed_factor=float(rng.uniform(0.98, 1.02)),
        balance_factor=float(rng.uniform(0.7, 1.3)),
        ambient_c=float(rng.uniform(20.0, 28.0)),
        load_factor=float(rng.uniform(0.85, 1.15)),
    )


class VibrationStream:
    """One machine's accelerometer as a continuous stream: ``next`` carries the shaft angle."""

    def __init__(self, machine: Machine, rng: np.random.Generator) -> None:
        self.machine = machine
        self._rng = rng
        self._angle = float(rng.uniform(0, 2 * np.pi))
        self._offsets = rng.uniform(0, 2 * np.pi, size=_N_COMPONENTS)

    def next(self, n: int, wear: float, sensor: SensorState | None = None) -> NDArray[np.float32]:
        """Return the next ``n`` samples at ``FS_HZ`` for a bearing at ``wear``."""
        samples, self._angle = self.machine.vibration_from(
            wear, self._angle, self._offsets, self._rng, sensor, n
        )
        return samples
