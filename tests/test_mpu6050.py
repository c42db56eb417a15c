"""MPU-6050 driver against the register-level emulator: what it writes, how it scales."""

from __future__ import annotations

import math
import struct

import pytest

from edge_recorder.errors import SensorError, SensorNotFound
from edge_recorder.sensors import mpu6050 as reg
from edge_recorder.sensors.base import STANDARD_GRAVITY_MPS2
from edge_recorder.sensors.emulation import (
    EmulatedBus,
    EmulatedMpu6050,
    EmulatedMpu9250,
    EmulatedMpu9255,
    Faults,
)
from edge_recorder.sensors.mpu6050 import Mpu6050

T0 = 1_800_000_000_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


def make(rate_hz: float = 200, accel: int = 4, gyro: int = 500, *,
         chip_cls: type[EmulatedMpu6050] = EmulatedMpu6050, bus_cls: type = EmulatedBus,
         **chip_kw: object):
    clock = FakeClock()
    chip = chip_cls(clock=clock, **chip_kw)
    bus = bus_cls({0x68: chip}, clock=clock)
    driver = Mpu6050(bus, 0x68, rate_hz=rate_hz, accel_range_g=accel, gyro_range_dps=gyro,
                     sleep=clock.advance)
    return clock, chip, bus, driver


# DLPF per rate as Linux inv_mpu_core.c inv_mpu6050_set_lpf chooses (bandwidth ≤ rate / 2;
# bandwidths per DLPF_CFG: MPU-6000/6050 Register Map rev 4.2 §4.3 CONFIG); 40 and 20 Hz
# are where "≤" and "<" differ. Divider: §4.2 SMPLRT_DIV, rate = 1 kHz / (1 + divider).
@pytest.mark.parametrize("rate_hz, divider, dlpf", [(1000, 0, 1), (500, 1, 1), (200, 4, 2),
                                                    (100, 9, 3), (50, 19, 4), (40, 24, 4),
                                                    (20, 49, 5), (10, 99, 6)])
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
    chip.advance(chip.now_ns)  # what was due by now (bus time) is in the FIFO
    # the newest frame, hand-made: +1 g on z, 131 LSB = 1 °/s on gyro x, 0 °C + 36.53
    chip.fifo += struct.pack(">7h", 0, 0, lsb_per_g, 0, 131, 0, -131)
    read = driver.read_fifo()
    ax, ay, az, gx, gy, gz, temp = (c[-1] for c in read.columns)
    assert az == pytest.approx(STANDARD_GRAVITY_MPS2)
    assert (ax, ay, gy) == (0, 0, 0)
    assert gx == pytest.approx(0.0174533, rel=1e-5) and gz == pytest.approx(-gx)
    assert temp == pytest.approx(36.53, abs=0.001)


def test_fifo_fills_at_the_configured_rate_and_is_read_in_one_burst() -> None:
    clock, chip, bus, driver = make(rate_hz=1000, accel=2)
    driver.start()
    before = bus.transactions
    clock.advance(0.05)
    read = driver.read_fifo()
    assert read.frames == 50
    assert bus.transactions - before == 3  # FIFO_COUNT, one FIFO burst, INT_STATUS
    assert sum(read.columns[2]) / 50 == pytest.approx(STANDARD_GRAVITY_MPS2, abs=0.02)


def test_overflow_is_reported_and_the_fifo_restarts_aligned() -> None:
    clock, chip, _, driver = make(rate_hz=1000)
    driver.start()
    clock.advance(0.5)  # 500 frames of 14 bytes into a 1024-byte FIFO
    read = driver.read_fifo()
    assert read.overflowed and read.frames == 0
    clock.advance(0.01)
    read = driver.read_fifo()
    assert not read.overflowed and 9 <= read.frames <= 10  # restarted at the reset's bus time
    assert sum(read.columns[2]) / read.frames == pytest.approx(STANDARD_GRAVITY_MPS2, abs=0.05)


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


# --- what real parts do that the first emulator did not (issue 10, findings 1-4) ---------

def norms_g(read) -> list[float]:
    ax, ay, az = read.columns[:3]
    return [math.sqrt(x * x + y * y + z * z) / STANDARD_GRAVITY_MPS2
            for x, y, z in zip(ax, ay, az, strict=True)]


def poll_with_stalls(clock, driver, polls: int, stall_every: int, stall_s: float,
                     poll_s: float = 0.01):
    """Poll like the sampler, with the reader stalled now and then; every read returned."""
    reads = []
    for i in range(polls):
        clock.advance(stall_s if i % stall_every == stall_every - 1 else poll_s)
        reads.append(driver.read_fifo())
    return reads


