"""Time a Pi can trust: monotonic sampling and deadlines, wall-clock steps survived and
recorded, sync state in every session, unsynced sessions re-stamped before publishing."""

from __future__ import annotations

import ctypes
import errno
import json
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from mcap.reader import make_reader

from edge_recorder.app import Daemon
from edge_recorder.clock import (
    MONO_SOURCE,
    STA_UNSYNC,
    TIME_ERROR,
    Clock,
    KernelSync,
    SteppedWall,
    _Timex,
    monotonic_ns,
)
from edge_recorder.config import IntervalTriggerConfig, SessionConfig, parse_config
from edge_recorder.errors import ConfigError
from edge_recorder.recording.events import StartRequested, StopRequested, Trigger
from edge_recorder.recording.restamp import iso_ns, restamp_if_synced
from edge_recorder.recording.store import file_digest
from edge_recorder.sessionfile import iter_batches
from edge_recorder.triggers.interval import IntervalTrigger
from tests.rig import T0, WALL_AT_T0, Rig, samples_of, stored

RATE_HZ = 200
PERIOD_NS = 1e9 / RATE_HZ
HOUR_NS = 3600 * 10**9


# --- the clock itself --------------------------------------------------------------------

def test_a_step_is_detected_once_and_read_noise_is_not_a_step() -> None:
    mono = [10**12]
    jitter = [0]
    wall_offset = [1_700_000_000 * 10**9]
    clock = Clock(mono=lambda: mono[0], wall=lambda: mono[0] + wall_offset[0] + jitter[0],
                  synced=lambda: True, boot_id="b")
    base = clock.offset_ns()
    for j in (900_000, -900_000, 2_000_000, 0):  # reading noise, well under a step
        jitter[0] = j
        mono[0] += 10**8
        assert clock.offset_ns() == base
    assert clock.steps_since(0) == []
    mono[0] += 10**8
    wall_offset[0] += HOUR_NS
    assert clock.offset_ns() == base + HOUR_NS
    mono[0] += 10**8
    clock.offset_ns()
    (step,) = clock.steps_since(0)
    assert step.step_ns == HOUR_NS
    assert step.at_ns == step.mono_ns + base + HOUR_NS  # on the clock as it is after the step
    assert clock.to_wall(mono[0]) == mono[0] + base + HOUR_NS
    assert clock.steps_since(step.mono_ns + 1) == []


def test_a_stale_reading_from_another_thread_is_not_a_step_back() -> None:
    clock = Clock(mono=lambda: 0, wall=lambda: 0, synced=lambda: None, boot_id="b")
    assert clock._track(HOUR_NS, 200) == HOUR_NS  # thread B: read after the step, applied
    assert clock._track(0, 150) == HOUR_NS  # thread A: read before it, applied after
    assert [s.step_ns for s in clock.steps_since(-1)] == [HOUR_NS]


def test_the_monotonic_source_is_boottime() -> None:
    # Linux: CLOCK_BOOTTIME = CLOCK_MONOTONIC + time spent suspended, never stepped
    # (kernel Documentation/core-api/timekeeping.rst, ktime_get_boottime)
    assert MONO_SOURCE == "CLOCK_BOOTTIME"
    a = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    b = monotonic_ns()
    c = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert a <= b <= c


def test_timex_layout_matches_the_kernel_abi() -> None:
    # include/uapi/linux/timex.h, struct timex: unsigned int modes; then long offset, freq,
    # maxerror, esterror; int status — so status sits after 5 longs (modes padded to a long)
    assert _Timex.status.offset == 5 * ctypes.sizeof(ctypes.c_long)
    # the kernel struct ends with 11 ints of padding after "int tai" (glibc: 208 B on LP64)
    assert ctypes.sizeof(_Timex) >= _Timex.tai.offset + 12 * 4
    assert STA_UNSYNC == 0x0040 and TIME_ERROR == 5  # timex.h: STA_UNSYNC, TIME_ERROR


