"""Sessions over the shared rings, on a fake clock: windows, overlap, stop rules, losses."""

from __future__ import annotations

import errno
import random
import statistics

import pytest

from edge_recorder.config import SessionConfig
from edge_recorder.recording.events import StartRequested, StopRequested, Trigger
from edge_recorder.recording.restamp import iso_ns
from edge_recorder.sensors.emulation import Faults
from edge_recorder.sensors.mpu6050 import INT_STATUS
from edge_recorder.sessionfile import read_manifest
from tests.rig import Rig, samples_of, stored
from tests.test_starvation import accounted

MQTT = Trigger("mqtt", "test")


def start(rig: Rig, **kw):
    reply = rig.ask(StartRequested, trigger=MQTT, **kw)
    assert reply["ok"], reply
    return reply["session_id"]


def stop(rig: Rig, session_id=None):
    reply = rig.ask(StopRequested, trigger=MQTT, session_id=session_id)
    assert reply["ok"], reply
    return reply


def test_overlapping_sessions_hold_the_very_same_samples(tmp_path):
    rig = Rig(tmp_path)
    rig.run(1)
    a = start(rig, labels=("long",))
    rig.run(1.0)
    b = start(rig, labels=("short",))
    rig.run(1.0)
    stop(rig, b)
    rig.run(1.0)
    stop(rig, a)
    rig.finish()
    ta, za = samples_of(stored(rig, a)[1])
    tb, zb = samples_of(stored(rig, b)[1])
    assert len(ta) == pytest.approx(600, abs=2) and len(tb) == pytest.approx(200, abs=2)
    inside = {t: z for t, z in zip(ta, za) if tb[0] <= t <= tb[-1]}
    assert list(inside) == tb and list(inside.values()) == zb
    assert read_manifest(stored(rig, a)[1])["labels"] == ["long"]


def test_pre_trigger_samples_are_timestamped_before_the_trigger(tmp_path):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=1.0, pre_trigger_s=0.5))
    rig.run(2)
    trigger_ns = rig.clock.wall()
    sid = start(rig)
    rig.finish(2.0)
    manifest, path = stored(rig, sid)
    t, _ = samples_of(path)
    assert t[0] < trigger_ns and t[0] >= trigger_ns - 500_000_000
    assert sum(x < trigger_ns for x in t) == pytest.approx(100, abs=2)
    assert len(t) == pytest.approx(300, abs=2)
    assert manifest["pre_trigger_s"] == 0.5 and manifest["duration_s"] == pytest.approx(1.5)
    assert manifest["stop_reason"] == "duration"


def test_pre_trigger_beyond_the_buffer_is_refused_with_the_limit(tmp_path):
    rig = Rig(tmp_path, buffer_s=5)
    reply = rig.ask(StartRequested, trigger=MQTT, pre_trigger_s=6.0)
    assert reply["error"]["code"] == "pre_trigger_too_long"
    assert "buffer.seconds = 5" in reply["error"]["message"]


def test_max_duration_bounds_an_open_ended_session(tmp_path):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=None, max_duration_s=2.0))
    sid = start(rig)
    rig.finish(3.5)
    manifest, _ = stored(rig, sid)
    assert manifest["stop_reason"] == "max_duration"
    assert manifest["duration_s"] == pytest.approx(2.0)
    assert manifest["sensors"][0]["samples"] == pytest.approx(400, abs=2)


def test_stop_without_id_stops_all_and_concurrency_is_limited(tmp_path):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=None, max_concurrent=2))
    a, b = start(rig), start(rig)
    refused = rig.ask(StartRequested, trigger=MQTT)
    assert refused["error"]["code"] == "too_many_sessions"
    rig.run(0.5)
    assert set(stop(rig)["stopped"]) == {a, b}
    rig.finish()
    assert {m["session_id"] for m in rig.completed} == {a, b}
    assert rig.ask(StopRequested, trigger=MQTT, session_id=a)["error"]["code"] == \
        "no_such_session"


