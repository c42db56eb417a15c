"""The ICM-42688-P against a strict emulator: what the field-proven drivers do.

References (independent of this code): Linux ``drivers/iio/imu/inv_icm42600/``
(``inv_icm42600.h``, ``inv_icm42600_core.c``, ``inv_icm42600_buffer.h``) and TDK's
``Icm426xxDriver_HL.c``.
"""

from __future__ import annotations

import math

import pytest

from edge_recorder.errors import SensorError
from edge_recorder.sensors import icm42688 as reg
from edge_recorder.sensors.emulation import EmulatedBus, EmulatedIcm42688, Faults
from edge_recorder.sensors.icm42688 import Icm42688
from tests.rig import FakeClock, norms_g


def make(rate_hz: float = 1000, **chip_kw):
    clock = FakeClock()
    chip = EmulatedIcm42688(clock=clock, **chip_kw)
    bus = EmulatedBus({0x68: chip}, clock=clock)
    driver = Icm42688(bus, 0x68, rate_hz=rate_hz, accel_range_g=4, gyro_range_dps=500,
                      sleep=clock.advance)
    return clock, chip, bus, driver


def test_spi_is_disabled_on_i2c_keeping_the_interface_defaults() -> None:
    # Linux inv_icm42600.h: INV_ICM42600_REG_INTF_CONFIG0 0x004C, UI_SIFS_CFG GENMASK(1, 0),
    # INV_ICM42600_INTF_CONFIG0_UI_SIFS_CFG_SPI_DIS = 2 (set by inv_icm42600_i2c.c).
    _, chip, _, driver = make()
    driver.start()
    assert chip.regs[0x4C] == 0x30 | 0x02


def test_start_up_data_is_discarded() -> None:
    # TDK Icm426xxDriver_HL.c: "First data are noisy after enabling sensor"; Linux waits
    # INV_ICM42600_GYRO_STARTUP_TIME_MS (60) after turning the gyro on.
    clock, chip, _, driver = make()
    driver.start()
    reads = []
    for _ in range(10):
        clock.advance(0.01)
        reads.append(driver.read_fifo())
    samples = [n for r in reads for n in norms_g(r)]
    assert len(samples) > 80
    assert all(0.9 < n < 1.1 for n in samples), min(samples)
    gyro = [abs(v) for r in reads for v in r.columns[3]]
    assert max(gyro) < 0.02


def test_invalid_fifo_temperature_is_nan_not_minus_37_c() -> None:
    # Linux inv_icm42600_buffer.h: the FIFO temperature is an int8; the chip writes -128
    # (0x80) when it has none; as a value it would read -128 / 2.07 + 25 = -36.8 °C.
    clock, chip, _, driver = make()
    driver.start()
    clock.advance(0.01)
    chip.advance(clock())
    chip.fifo += reg.PACKET.pack(0x68, 0, 0, 8192, 0, 0, 0, reg.INVALID_TEMP, 1)
    read = driver.read_fifo()
    temps = read.columns[6]
    assert math.isnan(temps[-1])
    assert all(24 < t < 26 for t in temps[:-1])


def test_reset_done_is_checked_after_the_soft_reset() -> None:
    # Linux inv_icm42600_core.c inv_icm42600_setup(): soft reset, msleep(RESET_TIME_MS),
    # then INT_STATUS must show INV_ICM42600_INT_STATUS_RESET_DONE (BIT(4)).
    _, chip, _, driver = make(faults=Faults(lost_writes={reg.DEVICE_CONFIG: 1}))
    chip.regs[reg.INT_STATUS] = 0  # RESET_DONE already read once since power-on
    with pytest.raises(SensorError, match="RESET_DONE"):
        driver.start()
    driver.start()  # the reset arrives this time


def test_a_lost_power_write_is_caught_by_reading_the_configuration_back() -> None:
    _, chip, _, driver = make(faults=Faults(lost_writes={reg.PWR_MGMT0: 1}))
    with pytest.raises(SensorError, match=r"register 0x4e reads back 0x00, 0x0f was written"):
        driver.start()


def test_overflow_drops_whole_packets_and_is_reported() -> None:
    # inv_icm42600.h: FIFO_CONFIG stream mode; INT_STATUS_FIFO_FULL BIT(1);
    # INV_ICM42600_FIFO_WATERMARK_MAX "(2048 - 12 * 16)": 2048 bytes of 16-byte packets.
    clock, chip, _, driver = make()
    driver.start()
    driver.read_fifo()
    clock.advance(0.5)
    read = driver.read_fifo()
    assert read.overflowed and read.frames == 0
    clock.advance(0.02)
    read = driver.read_fifo()
    assert not read.overflowed and read.frames >= 19
    assert all(0.9 < n < 1.1 for n in norms_g(read))