@pytest.mark.parametrize(("status", "maxerror_us", "result", "errno_", "expected"), [
    (STA_UNSYNC, 16_000_000, TIME_ERROR, 0, False),  # booted, no NTP client yet (ntp_clear)
    (0, 20_000, 0, 0, True),              # TIME_OK: timesyncd/ntpd disciplined the clock
    (0x2001, 20_000, 0, 0, True),         # STA_PLL | STA_NANO
    (STA_UNSYNC, 20_000, TIME_ERROR, 0, True),  # chronyd without rtcsync: flag kept on purpose
    (STA_UNSYNC, 16_000_000, TIME_ERROR, 0, False),  # lost its server for ~9 h: error at limit
    (0, 0, -1, errno.EPERM, None),        # seccomp (systemd ProtectClock=yes) refuses the call
])
def test_kernel_sync_reads_sta_unsync_and_the_maximum_error(status, maxerror_us, result,
                                                            errno_, expected) -> None:
    # kernel/time/ntp.c: ntp_clear() sets STA_UNSYNC and maxerror = NTP_PHASE_LIMIT (16 s);
    # second_overflow() grows maxerror 500 µs/s and sets STA_UNSYNC at the limit.
    # systemd src/basic/time-util.c ntp_synced(): synchronised iff maxerror < 16 s.
    sync = KernelSync()

    def fake_adjtimex(ref: Any) -> int:
        tx = ref._obj
        assert tx.modes == 0, "must only read"
        tx.status, tx.maxerror = status, maxerror_us
        ctypes.set_errno(errno_)
        return result

    sync._adjtimex = fake_adjtimex
    assert sync() is expected


def test_the_real_kernel_is_read_through_the_right_struct_layout() -> None:
    """Read this machine's kernel: the fields land where the kernel ABI puts them (a wrong
    layout would read status/maxerror from the wrong bytes)."""
    sync = KernelSync()
    if sync._adjtimex is None:
        pytest.skip(sync.unknown_because)
    tx = _Timex()
    result = sync._adjtimex(ctypes.byref(tx))
    assert result in range(0, 6)  # TIME_OK .. TIME_ERROR (timex.h)
    assert 0 <= tx.maxerror <= 16_000_000 and 0 <= tx.esterror <= 16_000_000
    assert tx.status & ~0xFFFF == 0  # every STA_* flag fits in 16 bits
    assert 1 <= tx.tick <= 1_000_000  # µs per tick: 10000 at USER_HZ 100
    if tx.status & STA_UNSYNC:  # kernel __do_adjtimex: is_error_status() → TIME_ERROR
        assert result == TIME_ERROR
    assert sync() is ((not tx.status & STA_UNSYNC) or tx.maxerror < 16_000_000)


# --- sessions across a step (fake clock: deterministic) --------------------------------------

def _check_one_time_base(manifest: dict[str, Any], path: Path, seconds: float,
                         step_ns: int, wall_at_stop_ns: int) -> list[int]:
    t, _ = samples_of(path)
    assert manifest["sensors"][0]["dropped"] == 0
    assert len(t) == pytest.approx(seconds * RATE_HZ, rel=0.03)
    assert manifest["duration_s"] == pytest.approx(seconds, abs=0.1)
    assert all(0 < b - a <= 3 * PERIOD_NS for a, b in zip(t, t[1:])), "a gap or a jump"
    assert abs(t[-1] - wall_at_stop_ns) < 2e9, "last sample on the stepped clock"
    started, stopped = iso_ns(manifest["started_at"]), iso_ns(manifest["stopped_at"])
    assert started <= t[0] < started + 3 * PERIOD_NS
    assert stopped - 3 * PERIOD_NS < t[-1] < stopped
    assert [s["step_ns"] for s in manifest["clock"]["steps"]] == [step_ns]
    return t


@pytest.mark.parametrize("step_s", [3600, -5])
def test_a_step_mid_session_moves_the_whole_session_onto_the_new_clock(tmp_path, step_s):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=4))
    rig.run(1)
    sid = rig.ask(StartRequested, trigger=Trigger("mqtt"))["session_id"]
    rig.run(1)
    rig.clock.step(step_s)
    rig.run(3)
    at_stop = rig.clock.wall()
    rig.finish()
    manifest, path = stored(rig, sid)
    assert manifest["stop_reason"] == "duration"
    _check_one_time_base(manifest, path, 4, step_s * 10**9, at_stop)
    assert manifest["clock"]["offset_ns"] == WALL_AT_T0 - T0 + step_s * 10**9
    assert manifest["clock"]["synced"] is True
    # what a third-party reader sees: message log times on the same clock
    with open(path, "rb") as f:
        log_times = [m.log_time for _, _, m in make_reader(f).iter_messages()]
    assert min(log_times) >= iso_ns(manifest["started_at"])


