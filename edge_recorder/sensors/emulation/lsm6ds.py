"""Register-level emulation of the LSM6DS family: DSOX (tagged FIFO) and DS3 (pattern FIFO).

Strict where the silicon is: a full DSOX FIFO drops its oldest *single* 7-byte word (so
a gyro word can lose its accel partner), reports it live in FIFO_STATUS2.FIFO_OVR_IA and
latched in FIFO_OVR_LATCHED (cleared when read); its first words after the sensors start
are bootstrap samples ≥ 0x7FFD; SW_RESET and BOOT keep the chip off the bus a while.
"""

from __future__ import annotations

import struct

from edge_recorder.sensors import lsm6ds as reg
from edge_recorder.sensors.base import DEG_TO_RAD, STANDARD_GRAVITY_MPS2
from edge_recorder.sensors.emulation.chip import EmulatedChip, clamp_i16
from edge_recorder.sensors.emulation.motion import Vector

ACCEL_FS_G = {0b00: 2, 0b01: 16, 0b10: 4, 0b11: 8}
GYRO_FS_DPS = {0b00: 250, 0b01: 500, 0b10: 1000, 0b11: 2000}


BOOTSTRAP_SAMPLES = 3  # invalid instants after the sensors start (DSOX)
BOOT_NS = 10_000_000  # BOOT (reload trimming) keeps the chip off the bus this long
INVALID_WORD = struct.pack("<3h", 0x7FFE, 0x7FFE, 0x7FFE)
# tag bytes (sensor, 2-bit counter) for counter values 0..3, twice, sliced in patch_frames
GYRO_TAGS = bytes((reg.TAG_GYRO << 3) | (cnt << 1) for cnt in range(4)) * 2
ACCEL_TAGS = bytes((reg.TAG_ACCEL << 3) | (cnt << 1) for cnt in range(4)) * 2


class EmulatedLsm6dsox(EmulatedChip):
    default_address = 0x6A
    who_am_i = 0x6C
    fifo_capacity_bytes = reg.FIFO_BYTES[reg.CHIP_DSOX]
    fifo_port = reg.FIFO_DATA_OUT_TAG
    overflow_unit_bytes = reg.TAGGED_WORD_BYTES  # one word at a time, not a gyro+accel pair
    reset_ns = 50_000  # SW_RESET
    bootstrap_samples = BOOTSTRAP_SAMPLES
    data_registers = range(reg.OUT_TEMP_L, reg.OUTX_L_G + 12)  # temperature, gyro, accel
    format_registers = (reg.CTRL1_XL, reg.CTRL2_G, reg.DS3_FIFO_CTRL3, reg.FIFO_CTRL3,
                        reg.FIFO_CTRL4)  # FIFO_CTRL4 (DSOX) is FIFO_CTRL5 on the DS3

    def power_on_reset(self) -> None:
        super().power_on_reset()
        self.regs[reg.WHO_AM_I] = self.who_am_i
        self.regs[reg.CTRL3_C] = reg.CTRL3_IF_INC
        self.regs[reg.CTRL9_XL] = 0xE0  # DEN_X/Y/Z; I3C enabled
        self.tag_cnt = 0
        self.overrun = False  # latched until FIFO_STATUS2 is read
        self.overwritten = False  # live: full and overwriting
        self.bootstrap_left = self.bootstrap_samples

    def restart_sampling(self) -> None:
        super().restart_sampling()
        self.bootstrap_left = self.bootstrap_samples

    def nominal_period_ns(self) -> float | None:
        code = self.regs[reg.CTRL1_XL] >> 4
        if code not in reg.ODR_CODE_HZ or not self.regs[reg.CTRL2_G] >> 4:
            return None
        return 1e9 / reg.ODR_CODE_HZ[code]

    def raw(self, accel: Vector, gyro: Vector) -> tuple[int, ...]:
        a_fs = ACCEL_FS_G[(self.regs[reg.CTRL1_XL] >> 2) & 3]
        g = self.regs[reg.CTRL2_G]
        g_fs = 125 if g & 0x02 else GYRO_FS_DPS[(g >> 2) & 3]
        a_lsb = reg.ACCEL_MG_PER_LSB[a_fs] * 1e-3 * STANDARD_GRAVITY_MPS2
        g_lsb = reg.GYRO_MDPS_PER_LSB[g_fs] * 1e-3 * DEG_TO_RAD
        return (*(clamp_i16(v / g_lsb) for v in gyro), *(clamp_i16(v / a_lsb) for v in accel))

    def fifo_running(self) -> bool:
        return self.regs[reg.FIFO_CTRL4] & 0x07 == reg.FIFO_MODE_CONTINUOUS and \
            bool(self.regs[reg.FIFO_CTRL3])

    def fifo_frame(self, accel: Vector, gyro: Vector, temp_c: float) -> bytes:
        if not self.fifo_running():
            return b""
        cnt = self.tag_cnt
        self.tag_cnt = (self.tag_cnt + 1) & 3
        gyro_tag = bytes([(reg.TAG_GYRO << 3) | (cnt << 1)])
        accel_tag = bytes([(reg.TAG_ACCEL << 3) | (cnt << 1)])
        if self.bootstrap_left > 0:
            self.bootstrap_left -= 1
            return gyro_tag + INVALID_WORD + accel_tag + INVALID_WORD
        gx, gy, gz, ax, ay, az = self.raw(accel, gyro)
        return gyro_tag + struct.pack("<3h", gx, gy, gz) + accel_tag + struct.pack(
            "<3h", ax, ay, az)

    def frame_size(self) -> int:
        return 2 * reg.TAGGED_WORD_BYTES if self.fifo_running() else 0

    def per_sample_frames(self, first_ns: int, period_ns: float) -> int:
        return self.bootstrap_left

    def enter_steady_state(self) -> None:
        self.bootstrap_left = 0

    def patch_frames(self, frames: bytearray, count: int) -> None:
        """Each instant's gyro and accel words carry the tag counter, counting on mod 4."""
        first = self.tag_cnt
        repeats = count // 4 + 1
        frames[0::2 * reg.TAGGED_WORD_BYTES] = (GYRO_TAGS * repeats)[first:first + count]
        frames[reg.TAGGED_WORD_BYTES::2 * reg.TAGGED_WORD_BYTES] = \
            (ACCEL_TAGS * repeats)[first:first + count]
        self.tag_cnt = (first + count) & 3

    def update_data_registers(self, accel: Vector, gyro: Vector, temp_c: float) -> None:
        self.regs[reg.OUT_TEMP_L:reg.OUT_TEMP_L + 2] = struct.pack(
            "<h", clamp_i16((temp_c - 25.0) * 256))
        self.regs[reg.OUTX_L_G:reg.OUTX_L_G + 12] = struct.pack("<6h", *self.raw(accel, gyro))

    def on_fifo_overflow(self) -> None:
        self.overrun = self.overwritten = True

    def fifo_level(self) -> int:
        return len(self.fifo) // reg.TAGGED_WORD_BYTES

    def read_register(self, register: int) -> int:
        if register == reg.FIFO_STATUS1:
            return self.fifo_level() & 0xFF
        if register == reg.FIFO_STATUS2:
            full = len(self.fifo) + reg.TAGGED_WORD_BYTES > self.fifo_capacity_bytes
            self.overwritten = self.overwritten and full
            value = ((self.fifo_level() >> 8) & 0x03)
            value |= reg.STATUS2_OVERRUN if self.overwritten else 0  # FIFO_OVR_IA: live
            value |= reg.STATUS2_OVR_LATCHED if self.overrun else 0
            self.overrun = False  # FIFO_OVR_LATCHED is cleared by this read
            return value
        return self.regs[register]

    def write_register(self, register: int, value: int) -> None:
        if register == reg.CTRL3_C and value & reg.SW_RESET.encode(1):
            self.start_reset()
            return
        if register == reg.CTRL3_C and value & reg.BOOT.encode(1):
            self.resetting_until_ns = self.clock() + BOOT_NS  # BOOT self-clears
            value &= ~reg.BOOT.encode(1)
        if register == reg.WHO_AM_I:
            return
        self.regs[register] = value
        if register == reg.FIFO_CTRL4 and value & 0x07 == reg.FIFO_MODE_BYPASS:
            self.clear_fifo()
            self.overrun = False
        if register in (reg.CTRL1_XL, reg.CTRL2_G):
            self.restart_sampling()


