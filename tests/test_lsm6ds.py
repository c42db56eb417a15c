"""The LSM6DS family against a strict emulator: what the field-proven drivers do.

References (independent of this code): Linux ``drivers/iio/imu/st_lsm6dsx/`` (file and
symbol named per test), Adafruit_CircuitPython_LSM6DS, the Arduino_LSM6DSOX library.
"""

from __future__ import annotations

import pytest

from edge_recorder.errors import SensorError
from edge_recorder.sampling.sampler import poll_interval_s
from edge_recorder.sensors import lsm6ds as reg
from edge_recorder.sensors.emulation import (
    EmulatedBus,
    EmulatedLsm6ds3,
    EmulatedLsm6ds3h,
    EmulatedLsm6dsox,
    Faults,
)
from edge_recorder.sensors.lsm6ds import Lsm6ds
from tests.rig import FakeClock, norms_g


def make(chip_cls=EmulatedLsm6dsox, rate_hz: float = 833, bus_cls=EmulatedBus, **chip_kw):
    clock = FakeClock()
    chip = chip_cls(clock=clock, **chip_kw)
    bus = bus_cls({0x6A: chip}, clock=clock)
    driver = Lsm6ds(bus, 0x6A, rate_hz=rate_hz, accel_range_g=2, gyro_range_dps=250,
                    sleep=clock.advance)
    return clock, chip, bus, driver


def test_reset_is_sw_reset_50_ms_boot_50_ms_after_flushing_the_fifo() -> None:
    # Linux st_lsm6dsx_core.c st_lsm6dsx_reset_device(): st_lsm6dsx_flush_fifo, SW_RESET
    # (reset.addr 0x12 BIT(0)), msleep(50), BOOT (boot.addr 0x12 BIT(7)), msleep(50).
    clock, chip, bus, driver = make()
    events: list[tuple] = []
    real_write = bus.write

    def write(address: int, register: int, value: int) -> None:
        events.append(("write", register, value))
        real_write(address, register, value)

    bus.write = write  # type: ignore[method-assign]
    driver.sleep = lambda s: (events.append(("sleep", s)), clock.advance(s))  # type: ignore
    driver.start()
    assert events[0] == ("write", reg.FIFO_CTRL4, reg.FIFO_MODE_BYPASS)
    assert events[1] == ("write", reg.CTRL3_C, 0x01)
    assert events[2][0] == "sleep" and events[2][1] >= 0.05
    assert events[3][:2] == ("write", reg.CTRL3_C) and events[3][2] & 0x80
    assert events[4][0] == "sleep" and events[4][1] >= 0.05


def test_dsox_disables_i3c_and_keeps_the_other_ctrl9_bits() -> None:
    # Adafruit_CircuitPython_LSM6DS lsm6dsox.py: _i3c_disable = RWBit(_LSM6DS_CTRL9_XL, 1),
    # set in __init__; CTRL9_XL is 0x18 (st_lsm6dsx shub/i3c settings use the same map).
    _, chip, _, driver = make()
    driver.start()
    assert chip.regs[0x18] == 0xE0 | 0x02


@pytest.mark.parametrize("rate_hz", [104, 833, 1667])
def test_dsox_bootstrap_samples_are_discarded_not_recorded(rate_hz) -> None:
    # Linux st_lsm6dsx_buffer.c st_lsm6dsx_push_tagged_data(): "invalid sample during
    # bootstrap phase" when the value is >= ST_LSM6DSX_INVALID_SAMPLE (0x7ffd).
    clock, chip, _, driver = make(rate_hz=rate_hz)
    driver.start()
    reads = []
    for _ in range(20):
        clock.advance(0.02)
        reads.append(driver.read_fifo())
    assert sum(r.lost_frames for r in reads) == 3  # the emulator's bootstrap instants
    samples = [n for r in reads for n in norms_g(r)]
    assert samples and all(0.9 < n < 1.1 for n in samples), max(samples)


class StallAfterStatusBus(EmulatedBus):
    """The reader is descheduled between reading FIFO_STATUS and the burst."""

    stalls: list[float] = []

    def read(self, address: int, register: int, length: int) -> bytes:
        data = super().read(address, register, length)
        if register == reg.FIFO_STATUS1 and self.stalls:
            self.clock.advance(self.stalls.pop(0))  # type: ignore[attr-defined]
        return data