def test_labels_merge_dedupe_and_allowed_set_and_cardinality_warning(tmp_path):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=None, labels=("bench", "x"),
                                               allowed_labels=("bench", "x", "login",
                                                               "2026-11-26")))
    reply = rig.ask(StartRequested, trigger=MQTT, labels=("login", "bench"))
    assert reply["labels"] == ["bench", "x", "login"]
    refused = rig.ask(StartRequested, trigger=MQTT, labels=("logout",))
    assert refused["error"]["code"] == "label_not_allowed"
    assert "bench, x, login" in refused["error"]["message"]
    warned = rig.ask(StartRequested, trigger=MQTT, labels=("2026-11-26",))
    assert warned["ok"] and "looks like a date" in warned["warnings"][0]
    too_many = rig.ask(StartRequested, trigger=MQTT, labels=tuple(f"l{i}" for i in range(20)))
    assert too_many["error"]["code"] == "invalid_labels"


def test_journey_auto_is_reused_and_can_be_overridden_or_cleared(tmp_path):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=0.2))
    assert rig.ask(StartRequested, trigger=MQTT)["journey_id"] == "j-auto"
    assert rig.ask(StartRequested, trigger=MQTT)["journey_id"] == "j-auto"
    assert rig.ask(StartRequested, trigger=MQTT, journey_id="j-9")["journey_id"] == "j-9"
    assert rig.ask(StartRequested, trigger=MQTT, journey_id=None)["journey_id"] is None


@pytest.mark.parametrize("driver_name", ["mpu6050", "icm42688"])
def test_a_stalled_reader_overflows_the_fifo_and_the_loss_is_counted(tmp_path, driver_name):
    rig = Rig(tmp_path, rate_hz=1000, driver_name=driver_name)
    sid = start(rig)
    rig.run(1.0)
    rig.clock.advance(0.5)  # the sampler does not run for 0.5 s: the FIFO overflows
    rig.run(1.0)
    stop(rig)
    rig.finish()
    manifest, path = stored(rig, sid)
    sensor = manifest["sensors"][0]
    assert sensor["gaps"] and sensor["gaps"][0]["reason"] == "fifo_overflow"
    # the 0.5 s stall, the poll that finds it (20 ms) and the FIFO's content it discards
    assert 500 <= sensor["dropped"] <= 560
    # samples + dropped account for the whole window
    assert sensor["samples"] + sensor["dropped"] == pytest.approx(
        manifest["duration_s"] * 1000, abs=30)
    t, _ = samples_of(path)
    assert all(b > a for a, b in zip(t, t[1:]))


@pytest.mark.parametrize("back_after", [False, True])
def test_a_session_that_ends_while_a_sensor_is_away_counts_the_outage(tmp_path, back_after):
    # The outage's gap is known for sure only when the sensor answers again, maybe never;
    # a session closing first must still say what it lost rather than end short silently
    # (before: 2 s of samples, 0 dropped, no gap, for a 5 s session).
    from tests.rig import T0

    faults = Faults(absent=[(T0 + 2_000_000_000, T0 + (8 if back_after else 60) * 10**9)])
    rig = Rig(tmp_path, faults=faults)
    sid = start(rig)
    rig.run(5.0)
    assert rig.channel.counters.state == "down"
    stop(rig)
    rig.finish(4.0 if back_after else 1.5)
    manifest, _ = stored(rig, sid)
    sensor = manifest["sensors"][0]
    assert [g["reason"] for g in sensor["gaps"]] == ["sensor_unreachable"]
    assert sensor["dropped"] == sensor["gaps"][0]["lost"] > 500
    assert abs(sensor["samples"] + sensor["dropped"] - 200 * manifest["duration_s"]) <= 3


def test_a_device_that_disappears_is_picked_up_again_and_the_gap_recorded(tmp_path):
    from tests.rig import T0

    faults = Faults(absent=[(T0 + 2_000_000_000, T0 + 4_000_000_000)])
    rig = Rig(tmp_path, faults=faults)
    sid = start(rig)
    rig.run(7.0)
    assert rig.channel.counters.state == "up"
    stop(rig)
    rig.finish()
    manifest, _ = stored(rig, sid)
    sensor = manifest["sensors"][0]
    assert [g["reason"] for g in sensor["gaps"]] == ["sensor_unreachable"]
    gap = sensor["gaps"][0]
    # the gap covers the outage and at most one probe interval (1 s) after it
    assert 2.0 <= (gap["end_ns"] - gap["start_ns"]) / 1e9 <= 3.1
    assert sensor["dropped"] == gap["lost"]
    # exact on the fake clock: one sample for the gap's rounding, one per window edge
    assert abs(sensor["samples"] + sensor["dropped"] - 200 * manifest["duration_s"]) <= 3


