"""InvenSense MPU-6050 (and the MPU-9250/9255 accel+gyro core), read through its FIFO.

Register map and scale factors from the MPU-6000/6050 register map rev 4.2 (see
FACTS.md). Each FIFO frame is 14 bytes, big-endian int16: accel x/y/z, temperature,
gyro x/y/z.
"""

from __future__ import annotations

import functools
import struct
from typing import ClassVar

from edge_recorder.sensors.base import (
    DEG_TO_RAD,
    STANDARD_GRAVITY_MPS2,
    FifoRead,
    ImuDriver,
    empty_columns,
)
from edge_recorder.sensors.registers import Bits

# Registers
SMPLRT_DIV = 0x19
CONFIG = 0x1A
GYRO_CONFIG = 0x1B
ACCEL_CONFIG = 0x1C
FIFO_EN = 0x23
INT_STATUS = 0x3A
ACCEL_XOUT_H = 0x3B
USER_CTRL = 0x6A
PWR_MGMT_1 = 0x6B
FIFO_COUNT_H = 0x72
FIFO_R_W = 0x74
WHO_AM_I = 0x75

# Fields
DEVICE_RESET = Bits(1, PWR_MGMT_1, 7)
SLEEP = Bits(1, PWR_MGMT_1, 6)
CLKSEL = Bits(3, PWR_MGMT_1, 0)
DLPF_CFG = Bits(3, CONFIG, 0)
FS_SEL = Bits(2, GYRO_CONFIG, 3)
AFS_SEL = Bits(2, ACCEL_CONFIG, 3)
USER_FIFO_EN = Bits(1, USER_CTRL, 6)
USER_FIFO_RESET = Bits(1, USER_CTRL, 2)
FIFO_OFLOW_INT = 0x10  # INT_STATUS bit, cleared by reading INT_STATUS

# FIFO_EN bits: temperature, gyro x/y/z, accel (frame order is accel, temp, gyro)
FIFO_EN_TEMP = 0x80
FIFO_EN_GYRO_XYZ = 0x70
FIFO_EN_ACCEL = 0x08

CLKSEL_PLL_GYRO_X = 1
GYRO_OUTPUT_RATE_DLPF_HZ = 1000  # with DLPF_CFG 1..6; 8 kHz with DLPF off (not used)

ACCEL_LSB_PER_G = {2: 16384.0, 4: 8192.0, 8: 4096.0, 16: 2048.0}
GYRO_LSB_PER_DPS = {250: 131.0, 500: 65.5, 1000: 32.8, 2000: 16.4}
ACCEL_FS_CODE = {2: 0, 4: 1, 8: 2, 16: 3}
GYRO_FS_CODE = {250: 0, 500: 1, 1000: 2, 2000: 3}

# DLPF bandwidth (Hz) per DLPF_CFG; the driver takes the widest that stays below rate/2.
DLPF_BANDWIDTH_HZ = {1: 188, 2: 98, 3: 42, 4: 20, 5: 10, 6: 5}

TEMP_LSB_PER_C = 340.0
TEMP_OFFSET_C = 36.53

FRAME = struct.Struct(">7h")


@functools.lru_cache(maxsize=128)
def frames_struct(frames: int) -> struct.Struct:
    """All of a read's frames in one unpack; columns are then strided slices."""
    return struct.Struct(f">{7 * frames}h")


def dlpf_for_rate(rate_hz: float) -> int:
    """Widest low-pass bandwidth below the Nyquist frequency of ``rate_hz``."""
    for cfg in sorted(DLPF_BANDWIDTH_HZ):
        if DLPF_BANDWIDTH_HZ[cfg] < rate_hz / 2:
            return cfg
    return max(DLPF_BANDWIDTH_HZ)


