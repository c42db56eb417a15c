"""ST LSM6DS3 / LSM6DS3TR-C / LSM6DSO / LSM6DSOX, one family, read through the FIFO.

Register map from the Linux ``st_lsm6dsx`` driver (``st_lsm6dsx_core.c``
``st_lsm6dsx_sensor_settings[]``, ``st_lsm6dsx_buffer.c``) and ST's datasheets, each
constant checked against its source in ``tests/test_register_tables.py``. The variants
share the control registers and differ in their chip ID and FIFO:

* DSO/DSOX: a *tagged* FIFO of 7-byte words (tag + 6 data bytes). Gyro and accel words
  of one sampling instant carry the same 2-bit tag counter; the driver pairs them,
  keeping an unpaired word for the next read, so a read that ends mid-frame loses nothing.
* DS3/DS3TR-C: an untagged FIFO of 16-bit words in a fixed pattern (gyro x y z, accel
  x y z); FIFO_STATUS3/4 give the position in the pattern, so a misaligned start is
  skipped to the next pattern boundary.

Start-up follows Linux ``st_lsm6dsx_reset_device``: FIFO to bypass, SW_RESET, 50 ms,
BOOT (reload trimming), 50 ms. The DSO/DSOX's first words after it starts sampling are
bootstrap samples (≥ 0x7FFD, Linux ``ST_LSM6DSX_INVALID_SAMPLE``) and are discarded;
its I3C interface is disabled (Adafruit ``_i3c_disable``), as an I2C-only board needs.
The LSM6DS3H answers 0x69 like the LSM6DS3 but has half its FIFO (Linux
``max_fifo_size`` 682 vs 1365 samples): 0x69 is taken to have the smaller one.

Samples are little-endian int16. Temperature is not batched (``temp_c`` is absent).
"""

from __future__ import annotations

import struct
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

# Registers (shared)
FIFO_CTRL3 = 0x09  # DSOX: BDR_GY [7:4], BDR_XL [3:0]
FIFO_CTRL4 = 0x0A  # DSOX: FIFO_MODE [2:0]
DS3_FIFO_CTRL3 = 0x08  # DS3: DEC_FIFO_GYRO [5:3], DEC_FIFO_XL [2:0]
DS3_FIFO_CTRL5 = 0x0A  # DS3: ODR_FIFO [6:3], FIFO_MODE [2:0]
WHO_AM_I = 0x0F
CTRL1_XL = 0x10
CTRL2_G = 0x11
CTRL3_C = 0x12
CTRL9_XL = 0x18
OUT_TEMP_L = 0x20
OUTX_L_G = 0x22
FIFO_STATUS1 = 0x3A
FIFO_STATUS2 = 0x3B
DS3_FIFO_DATA_OUT_L = 0x3E
FIFO_DATA_OUT_TAG = 0x78

# Fields
ODR_XL = Bits(4, CTRL1_XL, 4)
FS_XL = Bits(2, CTRL1_XL, 2)
ODR_G = Bits(4, CTRL2_G, 4)
FS_G = Bits(2, CTRL2_G, 2)
FS_125 = Bits(1, CTRL2_G, 1)
SW_RESET = Bits(1, CTRL3_C, 0)
BOOT = Bits(1, CTRL3_C, 7)
BDU = Bits(1, CTRL3_C, 6)
IF_INC = Bits(1, CTRL3_C, 2)
I3C_DISABLE = Bits(1, CTRL9_XL, 1)  # DSO/DSOX only
CTRL3_BDU = BDU.encode(1)
CTRL3_IF_INC = IF_INC.encode(1)
RESET_WAIT_S = 0.050  # Linux st_lsm6dsx_reset_device: msleep(50) after SW_RESET and BOOT
BOOT_WAIT_S = 0.050
INVALID_SAMPLE = 0x7FFD  # Linux ST_LSM6DSX_INVALID_SAMPLE: bootstrap words read ≥ this
FIFO_MODE_CONTINUOUS = 6
FIFO_MODE_BYPASS = 0
DS3_NO_DECIMATION = 0b001_001  # gyro and accel data sets, both at the FIFO rate
STATUS2_OVERRUN = 0x40  # DS3: FIFO full and overwritten (FIFO_OVER_RUN)
STATUS2_OVR_LATCHED = 0x08  # DSOX: an overrun since the last read of FIFO_STATUS2
DSOX_DIFF_MASK = 0x3FF  # words, in STATUS1 + STATUS2[1:0]
DS3_DIFF_MASK = 0xFFF  # 16-bit words, in STATUS1 + STATUS2[3:0]

