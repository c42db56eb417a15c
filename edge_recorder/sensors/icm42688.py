"""TDK ICM-42688-P, read through its FIFO in 16-byte packets.

Register map (bank 0 only) from the Linux ``inv_icm42600`` driver
(``inv_icm42600.h``, ``inv_icm42600_buffer.h``) and the ICM-42688-P datasheet, each
constant checked against its source in ``tests/test_register_tables.py``. A packet is a
header byte, accel x/y/z and gyro x/y/z as big-endian int16, temperature as int8 and a
16-bit timestamp. The header says what the packet holds (bit 7: FIFO empty), which is
how the driver checks its alignment; a packet that does not look like one makes the
driver flush the FIFO and count what was lost.

Start-up as the Linux ``inv_icm42600`` driver and TDK's ``Icm426xxDriver_HL.c`` do it:
soft reset, wait ``INV_ICM42600_RESET_TIME_MS``, check RESET_DONE, disable the SPI
interface on I2C (``UI_SIFS_CFG_SPI_DIS``), configure, turn the sensors on, and discard
what they produce during the gyro start-up time ("first data are noisy"). A FIFO
temperature of -128 (int8 0x80) is the chip's "invalid" and comes out as NaN.
"""

from __future__ import annotations

import struct
from typing import ClassVar

from edge_recorder.errors import SensorError
from edge_recorder.sensors.base import (
    DEG_TO_RAD,
    STANDARD_GRAVITY_MPS2,
    Channel,
    FifoRead,
    FrameLayout,
    ImuDriver,
)
from edge_recorder.sensors.registers import Bits

# Registers (bank 0)
DEVICE_CONFIG = 0x11
FIFO_CONFIG = 0x16
INT_STATUS = 0x2D
FIFO_COUNTH = 0x2E
FIFO_DATA = 0x30
SIGNAL_PATH_RESET = 0x4B
INTF_CONFIG0 = 0x4C
PWR_MGMT0 = 0x4E
GYRO_CONFIG0 = 0x4F
ACCEL_CONFIG0 = 0x50
FIFO_CONFIG1 = 0x5F
WHO_AM_I = 0x75
REG_BANK_SEL = 0x76

# Fields
SOFT_RESET = Bits(1, DEVICE_CONFIG, 0)
FIFO_MODE = Bits(2, FIFO_CONFIG, 6)
GYRO_FS_SEL = Bits(3, GYRO_CONFIG0, 5)
GYRO_ODR = Bits(4, GYRO_CONFIG0, 0)
ACCEL_FS_SEL = Bits(3, ACCEL_CONFIG0, 5)
ACCEL_ODR = Bits(4, ACCEL_CONFIG0, 0)
FIFO_MODE_BYPASS, FIFO_MODE_STREAM = 0, 1
FIFO_FLUSH = 0x02  # SIGNAL_PATH_RESET
FIFO_FULL_INT = 0x02  # INT_STATUS, cleared on read
RESET_DONE_INT = 0x10  # INT_STATUS, set when a soft reset has completed
UI_SIFS_CFG = Bits(2, INTF_CONFIG0, 0)
UI_SIFS_CFG_SPI_DIS = 2
RESET_WAIT_S = 0.001  # Linux INV_ICM42600_RESET_TIME_MS
GYRO_STARTUP_S = 0.060  # Linux INV_ICM42600_GYRO_STARTUP_TIME_MS
INVALID_TEMP = -128  # int8 0x80 in a FIFO packet
PWR_GYRO_ACCEL_LOW_NOISE = 0x0F
FIFO_ACCEL_GYRO_TEMP = 0x07  # FIFO_CONFIG1: ACCEL_EN | GYRO_EN | TEMP_EN
HEADER_EMPTY = 0x80
HEADER_ACCEL_GYRO = 0x60
INVALID = -32768

ODR_CODE = {8000.0: 3, 4000.0: 4, 2000.0: 5, 1000.0: 6, 200.0: 7, 100.0: 8, 50.0: 9,
            25.0: 10, 12.5: 11, 500.0: 15}
ACCEL_FS_CODE = {16: 0, 8: 1, 4: 2, 2: 3}
GYRO_FS_CODE = {2000: 0, 1000: 1, 500: 2, 250: 3, 125: 4}
FIFO_TEMP_LSB_PER_C = 2.07
TEMP_OFFSET_C = 25.0

PACKET = struct.Struct(">B3h3hbH")  # header, accel, gyro, temp, timestamp: 16 bytes


# header byte → 1 where it says "FIFO empty" / where it is not an accel+gyro packet: one
# bytes.translate over a read's headers checks them all at C speed
HEADER_IS_EMPTY = bytes(1 if h & HEADER_EMPTY else 0 for h in range(256))
HEADER_NOT_ACCEL_GYRO = bytes(
    1 if h & HEADER_ACCEL_GYRO != HEADER_ACCEL_GYRO else 0 for h in range(256))
INVALID_BYTES = struct.pack(">h", INVALID)


