"""Register-level chip emulators behind the same :class:`I2CBus` protocol as hardware.

``bus: emulated`` in the config builds one :class:`EmulatedBus` with the configured
chips on it; tests build them directly to inject clock error, motion and faults.
"""

from edge_recorder.sensors.emulation.bus import EmulatedBus
from edge_recorder.sensors.emulation.chip import EmulatedChip, Faults
from edge_recorder.sensors.emulation.icm42688 import EmulatedIcm42688
from edge_recorder.sensors.emulation.lsm6ds import (
    EmulatedLsm6ds3,
    EmulatedLsm6ds3h,
    EmulatedLsm6ds3trc,
    EmulatedLsm6dsox,
)
from edge_recorder.sensors.emulation.motion import AtRest, Motion, Rotation
from edge_recorder.sensors.emulation.mpu6050 import (
    EmulatedMpu6050,
    EmulatedMpu9250,
    EmulatedMpu9255,
)

EMULATORS: dict[str, type[EmulatedChip]] = {
    "mpu6050": EmulatedMpu6050,
    "lsm6dsox": EmulatedLsm6dsox,
    "icm42688": EmulatedIcm42688,
}
"""The chip each driver gets with ``bus: emulated`` (``emulation.chip`` picks a variant)."""
VARIANTS: dict[str, type[EmulatedChip]] = {
    "MPU-9250": EmulatedMpu9250,
    "MPU-9255": EmulatedMpu9255,
    "LSM6DS3": EmulatedLsm6ds3,
    "LSM6DS3TR-C": EmulatedLsm6ds3trc,
}

__all__ = [
    "EMULATORS",
    "AtRest",
    "EmulatedBus",
    "EmulatedChip",
    "EmulatedIcm42688",
    "EmulatedLsm6ds3",
    "EmulatedLsm6ds3h",
    "EmulatedLsm6ds3trc",
    "EmulatedLsm6dsox",
    "EmulatedMpu6050",
    "EmulatedMpu9250",
    "EmulatedMpu9255",
    "VARIANTS",
    "Faults",
    "Motion",
    "Rotation",
]