TAG_GYRO = 0x01
TAG_ACCEL = 0x02
TAGGED_WORD_BYTES = 7

ODR_CODE_HZ = {1: 12.5, 2: 26.0, 3: 52.0, 4: 104.0, 5: 208.0, 6: 416.0, 7: 833.0,
               8: 1667.0, 9: 3333.0, 10: 6667.0}
ODR_CODE = {hz: code for code, hz in ODR_CODE_HZ.items()}
ACCEL_FS_CODE = {2: 0b00, 16: 0b01, 4: 0b10, 8: 0b11}
ACCEL_MG_PER_LSB = {2: 0.061, 4: 0.122, 8: 0.244, 16: 0.488}
GYRO_FS_CODE = {250: 0b00, 500: 0b01, 1000: 0b10, 2000: 0b11}
GYRO_MDPS_PER_LSB = {125: 4.375, 250: 8.75, 500: 17.5, 1000: 35.0, 2000: 70.0}

CHIP_DS3, CHIP_DS3TRC, CHIP_DSOX = "LSM6DS3", "LSM6DS3TR-C", "LSM6DSO/DSOX"
DS3_SAMPLE_BYTES = 6  # one x/y/z triple; Linux ST_LSM6DSX_SAMPLE_SIZE
# Linux st_lsm6dsx_sensor_settings[] .max_fifo_size in samples: 1365 (LSM6DS3), 682 (LSM6DS3H,
# both WHO_AM_I 0x69; and every 0x6a part, LSM6DS3TR-C among them), 512 tagged words (0x6c)
DS3_FIFO_BYTES, DS3H_FIFO_BYTES = 1365 * DS3_SAMPLE_BYTES, 682 * DS3_SAMPLE_BYTES
FIFO_BYTES = {CHIP_DS3: DS3H_FIFO_BYTES, CHIP_DS3TRC: 682 * DS3_SAMPLE_BYTES,
              CHIP_DSOX: 512 * TAGGED_WORD_BYTES}
"""What the driver assumes per WHO_AM_I: 0x69 may be a DS3H, so the smaller FIFO."""

DS3_FRAME = struct.Struct("<6h")  # gyro x y z, accel x y z
TAGGED_PAIR = "<x3hx3h"  # two tagged words of one instant, tags skipped
# tag byte → b"G" (gyro word), b"A" (accel word) or b"-" (anything else), and → its 2-bit
# counter: one bytes.translate over a read's tags checks the whole read at C speed
TAG_KIND = bytes(ord("G") if b >> 3 == TAG_GYRO else ord("A") if b >> 3 == TAG_ACCEL
                 else ord("-") for b in range(256))
TAG_COUNTER = bytes((b >> 1) & 0x3 for b in range(256))
# a bootstrap sample's first axis is 0x7FFD..0x7FFF: its high byte (a word's third byte) is
# 0x7F; a read with such a byte goes the slow way, which checks each pair's first axis exactly
BOOTSTRAP_HIGH_BYTE = 0x7F


def frame_layouts(accel_range_g: int, gyro_range_dps: int) -> dict[str, FrameLayout]:
    """Frame layouts by word order: tagged pairs gyro-first ("GA") or accel-first ("AG"),
    and the DS3 pattern ("DS3"). mg/LSB and mdps/LSB from the datasheets' sensitivity."""
    a = ACCEL_MG_PER_LSB[accel_range_g] * 1e-3 * STANDARD_GRAVITY_MPS2
    g = GYRO_MDPS_PER_LSB[gyro_range_dps] * 1e-3 * DEG_TO_RAD
    gyro_first = (Channel(3, a), Channel(4, a), Channel(5, a),
                  Channel(0, g), Channel(1, g), Channel(2, g))
    accel_first = (Channel(0, a), Channel(1, a), Channel(2, a),
                   Channel(3, g), Channel(4, g), Channel(5, g))
    return {"GA": FrameLayout(TAGGED_PAIR, gyro_first),
            "AG": FrameLayout(TAGGED_PAIR, accel_first),
            "DS3": FrameLayout(DS3_FRAME.format, gyro_first)}


