"""Register-level emulation of the ICM-42688-P (bank 0): what its driver uses.

Strict where the silicon is: a soft reset keeps the chip off the bus for 1 ms and then
sets RESET_DONE; the first count read after a reset reads 0; for the start-up time
after the sensors are turned on the data is noise (TDK: "first data are noisy") and the
FIFO temperature reads -128 (invalid) until the temperature sensor has started; the
first packet after a rate change carries the header's ODR-change bits; a full FIFO in
stream mode drops its oldest whole packets and sets FIFO_FULL.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array

from edge_recorder.sensors import icm42688 as reg
from edge_recorder.sensors.base import DEG_TO_RAD, STANDARD_GRAVITY_MPS2
from edge_recorder.sensors.emulation.chip import EmulatedChip, clamp_i16
from edge_recorder.sensors.emulation.motion import Vector

ODR_HZ = {1: 32000.0, 2: 16000.0, 3: 8000.0, 4: 4000.0, 5: 2000.0, 6: 1000.0, 7: 200.0,
          8: 100.0, 9: 50.0, 10: 25.0, 11: 12.5, 15: 500.0}
ACCEL_FS_G = {0: 16, 1: 8, 2: 4, 3: 2}
GYRO_FS_DPS = {0: 2000, 1: 1000, 2: 500, 3: 250, 4: 125, 5: 62.5, 6: 31.25, 7: 15.625}
INTF_CONFIG0_RESET = 0x30  # big-endian data and count, count in bytes, SPI+I2C enabled
HEADER_ACCEL_GYRO_TMST = 0x68  # HEADER_ACCEL | HEADER_GYRO | timestamp field (0b10)
HEADER_ODR_CHANGED = 0x03  # HEADER_ODR_ACCEL | HEADER_ODR_GYRO
STARTUP_NS = 40_000_000  # noisy data after the sensors turn on (the driver waits 60 ms)
TEMP_STARTUP_NS = 14_000_000  # Linux INV_ICM42600_TEMP_STARTUP_TIME_MS


class EmulatedIcm42688(EmulatedChip):
    default_address = 0x68
    who_am_i = 0x47
    fifo_capacity_bytes = 2048
    fifo_port = reg.FIFO_DATA
    overflow_unit_bytes = reg.PACKET.size  # stream mode drops whole packets
    reset_ns = 1_000_000
    data_registers = range(0x1D, 0x2B)  # TEMP_DATA1 … GYRO_DATA_Z0
    format_registers = (reg.GYRO_CONFIG0, reg.ACCEL_CONFIG0, reg.FIFO_CONFIG, reg.FIFO_CONFIG1,
                        reg.PWR_MGMT0)

    def power_on_reset(self) -> None:
        super().power_on_reset()
        self.regs[reg.WHO_AM_I] = self.who_am_i
        self.regs[reg.GYRO_CONFIG0] = 0x06
        self.regs[reg.ACCEL_CONFIG0] = 0x06
        self.regs[reg.INTF_CONFIG0] = INTF_CONFIG0_RESET
        self.regs[reg.INT_STATUS] = reg.RESET_DONE_INT
        self.first_count_zero = True  # datasheet quirk: the first count after reset reads 0
        self.timestamp = 0
        self.sensors_on_ns: int | None = None
        self.odr_changed = True

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

    def _since_on_ns(self, t_ns: int) -> int:
        return t_ns - (self.sensors_on_ns if self.sensors_on_ns is not None else t_ns)

    def fifo_frame(self, accel: Vector, gyro: Vector, temp_c: float) -> bytes:
        if not self.fifo_running():
            return b""
        self.timestamp = (self.timestamp + 1) & 0xFFFF
        since_on = self._since_on_ns(self.sample_ns)
        raw = self._raw(accel, gyro)
        if since_on < STARTUP_NS:  # settling: the accelerometer reads a fraction of 1 g
            settle = since_on / STARTUP_NS
            raw = (*(round(v * settle) for v in raw[:3]), *(v + 3000 for v in raw[3:]))
        if since_on < TEMP_STARTUP_NS:
            temp = reg.INVALID_TEMP
        else:
            temp = max(-127, min(127, round((temp_c - reg.TEMP_OFFSET_C)
                                            * reg.FIFO_TEMP_LSB_PER_C)))
        header = HEADER_ACCEL_GYRO_TMST | (HEADER_ODR_CHANGED if self.odr_changed else 0)
        self.odr_changed = False
        return reg.PACKET.pack(header, *raw, temp, self.timestamp)

    def per_sample_frames(self, first_ns: int, period_ns: float) -> int:
        """The start-up packets (noisy data, invalid temperature) and an ODR-change header."""
        settling = 0
        if self.sensors_on_ns is not None:
            settled_ns = self.sensors_on_ns + max(STARTUP_NS, TEMP_STARTUP_NS)
            settling = max(0, math.ceil((settled_ns - first_ns) / period_ns))
        return max(settling, 1 if self.odr_changed else 0)

    def enter_steady_state(self) -> None:
        self.odr_changed = False
        self.sample_ns = (self.sensors_on_ns or 0) + max(STARTUP_NS, TEMP_STARTUP_NS)

    def patch_frames(self, frames: bytearray, count: int) -> None:
        """Each packet's 16-bit timestamp (bytes 14–15, big-endian) counts on by one."""
        first = self.timestamp + 1
        stamps = array("H", [t & 0xFFFF for t in range(first, first + count)]) \
            if first + count > 0x10000 else array("H", range(first, first + count))
        if sys.byteorder == "little":
            stamps.byteswap()
        raw = stamps.tobytes()
        frames[14::reg.PACKET.size] = raw[0::2]
        frames[15::reg.PACKET.size] = raw[1::2]
        self.timestamp = (self.timestamp + count) & 0xFFFF

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
            self.start_reset()
            return
        if register == reg.SIGNAL_PATH_RESET and value & reg.FIFO_FLUSH:
            self.clear_fifo()
            return
        if register == reg.WHO_AM_I:
            return
        if register == reg.PWR_MGMT0 and value & 0x0F and not self.regs[register] & 0x0F:
            self.sensors_on_ns = self.now_ns
        self.regs[register] = value
        if register in (reg.PWR_MGMT0, reg.ACCEL_CONFIG0, reg.GYRO_CONFIG0):
            self.odr_changed = True
            self.restart_sampling()
