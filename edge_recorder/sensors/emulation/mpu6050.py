"""Register-level emulation of the MPU-6050 and MPU-9250/9255 accel+gyro core.

Strict where the silicon is: the FIFO (1024 bytes, 512 on the 9250/9255) keeps writing
when full and drops its oldest *bytes*, so frames misalign; the overflow flag is set
only with ``INT_ENABLE.FIFO_OFLOW_EN``; a reset keeps the chip off the bus for
``reset_ns``; the 9250 family reports temperature with its own formula.
"""

from __future__ import annotations

import struct

from edge_recorder.sensors import mpu6050 as reg
from edge_recorder.sensors.base import DEG_TO_RAD, STANDARD_GRAVITY_MPS2
from edge_recorder.sensors.emulation.chip import EmulatedChip, clamp_i16
from edge_recorder.sensors.emulation.motion import Vector

ACCEL_LSB_PER_G = (16384.0, 8192.0, 4096.0, 2048.0)  # by AFS_SEL
GYRO_LSB_PER_DPS = (131.0, 65.5, 32.8, 16.4)  # by FS_SEL


class EmulatedMpu6050(EmulatedChip):
    default_address = 0x68
    fifo_capacity_bytes = 1024
    fifo_port = reg.FIFO_R_W
    who_am_i = 0x68
    overflow_unit_bytes = 1  # the oldest bytes go: frames misalign
    reset_ns = 50_000_000  # between the datasheet's 20 ms typical and 100 ms maximum
    temp_lsb_per_c = 340.0  # MPU-6050 register map §4.18: °C = raw / 340 + 36.53
    temp_offset_c = 36.53
    data_registers = range(reg.ACCEL_XOUT_H, reg.ACCEL_XOUT_H + 14)  # accel, temp, gyro
    format_registers = (reg.SMPLRT_DIV, reg.CONFIG, reg.GYRO_CONFIG, reg.ACCEL_CONFIG,
                        reg.FIFO_EN, reg.USER_CTRL, reg.PWR_MGMT_1)

    def power_on_reset(self) -> None:
        super().power_on_reset()
        self.regs[reg.PWR_MGMT_1] = 0x40  # SLEEP
        self.regs[reg.WHO_AM_I] = self.who_am_i

    def nominal_period_ns(self) -> float | None:
        if self.regs[reg.PWR_MGMT_1] & 0x40:
            return None
        dlpf = self.regs[reg.CONFIG] & 0x07
        gyro_rate_hz = 8000 if dlpf in (0, 7) else 1000
        return 1e9 * (1 + self.regs[reg.SMPLRT_DIV]) / gyro_rate_hz

    def _scales(self) -> tuple[float, float]:
        afs = (self.regs[reg.ACCEL_CONFIG] >> 3) & 3
        fs = (self.regs[reg.GYRO_CONFIG] >> 3) & 3
        return ACCEL_LSB_PER_G[afs] / STANDARD_GRAVITY_MPS2, GYRO_LSB_PER_DPS[fs] / DEG_TO_RAD

    def _raw(self, accel: Vector, gyro: Vector, temp_c: float) -> tuple[int, ...]:
        a, g = self._scales()
        return (
            clamp_i16(accel[0] * a),
            clamp_i16(accel[1] * a),
            clamp_i16(accel[2] * a),
            clamp_i16((temp_c - self.temp_offset_c) * self.temp_lsb_per_c),
            clamp_i16(gyro[0] * g),
            clamp_i16(gyro[1] * g),
            clamp_i16(gyro[2] * g),
        )

    def frame_size(self) -> int:
        regs = self.regs
        return FRAME_BYTES_BY_FIFO_EN[regs[reg.FIFO_EN]] if regs[reg.USER_CTRL] & 0x40 else 0

    def fifo_frame(self, accel: Vector, gyro: Vector, temp_c: float) -> bytes:
        if not self.regs[reg.USER_CTRL] & 0x40:
            return b""
        enabled = self.regs[reg.FIFO_EN]
        ax, ay, az, t, gx, gy, gz = self._raw(accel, gyro, temp_c)
        parts: list[int] = []
        if enabled & reg.FIFO_EN_ACCEL:
            parts += (ax, ay, az)
        if enabled & reg.FIFO_EN_TEMP:
            parts.append(t)
        for bit, value in ((0x40, gx), (0x20, gy), (0x10, gz)):
            if enabled & bit:
                parts.append(value)
        return struct.pack(f">{len(parts)}h", *parts)

    def update_data_registers(self, accel: Vector, gyro: Vector, temp_c: float) -> None:
        self.regs[reg.ACCEL_XOUT_H : reg.ACCEL_XOUT_H + 14] = struct.pack(
            ">7h", *self._raw(accel, gyro, temp_c)
        )

    def on_fifo_overflow(self) -> None:
        if self.regs[reg.INT_ENABLE] & reg.FIFO_OFLOW_EN.encode(1):
            self.regs[reg.INT_STATUS] |= reg.FIFO_OFLOW_INT

    def read_register(self, register: int) -> int:
        if register == reg.INT_STATUS:
            value = self.regs[register]
            self.regs[register] = 0  # cleared on read
            return value
        if register == reg.FIFO_COUNT_H:
            return (len(self.fifo) >> 8) & 0xFF
        if register == reg.FIFO_COUNT_H + 1:
            return len(self.fifo) & 0xFF
        return self.regs[register]

    def write_register(self, register: int, value: int) -> None:
        if register == reg.PWR_MGMT_1 and value & 0x80:
            self.start_reset()  # off the bus for reset_ns, then at power-on values
            return
        if register == reg.USER_CTRL and value & 0x04:
            self.clear_fifo()
            value &= ~0x04  # FIFO_RST self-clears
        if register in (reg.WHO_AM_I, reg.SIGNAL_PATH_RESET):
            return  # read-only / self-clearing
        self.regs[register] = value
        if register in (reg.PWR_MGMT_1, reg.SMPLRT_DIV, reg.CONFIG):
            self.restart_sampling()


FRAME_BYTES_BY_FIFO_EN = tuple(
    2 * (3 * bool(enabled & reg.FIFO_EN_ACCEL) + bool(enabled & reg.FIFO_EN_TEMP)
         + sum(bool(enabled & bit) for bit in (0x40, 0x20, 0x10)))  # XG, YG, ZG
    for enabled in range(256))
"""A FIFO frame's bytes for each value of FIFO_EN (read on every transfer: looked up)."""


class EmulatedMpu9250(EmulatedMpu6050):
    """MPU-9250: a 512-byte FIFO and the MPU-6500 temperature sensor (Linux ``hw_info``)."""

    who_am_i = 0x71
    fifo_capacity_bytes = 512
    temp_lsb_per_c = 333.87  # Linux INV_MPU6500_TEMP_SCALE 2995178 n°C/LSB
    temp_offset_c = 21.0  # Linux INV_MPU6500_TEMP_OFFSET 7011 LSB × 2.995178 m°C ≈ 21 °C


class EmulatedMpu9255(EmulatedMpu9250):
    who_am_i = 0x73
