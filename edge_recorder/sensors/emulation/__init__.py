"""Register-level chip emulators behind the same :class:`I2CBus` protocol as hardware.

``bus: emulated`` in the config builds one :class:`EmulatedBus` with the configured
chips on it; tests build them directly to inject clock error, motion and faults.
"""

from edge_recorder.sensors.emulation.bus import EmulatedBus
from edge_recorder.sensors.emulation.chip import EmulatedChip, Faults
from edge_recorder.sensors.emulation.motion import AtRest, Motion, Rotation
from edge_recorder.sensors.emulation.mpu6050 import EmulatedMpu6050

EMULATORS: dict[str, type[EmulatedChip]] = {"mpu6050": EmulatedMpu6050}

__all__ = [
    "EMULATORS",
    "AtRest",
    "EmulatedBus",
    "EmulatedChip",
    "EmulatedMpu6050",
    "Faults",
    "Motion",
    "Rotation",
]
