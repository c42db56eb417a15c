"""A fleet simulator: N lightweight devices publishing real sessions, for tests and benchmarks.

Each simulated device is the daemon's delivery half without its sensors: a real
:class:`~edge_recorder.recording.store.DeviceStore`, a real MCAP session file written by
:class:`~edge_recorder.sessionfile.SessionWriter` (synthetic samples at the chosen rate, two
sensors by default), the real :class:`~edge_recorder.delivery.publisher.Publisher` on a real
:class:`~edge_recorder.delivery.mqtt.MqttLink`, receipts included, and the ``resend``
command answered as the daemon answers it. What reaches the broker is byte for byte what a
device would send; only the samples are made up.

    fleet = Fleet(tmp, broker.port, devices=5)
    fleet.run(every_s=1.0, for_s=20.0, session_s=0.5)   # a session per device per second
    fleet.wait_stored(timeout_s=60)                    # every receipt back
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_recorder.config import MqttConfig
from edge_recorder.delivery.mqtt import Message, MqttLink
from edge_recorder.delivery.publisher import Publisher
from edge_recorder.documents import valid_id
from edge_recorder.recording.ids import iso_utc, new_session_id
from edge_recorder.recording.store import DeviceStore
from edge_recorder.sampling.ring import Block
from edge_recorder.sessionfile import ChannelInfo, SessionWriter, encode_block

log = logging.getLogger(__name__)

BLOCK_SAMPLES = 25  # samples per message, as the recorder writes them at 1 kHz
NOISE_SAMPLES = 4096  # samples of noise per device, cycled (so files compress as real ones)
G = 9.80665


@dataclass(frozen=True)
class Recorded:
    """A session a simulated device recorded: what the collector must end up holding."""

    device_id: str
    session_id: str
    sha256: str
    bytes: int
    labels: tuple[str, ...]
    journey_id: str


class SimulatedDevice:
    """One device: store, session files, publisher, link — the real ones."""

    def __init__(self, device_id: str, root: Path, port: int, *, host: str = "127.0.0.1",
                 topic_prefix: str = "edge-recorder", part_bytes: int = 131072,
                 require_receipt: bool = True, receipt_timeout_s: float = 60.0,
                 rate_hz: float = 1000.0, sensors: int = 2, start: bool = True) -> None:
        """``start=False``: record first, publish from :meth:`start` on (a benchmark's
        sessions all queued on the devices before the clock starts)."""
        if not valid_id(device_id):
            raise ValueError(f"device id {device_id!r} is not a valid id")
        self.device_id = device_id
        self.rate_hz = rate_hz
        self.sensors = [ChannelInfo(f"imu{k}", "mpu6050", rate_hz) for k in range(sensors)]
        self.store = DeviceStore(root / device_id, 1 << 40, part_bytes=part_bytes,
                                 require_receipt=require_receipt)
        self.topic_root = f"{topic_prefix}/{device_id}"
        self.link = MqttLink(MqttConfig(host=host, port=port, topic_prefix=topic_prefix),
                             f"fleet-{device_id}", name=f"fleet-{device_id}")
        self.publisher = Publisher(self.store, self.link, self.topic_root,
                                   part_bytes=part_bytes, require_receipt=require_receipt,
                                   receipt_timeout_s=receipt_timeout_s)
        self.publisher.use_link(self.link)
        self.link.subscribe(f"{self.topic_root}/cmd", self._on_command, qos=1)
        rng = random.Random(device_id)  # a sensor at rest: 1 g on z, noise as a real chip's
        self._noise = tuple(array("f", (mean + rng.gauss(0.0, sd) for _ in range(NOISE_SAMPLES)))
                            for mean, sd in ((0.0, 0.02), (0.0, 0.02), (G, 0.02),
                                             (0.0, 0.002), (0.0, 0.002), (0.0, 0.002)))
        self.recorded: list[Recorded] = []
        self._lock = threading.Lock()
        if start:
            self.start()

    def start(self) -> None:
        self.link.start()
        self.publisher.start()

    def _on_command(self, message: Message) -> None:
        """The collector's ``resend`` (the only command a fleet device needs)."""
        try:
            doc = json.loads(message.payload)
            if doc.get("cmd") == "resend" and valid_id(doc.get("session_id")):
                parts = doc.get("parts")
                self.publisher.resend(doc["session_id"],
                                      [int(n) for n in parts] if isinstance(parts, list)
                                      else None)
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("%s: ignoring command: %s: %s", self.device_id, type(exc).__name__, exc)

    def record(self, seconds: float, *, labels: Iterable[str] = ("fleet",),
               journey_id: str | None = None) -> Recorded:
        """Write one finished session of ``seconds`` at the device's rate and queue it."""
        now_ns = time.time_ns()
        start_ns = now_ns - int(seconds * 1e9)
        session_id = new_session_id(start_ns)
        journey = journey_id or f"{self.device_id}-fleet"
        path = self.store.begin(session_id, {"session_id": session_id,
                                             "device_id": self.device_id})
        writer = SessionWriter(path, self.sensors)
        period_ns = int(1e9 / self.rate_hz)
        count = max(1, math.floor(seconds * self.rate_hz))
        for k, sensor in enumerate(self.sensors):
            for first in range(0, count, BLOCK_SAMPLES):
                n = min(BLOCK_SAMPLES, count - first)
                t_ns = array("q", (start_ns + (first + i) * period_ns + k for i in range(n)))
                at = (first + k * 7919) % (NOISE_SAMPLES - BLOCK_SAMPLES)
                columns = tuple(column[at:at + n] for column in self._noise)
                writer.write(sensor.name, t_ns[0], encode_block(Block(first, t_ns, columns)))
        manifest = {
            "session_id": session_id, "device_id": self.device_id, "labels": list(labels),
            "journey_id": journey, "started_at": iso_utc(start_ns), "stopped_at": iso_utc(now_ns),
            "duration_s": round(seconds, 6), "stop_reason": "duration",
            "trigger": {"source": "mqtt", "detail": "fleet simulator"}, "pre_trigger_s": 0.0,
            "sensors": [{"name": s.name, "driver": s.driver, "rate_hz": s.rate_hz,
                         "samples": count, "dropped": 0, "gaps": []} for s in self.sensors],
            "format": "mcap"}
        writer.finish(manifest)
        done = self.store.complete(session_id, manifest)
        rec = Recorded(self.device_id, session_id, done["sha256"], done["bytes"],
                       tuple(labels), journey)
        with self._lock:
            self.recorded.append(rec)
        self.publisher.wake()
        return rec

    def close(self) -> None:
        self.publisher.close()
        self.link.close()