def test_mpu9250_has_a_512_byte_fifo_and_its_overflow_never_misaligns_frames() -> None:
    # Linux inv_mpu_core.c hw_info[]: MPU9250 .fifo_size = 512 (MPU6050: 1024). A driver
    # assuming 1024 never sees the 512-byte FIFO as full; after it wraps (512 is not a
    # multiple of 14) every frame is misaligned and az reads garbage.
    clock, chip, _, driver = make(rate_hz=1000, accel=2, chip_cls=EmulatedMpu9250)
    driver.start()
    assert driver.variant == "MPU-9250" and driver.fifo_frames == 512 // 14
    reads = poll_with_stalls(clock, driver, polls=60, stall_every=10, stall_s=0.08)
    assert sum(r.overflowed for r in reads) == 6  # every stall noticed
    samples = [n for r in reads for n in norms_g(r)]
    assert len(samples) > 400
    assert all(0.9 < n < 1.1 for n in samples)


class StallAfterCountBus(EmulatedBus):
    """The reader is descheduled right after reading FIFO_COUNT (once per ``stalls``)."""

    stalls: list[float] = []

    def read(self, address: int, register: int, length: int) -> bytes:
        data = super().read(address, register, length)
        if register == reg.FIFO_COUNT_H and self.stalls:
            self.clock.advance(self.stalls.pop(0))  # type: ignore[attr-defined]
        return data


@pytest.mark.parametrize("chip_cls", [EmulatedMpu6050, EmulatedMpu9250])
def test_overflow_between_the_count_read_and_the_burst_is_caught(chip_cls) -> None:
    # The FIFO overflows while the reader is stalled between reading the count and
    # reading the data: the burst then starts mid-frame. Linux inv_mpu_ring.c keeps a
    # 3-frame margin; the overflow flag (INT_STATUS 0x3A bit 4, Linux
    # INV_MPU6050_BIT_FIFO_OVERFLOW_INT) read after the burst says the data is unusable.
    clock, chip, bus, driver = make(rate_hz=1000, accel=2, chip_cls=chip_cls,
                                    bus_cls=StallAfterCountBus)
    driver.start()
    driver.read_fifo()
    bus.stalls = [0.0, 0.0, 0.2, 0.0, 0.0, 0.15]
    clock.advance(0.02)
    reads = [driver.read_fifo()]
    for _ in range(20):
        clock.advance(0.02)
        reads.append(driver.read_fifo())
    assert sum(r.overflowed for r in reads) == 2
    samples = [n for r in reads for n in norms_g(r)]
    assert len(samples) > 200
    assert all(0.9 < n < 1.1 for n in samples), "a misaligned frame was delivered"
    temps = [t for r in reads for t in r.columns[6]]
    assert all(24 < t < 26 for t in temps)


class StopAfterFifoRestartBus(EmulatedBus):
    """The reader's thread is stopped (a CPU quota) for ``stop_s`` right after the first
    INT_STATUS read that follows a FIFO restart, on the restarts ``stop_on`` lists
    (counted from 1)."""

    stop_s = 0.0
    stop_on: tuple[int, ...] = ()
    restarts = 0
    armed = False

    def write(self, address: int, register: int, value: int) -> None:
        super().write(address, register, value)
        if register == reg.USER_CTRL and value == reg.USER_FIFO_EN.encode(1):
            self.restarts += 1
            self.armed = self.restarts in self.stop_on

    def read(self, address: int, register: int, length: int) -> bytes:
        data = super().read(address, register, length)
        if register == reg.INT_STATUS and self.armed:
            self.armed = False
            self.clock.advance(self.stop_s)  # type: ignore[attr-defined]
        return data


@pytest.mark.parametrize("chip_cls", [EmulatedMpu6050, EmulatedMpu9250])
def test_a_fifo_that_overflows_again_after_its_reset_is_no_stuck_flag(chip_cls) -> None:
    # After a FIFO reset the driver reads INT_STATUS twice: the first read clears a stale
    # overflow flag (Linux inv_mpu6050_read_fifo() resets the FIFO on
    # INV_MPU6050_BIT_FIFO_OVERFLOW_INT), and a flag set again on an empty FIFO means the
    # part's flag is stuck. A reader stopped between the two reads for longer than the
    # FIFO lasts sees it set again for real: the FIFO is full. Taken for stuck, the flag would
    # be ignored from then on, and an overflow between a count and its burst (test above)
    # would deliver misaligned frames. (Before: it was taken for stuck.)
    clock, chip, bus, driver = make(rate_hz=1000, accel=2, chip_cls=chip_cls,
                                    bus_cls=StopAfterFifoRestartBus)
    fill_s = chip.fifo_capacity_bytes / reg.FRAME.size / 1000
    bus.stop_s, bus.stop_on = 1.5 * fill_s, (2,)  # the first restart is the start's
    driver.start()
    clock.advance(0.02)
    assert not driver.read_fifo().overflowed
    clock.advance(1.0)
    assert driver.read_fifo().overflowed  # reset, then stopped until it overflowed again
    assert not driver.overflow_flag_stuck
    assert driver.read_fifo().overflowed  # found full, reset again
    clock.advance(0.02)
    assert driver.read_fifo().frames > 0


@pytest.mark.parametrize("chip_cls, variant", [(EmulatedMpu9250, "MPU-9250"),
                                               (EmulatedMpu9255, "MPU-9255")])
