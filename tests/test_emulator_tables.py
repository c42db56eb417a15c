"""The emulators fill their FIFOs from precomputed frame tables (cheap enough for a Pi):
what a driver reads must not show where a table wraps or that values were tabulated."""

from __future__ import annotations

import math
import statistics
import struct

import pytest

from edge_recorder.sensors import icm42688 as icm
from edge_recorder.sensors import lsm6ds as lsm
from edge_recorder.sensors.base import STANDARD_GRAVITY_MPS2
from edge_recorder.sensors.emulation import (
    EmulatedBus,
    EmulatedIcm42688,
    EmulatedLsm6dsox,
    EmulatedMpu6050,
    Rotation,
)
from edge_recorder.sensors.emulation.chip import (
    ACCEL_NOISE_MPS2,
    MAX_TABLE_SAMPLES,
    NOISE_SAMPLES,
)
from edge_recorder.sensors.icm42688 import Icm42688
from edge_recorder.sensors.lsm6ds import Lsm6ds
from edge_recorder.sensors.mpu6050 import Mpu6050
from tests.rig import FakeClock


def make(chip_cls, driver_cls, address, **chip_kw):
    clock = FakeClock()
    chip = chip_cls(clock=clock, **chip_kw)
    bus = EmulatedBus({address: chip}, clock=clock)
    driver = driver_cls(bus, address, rate_hz=1000 if driver_cls is not Lsm6ds else 833.0,
                        accel_range_g=4, gyro_range_dps=500, sleep=clock.advance)
    driver.start()
    return clock, chip, bus, driver


def drain_raw(clock, bus, address, count_register, port, frame_bytes, seconds, poll_s=0.02,
              count_of=lambda raw: (raw[0] << 8) | raw[1]):
    """Raw FIFO bytes read the way a driver would, ``seconds`` of them."""
    out = bytearray()
    for _ in range(round(seconds / poll_s)):
        clock.advance(poll_s)
        n = count_of(bus.read(address, count_register, 2)) // frame_bytes
        if n:
            out += bus.read(address, port, n * frame_bytes)
    return bytes(out)


def test_icm42688_packet_timestamps_count_on_by_one_across_table_wraps_and_16_bit_rollover():
    clock, chip, bus, driver = make(EmulatedIcm42688, Icm42688, 0x68)
    chip.timestamp = 0xFFFF - 1500  # roll over in the middle of the run
    data = drain_raw(clock, bus, 0x68, icm.FIFO_COUNTH, icm.FIFO_DATA, 16, 3.0)
    stamps = [p[-1] for p in icm.PACKET.iter_unpack(data)]
    assert len(stamps) > 2 * NOISE_SAMPLES  # the table wrapped at least twice
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(stamps, stamps[1:]))


def test_lsm6dsox_tag_counters_cycle_without_a_jump_across_table_wraps():
    clock, chip, bus, driver = make(EmulatedLsm6dsox, Lsm6ds, 0x6A)
    data = drain_raw(clock, bus, 0x6A, lsm.FIFO_STATUS1, lsm.FIFO_DATA_OUT_TAG, 14, 3.0,
                     count_of=lambda raw: (((raw[1] << 8) | raw[0]) & 0x3FF) * 7)
    tags = [(data[i] >> 3, (data[i] >> 1) & 3) for i in range(0, len(data), 7)]
    assert len(tags) > 4 * NOISE_SAMPLES
    gyro_cnt = [cnt for tag, cnt in tags[0::2]]
    assert all(tag == lsm.TAG_GYRO for tag, _ in tags[0::2])
    assert all(tag == lsm.TAG_ACCEL for tag, _ in tags[1::2])
    assert [cnt for _, cnt in tags[1::2]] == gyro_cnt  # both words of an instant agree
    assert all((b - a) % 4 == 1 for a, b in zip(gyro_cnt, gyro_cnt[1:]))


def test_a_rotation_turns_smoothly_through_the_table_wrap():
    clock, chip, bus, driver = make(EmulatedMpu6050, Mpu6050, 0x68, noise=False,
                                    motion=Rotation(90.0))
    ay, az, gx = [], [], []
    for _ in range(500):  # 10 s: two and a half turns, the table is one turn
        clock.advance(0.02)
        read = driver.read_fifo()
        ay += read.columns[1]
        az += read.columns[2]
        gx += read.columns[3]
    angles = [math.atan2(y, z) for y, z in zip(ay, az)]
    steps = [(b - a + math.pi) % (2 * math.pi) - math.pi for a, b in zip(angles, angles[1:])]
    expected = math.radians(90.0) / 1000
    assert len(steps) > 9000
    # 1 LSB of a ±4 g accelerometer at 1 g is ~1.2e-4 rad: every step is the turn's own
    assert all(abs(s - expected) < 5e-4 for s in steps)
    assert statistics.fmean(gx) == pytest.approx(math.radians(90.0), rel=0.01)


def test_noise_is_as_specified_and_the_data_registers_show_the_newest_fifo_sample():
    clock, chip, bus, driver = make(EmulatedMpu6050, Mpu6050, 0x68)
    az = []
    for _ in range(250):
        clock.advance(0.02)
        az += driver.read_fifo().columns[2]
    assert statistics.fmean(az) == pytest.approx(STANDARD_GRAVITY_MPS2, abs=0.01)
    assert statistics.stdev(az) == pytest.approx(ACCEL_NOISE_MPS2, rel=0.2)
    clock.advance(0.0105)
    now = clock.now  # the chip itself, at one instant (over the bus, time moves on)
    registers = struct.unpack(">7h", chip.read(0x3B, 14, now))
    hi, lo = chip.read(0x72, 2, now)
    newest = struct.unpack(">7h", chip.read(0x74, (hi << 8) | lo, now)[-14:])
    assert registers == newest


def test_tables_are_bounded_and_rebuilt_only_when_the_configuration_changes():
    clock, chip, bus, driver = make(EmulatedMpu6050, Mpu6050, 0x68,
                                    motion=Rotation(0.01))  # a turn every 10 h
    clock.advance(0.05)
    driver.read_fifo()
    (table,) = chip._tables.values()
    assert table.length == MAX_TABLE_SAMPLES
    for _ in range(3):  # FIFO resets, as after an overflow, reuse the table
        driver.reset_fifo()
        clock.advance(0.05)
        driver.read_fifo()
    assert list(chip._tables.values()) == [table]
    driver.gyro_range_dps = 1000
    driver.start()
    clock.advance(0.05)
    driver.read_fifo()
    assert len(chip._tables) == 2