def test_bus_errors_are_retried_without_losing_samples(tmp_path):
    rig = Rig(tmp_path, rate_hz=200, faults=Faults(error_rate=0.01))
    sid = start(rig)
    rig.run(20.0)
    stop(rig)
    rig.finish()
    manifest, path = stored(rig, sid)
    assert rig.channel.counters.bus_errors > 0
    assert manifest["sensors"][0]["dropped"] == 0
    assert manifest["sensors"][0]["samples"] == pytest.approx(20 * 200, abs=3)


@pytest.mark.parametrize("driver_name, rate_hz", [("mpu6050", 1000), ("icm42688", 1000),
                                                  ("lsm6dsox", 833)])
@pytest.mark.parametrize("clock_error", [0.02, -0.02])
def test_timestamps_follow_the_true_sampling_instants(tmp_path, clock_error, driver_name,
                                                      rate_hz):
    rig = Rig(tmp_path, rate_hz=rate_hz, clock_error=clock_error, poll_s=0.015, jitter_s=0.005,
              driver_name=driver_name)
    rig.run(120.0)
    blocks, _ = rig.ring.read(0)
    stamps = [t for b in blocks for t in b.t_ns]
    truth = rig.chip.delivered_true_ns[-len(stamps):]
    period_ns = 1e9 / rate_hz / (1 + clock_error)
    settled = [abs(a - b) for a, b in zip(stamps, truth)][len(stamps) // 2:]
    p99 = statistics.quantiles(settled, n=100)[98]
    assert p99 < 0.02 * period_ns, p99  # issue 15: under 2 % of a period
    assert rig.channel.timebase.rate_hz == pytest.approx(rate_hz * (1 + clock_error), rel=1e-4)


def test_a_burst_whose_overflow_check_failed_is_stamped_from_its_own_count(tmp_path):
    # The MPU-6050 driver reads INT_STATUS after each burst (FIFO_OFLOW_INT, bit 4: Linux
    # drivers/iio/imu/inv_mpu6050/inv_mpu_iio.h, INV_MPU6050_BIT_FIFO_OVERFLOW_INT) before
    # it hands the burst over; when that read fails on the bus, the burst is handed over at
    # the next poll, once the flag could be read. Its frames were counted at the first poll,
    # and are stamped from there. (Before: from the next poll's clock, a poll late in the
    # reads' bounds, and the frames counted since pushed later still.)
    rig = Rig(tmp_path, rate_hz=1000, poll_s=None)
    rig.run(5.0)
    real_read, rng, failed = rig.bus.read, random.Random(3), [False]

    def read(address: int, register: int, length: int) -> bytes:
        if register == INT_STATUS:  # a glitch now and then, never twice in a row (the
            # FIFO would overflow: the retry hands the burst over without draining more)
            failed.append(not failed[-1] and rng.random() < 0.2)
            if failed[-1]:
                raise OSError(errno.EIO, "EIO")
        return real_read(address, register, length)

    rig.bus.read = read
    rig.run(10.0)
    assert sum(failed) > 50 and rig.channel.counters.dropped == 0
    blocks, _ = rig.ring.read(0)
    stamps = [t for b in blocks for t in b.t_ns]
    truth = rig.chip.delivered_true_ns[-len(stamps):]
    worst = max(abs(a - b) for a, b in zip(stamps, truth, strict=True))
    assert worst < 0.2 * 1e6, worst  # as without the glitches (~0.11 ms here); before: 24 ms


@pytest.mark.parametrize("driver_name, rate_hz, overhead_ns", [("lsm6dsox", 1667, 100_000),
                                                                ("icm42688", 1000, 150_000)])
def test_a_steady_overhead_around_every_transfer_does_not_stop_the_rate_being_learnt(
        tmp_path, driver_name, rate_hz, overhead_ns):
    # Every transfer takes longer than its bits on the wire (the ioctl, i2c-dev, the
    # completion interrupt; an SCL slower than nominal when the Pi's core clock scales), so
    # every count's window is wider than the wire alone makes it. That is this bus's usual
    # width, not a stopped thread: the reads are still fitted and the chip's true rate
    # (2 % fast here) is learnt. (Found by review: no read was fitted, the rate stayed
    # nominal and the stamps ran up to 282 ms late.)
    rig = Rig(tmp_path, rate_hz=rate_hz, driver_name=driver_name, poll_s=None,
              clock_error=0.02, buffer_s=30)
    real_read = rig.bus.read

    def slow_read(address: int, register: int, length: int) -> bytes:
        rig.clock.advance(overhead_ns / 1e9)  # into the kernel, before the wire
        data = real_read(address, register, length)
        rig.clock.advance(overhead_ns / 1e9)  # the completion, the wake-up, the return
        return data

    rig.bus.read = slow_read
    rig.run(20.0)
    assert rig.channel.timebase.rate_hz == pytest.approx(rate_hz * 1.02, rel=1e-3)
    blocks, _ = rig.ring.read(0)
    stamps = [t for b in blocks for t in b.t_ns][-int(10 * rate_hz):]
    truth = rig.chip.delivered_true_ns[-len(stamps):]
    assert max(abs(a - b) for a, b in zip(stamps, truth, strict=True)) < 1e9 / rate_hz


def test_a_step_up_in_every_transfers_cost_does_not_stop_the_rate_being_learnt(tmp_path):
    # The usual count window follows a lasting change within tens of reads, so reads are
    # fitted again and the chip's true rate (2 % fast) is learnt. (Found by review: it rose
    # 2 µs a read, and the rate stayed at its early estimate, 1699.501 Hz.) The stamps stay
    # biased early by up to the overhead before the wire here, as they were before counts
    # were timed at all.
    rig = Rig(tmp_path, rate_hz=1667, driver_name="lsm6dsox", poll_s=None, clock_error=0.02,
              buffer_s=30)
    real_read, t0 = rig.bus.read, rig.clock.now

    def read(address: int, register: int, length: int) -> bytes:
        slow = rig.clock.now - t0 >= 0.3e9
        rig.clock.advance(0.0015 if slow else 0)
        data = real_read(address, register, length)
        rig.clock.advance(0.0015 if slow else 0)
        return data

    rig.bus.read = read
    rig.run(30.0)
    assert rig.channel.timebase.rate_hz == pytest.approx(1667 * 1.02, rel=1e-4)


class _DecodeFailure:
    """Wraps the ``FifoRead`` the MPU driver makes of a burst it drained: raises on the
    calls chosen, i.e. after the FIFO was emptied (the failure the sampler cannot retry)."""

    def __init__(self, real, fail_calls: range) -> None:
        self.real, self.fail_calls, self.calls = real, fail_calls, 0

    def __call__(self, *args, **kw):
        self.calls += 1
        if self.calls in self.fail_calls:
            raise ValueError("corrupt burst")
        return self.real(*args, **kw)


def _driver_error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "edge_recorder.sampling.sampler" and "driver_error" in r.getMessage()]