def test_two_steps_in_one_session_one_time_base_both_listed(tmp_path):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=4))
    sid = rig.ask(StartRequested, trigger=Trigger("mqtt"))["session_id"]
    rig.run(1)
    rig.clock.step(3600)
    rig.run(1)
    rig.clock.step(-5)
    beats: list[float] = []
    rig.recorder._heartbeat = lambda: beats.append(1.0)  # type: ignore[method-assign]
    rig.run(2)
    at_stop = rig.clock.wall()
    rig.finish()
    manifest, path = stored(rig, sid)
    t, _ = samples_of(path)
    assert all(0 < b - a <= 3 * PERIOD_NS for a, b in zip(t, t[1:]))
    assert abs(t[-1] - at_stop) < 2e9 and len(t) == pytest.approx(800, rel=0.03)
    assert [x["step_ns"] for x in manifest["clock"]["steps"]] == [HOUR_NS, -5 * 10**9]
    messages = len(list(iter_batches(path)))  # one per sensor per 0.5 s flush
    assert messages >= 7 and len(beats) >= messages  # the re-stamp beat after every message,
    # keeping the recorder's watchdog heartbeat going


def test_a_step_inside_the_pre_trigger_window(tmp_path):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=2, pre_trigger_s=2))
    rig.run(2)
    rig.clock.step(3600)  # NTP steps; a second later a button asks for the last 2 s
    rig.run(1)
    sid = rig.ask(StartRequested, trigger=Trigger("gpio"))["session_id"]
    rig.run(2)
    at_stop = rig.clock.wall()
    rig.finish()
    manifest, path = stored(rig, sid)
    t = _check_one_time_base(manifest, path, 4, HOUR_NS, at_stop)
    assert manifest["pre_trigger_s"] == 2
    assert t[0] > rig.clock.wall() - 6 * 10**9  # the early samples moved too


def test_a_session_open_across_a_backward_hour_stops_on_time(tmp_path):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=None, max_duration_s=3))
    sid = rig.ask(StartRequested, trigger=Trigger("mqtt"))["session_id"]
    rig.run(1)
    rig.clock.step(-3600)
    rig.run(2)
    at_stop = rig.clock.wall()
    rig.finish()
    manifest, path = stored(rig, sid)
    assert manifest["stop_reason"] == "max_duration"
    _check_one_time_base(manifest, path, 3, -HOUR_NS, at_stop)


def test_a_step_after_stop_but_before_finalising_is_applied_too(tmp_path):
    rig = Rig(tmp_path)
    sid = rig.ask(StartRequested, trigger=Trigger("mqtt"))["session_id"]
    rig.run(1)
    rig.ask(StopRequested, trigger=Trigger("mqtt"), session_id=sid)
    rig.clock.step(60)
    at_stop = rig.clock.wall()
    rig.finish()
    manifest, path = stored(rig, sid)
    _check_one_time_base(manifest, path, 1, 60 * 10**9, at_stop)


# --- unsynced -> synced -------------------------------------------------------------------------

def test_unsynced_session_is_restamped_before_publishing_once_synced(tmp_path):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=2))
    rig.clock.synced = False  # booted on fake-hwclock's time
    first = rig.ask(StartRequested, trigger=Trigger("mqtt"))["session_id"]
    rig.finish(2.5)
    manifest, path = stored(rig, first)
    assert manifest["clock"]["synced"] is False and manifest["clock"]["steps"] == []
    before, _ = samples_of(path)

    # still unsynchronised when the publisher gets to it: published as it is
    assert restamp_if_synced(rig.store, rig.clock.clock, first) is False
    assert rig.store.manifest(first) == manifest

    rig.run(1)
    rig.clock.step(3 * 3600 + 0.25)  # NTP's first sync
    rig.clock.synced = True
    rig.run(0.5)
    assert restamp_if_synced(rig.store, rig.clock.clock, first) is True
    after_manifest = rig.store.manifest(first)
    after, _ = samples_of(path)
    shift = 3 * HOUR_NS + 250_000_000
    assert after == [t + shift for t in before]
    assert after_manifest["clock"]["synced"] is True
    assert after_manifest["clock"]["restamped"]["shift_ns"] == shift
    assert iso_ns(after_manifest["started_at"]) == iso_ns(manifest["started_at"]) + shift
    assert after_manifest["duration_s"] == manifest["duration_s"]
    assert (after_manifest["bytes"], after_manifest["sha256"]) == file_digest(path)
    with open(path, "rb") as f:  # the record inside the file says the same
        inner = [json.loads(m.metadata["manifest"]) for m in make_reader(f).iter_metadata()
                 if m.name == "session"]
    assert inner[0]["clock"] == after_manifest["clock"]
    # once is enough
    assert restamp_if_synced(rig.store, rig.clock.clock, first) is False