def test_mpu9250_family_temperature_uses_its_own_formula(chip_cls, variant) -> None:
    # Linux inv_mpu_iio.h: INV_MPU6500_TEMP_OFFSET 7011, INV_MPU6500_TEMP_SCALE 2995178
    # (°C = raw / 333.87 + 21); the 6050 formula (raw / 340 + 36.53) is ~15 °C off.
    clock, chip, _, driver = make(rate_hz=100, chip_cls=chip_cls, noise=False)
    driver.start()
    assert driver.variant == variant
    clock.advance(0.1)
    temps = driver.read_fifo().columns[6]
    assert temps and all(t == pytest.approx(25.0, abs=0.05) for t in temps)


@pytest.mark.parametrize("rate_hz, dlpf", [(1000, 1), (200, 2), (50, 4)])
def test_mpu9250_accelerometer_low_pass_is_written(rate_hz, dlpf) -> None:
    # Linux inv_mpu6050_set_lpf_regs: on the MPU-6500 family the same filter value goes
    # to ACCEL_CONFIG_2 (INV_MPU6500_REG_ACCEL_CONFIG_2 = 0x1D) as to CONFIG.
    _, chip, _, driver = make(rate_hz=rate_hz, chip_cls=EmulatedMpu9250)
    driver.start()
    assert chip.regs[reg.CONFIG] & 0x07 == dlpf
    assert chip.regs[0x1D] & 0x07 == dlpf


def test_reset_waits_for_the_chip_then_resets_the_signal_paths() -> None:
    # Linux inv_mpu_core.c: msleep(INV_MPU6050_POWER_UP_TIME) = 100 ms after H_RESET;
    # Adafruit_CircuitPython_MPU6050 reset(): sleep 0.1, signal path reset 0b111, sleep 0.1.
    # The chip does not acknowledge while it resets: polling DEVICE_RESET fails.
    clock, chip, bus, driver = make()
    slept: list[float] = []
    writes: list[tuple[int, int]] = []
    real_write = bus.write

    def record_write(address: int, register: int, value: int) -> None:
        writes.append((register, value))
        real_write(address, register, value)

    bus.write = record_write  # type: ignore[method-assign]
    driver.sleep = lambda s: (slept.append(s), clock.advance(s))  # type: ignore[assignment]
    driver.start()
    assert writes[0] == (reg.PWR_MGMT_1, 0x80) and slept[0] >= 0.1
    assert writes[1] == (reg.SIGNAL_PATH_RESET, 0x07) and slept[1] >= 0.1


def test_a_lost_wake_write_is_caught_by_reading_the_configuration_back() -> None:
    # Both writes to PWR_MGMT_1 (reset, wake) lost on the wire: the chip stays asleep.
    _, chip, _, driver = make(faults=Faults(lost_writes={reg.PWR_MGMT_1: 2}))
    with pytest.raises(SensorError, match=r"register 0x6b reads back 0x40, 0x01 was written"):
        driver.start()
    driver.start()  # the sampler's retry: this time the writes arrive
    assert chip.regs[reg.PWR_MGMT_1] == 0x01


def test_the_sampler_polls_a_9250_for_its_512_byte_fifo(tmp_path) -> None:
    # finding 1: the poll interval came from a 1024-byte FIFO, twice too long for a 9250
    # (Linux inv_mpu_core.c hw_info[] MPU9250 .fifo_size = 512)
    from edge_recorder.sampling.ring import SampleRing
    from edge_recorder.sampling.sampler import POLL_FILL_FRACTION, BusSampler, SensorChannel

    clock, chip, bus, driver = make(rate_hz=1000, chip_cls=EmulatedMpu9250)
    sampler = BusSampler("emulated", [SensorChannel("imu", driver, SampleRing(1000))],
                         clock=clock)
    sampler.poll_once()  # brings it up: now the variant is known
    assert sampler.interval_s == pytest.approx(512 // 14 / 1000 * POLL_FILL_FRACTION)


def test_bus_time_passes_during_transfers_so_frames_arrive_behind_the_count() -> None:
    # NXP UM10204 §3.1.5-3.1.6: 8 data bits + the acknowledge = 9 clock cycles a byte.
    # At 100 kHz, a 50-frame burst (700 B) is on the wire
    # for ~63 ms: at 1 kHz some 60 frames arrive meanwhile, behind the count just read.
    clock = FakeClock()
    chip = EmulatedMpu6050(clock=clock)
    bus = EmulatedBus({0x68: chip}, clock=clock, clock_hz=100_000)
    driver = Mpu6050(bus, 0x68, rate_hz=1000, accel_range_g=2, gyro_range_dps=250,
                     sleep=clock.advance)
    driver.start()
    driver.read_fifo()
    clock.advance(0.05)
    read = driver.read_fifo()
    assert read.frames >= 40  # less the bus time the FIFO reset itself was behind
    hi, lo = bus.read(0x68, reg.FIFO_COUNT_H, 2)
    assert ((hi << 8) | lo) // 14 >= read.frames * 14 * 9 / 100_000 * 1000 * 0.9
    assert bus.busy_until_ns - clock() >= 0.05e9  # the bus ran ahead of the clock
