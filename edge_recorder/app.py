"""The composition root: builds the parts from the config, wires them, runs, shuts down.

Data path: sensors → samplers (one thread per bus) → rings → recorder → device store
→ publisher → MQTT. Triggers (MQTT commands, GPIO, interval) feed the recorder events.
Nothing here does the work itself.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from edge_recorder import __version__
from edge_recorder.config import Config, SensorConfig
from edge_recorder.delivery.mqtt import MqttLink
from edge_recorder.delivery.publisher import Publisher
from edge_recorder.errors import SensorError
from edge_recorder.recording.ids import iso_utc, new_journey_id
from edge_recorder.recording.recorder import Recorder, SensorSource
from edge_recorder.recording.recovery import recover
from edge_recorder.recording.store import DeviceStore
from edge_recorder.sampling.ring import SampleRing
from edge_recorder.sampling.sampler import BusSampler, SensorChannel
from edge_recorder.sensors.bus import I2CBus
from edge_recorder.sensors.registry import DRIVERS

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 30.0
SHUTDOWN_FLUSH_S = 5.0


def open_bus(bus: int | str, sensors: list[SensorConfig], clock: Callable[[], int]) -> I2CBus:
    """The bus the sensors sit on: ``/dev/i2c-N`` or an emulated bus with their chips."""
    if bus == "emulated":
        from edge_recorder.sensors.emulation import EMULATORS, EmulatedBus, Rotation

        emulated = EmulatedBus(clock=clock)
        for s in sensors:
            e = s.emulation
            emulated.attach(s.address, EMULATORS[s.driver](
                clock=clock,
                clock_error=e.clock_error if e else 0.0,
                motion=Rotation() if e and e.motion == "rotation" else None,
                seed=e.seed if e else 0,
            ))
            if e:
                emulated.chips[s.address].faults.error_rate = e.bus_error_rate
        return emulated
    from edge_recorder.sensors.smbus import SMBusI2C

    try:
        return SMBusI2C(int(bus))
    except OSError as exc:
        raise SensorError(
            f"cannot open /dev/i2c-{bus} ({exc.strerror or exc}); enable I2C "
            "(raspi-config → Interface Options → I2C) and check the user is in group i2c"
        ) from exc


class Daemon:
    """The running product. ``pin_factory`` overrides ``gpio_pin_factory`` (tests)."""

    def __init__(self, config: Config, *, clock: Callable[[], int] = time.time_ns,
                 pin_factory: Any = None) -> None:
        self.config = config
        self.clock = clock
        self.started_ns = clock()
        journey = config.session.journey_id
        if journey == "auto":
            journey = new_journey_id(config.device_id, self.started_ns)
        self.store = DeviceStore(config.storage.dir, config.storage.max_bytes,
                                 part_bytes=config.mqtt.max_payload_bytes)

        by_bus: dict[int | str, list[SensorConfig]] = defaultdict(list)
        for s in config.sensors:
            by_bus[s.bus].append(s)
        self.buses: list[I2CBus] = []
        self.samplers: list[BusSampler] = []
        self.channels: list[SensorChannel] = []
        for bus_id, sensors in by_bus.items():
            bus = open_bus(bus_id, sensors, clock)
            self.buses.append(bus)
            channels = []
            for s in sensors:
                driver = DRIVERS[s.driver](bus, s.address, rate_hz=s.rate_hz,
                                           accel_range_g=s.accel_range_g,
                                           gyro_range_dps=s.gyro_range_dps, bus_name=str(bus_id))
                ring = SampleRing(max(1, int(config.buffer.seconds * s.rate_hz)))
                channels.append(SensorChannel(s.name, driver, ring))
            self.channels += channels
            self.samplers.append(BusSampler(str(bus_id), channels, clock=clock))

        topic_root = config.topic_root
        self.status_topic = f"{topic_root}/status"
        self.link = MqttLink(config.mqtt, config.client_id,
                             will=(self.status_topic, json.dumps({"online": False}).encode()),
                             on_connect=self._on_connect, name="mqtt")
        self.publisher = Publisher(self.store, self.link, topic_root,
                                   part_bytes=config.mqtt.max_payload_bytes,
                                   on_published=lambda sid: self.status_changed.set())
        self.status_changed = threading.Event()
        self.recorder = Recorder(
            config.session, device_id=config.device_id,
            sources=[SensorSource(c.name, c.driver.name, c.driver.rate_hz, c.ring)
                     for c in self.channels],
            store=self.store, buffer_s=config.buffer.seconds, journey_id=journey, clock=clock,
            on_complete=self._on_session_complete, status=self.status)
        self.triggers: list[Any] = []
        self._pin_factory = pin_factory
        self.led: Any = None
        self._stop = threading.Event()

    # --- wiring callbacks ---------------------------------------------------------------
    def _on_session_complete(self, manifest: dict[str, Any]) -> None:
        self.publisher.wake()
        self.status_changed.set()

    def _on_connect(self) -> None:
        self.publish_status()
        self.publisher.wake()

    def is_open(self, session_id: str) -> bool:
        return any(s["session_id"] == session_id for s in self.recorder.snapshot()["recording"])

    # --- status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        snap = self.recorder.snapshot()
        return {
            "online": True,
            "version": __version__,
            "device_id": self.config.device_id,
            "journey_id": snap["journey_id"],
            "recording": snap["recording"],
            "sessions_completed": snap["sessions_completed"],
            "sessions_published": self.publisher.published,
            "sensors": {c.name: c.counters.as_dict() for c in self.channels},
            "storage": {**self.store.backlog(), "used_bytes": self.store.used_bytes(),
                        "max_bytes": self.store.max_bytes, "refused": self.store.refused},
            "mqtt": {"connected": self.link.connected.is_set(), "last_error": self.link.last_error},
            "warnings": list(self.recorder.warnings),
            "updated_at": iso_utc(self.clock()),
        }

    def publish_status(self) -> None:
        if self.link.connected.is_set():
            self.link.publish(self.status_topic, json.dumps(self.status()).encode(),
                              qos=1, retain=True)

    # --- run ------------------------------------------------------------------------------
    def start(self) -> None:
        for manifest in recover(self.store):
            log.info("recovered session %s queued for publishing", manifest["session_id"])
        for sampler in self.samplers:
            sampler.start()
        self.recorder.start()
        self.publisher.start()
        self._start_triggers()
        self.link.start()
        log.info("edge-recorder %s running as %s: %d sensor(s), journey %s, storage %s",
                 __version__, self.config.device_id, len(self.channels),
                 self.recorder.journey_id, self.config.storage.dir)

    def _start_triggers(self) -> None:
        cfg = self.config
        submit = self.recorder.submit
        if cfg.triggers.mqtt:
            from edge_recorder.triggers.mqtt_commands import MqttCommands

            commands = MqttCommands(self.link, cfg.topic_root, submit)
            commands.start()
        if cfg.triggers.interval is not None:
            from edge_recorder.triggers.interval import IntervalTrigger

            interval = IntervalTrigger(cfg.triggers.interval, submit, self.is_open,
                                       clock=self.clock)
            interval.start()
            self.triggers.append(interval)
        if cfg.triggers.gpio or cfg.status_led is not None:
            from edge_recorder.triggers.gpio import GpioButton, StatusLed, make_pin_factory

            factory = self._pin_factory or make_pin_factory(cfg.gpio_pin_factory)
            for g in cfg.triggers.gpio:
                self.triggers.append(GpioButton(g, submit, self.is_open, factory))
            if cfg.status_led is not None:
                self.led = StatusLed(cfg.status_led.pin, factory)

    def run(self, stop: threading.Event | None = None) -> None:
        """Start, then supervise until ``stop`` is set; then shut down cleanly."""
        stop = stop or self._stop
        self.start()
        next_status = time.monotonic()
        try:
            while not stop.is_set():
                if self.status_changed.is_set() or time.monotonic() >= next_status:
                    self.status_changed.clear()
                    self.publish_status()
                    next_status = time.monotonic() + STATUS_INTERVAL_S
                if self.led is not None:
                    snap = self.recorder.snapshot()
                    self.led.show(bool(snap["recording"]), not self.healthy())
                stop.wait(0.2)
        finally:
            self.shutdown()

    def healthy(self) -> bool:
        return all(c.counters.state == "up" for c in self.channels)

    def shutdown(self) -> None:
        log.info("shutting down: stopping open sessions")
        for trigger in self.triggers:
            trigger.close()
        self.recorder.close("shutdown")
        self.publisher.flush(SHUTDOWN_FLUSH_S)
        self.publisher.close()
        if self.link.connected.is_set():
            offline = dict(self.status(), online=False, recording=[])
            self.link.publish(self.status_topic, json.dumps(offline).encode(), qos=1,
                              retain=True).wait(1.0)
        self.link.close()
        for sampler in self.samplers:
            sampler.close()
        for bus in self.buses:
            bus.close()
        if self.led is not None:
            self.led.close()
        log.info("stopped; %d session(s) waiting in the outbox", len(self.store.pending()))
