"""``edge-recorder selftest``: the check a Pi owner runs after wiring the sensors.

For each configured sensor it identifies the chip, reads the bus clock, then records for
a few seconds through the same drivers and FIFO reads as the daemon, and judges what it
saw: the output rate against the configured one (a chip whose oscillator is far off, or
a bus too slow to keep up), gravity at rest (|a| ≈ 1 g), gyro bias and noise, FIFO
overflows and the bus time each poll costs. Every check passes or fails with the fix to
try. It works the same on ``/dev/i2c-N`` and on the emulated bus.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_recorder.config import BITS_PER_BYTE, BUS_BUDGET_FRACTION, Config, SensorConfig
from edge_recorder.errors import SensorError
from edge_recorder.sampling.sampler import poll_interval_s
from edge_recorder.sensors.base import DEG_TO_RAD, STANDARD_GRAVITY_MPS2, ImuDriver
from edge_recorder.sensors.bus import I2CBus
from edge_recorder.sensors.registry import DRIVERS

RATE_TOLERANCE = 0.05  # datasheets allow a few % of oscillator error; 5 % is broken
GRAVITY_TOLERANCE_G = 0.1
GYRO_BIAS_LIMIT_DPS = 10.0  # MPU-6050 zero-rate output is specified to ±20 °/s at worst
GYRO_NOISE_LIMIT_DPS = 1.0  # rms at rest; far above any of these chips' own noise
BUS_TIME_LIMIT = 0.5  # of the poll interval: the rest is for the other sensors and late polls
START_ATTEMPTS = 3

FIX_WIRING = ("check the wiring (SDA, SCL, 3V3, GND), the address (`i2cdetect -y N`) "
              "and the driver name")
FIX_BUS = ("the bus is too slow for this rate: raise its clock "
           "(dtparam=i2c_arm_baudrate=400000 in /boot/firmware/config.txt, then reboot) "
           "or lower rate_hz")
FIX_AT_REST = "keep the sensor still and away from vibration (fans, motors) during the selftest"


def _fix_at_rest(s: SensorConfig) -> str:
    """What to do when an at-rest check fails; an emulated sensor told to move fails them
    by design, and saying "damaged" would send its user looking for a fault. "" for a sensor
    meant to be still."""
    if s.emulation is not None and s.emulation.motion != "rest":
        return (f"this emulated sensor moves (emulation.motion: {s.emulation.motion}), so the "
                "at-rest checks fail by design; set emulation: {motion: rest} to test at rest")
    return ""


@dataclass(frozen=True)
class Check:
    """One verdict: what was checked, what was seen, and the fix to try when it failed."""

    name: str
    passed: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail,
                "fix": self.fix}


@dataclass
class SensorReport:
    """What the selftest found for one configured sensor (``--json``: one per line)."""

    name: str
    driver: str
    bus: int | str
    address: int
    configured_rate_hz: float
    chip: str = ""
    bus_clock_hz: int | None = None
    measured_rate_hz: float | None = None
    accel_norm_g: float | None = None
    gyro_bias_dps: tuple[float, float, float] | None = None
    gyro_noise_dps: float | None = None
    samples: int = 0
    overflows: int = 0
    bus_errors: int = 0
    polls: int = 0
    bus_ms_per_poll: float | None = None
    poll_interval_ms: float | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        def rounded(v: float | None, digits: int) -> float | None:
            return None if v is None else round(v, digits)

        return {
            "name": self.name, "driver": self.driver, "chip": self.chip, "bus": self.bus,
            "address": f"0x{self.address:02x}", "bus_clock_hz": self.bus_clock_hz,
            "configured_rate_hz": self.configured_rate_hz,
            "measured_rate_hz": rounded(self.measured_rate_hz, 2),
            "accel_norm_g": rounded(self.accel_norm_g, 4),
            "gyro_bias_dps": None if self.gyro_bias_dps is None else
            [round(v, 3) for v in self.gyro_bias_dps],
            "gyro_noise_dps": rounded(self.gyro_noise_dps, 4),
            "samples": self.samples, "overflows": self.overflows,
            "bus_errors": self.bus_errors, "polls": self.polls,
            "bus_ms_per_poll": rounded(self.bus_ms_per_poll, 3),
            "poll_interval_ms": rounded(self.poll_interval_ms, 3),
            "passed": self.passed, "checks": [c.as_dict() for c in self.checks],
        }


class _Recording:
    """Running sums over one sensor's samples: nothing kept per sample."""

    def __init__(self) -> None:
        self.first_read_ns: int | None = None
        self.frames_after_first = 0
        self.last_read_ns = 0
        self.n = 0
        self.norm_sum = 0.0
        self.gyro_sum = [0.0, 0.0, 0.0]
        self.gyro_sq = [0.0, 0.0, 0.0]
        self.bus_ns = 0

    def add(self, columns: Sequence[Sequence[float]]) -> None:
        ax, ay, az, gx, gy, gz = columns[:6]
        self.n += len(ax)
        self.norm_sum += sum(math.sqrt(x * x + y * y + z * z)
                             for x, y, z in zip(ax, ay, az, strict=True))
        for i, col in enumerate((gx, gy, gz)):
            self.gyro_sum[i] += sum(col)
            self.gyro_sq[i] += sum(v * v for v in col)


