"""MPU-6050 driver against the register-level emulator: what it writes, how it scales."""

from __future__ import annotations

import struct

import pytest

from edge_recorder.errors import SensorNotFound
from edge_recorder.sensors import mpu6050 as reg
from edge_recorder.sensors.base import STANDARD_GRAVITY_MPS2
from edge_recorder.sensors.emulation import EmulatedBus, EmulatedMpu6050
from edge_recorder.sensors.mpu6050 import Mpu6050

T0 = 1_800_000_000_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


def make(rate_hz: float = 200, accel: int = 4, gyro: int = 500, **chip_kw: object):
    clock = FakeClock()
    chip = EmulatedMpu6050(clock=clock, **chip_kw)
    bus = EmulatedBus({0x68: chip}, clock=clock)
    driver = Mpu6050(bus, 0x68, rate_hz=rate_hz, accel_range_g=accel, gyro_range_dps=gyro,
                     sleep=lambda s: None)
    return clock, chip, bus, driver


@pytest.mark.parametrize("rate_hz, divider, dlpf", [(1000, 0, 1), (500, 1, 1), (200, 4, 2),
                                                    (100, 9, 3), (50, 19, 4), (10, 99, 6)])
def test_rate_writes_sample_rate_divider_and_low_pass(rate_hz, divider, dlpf) -> None:
    _, chip, _, driver = make(rate_hz=rate_hz)
    driver.start()
    assert chip.regs[reg.SMPLRT_DIV] == divider
    assert chip.regs[reg.CONFIG] & 0x07 == dlpf
    assert chip.nominal_period_ns() == pytest.approx(1e9 / rate_hz)


@pytest.mark.parametrize("accel, afs", [(2, 0), (4, 1), (8, 2), (16, 3)])
@pytest.mark.parametrize("gyro, fs", [(250, 0), (500, 1), (1000, 2), (2000, 3)])
def test_ranges_write_the_datasheet_field_values(accel, afs, gyro, fs) -> None:
    _, chip, _, driver = make(accel=accel, gyro=gyro)
    driver.start()
    assert chip.regs[reg.ACCEL_CONFIG] == afs << 3
    assert chip.regs[reg.GYRO_CONFIG] == fs << 3


def test_start_wakes_the_chip_and_enables_the_fifo_with_accel_temp_gyro() -> None:
    _, chip, _, driver = make()
    assert chip.regs[reg.PWR_MGMT_1] & 0x40  # asleep at power-on
    driver.start()
    assert chip.regs[reg.PWR_MGMT_1] == 0x01  # awake, PLL on gyro X
    assert chip.regs[reg.FIFO_EN] == 0xF8
    assert chip.regs[reg.USER_CTRL] & 0x40
    assert driver.variant == "MPU-6050"


@pytest.mark.parametrize("accel, lsb_per_g", [(2, 16384), (4, 8192), (8, 4096), (16, 2048)])
def test_raw_one_g_scales_to_standard_gravity(accel, lsb_per_g) -> None:
    _, chip, _, driver = make(accel=accel, gyro=250)
    driver.start()
    # put one hand-made frame in the FIFO: +1 g on z, 131 LSB = 1 °/s on gyro x, 0 °C + 36.53
    chip.fifo += struct.pack(">7h", 0, 0, lsb_per_g, 0, 131, 0, -131)
    read = driver.read_fifo()
    assert read.frames == 1
    ax, ay, az, gx, gy, gz, temp = (c[0] for c in read.columns)
    assert az == pytest.approx(STANDARD_GRAVITY_MPS2)
    assert (ax, ay, gy) == (0, 0, 0)
    assert gx == pytest.approx(0.0174533, rel=1e-5) and gz == pytest.approx(-gx)
    assert temp == pytest.approx(36.53)


def test_fifo_fills_at_the_configured_rate_and_is_read_in_one_burst() -> None:
    clock, chip, bus, driver = make(rate_hz=1000, accel=2)
    driver.start()
    before = bus.transactions
    clock.advance(0.05)
    read = driver.read_fifo()
    assert read.frames == 50
    assert bus.transactions - before == 2  # FIFO_COUNT, then one FIFO burst
    assert sum(read.columns[2]) / 50 == pytest.approx(STANDARD_GRAVITY_MPS2, abs=0.02)


def test_overflow_is_reported_and_the_fifo_restarts_aligned() -> None:
    clock, chip, _, driver = make(rate_hz=1000)
    driver.start()
    clock.advance(0.5)  # 500 frames of 14 bytes into a 1024-byte FIFO
    read = driver.read_fifo()
    assert read.overflowed and read.frames == 0
    clock.advance(0.01)
    read = driver.read_fifo()
    assert not read.overflowed and read.frames == 10
    assert sum(read.columns[2]) / 10 == pytest.approx(STANDARD_GRAVITY_MPS2, abs=0.05)


def test_wrong_chip_says_what_it_found_and_to_check_the_wiring() -> None:
    _, chip, _, driver = make()
    chip.regs[reg.WHO_AM_I] = 0x12
    with pytest.raises(SensorNotFound, match=r"WHO_AM_I=0x12, expected 0x68 \(MPU-6050\).*wiring"):
        driver.start()


def test_missing_chip_is_sensor_not_found_naming_bus_and_address() -> None:
    clock = FakeClock()
    driver = Mpu6050(EmulatedBus({}, clock=clock), 0x69, rate_hz=200, accel_range_g=4,
                     gyro_range_dps=500, bus_name="1")
    with pytest.raises(SensorNotFound, match="bus 1 at address 0x69"):
        driver.start()