def test_a_decode_failure_after_the_fifo_was_drained_is_a_counted_gap(tmp_path, monkeypatch,
                                                                      caplog):
    from edge_recorder.sensors import mpu6050
    rig = Rig(tmp_path, rate_hz=200)  # polled every 20 ms: 4 samples a burst
    sid = start(rig)
    rig.run(1.0)
    failure = _DecodeFailure(mpu6050.FifoRead, range(1, 2))
    monkeypatch.setattr(mpu6050, "FifoRead", failure)
    rig.run(1.0)
    stop(rig)
    rig.finish()
    manifest, path = stored(rig, sid)
    sensor = manifest["sensors"][0]
    assert rig.channel.counters.driver_errors == 1
    assert [g["reason"] for g in sensor["gaps"]] == ["driver_error"]
    gap = sensor["gaps"][0]
    # the burst the driver drained (one poll, 20 ms = 4 samples) and what arrived while it
    # was read and the FIFO reset (emulated bus time: under one more sample)
    assert 4 <= gap["lost"] <= 5
    assert sensor["dropped"] == gap["lost"] == rig.channel.counters.dropped
    t, _ = samples_of(path)
    assert len(t) == sensor["samples"]
    # every sample period of the session is a sample or in the gap; one sample either way
    # for where the session's window cut the 200 Hz grid
    span = (t[-1] - t[0]) * 200 / 1e9 + 1
    assert sensor["samples"] + sensor["dropped"] == pytest.approx(span, abs=1)
    assert any(x > gap["end_ns"] for x in t)  # sampling went on after it
    lines = _driver_error_lines(caplog)
    assert len(lines) == 1 and "ValueError: corrupt burst" in lines[0], lines
    assert not any(r.exc_info for r in caplog.records)  # no traceback