def run_selftest(config: Config, seconds: float, *,
                 clock: Callable[[], int] = time.monotonic_ns,
                 sleep: Callable[[float], None] = time.sleep) -> list[SensorReport]:
    """Record ``seconds`` from every configured sensor and judge each one."""
    from edge_recorder.app import open_bus

    by_bus: dict[int | str, list[SensorConfig]] = defaultdict(list)
    for s in config.sensors:
        by_bus[s.bus].append(s)
    reports: list[SensorReport] = []
    for bus_id, sensors in by_bus.items():
        try:
            bus = open_bus(bus_id, sensors, clock)
        except SensorError as exc:
            for s in sensors:
                report = _report_for(s)
                report.checks.append(Check("identity", False, str(exc), FIX_WIRING))
                reports.append(report)
            continue
        try:
            reports += _test_bus(bus, bus_id, sensors, seconds, clock, sleep)
        finally:
            bus.close()
    return reports


def _report_for(s: SensorConfig) -> SensorReport:
    return SensorReport(s.name, s.driver, s.bus, s.address, s.rate_hz)


def _test_bus(bus: I2CBus, bus_id: int | str, sensors: list[SensorConfig], seconds: float,
              clock: Callable[[], int], sleep: Callable[[float], None]) -> list[SensorReport]:
    bus_clock_hz: int | None = getattr(bus, "clock_hz", None)
    running: list[tuple[SensorReport, ImuDriver, _Recording]] = []
    reports = []
    moving: dict[str, str] = {}
    for s in sensors:
        report = _report_for(s)
        reports.append(report)
        report.bus_clock_hz = bus_clock_hz
        driver = DRIVERS[s.driver](bus, s.address, rate_hz=s.rate_hz,
                                   accel_range_g=s.accel_range_g,
                                   gyro_range_dps=s.gyro_range_dps, bus_name=str(bus_id))
        error: OSError | None = None
        for _ in range(START_ATTEMPTS):
            try:
                driver.start()
                error = None
                break
            except OSError as exc:  # SensorError included
                error = exc
        if error is not None:
            report.checks.append(Check("identity", False, f"{type(error).__name__}: {error}",
                                       FIX_WIRING))
            continue
        report.chip = driver.variant
        report.checks.append(Check("identity", True, f"WHO_AM_I says {driver.variant}"))
        running.append((report, driver, _Recording()))
        moving[s.name] = _fix_at_rest(s)
    if not running:
        return reports
    report_budget(bus_clock_hz, bus_id, running)
    # twice as often as the daemon: a short check should not fail on one late wake-up
    interval_s = poll_interval_s([d for _, d, _ in running]) / 2
    deadline = clock() + int(seconds * 1e9)
    next_tick = clock()
    while clock() < deadline:
        for report, driver, rec in running:
            t0 = clock()
            try:
                read = driver.read_fifo()
            except OSError:
                report.bus_errors += 1
                continue
            if rec.first_read_ns is None:
                # what piled up while the other sensors started: neither a rate sample nor
                # an overflow that says anything about polling
                rec.first_read_ns = t0
            else:
                rec.bus_ns += clock() - t0
                report.polls += 1
                report.overflows += read.overflowed
                rec.frames_after_first += read.frames + read.lost_frames
                rec.last_read_ns = t0
                rec.add(read.columns)
        next_tick += int(interval_s * 1e9)
        delay = (next_tick - clock()) / 1e9
        if delay > 0:
            sleep(delay)
        else:
            next_tick = clock()
    for report, driver, rec in running:
        report.poll_interval_ms = interval_s * 1e3
        _judge(report, driver, rec, interval_s, moving[report.name])
    return reports


def report_budget(bus_clock_hz: int | None, bus_id: int | str,
                  running: list[tuple[SensorReport, ImuDriver, _Recording]]) -> None:
    """Whether the bus clock carries every sensor's FIFO data (9 bit-times a byte)."""
    need = sum(d.rate_hz * d.frame_bytes for _, d, _ in running)
    for report, _, _ in running:
        if bus_clock_hz is None:
            report.checks.append(Check(
                "bus_clock", True, f"bus {bus_id}'s clock is not reported by the system (not "
                f"a Pi?); the sensors need {need / 1000:.1f} kB/s, which takes at least "
                f"{need * BITS_PER_BYTE / BUS_BUDGET_FRACTION / 1000:.0f} kHz"))
            continue
        capacity = bus_clock_hz / BITS_PER_BYTE
        ok = need <= BUS_BUDGET_FRACTION * capacity
        report.checks.append(Check(
            "bus_clock", ok, f"bus {bus_id} runs at {bus_clock_hz / 1000:g} kHz "
            f"(~{capacity / 1000:.1f} kB/s); its sensors need {need / 1000:.1f} kB/s",
            "" if ok else FIX_BUS))


