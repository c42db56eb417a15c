"""An in-process recorder rig on a fake clock: emulated chips → sampler → rings → recorder.

Everything real but the clock, so minutes of recording run in a second and timestamps
can be compared with the emulator's true sampling instants.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_recorder.clock import Clock
from edge_recorder.config import SessionConfig
from edge_recorder.recording.events import Event, Reply
from edge_recorder.recording.recorder import Recorder, SensorSource
from edge_recorder.recording.store import DeviceStore
from edge_recorder.sampling.ring import SampleRing
from edge_recorder.sampling.sampler import BusSampler, SensorChannel
from edge_recorder.sensors.base import STANDARD_GRAVITY_MPS2, FifoRead
from edge_recorder.sensors.emulation import EMULATORS, EmulatedBus, EmulatedChip, Faults
from edge_recorder.sensors.registry import DRIVERS
from edge_recorder.sessionfile import iter_batches, read_manifest

T0 = 7_000_000_000  # the monotonic clock (CLOCK_BOOTTIME) at the start: 7 s after boot
WALL_AT_T0 = 1_800_000_000_000_000_000  # the wall clock then (2027-01-15)


class FakeClock:
    """A monotonic clock (``now``, called) and a wall clock beside it (``wall()`` = now +
    ``wall_offset_ns``) that :meth:`step` jumps as NTP would; ``synced`` is what the kernel
    would say. :attr:`clock` is the product's :class:`Clock` over them."""

    def __init__(self, start_ns: int = T0) -> None:
        self.now = start_ns
        self.wall_offset_ns = WALL_AT_T0 - T0  # as on a device: wall and mono far apart
        self.synced: bool | None = True
        self.clock = Clock(mono=self, wall=self.wall, synced=lambda: self.synced,
                           source="fake", boot_id="fake-boot")

    def __call__(self) -> int:
        return self.now

    def wall(self) -> int:
        return self.now + self.wall_offset_ns

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)

    def advance_to(self, t_ns: int) -> None:
        """Time passes while a transfer is on the wire (the emulated bus's ``wait_until``)."""
        self.now = max(self.now, t_ns)

    def step(self, seconds: float) -> None:
        self.wall_offset_ns += int(seconds * 1e9)


@dataclass
class Rig:
    tmp_path: Path
    rate_hz: float = 200
    clock_error: float = 0.0
    settings: SessionConfig = field(default_factory=lambda: SessionConfig(duration_s=None))
    buffer_s: float = 10
    poll_s: float | None = 0.02  # None: the product's own poll interval for the driver
    jitter_s: float = 0.0
    faults: Faults = field(default_factory=Faults)
    driver_name: str = "mpu6050"
    chip_cls: type[EmulatedChip] | None = None  # a family variant (default: EMULATORS')
    record_truth: bool = True  # the chip keeps each frame's true instant (not in the daemon)

    def __post_init__(self) -> None:
        self.clock = FakeClock()
        driver_cls = DRIVERS[self.driver_name]
        address = driver_cls.default_address
        chip_cls = self.chip_cls or EMULATORS[self.driver_name]
        self.chip = chip_cls(clock=self.clock, clock_error=self.clock_error,
                             faults=self.faults, record_truth=self.record_truth)
        self.bus = EmulatedBus({address: self.chip}, clock=self.clock,
                               wait_until=self.clock.advance_to)
        self.driver = driver_cls(self.bus, address, rate_hz=self.rate_hz, accel_range_g=4,
                                 gyro_range_dps=500, sleep=self.clock.advance)
        self.ring = SampleRing(int(self.buffer_s * self.rate_hz))
        self.channel = SensorChannel("imu0", self.driver, self.ring)
        self.sampler = BusSampler("emulated", [self.channel], clock=self.clock,
                                  interval_s=self.poll_s)
        self.store = DeviceStore(self.tmp_path / "store", 1 << 30)
        self.completed: list[dict[str, Any]] = []
        self.recorder = Recorder(
            self.settings, device_id="rig", sources=[SensorSource("imu0", self.driver_name,
                                                                  self.rate_hz, self.ring)],
            store=self.store, buffer_s=self.buffer_s, journey_id="j-auto",
            clock=self.clock.clock,
            on_complete=self.completed.append)
        self.rng = random.Random(7)
        self._since_pump = 0.0
        self.sampler.poll_once()  # brings the sensor up

    def run(self, seconds: float) -> None:
        """Advance the fake clock, polling and pumping as the threads would."""
        end = self.clock.now + int(seconds * 1e9)
        next_tick = self.clock.now
        while self.clock.now < end:
            step = self.sampler.interval_s + (self.rng.uniform(0, self.jitter_s)
                                              if self.jitter_s else 0)
            # on a fixed grid, as BusSampler._run: time on the bus is part of the period
            next_tick = max(next_tick + int(step * 1e9), self.clock.now)
            self.clock.advance_to(min(next_tick, end))
            self.sampler.poll_once()
            self._since_pump += step
            if self._since_pump >= 0.1:
                self.recorder.pump()
                self._since_pump = 0.0

    def ask(self, event_factory: Any, **kw: Any) -> Reply:
        replies: list[Reply] = []
        event: Event = event_factory(reply=replies.append, **kw)
        self.recorder.handle(event)
        assert len(replies) == 1
        return replies[0].to_dict()  # as a client reads it

    def finish(self, seconds: float = 1.5) -> None:
        """Let stopping sessions reach their stop time and finalise."""
        self.run(seconds)
        self.recorder.pump()


def samples_of(path: Path) -> tuple[list[int], list[float]]:
    t: list[int] = []
    az: list[float] = []
    for _sensor, batch in iter_batches(path):
        t += batch["t_ns"]
        az += batch["az"]
    return t, az


def stored(rig: Rig, session_id: str) -> tuple[dict[str, Any], Path]:
    for state in ("outbox", "published", "stored"):
        path = rig.store.path(state, session_id)
        if path.exists():
            return rig.store.manifest(session_id, state), path
    raise AssertionError(f"{session_id} not in the store")


__all__ = ["FakeClock", "Rig", "T0", "WALL_AT_T0", "read_manifest", "samples_of", "stored"]


def norms_g(read: FifoRead) -> list[float]:
    """|a| in g of every sample of one FIFO read."""
    ax, ay, az = read.columns[:3]
    return [math.sqrt(x * x + y * y + z * z) / STANDARD_GRAVITY_MPS2
            for x, y, z in zip(ax, ay, az, strict=True)]
