"""The daemon on a small CPU budget: FIFO headroom reported, and honest degradation.

The cgroup tests hold the daemon to a CPU quota, as a busy Pi or a Pi Zero would; they
need root and a writable cgroup cpu controller, and say so when skipped.
"""

from __future__ import annotations

import pytest

from tests.rig import Rig


def test_status_reports_how_full_the_fifo_got_and_an_overflow_as_full(tmp_path):
    rig = Rig(tmp_path, rate_hz=1000, poll_s=0.01)  # 10 frames a poll, of 1024 // 14 = 73
    frames = rig.driver.fifo_frames
    rig.run(1.0)
    assert rig.channel.counters.fifo_peak_pct == pytest.approx(100 * 10 / frames, abs=3)
    rig.clock.advance(0.04)  # a late poll: 50 frames waiting
    rig.run(0.1)
    # 50, plus what arrives while the previous burst is on the wire (bus time, ~3 ms)
    assert rig.channel.counters.fifo_peak_pct == pytest.approx(100 * 53 / frames, abs=3)
    rig.clock.advance(0.2)  # so late the FIFO overflowed
    rig.run(0.1)
    assert rig.channel.counters.overflows == 1
    assert rig.channel.counters.fifo_peak_pct == 100
    assert rig.channel.counters.as_dict()["fifo_peak_pct"] == 100
