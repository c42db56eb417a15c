"""The LSM6DS family and the ICM-42688-P against their register-level emulators, and all
three families recording at once."""

from __future__ import annotations

import struct
import threading

import pytest

from edge_recorder.app import Daemon
from edge_recorder.config import parse_config
from edge_recorder.errors import SensorNotFound
from edge_recorder.recording.events import StartRequested, StopRequested, Trigger
from edge_recorder.sensors import icm42688 as icm
from edge_recorder.sensors import lsm6ds as lsm
from edge_recorder.sensors.base import DEG_TO_RAD, STANDARD_GRAVITY_MPS2
from edge_recorder.sensors.emulation import (
    EmulatedBus,
    EmulatedIcm42688,
    EmulatedLsm6ds3,
    EmulatedLsm6ds3trc,
    EmulatedLsm6dsox,
    EmulatedMpu6050,
)
from edge_recorder.sensors.icm42688 import Icm42688
from edge_recorder.sensors.lsm6ds import Lsm6ds
from edge_recorder.sensors.probe import scan
from edge_recorder.sessionfile import iter_batches
from tests.conftest import wait_until
from tests.rig import FakeClock

G = STANDARD_GRAVITY_MPS2


def rig(chip_cls, driver_cls, address, **kw):
    clock = FakeClock()
    chip = chip_cls(clock=clock, noise=False)
    bus = EmulatedBus({address: chip}, clock=clock)
    driver = driver_cls(bus, address, sleep=clock.advance, **kw)
    return clock, chip, bus, driver


# --- LSM6DS family -----------------------------------------------------------------------

@pytest.mark.parametrize("chip_cls, variant", [(EmulatedLsm6dsox, "LSM6DSO/DSOX"),
                                               (EmulatedLsm6ds3, "LSM6DS3"),
                                               (EmulatedLsm6ds3trc, "LSM6DS3TR-C")])
def test_lsm6ds_variants_are_told_apart_by_chip_id_and_all_read_gravity(chip_cls, variant):
    clock, chip, bus, driver = rig(chip_cls, Lsm6ds, 0x6A, rate_hz=104, accel_range_g=2,
                                   gyro_range_dps=250)
    driver.start()
    assert driver.variant == variant
    clock.advance(0.5)
    read = driver.read_fifo()
    # the DSOX's first instants are bootstrap samples, discarded and counted as lost
    assert read.lost_frames == (3 if chip_cls is EmulatedLsm6dsox else 0)
    assert read.frames + read.lost_frames == pytest.approx(52, abs=1)
    assert len(read.columns) == 6  # no temperature in this family's FIFO
    assert all(az == pytest.approx(G, abs=0.01) for az in read.columns[2])


@pytest.mark.parametrize("rate_hz, code", [(12.5, 1), (104, 4), (833, 7), (1667, 8), (6667, 10)])
@pytest.mark.parametrize("accel, fs_xl", [(2, 0b00), (4, 0b10), (8, 0b11), (16, 0b01)])
def test_lsm6ds_rate_and_accel_range_write_the_datasheet_codes(rate_hz, code, accel, fs_xl):
    _, chip, _, driver = rig(EmulatedLsm6dsox, Lsm6ds, 0x6A, rate_hz=rate_hz,
                             accel_range_g=accel, gyro_range_dps=500)
    driver.start()
    assert chip.regs[lsm.CTRL1_XL] == (code << 4) | (fs_xl << 2)
    assert chip.regs[lsm.CTRL2_G] == (code << 4) | (0b01 << 2)
    assert chip.regs[lsm.CTRL3_C] == 0x44  # BDU | IF_INC
    assert chip.regs[lsm.FIFO_CTRL3] == (code << 4) | code
    assert chip.regs[lsm.FIFO_CTRL4] == 6


@pytest.mark.parametrize("accel, mg", [(2, 0.061), (4, 0.122), (8, 0.244), (16, 0.488)])
@pytest.mark.parametrize("gyro, mdps", [(125, 4.375), (250, 8.75), (2000, 70.0)])
def test_lsm6dsox_scales_raw_words_at_every_range(accel, mg, gyro, mdps):
    _, chip, _, driver = rig(EmulatedLsm6dsox, Lsm6ds, 0x6A, rate_hz=104, accel_range_g=accel,
                             gyro_range_dps=gyro)
    driver.start()
    chip.fifo += bytes([lsm.TAG_GYRO << 3]) + struct.pack("<3h", 1000, 0, -1000)
    chip.fifo += bytes([lsm.TAG_ACCEL << 3]) + struct.pack("<3h", 0, -1000, 1000)
    read = driver.read_fifo()
    ax, ay, az, gx, gy, gz = (c[0] for c in read.columns)
    assert az == pytest.approx(1000 * mg * 1e-3 * G) and ay == pytest.approx(-az)
    assert gx == pytest.approx(1000 * mdps * 1e-3 * DEG_TO_RAD) and gz == pytest.approx(-gx)


