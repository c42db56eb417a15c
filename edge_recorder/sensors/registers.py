"""Declarative register fields, so a driver reads like its datasheet.

``Bits(2, ACCEL_CONFIG, 3)`` is "two bits at bit 3 of ACCEL_CONFIG", as in Adafruit's
``RWBits``. Writes are read-modify-write so neighbouring fields keep their values.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_recorder.sensors.bus import I2CBus


@dataclass(frozen=True)
class Bits:
    """``width`` bits starting at bit ``shift`` of ``register``."""

    width: int
    register: int
    shift: int

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.shift

    def get(self, bus: I2CBus, address: int) -> int:
        return (bus.read(address, self.register, 1)[0] & self.mask) >> self.shift

    def set(self, bus: I2CBus, address: int, value: int) -> None:
        if not 0 <= value < (1 << self.width):
            raise ValueError(f"{value} does not fit in {self.width} bit(s)")
        old = bus.read(address, self.register, 1)[0]
        bus.write(address, self.register, (old & ~self.mask) | (value << self.shift))

    def encode(self, value: int) -> int:
        """``value`` placed in this field, for composing a whole register write."""
        if not 0 <= value < (1 << self.width):
            raise ValueError(f"{value} does not fit in {self.width} bit(s)")
        return value << self.shift

    def decode(self, register_value: int) -> int:
        return (register_value & self.mask) >> self.shift