class EmulatedLsm6ds3(EmulatedLsm6dsox):
    """The DS3: an untagged FIFO of 16-bit words, gyro x y z then accel x y z."""

    who_am_i = 0x69
    fifo_capacity_bytes = reg.DS3_FIFO_BYTES
    fifo_port = reg.DS3_FIFO_DATA_OUT_L
    overflow_unit_bytes = 2
    bootstrap_samples = 0

    def fifo_running(self) -> bool:
        ctrl5 = self.regs[reg.DS3_FIFO_CTRL5]
        return ctrl5 & 0x07 == reg.FIFO_MODE_CONTINUOUS and bool(ctrl5 >> 3) and \
            self.regs[reg.DS3_FIFO_CTRL3] == reg.DS3_NO_DECIMATION

    def fifo_frame(self, accel: Vector, gyro: Vector, temp_c: float) -> bytes:
        if not self.fifo_running():
            return b""
        return struct.pack("<6h", *self.raw(accel, gyro))

    def fifo_level(self) -> int:
        return len(self.fifo) // 2

    def frame_size(self) -> int:
        return 12 if self.fifo_running() else 0

    def patch_frames(self, frames: bytearray, count: int) -> None:
        pass  # no tags in the DS3's FIFO

    def read_register(self, register: int) -> int:
        if register == reg.FIFO_STATUS2:
            return ((self.fifo_level() >> 8) & 0x0F) | (reg.STATUS2_OVERRUN if self.overrun else 0)
        if register == reg.FIFO_STATUS2 + 1:  # FIFO_STATUS3: position in the pattern
            return (self.fifo_removed_bytes // 2) % 6
        if register == reg.FIFO_STATUS2 + 2:  # FIFO_STATUS4
            return 0
        return super().read_register(register)

    # FIFO_CTRL5 (DS3) is at FIFO_CTRL4's address (DSOX) with the mode in the same bits,
    # so the parent's write_register already empties the FIFO on bypass.


class EmulatedLsm6ds3h(EmulatedLsm6ds3):
    """The DS3H: WHO_AM_I 0x69 like the DS3, half its FIFO (Linux max_fifo_size 682)."""

    fifo_capacity_bytes = reg.DS3H_FIFO_BYTES


class EmulatedLsm6ds3trc(EmulatedLsm6ds3):
    who_am_i = 0x6A
    fifo_capacity_bytes = reg.FIFO_BYTES[reg.CHIP_DS3TRC]
