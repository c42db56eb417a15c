"""The composition root: builds the parts from the config, wires them, runs, shuts down.

Data path: sensors → samplers (one thread per bus) → rings → recorder → device store
→ publisher → MQTT. Triggers (MQTT commands, GPIO, interval) feed the recorder events.
Nothing here does the work itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_recorder import __version__
from edge_recorder.clock import Clock, emulated_clock
from edge_recorder.config import Config, SensorConfig, load_config
from edge_recorder.delivery.mqtt import MqttLink
from edge_recorder.delivery.publisher import Publisher
from edge_recorder.errors import ConfigError, SensorError
from edge_recorder.recording.events import ResendRequested, error, ok
from edge_recorder.recording.ids import iso_utc, new_journey_id
from edge_recorder.recording.recorder import Recorder, SensorSource
from edge_recorder.recording.recovery import recover
from edge_recorder.recording.restamp import restamp_if_synced
from edge_recorder.recording.store import FAILED, DeviceStore
from edge_recorder.sampling.ring import SampleRing
from edge_recorder.sampling.sampler import BusSampler, SensorChannel
from edge_recorder.sensors.bus import I2CBus
from edge_recorder.sensors.registry import DRIVERS
from edge_recorder.systemd import Notifier

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 30.0
WORKER_STALL_S = 5.0  # a sampler or the recorder silent this long is wedged
PUBLISHER_STALL_S = 60.0  # the publisher may wait up to 20 s for one acknowledgement
SHUTDOWN_FLUSH_S = 5.0


def open_bus(bus: int | str, sensors: list[SensorConfig], clock: Callable[[], int],
             *, realtime: bool = True) -> I2CBus:
    """The bus the sensors sit on: ``/dev/i2c-N`` or an emulated bus with their chips
    (sampling on ``clock``, the monotonic one).

    An emulated bus runs at the sensors' ``emulation.bus_hz`` and, with ``realtime``
    (a clock at real speed), holds the caller for as long as a transfer would take."""
    if bus == "emulated":
        from edge_recorder.config import bus_clock_hz
        from edge_recorder.sensors.emulation import EMULATORS, VARIANTS, EmulatedBus, Rotation

        emulated = EmulatedBus(clock=clock, clock_hz=bus_clock_hz(bus, sensors)[0],
                               realtime=realtime)
        for s in sensors:
            e = s.emulation
            chip_class = VARIANTS.get(e.chip or "", EMULATORS[s.driver]) if e else \
                EMULATORS[s.driver]
            emulated.attach(s.address, chip_class(
                clock=clock,
                clock_error=e.clock_error if e else 0.0,
                motion=Rotation() if e and e.motion == "rotation" else None,
                seed=e.seed if e else 0,
            ))
            if e:
                faults = emulated.chips[s.address].faults
                faults.error_rate = e.bus_error_rate
                if e.hang_after_s is not None:
                    faults.hang_from_ns = clock() + int(e.hang_after_s * 1e9)
                start = clock()
                faults.absent = [(start + int(a * 1e9), start + int(b * 1e9))
                                 for a, b in e.absent_s]
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

    def __init__(self, config: Config, *, clock: Clock | None = None,
                 pin_factory: Any = None, config_path: Path | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.config_error = ""
        if clock is None:
            steps = config.emulation.wall_clock_steps
            clock = emulated_clock(steps) if steps else Clock()
        self.clock = clock
        journey = config.session.journey_id
        if journey == "auto":
            journey = new_journey_id(config.device_id, clock.wall_ns())
        self.store = DeviceStore(config.storage.dir, config.storage.max_bytes,
                                 part_bytes=config.mqtt.max_payload_bytes,
                                 require_receipt=config.delivery.require_receipt)

        by_bus: dict[int | str, list[SensorConfig]] = defaultdict(list)
        for s in config.sensors:
            by_bus[s.bus].append(s)
        self.buses: list[I2CBus] = []
        self.samplers: list[BusSampler] = []
        self.channels: list[SensorChannel] = []
        for bus_id, sensors in by_bus.items():
            bus = open_bus(bus_id, sensors, clock.mono_ns)
            self.buses.append(bus)
            channels = []
            for s in sensors:
                driver = DRIVERS[s.driver](bus, s.address, rate_hz=s.rate_hz,
                                           accel_range_g=s.accel_range_g,
                                           gyro_range_dps=s.gyro_range_dps, bus_name=str(bus_id))
                ring = SampleRing(max(1, int(config.buffer.seconds * s.rate_hz)))
                channels.append(SensorChannel(s.name, driver, ring))
            self.channels += channels
            self.samplers.append(BusSampler(str(bus_id), channels, clock=clock.mono_ns))

        topic_root = config.topic_root
        self.status_topic = f"{topic_root}/status"
        self.link = self._make_link(config)
        self.publisher = Publisher(self.store, self.link, topic_root,
                                   part_bytes=config.mqtt.max_payload_bytes,
                                   require_receipt=config.delivery.require_receipt,
                                   receipt_timeout_s=config.delivery.receipt_timeout_s,
                                   on_change=lambda sid: self.status_changed.set(),
                                   prepare=lambda sid: restamp_if_synced(self.store, clock, sid))
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

    def _make_link(self, config: Config) -> MqttLink:
        return MqttLink(config.mqtt, config.client_id,
                        will=(self.status_topic, json.dumps({"online": False}).encode()),
                        on_connect=self._on_connect, name="mqtt")

    # --- wiring callbacks ---------------------------------------------------------------
    def _on_session_complete(self, manifest: dict[str, Any]) -> None:
        self.publisher.wake()
        self.status_changed.set()

    def _on_connect(self) -> None:
        self.publish_status()
        self.publisher.wake()

    def submit(self, event: Any) -> None:
        """Route a trigger's event: resends to the publisher, the rest to the recorder."""
        if isinstance(event, ResendRequested):
            problem = self.publisher.resend(event.session_id, event.parts)
            if event.reply is not None:
                event.reply(error("no_such_session", problem) if problem
                            else ok(session_id=event.session_id))
            return
        self.recorder.submit(event)

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
                        "max_bytes": self.store.max_bytes, "refused": self.store.refused,
                        "failed": self.store.count(FAILED)},
            "delivery": self.delivery_status(),
            "mqtt": {"connected": self.link.connected.is_set(), "last_error": self.link.last_error},
            "warnings": list(self.recorder.warnings),
            "config_error": self.config_error,
            "clock": self.clock.status(),
            "updated_at": iso_utc(self.clock.wall_ns()),
        }

    def delivery_status(self) -> dict[str, Any]:
        """Sessions awaiting the collector's receipt (and the oldest one's age, s), stored."""
        awaiting = self.store.awaiting_receipt()
        return {"require_receipt": self.config.delivery.require_receipt,
                "awaiting_receipt": int(awaiting["sessions"]),
                "oldest_awaiting_s": awaiting["oldest_s"],
                "stored": self.publisher.stored, "resent": self.publisher.resent}

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
        submit = self.submit
        if cfg.triggers.mqtt:
            from edge_recorder.triggers.mqtt_commands import MqttCommands

            commands = MqttCommands(self.link, cfg.topic_root, submit)
            commands.start()
            self.triggers.append(commands)
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

    def _stop_triggers(self) -> None:
        for trigger in self.triggers:
            trigger.close()
        self.triggers = []
        if self.led is not None:
            self.led.close()
            self.led = None

    def run(self, stop: threading.Event | None = None,
            reload: threading.Event | None = None) -> None:
        """Start, then supervise until ``stop`` is set; then shut down cleanly.

        Setting ``reload`` (SIGHUP) re-reads the config file. The watchdog is pinged only
        while every worker makes progress, so a wedged bus gets the service restarted.
        """
        stop = stop or self._stop
        reload = reload or threading.Event()
        self.start()
        self.notifier.ready(self.summary())
        next_status = next_ping = time.monotonic()
        try:
            while not stop.is_set():
                now = time.monotonic()
                try:
                    if reload.is_set():
                        reload.clear()
                        self.reload()
                    if self.status_changed.is_set() or now >= next_status:
                        self.status_changed.clear()
                        self.publish_status()
                        self.notifier.status(self.summary())
                        next_status = now + STATUS_INTERVAL_S
                except Exception:  # supervision must outlive any one failing report
                    log.exception("supervisor: status or reload failed; carrying on")
                    next_status = now + STATUS_INTERVAL_S
                if self.notifier.watchdog_s and now >= next_ping:
                    stalled = self.stalled()
                    if stalled:
                        log.error("watchdog: not pinging, %s made no progress", stalled)
                    else:
                        self.notifier.watchdog()
                    next_ping = now + self.notifier.watchdog_s / 3
                if self.led is not None:
                    snap = self.recorder.snapshot()
                    self.led.show(bool(snap["recording"]), not self.healthy(),
                                  waiting=self.receipt_overdue())
                stop.wait(0.2)
        finally:
            self.notifier.stopping()
            self.shutdown()

    def summary(self) -> str:
        snap = self.recorder.snapshot()
        awaiting = self.store.awaiting_receipt()
        receipts = f", {awaiting['sessions']:.0f} awaiting receipt (oldest " \
            f"{awaiting['oldest_s']:.0f} s)" if awaiting["sessions"] else ""
        failed = self.store.count(FAILED)
        return (f"{len(snap['recording'])} recording, {self.store.backlog()['sessions']} to "
                f"publish{receipts}{f', {failed} failed' if failed else ''}, "
                f"broker {'up' if self.link.connected.is_set() else 'down'}")

    def receipt_overdue(self) -> bool:
        """A published session has waited longer than its receipt timeout: the collector
        is not storing (or not hearing) this device."""
        oldest_s = self.store.awaiting_receipt()["oldest_s"]
        return oldest_s > self.config.delivery.receipt_timeout_s

    def stalled(self) -> str:
        """The first worker that stopped making progress, or ''."""
        now = time.monotonic()
        for sampler in self.samplers:
            if not sampler.alive or now - sampler.last_loop_s > WORKER_STALL_S:
                return f"the sampler of bus {sampler.bus_name}"
        if not self.recorder.alive or now - self.recorder.last_loop_s > WORKER_STALL_S:
            return "the recorder"
        if not self.publisher.alive or now - self.publisher.last_loop_s > PUBLISHER_STALL_S:
            return "the publisher"
        return ""

    def reload(self) -> None:
        """Apply an edited config file: sessions, triggers and MQTT live; the rest on restart.

        An invalid file changes nothing: the daemon keeps running on the old config and
        says why in the log and in ``P/status`` (``config_error``).
        """
        if self.config_path is None:
            return
        self.notifier.reloading(time.monotonic_ns() // 1000)
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.config_error = "; ".join(exc.problems)
            log.error("reload: %s is invalid, still running on the previous config: %s",
                      self.config_path, self.config_error)
            self.status_changed.set()
            self.notifier.ready(self.summary())
            return
        old = self.config
        self.config_error = ""
        fixed = [k for k in ("device_id", "sensors", "buffer", "storage", "emulation",
                             "delivery")
                 if getattr(new, k) != getattr(old, k)]
        if fixed:
            log.warning("reload: changes to %s take effect after a restart "
                        "(systemctl restart edge-recorder); applying the rest", ", ".join(fixed))
        applied = dataclasses.replace(new, device_id=old.device_id, sensors=old.sensors,
                                      buffer=old.buffer, storage=old.storage,
                                      emulation=old.emulation, delivery=old.delivery)
        self.recorder.settings = applied.session
        if applied.session.journey_id != old.session.journey_id:
            journey = applied.session.journey_id
            self.recorder.journey_id = new_journey_id(old.device_id, self.clock.wall_ns()) \
                if journey == "auto" else journey
        restart_triggers = (applied.triggers, applied.status_led, applied.gpio_pin_factory) != \
            (old.triggers, old.status_led, old.gpio_pin_factory)
        if applied.mqtt != old.mqtt:
            self._stop_triggers()
            old_link, self.link = self.link, self._make_link(applied)
            self.publisher.use_link(self.link)
            old_link.close()
            self.config = applied
            self._start_triggers()
            self.link.start()
        elif restart_triggers:
            self._stop_triggers()
            self.config = applied
            self._start_triggers()
        self.config = applied
        log.info("reload: applied %s", self.config_path)
        self.status_changed.set()
        self.notifier.ready(self.summary())

    def healthy(self) -> bool:
        return all(c.counters.state == "up" for c in self.channels)

    def shutdown(self) -> None:
        log.info("shutting down: stopping open sessions")
        self._stop_triggers()
        self.recorder.close("shutdown")
        self.publisher.flush(SHUTDOWN_FLUSH_S)
        self.publisher.close()
        if self.link.connected.is_set():
            try:
                offline = dict(self.status(), online=False, recording=[])
                self.link.publish(self.status_topic, json.dumps(offline).encode(), qos=1,
                                  retain=True).wait(1.0)
            except Exception:
                log.exception("shutdown: could not publish the offline status")
        self.link.close()
        for sampler in self.samplers:
            sampler.close()
        for bus in self.buses:
            bus.close()
        log.info("stopped; %d session(s) waiting in the outbox", len(self.store.pending()))