def test_a_session_from_another_boot_is_not_restamped(tmp_path):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=1))
    rig.clock.synced = False
    sid = rig.ask(StartRequested, trigger=Trigger("mqtt"))["session_id"]
    rig.finish(1.5)
    rig.clock.synced = True
    rig.clock.step(100)
    rebooted = Clock(mono=rig.clock, wall=rig.clock.wall, synced=lambda: True,
                     source="fake", boot_id="another-boot")
    assert restamp_if_synced(rig.store, rebooted, sid) is False
    assert rig.store.manifest(sid)["clock"]["synced"] is False


def test_a_restamp_cut_short_by_a_crash_is_settled(tmp_path):
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=1))
    sid = rig.ask(StartRequested, trigger=Trigger("mqtt"))["session_id"]
    rig.finish(1.5)
    path = rig.store.path("outbox", sid)
    original = path.read_bytes()
    rig.store.replacement_path(sid).write_bytes(b"half a rewrite")  # manifest not committed
    rig.store.settle_replacement(sid)
    assert path.read_bytes() == original and not rig.store.replacement_path(sid).exists()


# --- the interval trigger across steps --------------------------------------------------------

def _drive(rig: Rig, trigger: IntervalTrigger, seconds: float,
           steps: dict[int, float]) -> list[tuple[int, int, int]]:
    """Tick the trigger on the fake clock; ``steps``: at whole second n, step the wall.
    Returns ``(mono, wall then, multiple)`` per start."""
    fired: list[tuple[int, int, int]] = []
    original = trigger.fire

    def record(at_ns: int, slot_ns: int | None = None, label_ns: int | None = None) -> None:
        original(at_ns, slot_ns, label_ns)
        fired.append((at_ns, rig.clock.clock.to_wall(at_ns), trigger.last_label_ns or 0))

    trigger.fire = record  # type: ignore[method-assign]
    begin = rig.clock.now
    second = 0
    while rig.clock.now < begin + int(seconds * 1e9):
        wait = trigger.tick()
        rig.clock.advance(min(max(wait, 0.001), 0.25))
        elapsed = int((rig.clock.now - begin) / 1e9)
        if elapsed > second:
            second = elapsed
            if second in steps:
                rig.clock.step(steps[second])
    return fired


EVERY_NS = 10**10


@pytest.mark.parametrize(("step_at", "step_s"),
                         [(12, -5), (12, -9.5), (12, 4), (27, 7), (12, 3600), (12, -3600)])
def test_interval_trigger_stays_aligned_without_firing_twice_or_skipping(tmp_path, step_at,
                                                                          step_s):
    rig = Rig(tmp_path)
    trigger = IntervalTrigger(IntervalTriggerConfig(every_s=10, duration_s=1), lambda e: None,
                              lambda sid: False, clock=rig.clock.clock)
    fired = _drive(rig, trigger, 70, {step_at: step_s})
    monos = [m for m, _, _ in fired]
    labels = [x for _, _, x in fired]
    assert all(x % EVERY_NS == 0 for x in labels), "every start is a multiple of 10 s"
    late = [(w, x) for m, w, x in fired if abs(w - x) > 1e6]
    assert len(late) <= 1, late  # only a multiple a step jumped over starts late
    gaps = [(b - a) / 1e9 for a, b in zip(monos, monos[1:])]
    assert all(0 < g <= 20 for g in gaps), gaps  # the cadence survives any step
    if -10 < step_s < 5:  # within what the wall times can absorb: not twice, none skipped
        assert [b - a for a, b in zip(labels, labels[1:])] == [EVERY_NS] * (len(labels) - 1)
    else:  # too large: the cadence is kept, and the multiples continue on the new clock
        after = [x for m, _, x in fired if m > rig.clock.now - 40 * 10**9]
        assert [b - a for a, b in zip(after, after[1:])] == [EVERY_NS] * (len(after) - 1)
    assert len(fired) == pytest.approx(7, abs=1)


