"""Register-level emulation of the ICM-42688-P (bank 0): what its driver uses."""

from __future__ import annotations

import struct

from edge_recorder.sensors import icm42688 as reg
from edge_recorder.sensors.base import DEG_TO_RAD, STANDARD_GRAVITY_MPS2
from edge_recorder.sensors.emulation.chip import EmulatedChip, clamp_i16
from edge_recorder.sensors.emulation.motion import Vector

ODR_HZ = {1: 32000.0, 2: 16000.0, 3: 8000.0, 4: 4000.0, 5: 2000.0, 6: 1000.0, 7: 200.0,
          8: 100.0, 9: 50.0, 10: 25.0, 11: 12.5, 15: 500.0}
ACCEL_FS_G = {0: 16, 1: 8, 2: 4, 3: 2}
GYRO_FS_DPS = {0: 2000, 1: 1000, 2: 500, 3: 250, 4: 125, 5: 62.5, 6: 31.25, 7: 15.625}


class EmulatedIcm42688(EmulatedChip):
    default_address = 0x68
    who_am_i = 0x47
    fifo_capacity_bytes = 2048
    fifo_port = reg.FIFO_DATA

    def power_on_reset(self) -> None:
        super().power_on_reset()
        self.regs[reg.WHO_AM_I] = self.who_am_i
        self.regs[reg.GYRO_CONFIG0] = 0x06
        self.regs[reg.ACCEL_CONFIG0] = 0x06
        self.first_count_zero = True  # datasheet quirk: the first count after reset reads 0
        self.timestamp = 0

    def nominal_period_ns(self) -> float | None:
        if self.regs[reg.PWR_MGMT0] & 0x0F != reg.PWR_GYRO_ACCEL_LOW_NOISE:
            return None
        code = self.regs[reg.ACCEL_CONFIG0] & 0x0F
        return 1e9 / ODR_HZ[code] if code in ODR_HZ else None

    def _raw(self, accel: Vector, gyro: Vector) -> tuple[int, ...]:
        a_fs = ACCEL_FS_G[self.regs[reg.ACCEL_CONFIG0] >> 5 & 0x3]
        g_fs = GYRO_FS_DPS[self.regs[reg.GYRO_CONFIG0] >> 5]
        a = 32768 / a_fs / STANDARD_GRAVITY_MPS2
        g = 32768 / g_fs / DEG_TO_RAD
        return (*(max(-32767, clamp_i16(v * a)) for v in accel),
                *(max(-32767, clamp_i16(v * g)) for v in gyro))

    def fifo_running(self) -> bool:
        return self.regs[reg.FIFO_CONFIG] >> 6 == reg.FIFO_MODE_STREAM and \
            self.regs[reg.FIFO_CONFIG1] & 0x03 == 0x03

    def frame_size(self) -> int:
        return reg.PACKET.size if self.fifo_running() else 0

    def fifo_frame(self, accel: Vector, gyro: Vector, temp_c: float) -> bytes:
        if not self.fifo_running():
            return b""
        self.timestamp = (self.timestamp + 1) & 0xFFFF
        temp = max(-128, min(127, round((temp_c - reg.TEMP_OFFSET_C) * reg.FIFO_TEMP_LSB_PER_C)))
        return reg.PACKET.pack(0x68, *self._raw(accel, gyro), temp, self.timestamp)

    def update_data_registers(self, accel: Vector, gyro: Vector, temp_c: float) -> None:
        self.regs[0x1D:0x1F] = struct.pack(">h", clamp_i16((temp_c - 25.0) * 132.48))
        self.regs[0x1F:0x2B] = struct.pack(">6h", *self._raw(accel, gyro))

    def on_fifo_overflow(self) -> None:
        self.regs[reg.INT_STATUS] |= reg.FIFO_FULL_INT

    def read_register(self, register: int) -> int:
        if register == reg.INT_STATUS:
            value = self.regs[register]
            self.regs[register] = 0
            return value
        if register in (reg.FIFO_COUNTH, reg.FIFO_COUNTH + 1):
            count = 0 if self.first_count_zero else len(self.fifo)
            if register == reg.FIFO_COUNTH + 1:
                self.first_count_zero = False
            return (count >> 8) & 0xFF if register == reg.FIFO_COUNTH else count & 0xFF
        return self.regs[register]

    def write_register(self, register: int, value: int) -> None:
        if register == reg.DEVICE_CONFIG and value & 0x01:
            self.power_on_reset()
            return
        if register == reg.SIGNAL_PATH_RESET and value & reg.FIFO_FLUSH:
            self.clear_fifo()
            return
        if register == reg.WHO_AM_I:
            return
        self.regs[register] = value
        if register in (reg.PWR_MGMT0, reg.ACCEL_CONFIG0, reg.GYRO_CONFIG0):
            self.restart_sampling()