class Lsm6ds(ImuDriver):
    """The LSM6DS family. Rates are the chip's ODR codes (12.5 … 6667 Hz)."""

    name: ClassVar[str] = "lsm6dsox"
    default_address: ClassVar[int] = 0x6A
    addresses: ClassVar[tuple[int, ...]] = (0x6A, 0x6B)
    who_am_i_register: ClassVar[int] = WHO_AM_I
    chip_ids: ClassVar[dict[int, str]] = {0x69: CHIP_DS3, 0x6A: CHIP_DS3TRC, 0x6C: CHIP_DSOX}
    rates_hz: ClassVar[tuple[float, ...]] = tuple(ODR_CODE_HZ.values())
    accel_ranges_g: ClassVar[tuple[int, ...]] = (2, 4, 8, 16)
    gyro_ranges_dps: ClassVar[tuple[int, ...]] = (125, 250, 500, 1000, 2000)
    fifo_bytes_by_variant: ClassVar[dict[str, int]] = FIFO_BYTES
    frame_bytes: ClassVar[int] = 2 * TAGGED_WORD_BYTES
    has_temperature: ClassVar[bool] = False
    default_rate_hz: ClassVar[float] = 208.0

    @property
    def fifo_frames(self) -> int:
        if self.variant in (CHIP_DS3, CHIP_DS3TRC):
            return self.fifo_bytes // DS3_FRAME.size
        return self.fifo_bytes // self.frame_bytes

    @property
    def tagged(self) -> bool:
        return self.variant == CHIP_DSOX

    def configure(self) -> None:
        bus, addr = self.bus, self.address
        self._fifo_mode(FIFO_MODE_BYPASS)  # Linux: flush before reset, or INT1 may pick I3C
        bus.write(addr, CTRL3_C, SW_RESET.encode(1))
        self.sleep(RESET_WAIT_S)
        bus.write(addr, CTRL3_C, BOOT.encode(1) | CTRL3_IF_INC)
        self.sleep(BOOT_WAIT_S)
        self.write_config(CTRL3_C, CTRL3_BDU | CTRL3_IF_INC)
        if self.tagged:
            ctrl9 = bus.read(addr, CTRL9_XL, 1)[0]
            self.write_config(CTRL9_XL, ctrl9 | I3C_DISABLE.encode(1))
        odr = ODR_CODE[self.rate_hz]
        accel = ODR_XL.encode(odr) | FS_XL.encode(ACCEL_FS_CODE[self.accel_range_g])
        if self.gyro_range_dps == 125:
            gyro = ODR_G.encode(odr) | FS_125.encode(1)
        else:
            gyro = ODR_G.encode(odr) | FS_G.encode(GYRO_FS_CODE[self.gyro_range_dps])
        self.write_config(CTRL1_XL, accel)
        self.write_config(CTRL2_G, gyro)
        self.verify_config()
        self._layouts = frame_layouts(self.accel_range_g, self.gyro_range_dps)
        self.layout = self._layouts["GA" if self.tagged else "DS3"]
        self._pending: dict[int, dict[int, bytes]] = {}
        self._last_cnt: int | None = None
        self.reset_fifo()

    def _fifo_mode(self, mode: int) -> None:
        """Bypass (empty, storing nothing) or continuous mode (storing: the write after
        which it stores again is timed, :meth:`write_restarting`)."""
        if self.tagged:
            register, value = FIFO_CTRL4, mode
        else:
            register, value = DS3_FIFO_CTRL5, ((ODR_CODE[self.rate_hz] if mode else 0) << 3) | mode
        if mode == FIFO_MODE_CONTINUOUS:
            self.write_restarting(register, value)
        else:
            self.bus.write(self.address, register, value)

    def reset_fifo(self) -> None:
        """Empty the FIFO (bypass mode) and restart it in continuous mode."""
        bus, addr = self.bus, self.address
        odr = ODR_CODE[self.rate_hz]
        self._fifo_mode(FIFO_MODE_BYPASS)
        if self.tagged:
            bus.write(addr, FIFO_CTRL3, (odr << 4) | odr)
        else:
            bus.write(addr, DS3_FIFO_CTRL3, DS3_NO_DECIMATION)
        self._fifo_mode(FIFO_MODE_CONTINUOUS)
        if self.tagged:
            bus.read(addr, FIFO_STATUS2, 1)  # clear a latched overrun from before
        self._pending = {}
        self._last_cnt = None

    def read_fifo(self) -> FifoRead:
        return self._read_tagged() if self.tagged else self._read_pattern()

    # --- DSO/DSOX: tagged words -------------------------------------------------------
    def _read_tagged(self) -> FifoRead:
        (s1, s2), counted = self.read_count(FIFO_STATUS1, 2)
        if s2 & STATUS2_OVR_LATCHED:  # words were overwritten since the last status read
            self.reset_fifo()
            return self.nothing(overflowed=True)
        words = ((s2 << 8) | s1) & DSOX_DIFF_MASK
        if words == 0:
            return self.nothing()
        return self.tagged_words(
            self.bus.read(self.address, FIFO_DATA_OUT_TAG, words * TAGGED_WORD_BYTES), counted)

    def tagged_words(self, data: bytes, counted: tuple[int, int] | None = None) -> FifoRead:
        """What a burst of tagged words holds (``counted``: when its count was latched,
        :attr:`FifoRead.count_window_ns`). The usual burst (whole pairs in one order,
        counters matching, nothing that may be a bootstrap sample, nothing waiting from the
        last read) is checked with a few C-speed bytes operations and handed on as it is;
        anything else is paired word by word."""
        tags = data[::TAGGED_WORD_BYTES]
        kinds = tags.translate(TAG_KIND)
        order = kinds[:2].decode("ascii")
        if not self._pending and order in ("GA", "AG") and len(kinds) % 2 == 0 \
                and kinds == kinds[:2] * (len(kinds) // 2) \
                and tags[::2].translate(TAG_COUNTER) == tags[1::2].translate(TAG_COUNTER) \
                and BOOTSTRAP_HIGH_BYTE not in data[2::TAGGED_WORD_BYTES]:
            self._last_cnt = tags[-1] >> 1 & 0x3
            return FifoRead(data, self._layouts[order], len(kinds) // 2, count_window_ns=counted)
        return self._read_tagged_word_by_word(data, counted)

    def _read_tagged_word_by_word(self, data: bytes,
                                  counted: tuple[int, int] | None = None) -> FifoRead:
        """Pair the words one by one (Linux ``st_lsm6dsx_read_tagged_fifo``): a word whose
        partner never came, and a bootstrap sample, are dropped and counted; a word whose
        partner may come with the next read waits for it. Pairs out as gyro-first frames."""
        out = bytearray()
        lost = 0
        pending = self._pending
        for i in range(0, len(data), TAGGED_WORD_BYTES):
            tag_byte = data[i]
            tag, cnt = tag_byte >> 3, (tag_byte >> 1) & 0x3
            if tag not in (TAG_GYRO, TAG_ACCEL):
                continue  # timestamp, temperature, sensor-hub words: not batched by us
            if self._last_cnt is not None and cnt != self._last_cnt and pending:
                lost += len(pending)  # the partner word of an instant never came
                pending.clear()
            self._last_cnt = cnt
            pair = pending.setdefault(cnt, {})
            pair[tag] = data[i:i + TAGGED_WORD_BYTES]
            if len(pair) == 2:
                del pending[cnt]
                accel, gyro = pair[TAG_ACCEL], pair[TAG_GYRO]
                if int.from_bytes(accel[1:3], "little", signed=True) >= INVALID_SAMPLE or \
                        int.from_bytes(gyro[1:3], "little", signed=True) >= INVALID_SAMPLE:
                    lost += 1  # a bootstrap sample (Linux checks the first axis, as here)
                    continue
                out += gyro
                out += accel
        return FifoRead(bytes(out), self._layouts["GA"], len(out) // self.frame_bytes,
                        lost_frames=lost, count_window_ns=counted)

    # --- DS3/DS3TR-C: a fixed pattern of 16-bit words ------------------------------------
    def _read_pattern(self) -> FifoRead:
        (s1, s2, p3, p4), counted = self.read_count(FIFO_STATUS1, 4)
        if s2 & STATUS2_OVERRUN:
            self.reset_fifo()
            return self.nothing(overflowed=True)
        words = ((s2 << 8) | s1) & DS3_DIFF_MASK
        position = ((p4 & 0x03) << 8) | p3  # next word's index in the 6-word pattern
        skip = (6 - position) % 6
        if words < skip + 6:
            return self.nothing()
        frames = (words - skip) // 6
        data = self.bus.read(self.address, DS3_FIFO_DATA_OUT_L, (skip + frames * 6) * 2)[skip * 2:]
        return FifoRead(data, self.layout, frames, lost_frames=1 if skip else 0,
                        count_window_ns=counted)