@pytest.mark.parametrize("stop_periods", [20, 60])
def test_a_stop_after_a_driver_errors_fifo_restart_counts_nothing_twice(tmp_path, monkeypatch,
                                                                        stop_periods):
    # A burst drained and then undecodable: the FIFO is reset and the loss ends at the next
    # read's first frame, as an overflow's does. A stop after the write that restarted the
    # FIFO leaves what the chip sampled meanwhile in it, read next, not lost too. (Found by
    # review: counted up to the reset's return, those samples were counted twice and
    # stamped late by the stop.)
    from edge_recorder.sensors import mpu6050
    rig = Rig(tmp_path, rate_hz=1000, poll_s=None, buffer_s=100)
    rig.run(3.0)

    before = (rig.chip.samples_generated, accounted(rig))
    failure = _DecodeFailure(mpu6050.FifoRead, range(1, 2))
    monkeypatch.setattr(mpu6050, "FifoRead", failure)
    real_restart = rig.driver.write_restarting

    def restarted_then_stopped(register: int, value: int) -> None:
        real_restart(register, value)
        if failure.calls:  # the driver error's reset
            rig.driver.write_restarting = real_restart
            rig.clock.advance(stop_periods / 1000)

    rig.driver.write_restarting = restarted_then_stopped
    rig.run(2.0)
    assert rig.channel.counters.driver_errors == 1
    assert accounted(rig) - before[1] - (rig.chip.samples_generated - before[0]) in (-1, 0, 1)
    blocks, _ = rig.ring.read(0)
    stamps = [t for b in blocks for t in b.t_ns][-1000:]
    truth = rig.chip.delivered_true_ns[-len(stamps):]
    assert max(abs(a - b) for a, b in zip(stamps, truth, strict=True)) < 1e6


def test_a_driver_failing_on_every_poll_logs_once_and_counts_every_loss(tmp_path, monkeypatch,
                                                                       caplog):
    from edge_recorder.sensors import mpu6050
    rig = Rig(tmp_path, rate_hz=200)
    rig.run(1.0)
    dropped_before = rig.channel.counters.dropped
    failure = _DecodeFailure(mpu6050.FifoRead, range(1, 10**9))
    monkeypatch.setattr(mpu6050, "FifoRead", failure)
    rig.run(2.0)  # 100 polls, each draining a burst that cannot be decoded
    assert rig.channel.counters.driver_errors >= 90
    lines = _driver_error_lines(caplog)
    assert len(lines) == 1, lines
    monkeypatch.setattr(mpu6050, "FifoRead", failure.real)
    samples = rig.channel.counters.samples
    rig.run(1.0)  # the last reset's loss ends at the first frame after it
    assert rig.channel.counters.samples - samples == pytest.approx(200, abs=5)
    assert rig.channel.counters.state == "up"
    gaps = rig.ring.gaps_between(0, rig.clock.now + 1)
    lost = sum(g.lost for g in gaps if g.reason == "driver_error")
    assert rig.channel.counters.dropped - dropped_before == lost
    assert lost == pytest.approx(2.0 * 200, abs=2)


@pytest.mark.parametrize("driver_name, rate_hz", [("mpu6050", 1000), ("icm42688", 1000),
                                                  ("lsm6dsox", 833)])