def _judge(report: SensorReport, driver: ImuDriver, rec: _Recording, interval_s: float,
           moving: str = "") -> None:
    """Every check's verdict; ``moving`` replaces the at-rest fixes for a sensor that is
    not meant to be still (an emulated one with a motion)."""
    checks = report.checks
    report.samples = rec.n
    if report.polls:
        report.bus_ms_per_poll = rec.bus_ns / report.polls / 1e6
    span_ns = rec.last_read_ns - (rec.first_read_ns or 0)
    if span_ns > 0 and rec.frames_after_first and not report.overflows:
        report.measured_rate_hz = rec.frames_after_first / (span_ns / 1e9)
    configured = report.configured_rate_hz
    bus_busy = report.bus_ms_per_poll is not None and \
        report.bus_ms_per_poll / 1e3 > BUS_TIME_LIMIT * interval_s

    if report.overflows:
        checks.append(Check("fifo_overflows", False, f"the FIFO overflowed {report.overflows} "
                            f"time(s) in {report.polls} polls",
                            FIX_BUS if bus_busy else "polls came too late: the CPU is busy "
                            "(stop other load) or the bus too slow; lower rate_hz"))
    else:
        checks.append(Check("fifo_overflows", True, f"none in {report.polls} polls"))
    if report.bus_errors:
        checks.append(Check("bus_errors", False, f"{report.bus_errors} failed transfer(s)",
                            "loose or long wires, missing pull-ups, or a second device "
                            "at the same address; " + FIX_WIRING))
    if report.bus_ms_per_poll is not None:
        share = report.bus_ms_per_poll / 1e3 / interval_s
        checks.append(Check("bus_time", share <= BUS_TIME_LIMIT,
                            f"{report.bus_ms_per_poll:.2f} ms on the bus per poll, "
                            f"{100 * share:.0f} % of the {interval_s * 1e3:.1f} ms poll interval",
                            "" if share <= BUS_TIME_LIMIT else FIX_BUS))

    if report.measured_rate_hz is None:
        checks.append(Check("output_rate", False, "not measured (no data, or the FIFO "
                            "overflowed)", "fix the failed checks above, then run again"))
    else:
        error = report.measured_rate_hz / configured - 1
        ok = abs(error) <= RATE_TOLERANCE
        if ok:
            fix = ""
        elif error < 0 and bus_busy:
            fix = FIX_BUS
        else:
            fix = (f"the chip's clock runs {100 * abs(error):.1f} % "
                   f"{'fast' if error > 0 else 'slow'}, far outside its datasheet; timestamps "
                   "follow the measured rate, but a part this far off-spec is damaged or "
                   "counterfeit: replace it")
        checks.append(Check("output_rate", ok, f"{report.measured_rate_hz:.1f} Hz measured, "
                            f"{configured:g} Hz configured ({100 * error:+.2f} %)", fix))

    if rec.n == 0:
        return
    report.accel_norm_g = rec.norm_sum / rec.n / STANDARD_GRAVITY_MPS2
    ok = abs(report.accel_norm_g - 1) <= GRAVITY_TOLERANCE_G
    checks.append(Check("gravity", ok, f"|a| = {report.accel_norm_g:.3f} g at rest",
                        "" if ok else moving or FIX_AT_REST + "; if it was still, check "
                        "accel_range_g and the chip (a broken accelerometer reads far from "
                        "1 g)"))
    mean = [v / rec.n for v in rec.gyro_sum]
    var = [max(0.0, sq / rec.n - m * m) for sq, m in zip(rec.gyro_sq, mean, strict=True)]
    report.gyro_bias_dps = (mean[0] / DEG_TO_RAD, mean[1] / DEG_TO_RAD, mean[2] / DEG_TO_RAD)
    report.gyro_noise_dps = math.sqrt(sum(var) / 3) / DEG_TO_RAD
    worst = max(abs(v) for v in report.gyro_bias_dps)
    ok = worst <= GYRO_BIAS_LIMIT_DPS
    checks.append(Check("gyro_bias", ok, "bias " + ", ".join(
        f"{v:+.2f}" for v in report.gyro_bias_dps) + " °/s (x, y, z)",
        "" if ok else moving or FIX_AT_REST + "; a still sensor with this bias is damaged"))
    ok = report.gyro_noise_dps <= GYRO_NOISE_LIMIT_DPS
    checks.append(Check("gyro_noise", ok, f"noise {report.gyro_noise_dps:.3f} °/s rms",
                        "" if ok else moving or FIX_AT_REST))


def format_report(report: SensorReport) -> str:
    """The human-readable verdict for one sensor: a header, then one line per check."""
    where = f"bus {report.bus} at 0x{report.address:02x}"
    clock = f", bus clock {report.bus_clock_hz / 1000:g} kHz" if report.bus_clock_hz else ""
    lines = [f"{report.name}: {report.chip or '?'} ({report.driver}) on {where}{clock}"]
    for c in report.checks:
        line = f"  {'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}"
        if not c.passed and c.fix:
            line += f"\n       fix: {c.fix}"
        lines.append(line)
    return "\n".join(lines)