# --- configuration -----------------------------------------------------------------------------

def _config(**kw: Any) -> dict[str, Any]:
    return {"sensors": [{"name": "imu0", "driver": "mpu6050", "bus": "emulated"}], **kw}


def test_wall_clock_steps_need_every_sensor_emulated() -> None:
    ok = parse_config(_config(emulation={"wall_clock_steps": [[2, 3600], [10, -5.5]]}))
    assert ok.emulation.wall_clock_steps == ((2.0, 3600.0), (10.0, -5.5))
    raw = _config(emulation={"wall_clock_steps": [[2, 3600]]})
    raw["sensors"].append({"name": "imu1", "driver": "mpu6050", "bus": 1})
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert any(p.startswith("emulation.wall_clock_steps: only applies when every sensor is "
                            "on bus: emulated (sensors[1] is on bus 1)") for p in e.value.problems)
    for bad in ([[2]], [[-1, 5]], [[2, 0]], "soon", [[True, 3]]):
        with pytest.raises(ConfigError) as e:
            parse_config(_config(emulation={"wall_clock_steps": bad}))
        assert e.value.problems[0].startswith("emulation.wall_clock_steps: must be a list")
    with pytest.raises(ConfigError) as e:
        parse_config(_config(emulation={"wall_clock_step": []}))
    assert "emulation.wall_clock_step: unknown key" in e.value.problems[0]


def test_stepped_wall_steps_at_its_times_and_is_synced_after_the_first() -> None:
    mono = [0]
    wall = SteppedWall([(2, 3600), (5, -5)], mono=lambda: mono[0], wall=lambda: 1000,
                       start_mono_ns=0)
    assert (wall(), wall.synced()) == (1000, False)
    mono[0] = 2 * 10**9
    assert (wall(), wall.synced()) == (1000 + HOUR_NS, True)
    mono[0] = 5 * 10**9
    assert wall() == 1000 + HOUR_NS - 5 * 10**9


# --- the daemon, on real time, with the emulated world's wall clock stepping ------------------

def _cdr_t_ns(data: bytes) -> list[int]:
    """t_ns of one message, decoded from the CDR bytes here (not with the product's code):
    4-byte encapsulation header, uint32 count, 4 bytes alignment, count × int64."""
    (n,) = struct.unpack_from("<I", data, 4)
    return list(struct.unpack_from(f"<{n}q", data, 12))



def clock_pi_config(store: Path, *, port: int = 9, **sections: Any) -> Any:
    """The daemon these tests run: one emulated MPU-6050 at RATE_HZ, MQTT triggers off, the
    broker at ``port`` (9: never reachable, so sessions stay in outbox/), the store in
    ``store``; ``sections`` adds or replaces top-level config sections."""
    return parse_config({
        "device_id": "clock-pi",
        "sensors": [{"name": "imu0", "driver": "mpu6050", "bus": "emulated",
                     "rate_hz": RATE_HZ}],
        "triggers": {"mqtt": False},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "storage": {"dir": str(store), "max_bytes": 100 << 20},
        **sections,
    })