def frame_layout(accel_range_g: int, gyro_range_dps: int) -> FrameLayout:
    """A packet: header, ax ay az gx gy gz, temp (int8), timestamp; sensitivity 32768/FS."""
    a = accel_range_g / 32768 * STANDARD_GRAVITY_MPS2
    g = gyro_range_dps / 32768 * DEG_TO_RAD
    return FrameLayout(PACKET.format, (
        Channel(1, a), Channel(2, a), Channel(3, a), Channel(4, g), Channel(5, g),
        Channel(6, g), Channel(7, 1 / FIFO_TEMP_LSB_PER_C, TEMP_OFFSET_C, INVALID_TEMP)))


class Icm42688(ImuDriver):
    """ICM-42688-P 6-axis IMU; sensitivity = 32768 / full scale."""

    name: ClassVar[str] = "icm42688"
    default_address: ClassVar[int] = 0x68
    addresses: ClassVar[tuple[int, ...]] = (0x68, 0x69)
    who_am_i_register: ClassVar[int] = WHO_AM_I
    chip_ids: ClassVar[dict[int, str]] = {0x47: "ICM-42688-P"}
    rates_hz: ClassVar[tuple[float, ...]] = tuple(sorted(ODR_CODE))
    accel_ranges_g: ClassVar[tuple[int, ...]] = tuple(sorted(ACCEL_FS_CODE))
    gyro_ranges_dps: ClassVar[tuple[int, ...]] = tuple(sorted(GYRO_FS_CODE))
    fifo_bytes_by_variant: ClassVar[dict[str, int]] = {"ICM-42688-P": 2048}
    frame_bytes: ClassVar[int] = PACKET.size

    def configure(self) -> None:
        bus, addr = self.bus, self.address
        bus.write(addr, REG_BANK_SEL, 0)
        bus.write(addr, DEVICE_CONFIG, SOFT_RESET.encode(1))
        self.sleep(RESET_WAIT_S)
        if not bus.read(addr, INT_STATUS, 1)[0] & RESET_DONE_INT:
            raise SensorError(
                f"{self.name} on I2C bus {self.bus_name} at 0x{addr:02x} did not report "
                "RESET_DONE after a soft reset; check the wiring and the power supply")
        bus.write(addr, REG_BANK_SEL, 0)
        intf = bus.read(addr, INTF_CONFIG0, 1)[0] & ~UI_SIFS_CFG.mask
        self.write_config(INTF_CONFIG0, intf | UI_SIFS_CFG.encode(UI_SIFS_CFG_SPI_DIS))
        odr = ODR_CODE[self.rate_hz]
        self.write_config(GYRO_CONFIG0, GYRO_FS_SEL.encode(GYRO_FS_CODE[self.gyro_range_dps])
                          | GYRO_ODR.encode(odr))
        self.write_config(ACCEL_CONFIG0, ACCEL_FS_SEL.encode(ACCEL_FS_CODE[self.accel_range_g])
                          | ACCEL_ODR.encode(odr))
        self.write_config(FIFO_CONFIG1, FIFO_ACCEL_GYRO_TEMP)
        self.write_config(FIFO_CONFIG, FIFO_MODE.encode(FIFO_MODE_STREAM))
        self.write_config(PWR_MGMT0, PWR_GYRO_ACCEL_LOW_NOISE)
        self.verify_config()
        self.layout = frame_layout(self.accel_range_g, self.gyro_range_dps)
        self.sleep(GYRO_STARTUP_S)  # TDK: "First data are noisy after enabling sensor"
        self.reset_fifo()
        bus.read(addr, FIFO_COUNTH, 2)  # the first count after a reset reads 0: spend it here

    def reset_fifo(self) -> None:
        self.write_restarting(SIGNAL_PATH_RESET, FIFO_FLUSH)  # stream mode stores on
        self.bus.read(self.address, INT_STATUS, 1)  # clear a stale FIFO_FULL

    def read_fifo(self) -> FifoRead:
        bus, addr = self.bus, self.address
        # INT_STATUS, FIFO_COUNTH, FIFO_COUNTL
        (status, hi, lo), counted = self.read_count(INT_STATUS, 3)
        if status & FIFO_FULL_INT:
            self.reset_fifo()
            return self.nothing(overflowed=True)
        size = PACKET.size
        packets = ((hi << 8) | lo) // size
        if packets == 0:
            return self.nothing()
        raw = bus.read(addr, FIFO_DATA, packets * size)
        headers = raw[::size]
        empty = headers.translate(HEADER_IS_EMPTY).find(1)
        if empty >= 0:  # fewer packets than counted
            packets, raw, headers = empty, raw[:empty * size], headers[:empty]
        if headers.translate(HEADER_NOT_ACCEL_GYRO).find(1) >= 0:
            # not on a packet boundary: this read is unusable; counted as a loss
            self.reset_fifo()
            return self.nothing(overflowed=True)
        lost = 0
        if INVALID_BYTES in raw:  # perhaps a sample the chip could not take: drop those packets
            kept = [raw[i:i + size] for i in range(0, len(raw), size)
                    if INVALID not in PACKET.unpack_from(raw, i)[1:7]]
            lost = packets - len(kept)
            raw = b"".join(kept)
        return FifoRead(raw, self.layout, packets - lost, lost_frames=lost,
                        count_window_ns=counted)