def test_lsm6dsox_keeps_a_word_whose_partner_is_not_yet_in_the_fifo():
    _, chip, _, driver = rig(EmulatedLsm6dsox, Lsm6ds, 0x6A, rate_hz=104, accel_range_g=2,
                             gyro_range_dps=250)
    driver.start()
    chip.fifo += bytes([(lsm.TAG_GYRO << 3) | (1 << 1)]) + struct.pack("<3h", 1, 2, 3)
    assert driver.read_fifo().frames == 0  # half a frame: held back, not lost
    chip.fifo += bytes([(lsm.TAG_ACCEL << 3) | (1 << 1)]) + struct.pack("<3h", 4, 5, 6)
    read = driver.read_fifo()
    assert read.frames == 1 and read.lost_frames == 0
    assert read.columns[3][0] == pytest.approx(1 * 8.75e-3 * DEG_TO_RAD)
    # an accel word of another instant arrives without its gyro partner: counted lost
    chip.fifo += bytes([(lsm.TAG_ACCEL << 3) | (2 << 1)]) + struct.pack("<3h", 0, 0, 0)
    chip.fifo += bytes([(lsm.TAG_GYRO << 3) | (3 << 1)]) + struct.pack("<3h", 0, 0, 0)
    chip.fifo += bytes([(lsm.TAG_ACCEL << 3) | (3 << 1)]) + struct.pack("<3h", 0, 0, 0)
    read = driver.read_fifo()
    assert read.frames == 1 and read.lost_frames == 1


def test_lsm6ds3_skips_to_the_next_pattern_boundary_after_a_misaligned_start():
    clock, chip, _, driver = rig(EmulatedLsm6ds3, Lsm6ds, 0x6A, rate_hz=104, accel_range_g=2,
                                 gyro_range_dps=250)
    driver.start()
    clock.advance(0.1)
    chip.advance()
    chip.pop_fifo(4)  # someone read two words: the FIFO now starts at gyro z
    read = driver.read_fifo()
    assert read.lost_frames == 1
    assert read.frames >= 8 and all(az == pytest.approx(G, abs=0.01) for az in read.columns[2])


def test_lsm6dsox_overrun_is_reported_and_the_fifo_restarts():
    clock, chip, _, driver = rig(EmulatedLsm6dsox, Lsm6ds, 0x6A, rate_hz=833, accel_range_g=2,
                                 gyro_range_dps=250)
    driver.start()
    clock.advance(1.0)  # 833 frames into a 256-frame FIFO
    assert driver.read_fifo().overflowed
    clock.advance(0.012)
    read = driver.read_fifo()
    assert not read.overflowed and read.frames == pytest.approx(10, abs=1)


# --- ICM-42688-P ---------------------------------------------------------------------------

@pytest.mark.parametrize("rate_hz, code", [(12.5, 11), (200, 7), (500, 15), (1000, 6),
                                           (8000, 3)])
@pytest.mark.parametrize("accel, afs, gyro, gfs", [(16, 0, 2000, 0), (2, 3, 125, 4),
                                                  (4, 2, 500, 2)])
def test_icm42688_configuration_writes_the_datasheet_values(rate_hz, code, accel, afs, gyro,
                                                            gfs):
    _, chip, _, driver = rig(EmulatedIcm42688, Icm42688, 0x68, rate_hz=rate_hz,
                             accel_range_g=accel, gyro_range_dps=gyro)
    driver.start()
    assert chip.regs[icm.ACCEL_CONFIG0] == (afs << 5) | code
    assert chip.regs[icm.GYRO_CONFIG0] == (gfs << 5) | code
    assert chip.regs[icm.PWR_MGMT0] == 0x0F
    assert chip.regs[icm.FIFO_CONFIG] == 0x40 and chip.regs[icm.FIFO_CONFIG1] == 0x07


@pytest.mark.parametrize("accel", [2, 4, 8, 16])
@pytest.mark.parametrize("gyro", [125, 250, 500, 1000, 2000])
def test_icm42688_scales_packets_at_every_range(accel, gyro):
    _, chip, _, driver = rig(EmulatedIcm42688, Icm42688, 0x68, rate_hz=200,
                             accel_range_g=accel, gyro_range_dps=gyro)
    driver.start()
    driver.read_fifo()  # the first count after a reset reads 0 (datasheet)
    chip.fifo += icm.PACKET.pack(0x68, 0, 0, 16384, 16384, 0, 0, 21, 7)
    read = driver.read_fifo()
    ax, ay, az, gx, gy, gz, temp = (c[0] for c in read.columns)
    assert az == pytest.approx(accel / 2 * G)
    assert gx == pytest.approx(gyro / 2 * DEG_TO_RAD)
    assert temp == pytest.approx(21 / 2.07 + 25)