class Fleet:
    """``devices`` simulated devices on one broker, ids ``sim-000``, ``sim-001``, …"""

    def __init__(self, root: Path, port: int, *, devices: int, prefix: str = "sim",
                 **device_options: object) -> None:
        self.devices = [SimulatedDevice(f"{prefix}-{k:03d}", root, port,
                                        **device_options)  # type: ignore[arg-type]
                        for k in range(devices)]
        self.part_bytes = self.devices[0].store.part_bytes if self.devices else 131072

    def start(self) -> None:
        for d in self.devices:
            d.start()

    @property
    def messages(self) -> int:
        """MQTT messages the recorded sessions take: their parts and a manifest each."""
        return sum(math.ceil(r.bytes / self.part_bytes) + 1 for r in self.recorded)

    @property
    def recorded(self) -> list[Recorded]:
        return [r for d in self.devices for r in d.recorded]

    def run(self, *, every_s: float, for_s: float, session_s: float,
            labels: Iterable[str] = ("fleet",)) -> None:
        """Each device records a ``session_s`` session every ``every_s`` for ``for_s``."""
        deadline = time.monotonic() + for_s
        tick = time.monotonic()
        while tick < deadline:
            for d in self.devices:
                d.record(session_s, labels=labels)
            tick += every_s
            time.sleep(max(0.0, tick - time.monotonic()))

    def record(self, sessions_each: int, session_s: float) -> int:
        """Record ``sessions_each`` sessions per device; the bytes recorded."""
        for _ in range(sessions_each):
            for d in self.devices:
                d.record(session_s)
        return sum(r.bytes for r in self.recorded)

    def wait_stored(self, timeout_s: float) -> None:
        """Until every device has the collector's receipt for every session it recorded."""
        self.wait(lambda: all(d.store.count("stored") == len(d.recorded)
                              for d in self.devices), timeout_s, "every receipt")

    @staticmethod
    def wait(predicate: object, timeout_s: float, what: str) -> None:
        from edge_recorder.devtools import wait_until

        wait_until(predicate, timeout_s, what, poll_s=0.1)  # type: ignore[arg-type]

    def close(self) -> None:
        for d in self.devices:
            d.close()
