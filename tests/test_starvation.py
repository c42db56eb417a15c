"""Honest accounting when the sampler is starved of CPU (a loaded Pi, a small cgroup quota).

Starvation is played on the fake clock: the sampler gets a few polls, then nothing for
hundreds of ms, again and again, on every strict chip emulator. Whatever it loses, each
lost sample is counted once: gaps never overlap, they add up to ``dropped``, samples
plus dropped are the rate times the duration, and sampling is whole again as soon as the
CPU returns. (Before: every overflow counted again from the last sample, so one 10 s
session reported 104,320 dropped for ~10,000 lost.)
"""

from __future__ import annotations

import math
import random

import pytest

from edge_recorder.recording.events import StartRequested, StopRequested, Trigger
from edge_recorder.sensors.base import STANDARD_GRAVITY_MPS2
from edge_recorder.sensors.emulation import (
    EmulatedIcm42688,
    EmulatedLsm6ds3,
    EmulatedLsm6dsox,
    EmulatedMpu6050,
    EmulatedMpu9250,
)
from tests.rig import Rig, samples_of, stored

CHIPS = [("mpu6050", EmulatedMpu6050, 1000), ("mpu6050", EmulatedMpu9250, 1000),
         ("icm42688", EmulatedIcm42688, 1000), ("lsm6dsox", EmulatedLsm6dsox, 833),
         ("lsm6dsox", EmulatedLsm6ds3, 833)]


def check_session(manifest: dict, t: list[int], az: list[float], rate_hz: float) -> None:
    sensor = manifest["sensors"][0]
    gaps = sorted(sensor["gaps"], key=lambda g: g["start_ns"])
    assert all(a["end_ns"] <= b["start_ns"] for a, b in zip(gaps, gaps[1:])), "gaps overlap"
    assert sum(g["lost"] for g in gaps) == sensor["dropped"]
    expected = rate_hz * manifest["duration_s"]
    assert sensor["samples"] + sensor["dropped"] == pytest.approx(expected, rel=0.03)
    assert all(b > a for a, b in zip(t, t[1:])), "timestamps must increase strictly"
    for g in gaps:  # no sample inside a gap
        assert not [x for x in t if g["start_ns"] < x < g["end_ns"] - 1]


@pytest.mark.parametrize("driver_name, chip_cls, rate_hz", CHIPS,
                         ids=[c[1].__name__ for c in CHIPS])
def test_starved_sampler_counts_every_lost_sample_once_and_recovers(
        tmp_path, driver_name, chip_cls, rate_hz):
    rig = Rig(tmp_path, rate_hz=rate_hz, driver_name=driver_name, chip_cls=chip_cls,
              poll_s=None)
    rng = random.Random(3)
    replies: list[dict] = []
    rig.recorder.handle(StartRequested(Trigger("mqtt"), duration_s=None, reply=replies.append))
    session_id = replies[0].session_id
    rig.run(0.5)
    fill_s = rig.chip.fifo_capacity_bytes / rig.chip.frame_size() / rate_hz
    for _ in range(25):  # a few polls, then a stall longer than the FIFO lasts, again
        rig.clock.advance(rng.uniform(1.2, 3.0) * fill_s)
        for _ in range(rng.randint(1, 3)):
            rig.clock.advance(rig.sampler.interval_s)
            rig.sampler.poll_once()
        rig.recorder.pump()
    overflows = rig.channel.counters.overflows
    assert overflows >= 20
    before = rig.channel.counters.samples
    rig.run(2.0)  # the CPU is back
    assert rig.channel.counters.overflows == overflows
    assert rig.channel.counters.samples - before == pytest.approx(2.0 * rate_hz, rel=0.03)
    rig.recorder.handle(StopRequested(Trigger("mqtt"), reply=replies.append))
    rig.finish()
    manifest, path = stored(rig, session_id)
    t, az = samples_of(path)
    check_session(manifest, t, az, rate_hz)
    counters = rig.channel.counters
    ring_gaps = rig.ring.gaps_between(0, 2**62)
    assert sum(g.lost for g in ring_gaps) == counters.dropped
    assert manifest["sensors"][0]["dropped"] > 25 * 0.2 * fill_s * rate_hz
    blocks, _ = rig.ring.read(0)
    for b in blocks:
        for x, y, z in zip(*b.columns[:3], strict=True):
            assert 0.7 < math.sqrt(x * x + y * y + z * z) / STANDARD_GRAVITY_MPS2 < 1.3