def test_dsox_overrun_during_a_stall_is_caught_by_the_latched_flag() -> None:
    # LSM6DSOX FIFO_STATUS2 (3Bh): bit 6 FIFO_OVR_IA is live (FIFO full now), bit 3
    # FIFO_OVR_LATCHED stays set until the register is read (Arduino_LSM6DSOX
    # LSM6DSOXFIFO.cpp readStatus: FIFO_OVR_LATCHED = status2 & 0x08). After a stall the
    # burst empties the FIFO, so only the latched bit still tells the next read.
    clock, chip, bus, driver = make(bus_cls=StallAfterStatusBus)
    driver.start()
    driver.read_fifo()
    bus.stalls = [0.0, 0.5, 0.0, 0.0, 0.6]
    reads = []
    for _ in range(12):
        clock.advance(0.02)
        reads.append(driver.read_fifo())
    assert sum(r.overflowed for r in reads) == 2
    samples = [n for r in reads for n in norms_g(r)]
    assert samples and all(0.9 < n < 1.1 for n in samples)


def test_dsox_drops_single_words_so_a_pair_can_lose_its_partner() -> None:
    # A full DSOX FIFO overwrites its oldest 7-byte word: the head can be an accel word
    # whose gyro partner is gone. The driver pairs words by their tag counter.
    clock, chip, _, driver = make(rate_hz=104)
    driver.start()
    clock.advance(0.5)
    chip.advance(clock())
    chip.pop_fifo(reg.TAGGED_WORD_BYTES)  # as if the oldest word had been overwritten
    read = driver.read_fifo()
    assert read.lost_frames >= 1 and read.frames >= 40
    assert all(0.9 < n < 1.1 for n in norms_g(read))


@pytest.mark.parametrize("chip_cls", [EmulatedLsm6ds3h, EmulatedLsm6ds3])
def test_who_am_i_0x69_is_polled_for_the_ds3h_4_kb_fifo(chip_cls) -> None:
    # Linux st_lsm6dsx_core.c st_lsm6dsx_sensor_settings[]: .wai = 0x69 is both the
    # LSM6DS3 (.max_size = 1365 samples) and the LSM6DS3H (.max_size = 682): WHO_AM_I
    # cannot tell them apart, so the driver must poll for the smaller, 682 × 6 ≈ 4 KB.
    clock, chip, _, driver = make(chip_cls=chip_cls, rate_hz=1667)
    driver.start()
    assert driver.fifo_frames == 4096 // 12
    ds3h_fill_s = 4096 / 12 / 1667
    assert poll_interval_s([driver]) <= ds3h_fill_s / 3
    reads = [driver.read_fifo() for _ in range(1)]
    for _ in range(30):  # at the product's poll interval, a late poll now and then
        clock.advance(poll_interval_s([driver]) * 2)
        reads.append(driver.read_fifo())
    assert not any(r.overflowed for r in reads)


def test_odr_codes_8_to_10_are_1667_3333_6667_hz() -> None:
    # ST's own C driver (lsm6dso_reg.h, STMicroelectronics/lsm6dso-pid) enum lsm6dso_odr_xl_t:
    # LSM6DSO_XL_ODR_1667Hz = 8, _3333Hz = 9, _6667Hz = 10 (the datasheet's "1.66 kHz" etc.
    # are these rounded). Linux st_lsm6dsx's odr_avl[] stops at {833000, 0x07}, so it
    # cannot be the reference for codes 8-10; the timebase needs the nominal period, and
    # ST's names give it: 1667 = 6667 / 4, 3333 = 6667 / 2.
    assert {code: reg.ODR_CODE_HZ[code] for code in (8, 9, 10)} == {
        8: 1667.0, 9: 3333.0, 10: 6667.0}
    clock, chip, _, driver = make(rate_hz=1667)
    driver.start()
    assert chip.regs[reg.CTRL1_XL] >> 4 == 8


def test_a_lost_odr_write_is_caught_by_reading_the_configuration_back() -> None:
    _, chip, _, driver = make(faults=Faults(lost_writes={reg.CTRL1_XL: 1}))
    with pytest.raises(SensorError, match=r"register 0x10 reads back 0x00"):
        driver.start()
    driver.start()
    assert chip.regs[reg.CTRL1_XL] >> 4 == 7