@pytest.mark.slow
@pytest.mark.parametrize("step_s", [3600, -5])
def test_daemon_session_across_an_emulated_ntp_step(tmp_path, step_s):
    config = clock_pi_config(tmp_path / "store", session={"duration_s": 4},
                             emulation={"wall_clock_steps": [[2, step_s]]})
    daemon = Daemon(config)
    done = threading.Event()
    replies: list[dict[str, Any]] = []
    daemon.recorder.on_complete = lambda manifest: done.set()
    daemon.start()
    try:
        time.sleep(1.0)
        daemon.submit(StartRequested(Trigger("mqtt"), reply=replies.append))
        assert done.wait(15), "the session did not complete"
        stepped_now = time.time_ns() + step_s * 10**9
    finally:
        daemon.shutdown()
    sid = replies[0].session_id
    manifest = json.loads((tmp_path / "store" / "outbox" / f"{sid}.json").read_text())
    t: list[int] = []
    with open(tmp_path / "store" / "outbox" / f"{sid}.mcap", "rb") as f:
        for _, channel, message in make_reader(f).iter_messages(log_time_order=True):
            assert channel.topic.endswith("imu0")
            t += _cdr_t_ns(message.data)
    sensor = manifest["sensors"][0]
    assert sensor["dropped"] == 0 and sensor["gaps"] == []
    assert len(t) == sensor["samples"] == pytest.approx(4 * RATE_HZ, rel=0.03)
    assert manifest["duration_s"] == pytest.approx(4.0, abs=0.1)
    assert max(b - a for a, b in zip(t, t[1:])) <= 3 * PERIOD_NS
    assert abs(t[-1] - stepped_now) < 2e9, (t[-1] - stepped_now) / 1e9
    # measured from the clocks themselves: exact to the reading's bracket (≤ 1 ms)
    (step,) = manifest["clock"]["steps"]
    assert step["step_ns"] == pytest.approx(step_s * 10**9, abs=1e6)
    assert manifest["clock"]["synced"] is True  # the emulated world syncs with its first step
    assert iso_ns(manifest["started_at"]) <= t[0]
    assert daemon.status().clock["steps"] == [step]


def test_the_unit_never_waits_for_a_sync_and_may_read_the_sync_state() -> None:
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "edge-recorder.service")
    settings = [line.split("=", 1) for line in unit.read_text().splitlines()
                if "=" in line and not line.startswith("#")]
    after = " ".join(v for k, v in settings if k == "After").split()
    # systemd.special(7): time-sync.target waits for NTP when systemd-time-wait-sync is
    # enabled; time-set.target only for a local source (RTC, fake-hwclock, timesyncd's file)
    assert "time-sync.target" not in after and "time-set.target" in after
    assert "time-sync.target" not in " ".join(v for k, v in settings if k in ("Wants",
                                                                                "Requires"))
    # ProtectClock=yes seccomp-blocks even read-only adjtimex (systemd issue #26413)
    assert dict(settings).get("ProtectClock") == "no"
    allowed = [v.split() for k, v in settings if k == "SystemCallFilter"]
    assert {"adjtimex", "clock_adjtime", "clock_adjtime64"} <= set(allowed[-1])
    assert dict(settings).get("CapabilityBoundingSet") == ""  # so nothing can set the clock


# --- the clock object in the typed manifest ------------------------------------------------

def test_the_manifest_clock_object_is_typed_and_checked() -> None:
    from edge_recorder.documents import DocumentError, Manifest
    from tests.test_documents import manifest_doc

    clock = {"synced": False, "steps": [{"at_ns": 5, "step_ns": -5_000_000_000}],
             "source": "CLOCK_BOOTTIME", "offset_ns": -7, "boot_id": "b-1",
             "restamped": {"at_ns": 9, "shift_ns": 3}}
    m = Manifest.from_dict(manifest_doc(clock=clock))
    assert m.clock is not None and m.clock.steps[0].step_ns == -5_000_000_000
    assert m.to_dict()["clock"] == clock and "clock" not in m.extra
    assert Manifest.from_dict(manifest_doc(clock={"synced": None})).clock.synced is None
    for bad, field in [({"synced": "yes"}, "clock.synced"), ([], "clock"),
                       ({"synced": True, "steps": [{"at_ns": 1}]}, "clock.steps[0]"),
                       ({"synced": True, "offset_ns": 1.5}, "clock.offset_ns"),
                       ({"synced": True, "steps": [{"at_ns": 1, "step_ns": 1}] * 257},
                        "clock.steps"),
                       ({"synced": True, "restamped": {"at_ns": 1}}, "clock.restamped")]:
        with pytest.raises(DocumentError) as err:
            Manifest.from_dict(manifest_doc(clock=bad))
        assert str(err.value).startswith(field), str(err.value)


