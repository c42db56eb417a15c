"""What every IMU driver offers the sampler, and the capability tables the config checks.

A driver configures its chip, then hands over whatever the chip's FIFO holds, decoded
into SI units: accelerations in m/s², angular rates in rad/s, temperature in °C. It
does not timestamp: the sampler does, from the read time and the frame count.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, NamedTuple

from edge_recorder.errors import SensorError, SensorNotFound
from edge_recorder.sensors.bus import I2CBus

STANDARD_GRAVITY_MPS2 = 9.80665
DEG_TO_RAD = math.pi / 180.0
CHANNELS: tuple[str, ...] = ("ax", "ay", "az", "gx", "gy", "gz", "temp_c")
"""Column order of every sample block; ``temp_c`` only where the chip batches temperature."""


class FifoRead(NamedTuple):
    """One drain of a chip's FIFO.

    ``columns`` holds one list per channel in :data:`CHANNELS` order, ``frames`` long.
    ``overflowed`` means the chip lost data before this read; the driver has already
    reset its FIFO, and the sampler estimates and records how many frames were lost.
    """

    columns: tuple[list[float], ...]
    frames: int
    overflowed: bool = False
    lost_frames: int = 0  # frames the driver knows it discarded (misaligned, incomplete)


class ImuDriver(ABC):
    """Base class of the chip drivers: capability tables plus ``start`` and ``read_fifo``."""

    name: ClassVar[str]
    default_address: ClassVar[int]
    addresses: ClassVar[tuple[int, ...]]
    who_am_i_register: ClassVar[int]
    chip_ids: ClassVar[dict[int, str]]
    rates_hz: ClassVar[tuple[float, ...]]
    accel_ranges_g: ClassVar[tuple[int, ...]]
    gyro_ranges_dps: ClassVar[tuple[int, ...]]
    fifo_bytes_by_variant: ClassVar[dict[str, int]]
    """FIFO size of each variant (chip_ids' values), bytes; until identified, the smallest."""
    frame_bytes: ClassVar[int]
    has_temperature: ClassVar[bool] = True
    default_rate_hz: ClassVar[float] = 200
    default_accel_range_g: ClassVar[int] = 4
    default_gyro_range_dps: ClassVar[int] = 500

    def __init__(
        self,
        bus: I2CBus,
        address: int,
        *,
        rate_hz: float,
        accel_range_g: int,
        gyro_range_dps: int,
        bus_name: str = "?",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bus = bus
        self.address = address
        self.rate_hz = rate_hz
        self.accel_range_g = accel_range_g
        self.gyro_range_dps = gyro_range_dps
        self.bus_name = bus_name
        self.sleep = sleep
        self.variant = ""
        self._written: dict[int, int] = {}

    @property
    def fifo_bytes(self) -> int:
        """The identified variant's FIFO size; before identification the family's smallest."""
        sizes = self.fifo_bytes_by_variant
        return sizes[self.variant] if self.variant in sizes else min(sizes.values())

    @property
    def fifo_frames(self) -> int:
        """How many frames the FIFO holds before it overflows."""
        return self.fifo_bytes // self.frame_bytes

    # --- configuration that is read back --------------------------------------------
    def write_config(self, register: int, value: int) -> None:
        """Write a configuration register and remember it for :meth:`verify_config`."""
        self.bus.write(self.address, register, value)
        self._written[register] = value

    def verify_config(self) -> None:
        """Read every configuration register back: a write lost on the wire (a glitch, a
        brown-out) would otherwise leave the chip asleep or misconfigured, silently."""
        for register, value in self._written.items():
            actual = self.bus.read(self.address, register, 1)[0]
            if actual != value:
                raise SensorError(
                    f"{self.name} on I2C bus {self.bus_name} at 0x{self.address:02x}: register "
                    f"0x{register:02x} reads back 0x{actual:02x}, 0x{value:02x} was written; "
                    "check the wiring and the power supply")

    def identify(self) -> str:
        """Read WHO_AM_I; return the chip variant or raise :class:`SensorNotFound`."""
        try:
            value = self.bus.read(self.address, self.who_am_i_register, 1)[0]
        except OSError as exc:
            raise SensorNotFound(
                f"no {self.name} answered on I2C bus {self.bus_name} at address "
                f"0x{self.address:02x} ({exc}); check your wiring and the address"
            ) from exc
        variant = self.chip_ids.get(value)
        if variant is None:
            expected = ", ".join(f"0x{k:02x} ({v})" for k, v in self.chip_ids.items())
            raise SensorNotFound(
                f"the chip on I2C bus {self.bus_name} at 0x{self.address:02x} says WHO_AM_I="
                f"0x{value:02x}, expected {expected} for driver {self.name}; "
                "check your wiring and the driver name"
            )
        self.variant = variant
        return variant

    def start(self) -> None:
        """Identify, reset and configure the chip, and start its FIFO."""
        self.identify()
        self._written = {}
        self.configure()

    @abstractmethod
    def configure(self) -> None:
        """Reset the chip, set rate and ranges, and start the FIFO empty."""

    @abstractmethod
    def reset_fifo(self) -> None:
        """Empty the FIFO and restart it: what it held is lost (the sampler counts it)."""

    @abstractmethod
    def read_fifo(self) -> FifoRead:
        """Drain every complete frame the FIFO holds, in as few transfers as possible."""


def empty_columns(with_temperature: bool = True) -> tuple[list[float], ...]:
    return tuple([] for _ in CHANNELS[: 7 if with_temperature else 6])
