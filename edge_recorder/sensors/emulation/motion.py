"""What the emulated chip "feels": specific force (m/s²) and angular rate (rad/s) over time."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from edge_recorder.sensors.base import STANDARD_GRAVITY_MPS2

Vector = tuple[float, float, float]


class Motion(Protocol):
    """What the chip feels at ``t_s`` seconds after it started sampling.

    A motion may say it repeats every ``period_s`` seconds (an attribute, optional): the
    emulator then tabulates one whole cycle, so its table wraps without a jump.
    """

    def __call__(self, t_s: float) -> tuple[Vector, Vector]:
        """Accelerometer reading (m/s²) and gyro reading (rad/s) at time ``t_s``."""
        ...


@dataclass(frozen=True)
class AtRest:
    """Lying flat: the accelerometer reads +1 g on z, the gyro reads zero."""

    def __call__(self, t_s: float) -> tuple[Vector, Vector]:
        return (0.0, 0.0, STANDARD_GRAVITY_MPS2), (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Rotation:
    """Turning about the x axis at ``rate_dps`` from flat: gravity sweeps through y and z."""

    rate_dps: float = 90.0

    @property
    def period_s(self) -> float | None:
        """One full turn."""
        return 360.0 / abs(self.rate_dps) if self.rate_dps else None

    def __call__(self, t_s: float) -> tuple[Vector, Vector]:
        w = math.radians(self.rate_dps)
        angle = w * t_s
        g = STANDARD_GRAVITY_MPS2
        return (0.0, g * math.sin(angle), g * math.cos(angle)), (w, 0.0, 0.0)