def test_a_session_salvaged_after_a_crash_keeps_its_clock_and_is_restamped_once_synced(
        tmp_path):
    from edge_recorder.recording.recovery import recover

    rig = Rig(tmp_path)
    rig.clock.synced = False
    sid = rig.ask(StartRequested, trigger=Trigger("mqtt"))["session_id"]
    rig.run(1.5)  # flushed every 0.5 s; then the daemon dies
    rig.recorder.sessions[sid].writer.abort()
    (manifest,) = recover(rig.store)
    assert manifest["stop_reason"] == "recovered"
    assert manifest["clock"]["synced"] is False
    assert manifest["clock"]["offset_ns"] == WALL_AT_T0 - T0
    before, _ = samples_of(rig.store.path("outbox", sid))
    rig.clock.step(600)
    rig.clock.synced = True
    assert restamp_if_synced(rig.store, rig.clock.clock, sid) is True
    after, _ = samples_of(rig.store.path("outbox", sid))
    assert after == [t + 600 * 10**9 for t in before]


# --- through the broker: published unsynced vs re-stamped before publishing ----------------

class _ControlledWall:
    """The real wall clock plus a step and a sync flag the test sets (as NTP would)."""

    def __init__(self) -> None:
        self.offset_ns = 0
        self.synced = False

    def __call__(self) -> int:
        return time.time_ns() + self.offset_ns


@pytest.mark.broker
@pytest.mark.slow
def test_through_the_broker_unsynced_is_said_and_synced_is_restamped(tmp_path, broker, spawn):
    from tests.conftest import wait_until

    wall = _ControlledWall()
    clock = Clock(wall=wall, synced=lambda: wall.synced)
    config = clock_pi_config(tmp_path / "device", port=broker.port,
                             session={"duration_s": 1})
    collected = tmp_path / "collected"
    spawn("collect", "--host", "127.0.0.1", "--port", str(broker.port), "--store",
          str(collected), name="collector")
    daemon = Daemon(config, clock=clock)
    daemon.start()

    def record() -> str:
        replies: list[dict[str, Any]] = []
        daemon.submit(StartRequested(Trigger("mqtt"), reply=replies.append))
        wait_until(lambda: replies, 5, "start reply")
        return str(replies[0].session_id)

    def collected_manifest(sid: str) -> dict[str, Any]:
        path = collected / "sessions" / "clock-pi" / f"{sid}.json"
        wait_until(path.exists, 30, f"the collector to store {sid}")
        return dict(json.loads(path.read_text()))

    def sample_times(sid: str) -> list[int]:
        t: list[int] = []
        with open(collected / "sessions" / "clock-pi" / f"{sid}.mcap", "rb") as f:
            for _, _, message in make_reader(f).iter_messages(log_time_order=True):
                t += _cdr_t_ns(message.data)
        return t

    try:
        wait_until(daemon.link.connected.is_set, 10, "the daemon to connect")
        first = record()
        published_unsynced = collected_manifest(first)
        assert published_unsynced["clock"]["synced"] is False
        assert "restamped" not in published_unsynced["clock"]

        broker.stop()
        wait_until(lambda: not daemon.link.connected.is_set(), 10, "the daemon to notice")
        second = record()
        wait_until(lambda: second in daemon.store.pending(), 10, "the session in the outbox")
        before = daemon.store.manifest(second)
        assert before["clock"]["synced"] is False
        wall.offset_ns, wall.synced = HOUR_NS, True  # NTP steps the clock and syncs
        broker.start()
        restamped = collected_manifest(second)
    finally:
        daemon.shutdown()
    assert restamped["clock"]["synced"] is True
    assert restamped["clock"]["restamped"]["shift_ns"] == pytest.approx(HOUR_NS, abs=1e6)
    shift = restamped["clock"]["restamped"]["shift_ns"]
    assert iso_ns(restamped["started_at"]) - iso_ns(before["started_at"]) == \
        pytest.approx(shift, abs=1000)
    assert restamped["duration_s"] == before["duration_s"]
    t = sample_times(second)
    assert len(t) == restamped["sensors"][0]["samples"] == before["sensors"][0]["samples"]
    assert iso_ns(restamped["started_at"]) <= t[0] and t[-1] < iso_ns(restamped["stopped_at"])
    assert abs(t[-1] - wall()) < 30e9  # on the synchronised clock, not an hour behind
    # the first one went out before the sync and stays as it was published
    assert collected_manifest(first) == published_unsynced


