"""The drivers this build supports, by the name used in ``sensors[].driver``."""

from __future__ import annotations

from edge_recorder.sensors.base import ImuDriver
from edge_recorder.sensors.icm42688 import Icm42688
from edge_recorder.sensors.lsm6ds import Lsm6ds
from edge_recorder.sensors.mpu6050 import Mpu6050

DRIVERS: dict[str, type[ImuDriver]] = {cls.name: cls for cls in (Mpu6050, Lsm6ds, Icm42688)}
