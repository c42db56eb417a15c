"""``edge-recorder selftest`` as a Pi owner runs it, on the strict emulated chips.

Real subprocesses of the real command; the emulated bus goes through the same drivers,
FIFO reads and timing as /dev/i2c-N would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

FAST_BUS = {"bus_hz": 1_000_000}
# ~500 Hz: every FIFO lasts ≥ 146 ms, so a loaded test machine's late wake-up is no overflow
# (the daemon test, test_frozen_daemon.py, runs these chips at ~1 kHz)


def selftest(tmp_path: Path, name: str, sensors: list[dict], *args: str) -> subprocess.Popen:
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"sensors": sensors,
                                      "storage": {"dir": str(tmp_path / "store")}}))
    return subprocess.Popen([sys.executable, "-m", "edge_recorder", "selftest", "-c",
                             str(config), "--seconds", "2", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_selftest_passes_on_healthy_chips_and_fails_on_a_clock_10_percent_fast(tmp_path):
    four = selftest(tmp_path, "four", [
        {"name": "mpu", "driver": "mpu6050", "bus": "emulated", "rate_hz": 500,
         "emulation": FAST_BUS},
        {"name": "icm", "driver": "icm42688", "bus": "emulated", "address": 0x69,
         "rate_hz": 500, "emulation": FAST_BUS},
        {"name": "dsox", "driver": "lsm6dsox", "bus": "emulated", "rate_hz": 416,
         "emulation": FAST_BUS},
        {"name": "ds3", "driver": "lsm6dsox", "bus": "emulated", "address": 0x6B,
         "rate_hz": 416, "emulation": {**FAST_BUS, "chip": "LSM6DS3"}},
    ], "--json")
    mpu9250 = selftest(tmp_path, "mpu9250", [
        {"name": "mpu9250", "driver": "mpu6050", "bus": "emulated", "rate_hz": 500,
         "emulation": {"chip": "MPU-9250"}}])  # its 512-byte FIFO lasts 73 ms at 500 Hz
    fast = selftest(tmp_path, "fast", [
        {"name": "fast", "driver": "mpu6050", "bus": "emulated", "rate_hz": 500,
         "emulation": {"clock_error": 0.10}}])

    code, out, err = finish(four)
    assert code == 0, out + err
    reports = [json.loads(line) for line in out.splitlines()]
    assert [(r["name"], r["chip"]) for r in reports] == [
        ("mpu", "MPU-6050"), ("icm", "ICM-42688-P"), ("dsox", "LSM6DSO/DSOX"),
        ("ds3", "LSM6DS3")]
    for r in reports:
        assert r["passed"] is True and r["driver"] in ("mpu6050", "icm42688", "lsm6dsox")
        assert abs(r["measured_rate_hz"] / r["configured_rate_hz"] - 1) < 0.02, r
        assert abs(r["accel_norm_g"] - 1) < 0.02, r
        assert r["overflows"] == 0 and r["bus_clock_hz"] == 1_000_000
        assert {c["name"] for c in r["checks"]} >= {
            "identity", "bus_clock", "output_rate", "gravity", "gyro_bias", "gyro_noise",
            "fifo_overflows", "bus_time"}

    code, out, err = finish(mpu9250)
    assert code == 0, out + err
    assert "MPU-9250" in out and "selftest passed: 1 sensor(s)" in out

    code, out, err = finish(fast)
    assert code == 1, out + err
    assert "FAIL output_rate: 5" in out  # ~550 Hz measured
    assert re.search(r"clock runs (9\.[5-9]|10\.[0-4]) % fast", out), out
    assert "selftest failed: fast" in out


def test_selftest_names_a_missing_chip_and_a_bad_config(tmp_path):
    # the chip is not there for the whole test: identity fails with the wiring fix
    missing = selftest(tmp_path, "missing", [
        {"name": "gone", "driver": "icm42688", "bus": "emulated",
         "emulation": {"absent_s": [[0, 3600]]}}])
    code, out, err = finish(missing)
    assert code == 1, out + err
    assert "FAIL identity" in out and "check the wiring" in out
    bad = selftest(tmp_path, "bad", [{"name": "x", "driver": "bmi160", "bus": 1}])
    code, out, err = finish(bad)
    assert code == 2 and "sensors[0].driver" in err and "Traceback" not in err


def test_the_demo_config_s_turning_sensor_fails_at_rest_checks_without_calling_it_damaged():
    """config/demo.yaml's emulated sensor rotates (emulation.motion: rotation, 90 °/s about x):
    the gyro bias check fails, as it must, and the fix names the motion, not a damaged chip."""
    proc = subprocess.Popen([sys.executable, "-m", "edge_recorder", "selftest", "-c",
                             str(REPO / "config" / "demo.yaml"), "--seconds", "1"], cwd=REPO,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, out, err = finish(proc)
    assert code == 1, out + err
    assert re.search(r"FAIL gyro_bias: bias \+(89|90)\.\d\d", out), out
    assert "emulation.motion: rotation" in out and "fail by design" in out
    assert "damaged" not in out and "selftest failed: imu0" in out