@pytest.mark.slow
def test_daemon_interval_sessions_keep_their_multiples_across_an_emulated_step(tmp_path):
    config = clock_pi_config(
        tmp_path / "store",
        triggers={"mqtt": False,
                  "interval": {"every_s": 2, "duration_s": 0.5, "labels": ["periodic"]}},
        emulation={"wall_clock_steps": [[3, -1.5]]})
    daemon = Daemon(config)
    daemon.start()
    try:
        time.sleep(9)
    finally:
        daemon.shutdown()
    manifests = [json.loads(p.read_text())
                 for p in sorted((tmp_path / "store" / "outbox").glob("*.json"))]
    # a session the step happened in is on the clock after the step as a whole, and one
    # finished unsynced before it was re-stamped onto it once synced: their starts are their
    # multiples moved by the step; the others start on their multiples
    starts = sorted(iso_ns(m["started_at"]) - sum(x["step_ns"] for x in m["clock"]["steps"])
                    - m["clock"].get("restamped", {}).get("shift_ns", 0)
                    for m in manifests if m["stop_reason"] == "duration")
    assert len(starts) >= 3
    multiples = [round(t / 2e9) for t in starts]
    assert all(abs(t - k * 2e9) < 0.3e9 for t, k in zip(starts, multiples)), starts
    # one multiple after another, on the clock of the moment each started: none twice, none
    # skipped, although the wall clock went back 1.5 s in between
    assert [b - a for a, b in zip(multiples, multiples[1:])] == [1] * (len(multiples) - 1)
    # those finished before the emulated sync were re-stamped onto the synchronised clock
    assert any("restamped" in m["clock"] for m in manifests)
    assert all(m["clock"]["synced"] for m in manifests)


@pytest.mark.slow
def test_unsynced_sessions_are_restamped_when_sync_arrives_even_with_no_broker(tmp_path):
    """Re-stamped at once, not only at publish time: a reboot while the broker is still
    out of reach would otherwise leave them on a clock nobody can map any more."""
    from tests.conftest import wait_until

    config = clock_pi_config(tmp_path / "store", session={"duration_s": 1},
                             emulation={"wall_clock_steps": [[3, 60]]})
    daemon = Daemon(config)
    replies: list[Any] = []
    daemon.start()
    try:
        daemon.submit(StartRequested(Trigger("mqtt"), reply=replies.append))
        wait_until(lambda: replies and replies[0].session_id in daemon.store.pending(), 10,
                   "the session in the outbox")
        sid = replies[0].session_id
        before = daemon.store.manifest(sid)
        assert before["clock"]["synced"] is False  # finished before the emulated NTP step
        after = wait_until(lambda: (m := daemon.store.manifest(sid))["clock"]["synced"] and m,
                           10, "the re-stamp once synchronised")
    finally:
        daemon.shutdown()
    assert after["clock"]["restamped"]["shift_ns"] == pytest.approx(60e9, abs=1e6)
    assert iso_ns(after["started_at"]) - iso_ns(before["started_at"]) == \
        pytest.approx(60e9, abs=1e6)
    assert daemon.store.parts_sent(sid) == 0  # nothing was published: no broker


def test_restamper_catches_every_unsynced_session_once_synchronised(tmp_path):
    from edge_recorder.recording.restamp import Restamper

    rig = Rig(tmp_path, settings=SessionConfig(duration_s=0.5))
    restamper = Restamper(rig.store, rig.clock.clock)
    rig.clock.synced = False
    first = rig.ask(StartRequested, trigger=Trigger("mqtt"))["session_id"]
    rig.finish(1)
    restamper.on_idle()  # not synchronised: nothing to do
    assert rig.store.manifest(first)["clock"]["synced"] is False
    rig.clock.step(30)
    rig.clock.synced = True
    restamper.on_idle()
    assert rig.store.manifest(first)["clock"]["restamped"]["shift_ns"] == 30 * 10**9
    # a session finished unsynced in the instant the clock synchronised (the recorder read the
    # flag just before): it reaches the outbox after the pass and is caught at the next turn
    rig.clock.synced = False
    second = rig.ask(StartRequested, trigger=Trigger("mqtt"))["session_id"]
    rig.finish(1)
    rig.clock.synced = True
    rig.clock.step(2)
    restamper.on_idle()
    assert rig.store.manifest(second)["clock"]["restamped"]["shift_ns"] == 2 * 10**9
    assert "restamped" in rig.store.manifest(first)["clock"]  # and the first only once
    assert rig.store.manifest(first)["clock"]["restamped"]["shift_ns"] == 30 * 10**9
