"""InvenSense MPU-6050 and MPU-9250/9255 (their accel+gyro core), read through the FIFO.

Register map from the MPU-6000/6050 register map rev 4.2 and the MPU-9250 register map
rev 1.6, cross-checked against the Linux IIO driver ``drivers/iio/imu/inv_mpu6050``
(see ``tests/test_register_tables.py``). Each FIFO frame is 14 bytes, big-endian int16:
accel x/y/z, temperature, gyro x/y/z.

The variants differ in what matters here: the FIFO is 1024 bytes on the 6050 and 512
on the 9250/9255 (Linux ``hw_info[].fifo_size``), the temperature formula differs, and
the 9250 family has its own accelerometer low-pass register (``ACCEL_CONFIG_2``).

Overflow: a full MPU FIFO keeps writing and drops its *oldest bytes*, so 14-byte
frames lose their alignment for good. The driver resets the FIFO when fewer than three
frames are free (as Linux ``inv_mpu6050_read_fifo`` does, "to mitigate possible delay
between reading fifo count and fifo data") and, after each burst, reads the overflow
flag: an overflow between the count read and the burst discards that burst.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import ClassVar

from edge_recorder.sensors.base import (
    DEG_TO_RAD,
    STANDARD_GRAVITY_MPS2,
    Channel,
    FifoRead,
    FrameLayout,
    ImuDriver,
)
from edge_recorder.sensors.registers import Bits

log = logging.getLogger(__name__)

# Registers
SMPLRT_DIV = 0x19
CONFIG = 0x1A
GYRO_CONFIG = 0x1B
ACCEL_CONFIG = 0x1C
ACCEL_CONFIG_2 = 0x1D  # MPU-6500 family (9250/9255) only
FIFO_EN = 0x23
INT_ENABLE = 0x38
INT_STATUS = 0x3A
ACCEL_XOUT_H = 0x3B
SIGNAL_PATH_RESET = 0x68
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
A_DLPF_CFG = Bits(3, ACCEL_CONFIG_2, 0)
FS_SEL = Bits(2, GYRO_CONFIG, 3)
AFS_SEL = Bits(2, ACCEL_CONFIG, 3)
USER_FIFO_EN = Bits(1, USER_CTRL, 6)
USER_FIFO_RESET = Bits(1, USER_CTRL, 2)
FIFO_OFLOW_EN = Bits(1, INT_ENABLE, 4)
FIFO_OFLOW_INT = 0x10  # INT_STATUS bit, cleared by reading INT_STATUS
SIGNAL_PATH_RESET_ALL = 0x07  # GYRO_RESET | ACCEL_RESET | TEMP_RESET

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

# Gyro DLPF bandwidth (Hz) per DLPF_CFG (Register Map rev 4.2 §4.3); the driver takes the
# widest not above rate/2, as Linux inv_mpu6050_set_lpf does.
DLPF_BANDWIDTH_HZ = {1: 188, 2: 98, 3: 42, 4: 20, 5: 10, 6: 5}

# Waits (s): Linux INV_MPU6050_POWER_UP_TIME after reset (Adafruit waits as long again
# after the signal-path reset), INV_MPU6050_REG_UP_TIME_MIN after waking.
RESET_WAIT_S = 0.100
SIGNAL_PATH_RESET_WAIT_S = 0.100
WAKE_WAIT_S = 0.005
FIFO_MARGIN_FRAMES = 3  # Linux inv_mpu6050_read_fifo: reset when fewer are free

FRAME = struct.Struct(">7h")


@dataclass(frozen=True)
class Variant:
    """What differs between the chips this driver reads (Linux ``inv_mpu6050_hw``)."""

    fifo_bytes: int
    temp_offset_lsb: int  # °C = (raw + offset) · scale
    temp_scale_nano_c: int  # n°C per LSB
    gyro_startup_s: float  # data is not valid before this (Linux *_GYRO_STARTUP_TIME)
    has_accel_config_2: bool


MPU6050 = Variant(1024, 12420, 2941176, 0.060, False)
MPU6500_FAMILY = Variant(512, 7011, 2995178, 0.070, True)
VARIANTS = {"MPU-6050": MPU6050, "MPU-9250": MPU6500_FAMILY, "MPU-9255": MPU6500_FAMILY}


def frame_layout(chip: Variant, accel_range_g: int, gyro_range_dps: int) -> FrameLayout:
    """A FIFO frame: ax ay az temp gx gy gz, big-endian int16; °C = (raw + offset) · scale."""
    a = STANDARD_GRAVITY_MPS2 / ACCEL_LSB_PER_G[accel_range_g]
    g = DEG_TO_RAD / GYRO_LSB_PER_DPS[gyro_range_dps]
    t = chip.temp_scale_nano_c * 1e-9
    return FrameLayout(FRAME.format, (
        Channel(0, a), Channel(1, a), Channel(2, a), Channel(4, g), Channel(5, g),
        Channel(6, g), Channel(3, t, chip.temp_offset_lsb * t)))


def dlpf_for_rate(rate_hz: float) -> int:
    """Widest low-pass bandwidth not above the Nyquist frequency of ``rate_hz`` (Linux
    ``inv_mpu6050_set_lpf``: "the bandwidth ... must not exceed the signal sampling rate
    divided by 2")."""
    for cfg in sorted(DLPF_BANDWIDTH_HZ):
        if DLPF_BANDWIDTH_HZ[cfg] <= rate_hz / 2:
            return cfg
    return max(DLPF_BANDWIDTH_HZ)


class Mpu6050(ImuDriver):
    """MPU-6050/9250/9255 6-axis IMU. Rates are 1 kHz / (1 + SMPLRT_DIV), integer rates."""

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
    fifo_bytes_by_variant: ClassVar[dict[str, int]] = {
        name: v.fifo_bytes for name, v in VARIANTS.items()}
    frame_bytes: ClassVar[int] = FRAME.size
    overflow_flag_stuck = False  # some parts always report overflow (Linux commit 6e82ae6b)
    _unverified: tuple[bytes, tuple[int, int]] | None = None  # a burst, when it was counted

    @property
    def chip(self) -> Variant:
        return VARIANTS.get(self.variant, MPU6050)

    def configure(self) -> None:
        bus, addr, chip = self.bus, self.address, self.chip
        bus.write(addr, PWR_MGMT_1, DEVICE_RESET.encode(1))
        self.sleep(RESET_WAIT_S)  # the chip does not answer while it resets
        bus.write(addr, SIGNAL_PATH_RESET, SIGNAL_PATH_RESET_ALL)
        self.sleep(SIGNAL_PATH_RESET_WAIT_S)
        self.write_config(PWR_MGMT_1, CLKSEL.encode(CLKSEL_PLL_GYRO_X))  # SLEEP cleared
        self.sleep(WAKE_WAIT_S)
        dlpf = dlpf_for_rate(self.rate_hz)
        self.write_config(CONFIG, DLPF_CFG.encode(dlpf))
        if chip.has_accel_config_2:  # as Linux inv_mpu6050_set_lpf_regs
            self.write_config(ACCEL_CONFIG_2, A_DLPF_CFG.encode(dlpf))
        self.write_config(SMPLRT_DIV, self.sample_rate_divider())
        self.write_config(GYRO_CONFIG, FS_SEL.encode(GYRO_FS_CODE[self.gyro_range_dps]))
        self.write_config(ACCEL_CONFIG, AFS_SEL.encode(ACCEL_FS_CODE[self.accel_range_g]))
        self.write_config(INT_ENABLE, FIFO_OFLOW_EN.encode(1))
        self.write_config(FIFO_EN, FIFO_EN_ACCEL | FIFO_EN_TEMP | FIFO_EN_GYRO_XYZ)
        self.verify_config()
        self.layout = frame_layout(chip, self.accel_range_g, self.gyro_range_dps)
        self._nearly_full = self.fifo_bytes - FIFO_MARGIN_FRAMES * FRAME.size
        self.sleep(chip.gyro_startup_s)  # what the FIFO held until now is discarded
        self.reset_fifo()
        self.verify_config()  # USER_CTRL too: a lost FIFO enable would record nothing

    def sample_rate_divider(self) -> int:
        return round(GYRO_OUTPUT_RATE_DLPF_HZ / self.rate_hz) - 1

    def reset_fifo(self) -> None:
        bus, addr = self.bus, self.address
        self._unverified = None
        bus.write(addr, USER_CTRL, USER_FIFO_RESET.encode(1))  # FIFO_EN 0: nothing stored
        self.write_restarting(USER_CTRL, USER_FIFO_EN.encode(1))
        self._written[USER_CTRL] = USER_FIFO_EN.encode(1)
        bus.read(addr, INT_STATUS, 1)  # clear a stale overflow flag
        if not self.overflow_flag_stuck and bus.read(addr, INT_STATUS, 1)[0] & FIFO_OFLOW_INT:
            hi, lo = bus.read(addr, FIFO_COUNT_H, 2)
            if ((hi << 8) | lo) >= self._nearly_full:
                return  # it overflowed again (this thread was stopped): the next read says so
            self.overflow_flag_stuck = True  # set again on an empty FIFO: it means nothing
            log.warning("%s at 0x%02x: FIFO overflow flag stuck; relying on the FIFO count",
                        self.variant, addr)

    def read_fifo(self) -> FifoRead:
        if self._unverified is not None:  # last poll's burst, its overflow check failed
            return self._checked(*self._unverified)
        (hi, lo), counted = self.read_count(FIFO_COUNT_H, 2)
        count = (hi << 8) | lo
        if count >= self._nearly_full:
            # (nearly) full: the oldest bytes are being overwritten and frames misalign
            self.reset_fifo()
            return self.nothing(overflowed=True)
        frames = count // FRAME.size
        if frames == 0:
            return self.nothing()
        self._unverified = (self.bus.read(self.address, FIFO_R_W, frames * FRAME.size), counted)
        return self._checked(*self._unverified)

    def _checked(self, raw: bytes, counted: tuple[int, int]) -> FifoRead:
        """Hand over a burst once the overflow flag says it is whole. If reading the flag
        fails, the burst is kept and checked again on the next call (the bus error is
        the sampler's to count and retry), so a glitch there loses nothing; it keeps the
        time of its own count, so it is stamped as if handed over at once."""
        status = self.bus.read(self.address, INT_STATUS, 1)[0]
        self._unverified = None
        if status & FIFO_OFLOW_INT and not self.overflow_flag_stuck:
            # overflowed since the last check (e.g. the reader stalled between the count
            # and the burst): this burst may start mid-frame, so none of it can be trusted
            self.reset_fifo()
            return self.nothing(overflowed=True)
        return FifoRead(raw, self.layout, len(raw) // FRAME.size, count_window_ns=counted)
