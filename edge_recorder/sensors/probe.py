"""``edge-recorder probe``: find supported IMUs on a bus by their WHO_AM_I registers."""

from __future__ import annotations

from dataclasses import dataclass

from edge_recorder.sensors.bus import I2CBus
from edge_recorder.sensors.registry import DRIVERS


@dataclass(frozen=True)
class Found:
    address: int
    driver: str
    variant: str


def scan(bus: I2CBus) -> list[Found]:
    """Every (address, driver) where the chip's WHO_AM_I names a supported variant."""
    found = []
    for name, driver in sorted(DRIVERS.items()):
        for address in driver.addresses:
            try:
                value = bus.read(address, driver.who_am_i_register, 1)[0]
            except OSError:
                continue  # nothing acknowledged there
            variant = driver.chip_ids.get(value)
            if variant is not None:
                found.append(Found(address, name, variant))
    return found


def config_snippet(found: list[Found], bus: int | str) -> str:
    lines = ["sensors:"]
    for i, f in enumerate(found):
        driver = DRIVERS[f.driver]
        lines += [f"  - name: imu{i}", f"    driver: {f.driver}   # {f.variant}",
                  f"    bus: {bus}", f"    address: 0x{f.address:02x}",
                  f"    rate_hz: {driver.default_rate_hz:g}"]
    return "\n".join(lines)