def test_icm42688_first_count_after_reset_is_spent_by_the_driver_then_packets_flow():
    # the datasheet quirk (the first FIFO count read after a reset reads 0) would make the
    # first poll see an empty FIFO; the driver reads it once during start-up
    clock, chip, bus, driver = rig(EmulatedIcm42688, Icm42688, 0x68, rate_hz=1000,
                                   accel_range_g=4, gyro_range_dps=500)
    driver.start()
    assert not chip.first_count_zero
    clock.advance(0.04)
    read = driver.read_fifo()
    assert read.frames == pytest.approx(40, abs=1)  # bus time moves the phase
    assert all(az == pytest.approx(G, abs=0.01) for az in read.columns[2])


def test_icm42688_misaligned_packet_flushes_and_counts_a_loss():
    clock, chip, _, driver = rig(EmulatedIcm42688, Icm42688, 0x68, rate_hz=1000,
                                 accel_range_g=4, gyro_range_dps=500)
    driver.start()
    driver.read_fifo()
    clock.advance(0.01)
    chip.advance()
    chip.pop_fifo(3)  # the stream now starts mid-packet
    read = driver.read_fifo()
    assert read.overflowed and read.frames == 0 and not chip.fifo


def test_probe_names_every_supported_chip_on_a_bus():
    bus = EmulatedBus({0x68: EmulatedMpu6050(), 0x69: EmulatedIcm42688(),
                       0x6A: EmulatedLsm6ds3trc(), 0x6B: EmulatedLsm6dsox()})
    found = {(f.address, f.driver, f.variant) for f in scan(bus)}
    assert found == {(0x68, "mpu6050", "MPU-6050"), (0x69, "icm42688", "ICM-42688-P"),
                     (0x6A, "lsm6dsox", "LSM6DS3TR-C"), (0x6B, "lsm6dsox", "LSM6DSO/DSOX")}


def test_the_wrong_driver_for_a_chip_is_a_clear_error():
    _, _, _, driver = rig(EmulatedMpu6050, Icm42688, 0x68, rate_hz=200, accel_range_g=4,
                          gyro_range_dps=500)
    with pytest.raises(SensorNotFound, match="WHO_AM_I=0x68, expected 0x47 .*icm42688"):
        driver.start()


def test_three_chip_families_record_at_once_each_at_its_own_rate(tmp_path):
    config = parse_config({
        "device_id": "three",
        "sensors": [
            {"name": "mpu", "driver": "mpu6050", "bus": "emulated", "rate_hz": 200},
            {"name": "lsm", "driver": "lsm6dsox", "bus": "emulated", "rate_hz": 104},
            {"name": "icm", "driver": "icm42688", "bus": "emulated", "address": 0x69,
             "rate_hz": 500},
        ],
        "triggers": {"mqtt": False},
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "storage": {"dir": str(tmp_path / "store")},
    })
    daemon = Daemon(config)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: all(c.counters.state == "up" for c in daemon.channels), 5, "sensors")
        replies: list[dict] = []
        daemon.recorder.submit(StartRequested(Trigger("mqtt"), duration_s=None,
                                              reply=replies.append))
        wait_until(lambda: replies, 2, "started")
        stop_evt = threading.Event()
        threading.Timer(2.0, stop_evt.set).start()
        stop_evt.wait(3)
        daemon.recorder.submit(StopRequested(Trigger("mqtt")))
        wait_until(lambda: daemon.store.pending(), 5, "the finished session")
    finally:
        stop.set()
        thread.join(15)
    sid = daemon.store.pending()[0]
    manifest = daemon.store.manifest(sid)
    duration = manifest["duration_s"]
    by_name = {s["name"]: s for s in manifest["sensors"]}
    for name, rate in (("mpu", 200), ("lsm", 104), ("icm", 500)):
        # each at its own rate (real clock, a freshly started timebase: within 3 %)
        assert by_name[name]["samples"] == pytest.approx(rate * duration, rel=0.03), name
        assert by_name[name]["dropped"] == 0
    counts: dict[str, int] = {}
    for sensor, batch in iter_batches(daemon.store.path("outbox", sid)):
        counts[sensor] = counts.get(sensor, 0) + len(batch["t_ns"])
        assert ("temp_c" in batch) == (sensor != "lsm")
    assert counts == {n: s["samples"] for n, s in by_name.items()}