class Mpu6050(ImuDriver):
    """MPU-6050 6-axis IMU. Rates are 1 kHz / (1 + SMPLRT_DIV), integer rates only."""

    name: ClassVar[str] = "mpu6050"
    default_address: ClassVar[int] = 0x68
    addresses: ClassVar[tuple[int, ...]] = (0x68, 0x69)
    who_am_i_register: ClassVar[int] = WHO_AM_I
    chip_ids: ClassVar[dict[int, str]] = {0x68: "MPU-6050", 0x71: "MPU-9250", 0x73: "MPU-9255"}
    rates_hz: ClassVar[tuple[float, ...]] = tuple(
        float(GYRO_OUTPUT_RATE_DLPF_HZ // d) for d in range(1, 257)
        if GYRO_OUTPUT_RATE_DLPF_HZ % d == 0
    )
    accel_ranges_g: ClassVar[tuple[int, ...]] = tuple(ACCEL_LSB_PER_G)
    gyro_ranges_dps: ClassVar[tuple[int, ...]] = tuple(GYRO_LSB_PER_DPS)
    fifo_bytes: ClassVar[int] = 1024
    frame_bytes: ClassVar[int] = FRAME.size

    def configure(self) -> None:
        bus, addr = self.bus, self.address
        bus.write(addr, PWR_MGMT_1, 1 << DEVICE_RESET.shift)
        for _ in range(20):  # datasheet: ~100 ms
            self.sleep(0.005)
            if not DEVICE_RESET.get(bus, addr):
                break
        bus.write(addr, PWR_MGMT_1, CLKSEL_PLL_GYRO_X)  # SLEEP cleared
        DLPF_CFG.set(bus, addr, dlpf_for_rate(self.rate_hz))
        bus.write(addr, SMPLRT_DIV, self.sample_rate_divider())
        FS_SEL.set(bus, addr, GYRO_FS_CODE[self.gyro_range_dps])
        AFS_SEL.set(bus, addr, ACCEL_FS_CODE[self.accel_range_g])
        self._accel_scale = STANDARD_GRAVITY_MPS2 / ACCEL_LSB_PER_G[self.accel_range_g]
        self._gyro_scale = DEG_TO_RAD / GYRO_LSB_PER_DPS[self.gyro_range_dps]
        bus.write(addr, FIFO_EN, FIFO_EN_ACCEL | FIFO_EN_TEMP | FIFO_EN_GYRO_XYZ)
        self.reset_fifo()

    def sample_rate_divider(self) -> int:
        return round(GYRO_OUTPUT_RATE_DLPF_HZ / self.rate_hz) - 1

    def reset_fifo(self) -> None:
        bus, addr = self.bus, self.address
        bus.write(addr, USER_CTRL, 1 << USER_FIFO_RESET.shift)
        bus.write(addr, USER_CTRL, 1 << USER_FIFO_EN.shift)
        bus.read(addr, INT_STATUS, 1)  # clear a stale overflow flag

    def read_fifo(self) -> FifoRead:
        bus, addr = self.bus, self.address
        hi, lo = bus.read(addr, FIFO_COUNT_H, 2)
        count = (hi << 8) | lo
        if count > self.fifo_bytes - FRAME.size:
            # Full, or about to wrap: the oldest bytes are overwritten and frames lose their
            # alignment. (A FIFO that overflowed stays full, so the count alone tells; no
            # INT_STATUS read is needed on every poll.)
            self.reset_fifo()
            return FifoRead(empty_columns(), 0, overflowed=True)
        frames = count // FRAME.size
        if frames == 0:
            return FifoRead(empty_columns(), 0)
        flat = frames_struct(frames).unpack(bus.read(addr, FIFO_R_W, frames * FRAME.size))
        a, g = self._accel_scale, self._gyro_scale
        return FifoRead(
            (
                [v * a for v in flat[0::7]],
                [v * a for v in flat[1::7]],
                [v * a for v in flat[2::7]],
                [v * g for v in flat[4::7]],
                [v * g for v in flat[5::7]],
                [v * g for v in flat[6::7]],
                [v / TEMP_LSB_PER_C + TEMP_OFFSET_C for v in flat[3::7]],
            ),
            frames,
        )