def test_frames_read_between_the_recorders_read_and_its_stop_check_are_not_lost(
        tmp_path, driver_name, rate_hz):
    # The sampler and the recorder are two threads: a read can land while the recorder
    # writes what it took from the ring. If the recorder then saw a frame past the stop
    # and finalised, the frames of that read before the stop were in no file and no gap
    # (up to a poll's worth, silently).
    rig = Rig(tmp_path, rate_hz=rate_hz, driver_name=driver_name, poll_s=None)
    rig.run(1.0)
    sid = start(rig)
    rig.run(2.0)
    stop(rig)
    rig.clock.advance(rig.sampler.interval_s / 2)  # the stop lies inside the next read's frames
    real_read = rig.ring.read

    def read_then_the_sampler_runs(*args, **kw):
        out = real_read(*args, **kw)
        rig.ring.read = real_read
        rig.clock.advance(rig.sampler.interval_s)
        rig.sampler.poll_once()
        return out

    rig.ring.read = read_then_the_sampler_runs
    rig.recorder.pump()
    rig.finish()
    manifest, path = stored(rig, sid)
    sensor = manifest["sensors"][0]
    t, _ = samples_of(path)
    assert len(t) == sensor["samples"]
    assert abs(sensor["samples"] + sensor["dropped"] - rate_hz * manifest["duration_s"]) <= 2


@pytest.mark.parametrize("pause_s", [0.05, 0.3])
def test_a_session_holds_nothing_past_its_deadline_when_the_pump_pauses(tmp_path, pause_s):
    """The pump reads the clock once, then pauses between its steps under a CPU quota
    (``Recorder._pace``) while the samplers go on. A deadline that passes during a pause
    must still cut the file: nothing stamped at or after it is written. (Under a 3 % quota,
    2026-11-28 00:43 UTC, a 10 s session's ICM-42688 held 8371 samples up to 10.212 s, and
    with its 1843 dropped counted 102.1 % of its window.)"""
    rig = Rig(tmp_path, rate_hz=200, settings=SessionConfig(duration_s=1.0))
    rig.run(0.5)
    sid = start(rig)

    def pause() -> None:  # the samplers keep polling while the recorder waits
        rig.clock.advance(pause_s)
        rig.sampler.poll_once()

    rig.recorder._pace = pause  # type: ignore[method-assign]
    rig.finish(2.5)
    manifest, path = stored(rig, sid)
    t, _ = samples_of(path)
    (sensor,) = manifest["sensors"]
    assert sensor["dropped"] == 0
    assert abs(sensor["samples"] - 200) <= 1, sensor["samples"]
    start_ns = iso_ns(manifest["started_at"])
    assert max(t) - start_ns < 1_000_000_000, (max(t) - start_ns) / 1e9


def test_samples_evicted_past_the_deadline_are_not_counted_lost(tmp_path):
    """Once a session's ring is read up to its deadline, what the ring evicts after it is
    no loss of that session's. (Review, 2026-11-28: a ring of 0.5 s and pump pauses of
    0.1 s counted 1 dropped beside all 200 samples of a 1 s window at 200 Hz.)"""
    rig = Rig(tmp_path, rate_hz=200, buffer_s=0.5, settings=SessionConfig(duration_s=1.0))
    rig.run(0.5)
    sid = start(rig)

    def pause() -> None:
        rig.clock.advance(0.1)
        rig.sampler.poll_once()

    rig.recorder._pace = pause  # type: ignore[method-assign]
    rig.finish(3.0)
    manifest, _ = stored(rig, sid)
    (sensor,) = manifest["sensors"]
    assert (sensor["samples"], sensor["dropped"]) == (200, 0)


def test_a_stop_that_comes_after_the_deadline_stops_at_the_deadline(tmp_path):
    """The deadline passed, the pump that would mark it has not run yet, a stop command
    comes: the window still ends at the deadline, and says so (``duration``)."""
    rig = Rig(tmp_path, rate_hz=200, settings=SessionConfig(duration_s=1.0))
    rig.run(0.5)
    sid = start(rig)
    rig.run(0.95)
    rig.clock.advance(0.08)  # past the deadline, no pump since
    rig.sampler.poll_once()
    stop(rig)
    rig.finish(2.0)
    manifest, path = stored(rig, sid)
    assert manifest["stop_reason"] == "duration" and manifest["duration_s"] == 1.0
    (sensor,) = manifest["sensors"]
    assert abs(sensor["samples"] - 200) <= 1 and sensor["dropped"] == 0
