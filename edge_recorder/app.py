"""The composition root: builds the parts from the config, wires them, runs, shuts down.

Data path: sensors → samplers (one thread per bus) → rings → recorder → device store
→ publisher → MQTT. Triggers (MQTT commands, GPIO, interval) feed the recorder events.
Nothing here does the work itself.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_recorder import __version__
from edge_recorder.clock import Clock, emulated_clock
from edge_recorder.config import Config, SensorConfig, load_config
from edge_recorder.cpu import CpuPlacement
from edge_recorder.delivery.mqtt import Credentials, MqttLink, read_credentials
from edge_recorder.delivery.publisher import Publisher
from edge_recorder.documents import MAX_MESSAGE_CHARS, StatusDocument
from edge_recorder.errors import ConfigError, SensorError
from edge_recorder.log import describe
from edge_recorder.recording.events import UNSET, ResendRequested, SettingsChanged, error, ok
from edge_recorder.recording.ids import iso_utc, new_journey_id
from edge_recorder.recording.recorder import Recorder, SensorSource
from edge_recorder.recording.recovery import recover
from edge_recorder.recording.restamp import Restamper
from edge_recorder.recording.store import FAILED, DeviceStore
from edge_recorder.sampling.ring import SampleRing
from edge_recorder.sampling.sampler import BusSampler, SensorChannel
from edge_recorder.sensors.base import use_numpy
from edge_recorder.sensors.bus import I2CBus
from edge_recorder.sensors.registry import DRIVERS
from edge_recorder.systemd import Notifier

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 30.0
WORKER_STALL_S = 5.0  # a sampler, the recorder or the interval trigger silent this long is wedged
PUBLISHER_STALL_S = 60.0  # the publisher may wait up to 20 s for one acknowledgement
SHUTDOWN_FLUSH_S = 5.0
# The samplers have a deadline (a FIFO fills in 73 ms at 1 kHz); every other thread has a
# buffer (rings of seconds, an outbox). On a small CPU budget (a Pi Zero, a busy Pi, a cgroup
# quota) the samplers must not wait for them: the others run at this nice value, and a
# thread wanting the GIL gets it after this long, not after 5 ms (CPython's default).
BACKGROUND_NICE = 10
# the supervisor's round: status changes published, a reload applied, workers watched within
# a second; the status LED follows the recording state within 0.2 s
SUPERVISE_S = 1.0
SUPERVISE_LED_S = 0.2
SWITCH_INTERVAL_S = 0.0005
# The broker drops messages to the daemon larger than this (MQTT 5 Maximum Packet Size):
# commands are ≤ MAX_COMMAND_BYTES, and one between the two gets a payload_too_large reply.
MAX_INBOUND_PACKET_BYTES = 1 << 20


def load_checked(path: Path) -> tuple[Config, Credentials]:
    """The config and the files it names, checked as running needs them.

    ``check-config``, ``run`` and a reload all go through :func:`load_config` and
    :func:`read_credentials`, so what one accepts the others accept (and vice versa).
    """
    config = load_config(path)
    return config, read_credentials(config.mqtt)


class Worker(Protocol):
    """What the watchdog needs of a part that runs a thread."""

    @property
    def alive(self) -> bool: ...


@dataclass(frozen=True)
class Watched:
    """A long-lived thread the watchdog watches: dead, or (with ``stall_s``) silent longer
    than that — its ``last_loop_s`` heartbeat — and the pings stop."""

    what: str  # "the recorder"
    thread_name: str  # its threading name, or the start of it
    worker: Worker
    stall_s: float | None  # None: it has no heartbeat, only life

    def silent_s(self, now: float) -> float:
        return now - float(getattr(self.worker, "last_loop_s", now))


class SupervisorWatch:
    """Says where the supervisor (the thread in :meth:`Daemon.run`) is stuck.

    The supervisor itself pings the watchdog, so when it wedges the pings stop by
    themselves; this thread notices its heartbeat going silent and reports the line it is
    stuck at, since nobody else can."""

    def __init__(self, on_stuck: Callable[[str], None], stall_s: float = WORKER_STALL_S) -> None:
        self.on_stuck = on_stuck
        self.stall_s = stall_s
        self.last_loop_s = time.monotonic()  # the supervisor's heartbeat
        self._ident = threading.get_ident()  # made by the supervisor's thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor-watch", daemon=True)

    def beat(self) -> None:
        self.last_loop_s = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        reported = False
        while not self._stop.wait(1.0):
            silent = time.monotonic() - self.last_loop_s
            if silent <= self.stall_s:
                reported = False
            elif not reported:
                frame = sys._current_frames().get(self._ident)
                self.on_stuck(f"the supervisor made no progress for {silent:.1f} s "
                              f"(limit {self.stall_s:g} s; stuck at {_where(frame)})")
                reported = True

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)


def _where(frame: Any) -> str:
    """``threading.py:359 in wait(), from app.py:412 in run()``: the innermost line, and
    the innermost of this package's."""
    if frame is None:
        return "an unknown line"
    stack = traceback.extract_stack(frame)
    ours = Path(__file__).parent

    def show(f: traceback.FrameSummary) -> str:
        return f"{Path(f.filename).name}:{f.lineno} in {f.name}()"

    mine = next((f for f in reversed(stack) if Path(f.filename).is_relative_to(ours)), None)
    if mine is None or mine is stack[-1]:
        return show(stack[-1])
    return f"{show(stack[-1])}, from {show(mine)}"


def _set_nice(thread_id: int, nice: int | None) -> None:
    """One thread's nice value (Linux: ``PRIO_PROCESS`` names a thread; 0 the caller).
    Raising it needs no privilege; lowering it back may be refused, which changes nothing
    that matters."""
    if nice is None or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, thread_id, nice)
    except OSError as exc:
        log.debug("nice %d for thread %d: %s", nice, thread_id, describe(exc))


def _name_os_thread(thread_id: int, name: str) -> None:
    """A thread of this process named as the OS shows it (``/proc/PID/task/TID/comm``, at
    most 15 bytes), so a per-thread view says which part uses the CPU."""
    try:
        Path(f"/proc/self/task/{thread_id}/comm").write_bytes(name.encode()[:15])
    except OSError:
        pass  # not Linux, or no /proc: only the view suffers


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
                 notifier: Notifier | None = None,
                 credentials: Credentials | None = None) -> None:
        """``credentials``: the files ``config.mqtt`` names, if already read
        (:func:`load_checked`); read here otherwise."""
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.config_error = ""
        if clock is None:
            steps = config.emulation.wall_clock_steps
            clock = emulated_clock(steps) if steps else Clock()
        self.watchdog_problem = ""  # why the watchdog is not being pinged, or ""
        self._thread_deaths: dict[str, str] = {}  # thread name → the exception that ended it
        self._previous_excepthook = threading.excepthook
        self._supervisor_watch: SupervisorWatch | None = None
        self.cpu = CpuPlacement()  # one CPU for every thread under a quota below a core
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
        self.link = self._make_link(config, credentials)
        restamper = Restamper(self.store, clock)
        self.publisher = Publisher(self.store, self.link, topic_root,
                                   part_bytes=config.mqtt.max_payload_bytes,
                                   require_receipt=config.delivery.require_receipt,
                                   receipt_timeout_s=config.delivery.receipt_timeout_s,
                                   on_change=lambda sid: self.status_changed.set(),
                                   prepare=restamper.before_publish, idle=restamper.on_idle,
                                   clock=lambda: clock.mono_ns() / 1e9)  # receipt deadlines
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

    def _make_link(self, config: Config, credentials: Credentials | None = None) -> MqttLink:
        return MqttLink(config.mqtt, config.client_id,
                        will=(self.status_topic, json.dumps({"online": False}).encode()),
                        max_inbound_bytes=MAX_INBOUND_PACKET_BYTES, credentials=credentials,
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
    def status(self) -> StatusDocument:
        """The status document (``P/status``, the ``status`` reply), checked as it is built."""
        snap = self.recorder.snapshot()
        config_error = self.config_error if len(self.config_error) <= MAX_MESSAGE_CHARS else \
            f"{self.config_error[:MAX_MESSAGE_CHARS - 40]}... (the rest is in the journal)"
        return StatusDocument.from_dict({
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
            "config_error": config_error,
            "clock": self.clock.status(),
            "watchdog": {"ok": not self.watchdog_problem, "problem": self.watchdog_problem},
            "updated_at": iso_utc(self.clock.wall_ns()),
        })

    def delivery_status(self) -> dict[str, Any]:
        """Sessions awaiting the collector's receipt (and the oldest one's age, s), stored."""
        awaiting = self.publisher.awaiting_receipt()
        return {"require_receipt": self.config.delivery.require_receipt,
                "awaiting_receipt": int(awaiting["sessions"]),
                "oldest_awaiting_s": awaiting["oldest_s"],
                "stored": self.publisher.stored, "resent": self.publisher.resent}

    def publish_status(self) -> None:
        if self.link.connected.is_set():
            self.link.publish(self.status_topic, self.status().to_json(),
                              qos=1, retain=True)

    # --- run ------------------------------------------------------------------------------
    def start(self) -> None:
        threading.excepthook = self._thread_died
        # numpy's import is paid now, before sampling starts (see use_numpy)
        log.info("samples decoded with %s", "numpy" if use_numpy() else
                 "plain Python (install edge-recorder[fast] for numpy, ~13× faster)")
        for manifest in recover(self.store):
            log.info("recovered session %s queued for publishing", manifest["session_id"])
        for sampler in self.samplers:
            sampler.start()
        self.recorder.start()
        self.publisher.start()
        self._start_triggers(self.config, self.link)
        self.link.start()
        log.info("edge-recorder %s running as %s: %d sensor(s), journey %s, storage %s",
                 __version__, self.config.device_id, len(self.channels),
                 self.recorder.journey_id, self.config.storage.dir)

    def _start_triggers(self, cfg: Config, link: MqttLink) -> None:
        submit = self.submit
        if cfg.triggers.mqtt:
            from edge_recorder.triggers.mqtt_commands import MqttCommands

            commands = MqttCommands(link, cfg.topic_root, submit)
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
        previous_switch_s = sys.getswitchinterval()
        # what start-up built (modules, config, emulator tables) lives as long as the process:
        # out of the cyclic collector's sight, a full collection takes microseconds, not ms
        gc.collect()
        gc.freeze()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.start()
        previous_nice = self._favour_samplers()
        self._follow_cpu_quota()
        self.notifier.ready(self.summary())
        next_status = next_ping = time.monotonic()
        self._supervisor_watch = SupervisorWatch(self._supervisor_stuck)
        self._supervisor_watch.start()
        try:
            while not stop.is_set():
                self._supervisor_watch.beat()
                now = time.monotonic()
                try:
                    self._follow_cpu_quota()
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
                self._watch()
                if self.notifier.watchdog_s and now >= next_ping:
                    if not self.watchdog_problem:
                        self.notifier.watchdog()
                    next_ping = now + self.notifier.watchdog_s / 3
                if self.led is not None:
                    snap = self.recorder.snapshot()
                    self.led.show(bool(snap["recording"]), not self.healthy(),
                                  waiting=self.receipt_overdue())
                wait_s = SUPERVISE_LED_S if self.led is not None else SUPERVISE_S
                if self.notifier.watchdog_s:
                    wait_s = min(wait_s, max(0.0, next_ping - time.monotonic()))
                stop.wait(wait_s)
        finally:
            self._supervisor_watch.close()
            self.notifier.stopping()
            self.shutdown()
            self.cpu.close()
            _set_nice(0, previous_nice)  # this thread is the caller's (a test's, say)
            sys.setswitchinterval(previous_switch_s)
            gc.unfreeze()

    def _follow_cpu_quota(self) -> None:
        """The CPU quota as it is now: the threads' placement, and the recorder's pacing."""
        self.cpu.update()
        self.recorder.cpu_limit = self.cpu.limit_cores

    def _favour_samplers(self) -> int | None:
        """Every long-lived thread of the daemon but the samplers, and this one (threads it
        starts later inherit it), runs at :data:`BACKGROUND_NICE`; each is named for the OS
        too (``top -H``, ``ps -L``). Returns this thread's previous nice value (None where
        it cannot be read)."""
        ours = tuple(w.thread_name for w in self.watched())
        for thread in threading.enumerate():
            if not thread.name.startswith(ours) or thread.native_id is None:
                continue
            _name_os_thread(thread.native_id, thread.name)
            if not thread.name.startswith("sampler-"):
                _set_nice(thread.native_id, BACKGROUND_NICE)
        try:
            previous = os.getpriority(os.PRIO_PROCESS, 0)
        except (AttributeError, OSError):
            return None
        _set_nice(0, BACKGROUND_NICE)
        return previous

    def summary(self) -> str:
        snap = self.recorder.snapshot()
        awaiting = self.publisher.awaiting_receipt()
        receipts = f", {awaiting['sessions']:.0f} awaiting receipt (oldest " \
            f"{awaiting['oldest_s']:.0f} s)" if awaiting["sessions"] else ""
        failed = self.store.count(FAILED)
        wedged = f"WEDGED: {self.watchdog_problem}; " if self.watchdog_problem else ""
        return (f"{wedged}{len(snap['recording'])} recording, "
                f"{self.store.backlog()['sessions']} to publish{receipts}"
                f"{f', {failed} failed' if failed else ''}, "
                f"broker {'up' if self.link.connected.is_set() else 'down'}")

    def receipt_overdue(self) -> bool:
        """A published session has waited longer than its receipt timeout: the collector
        is not storing (or not hearing) this device."""
        oldest_s = self.publisher.awaiting_receipt()["oldest_s"]
        return oldest_s > self.config.delivery.receipt_timeout_s

    # --- the watchdog ---------------------------------------------------------------------
    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        """threading.excepthook: remember (and log) what ended a thread."""
        name = args.thread.name if args.thread is not None else "?"
        self._thread_deaths[name] = describe(args.exc_value) if args.exc_value else \
            args.exc_type.__name__
        log.error("thread %s died: %s", name, self._thread_deaths[name])

    def watched(self) -> list[Watched]:
        """Every long-lived thread of ours. (The supervisor, the thread in :meth:`run`, pings
        the watchdog itself: if it wedges the pings stop, and its watcher says where.)"""
        out = [Watched(f"the sampler of bus {s.bus_name}", f"sampler-{s.bus_name}", s,
                       WORKER_STALL_S) for s in self.samplers]
        out.append(Watched("the recorder", "recorder", self.recorder, WORKER_STALL_S))
        out.append(Watched("the publisher", "publisher", self.publisher, PUBLISHER_STALL_S))
        out.append(Watched("the MQTT network thread", "paho-mqtt-client-", self.link, None))
        out += [Watched("the interval trigger", "interval-trigger", t, WORKER_STALL_S)
                for t in self.triggers if hasattr(t, "last_loop_s")]
        if self._supervisor_watch is not None:
            out.append(Watched("the supervisor's watcher", "supervisor-watch",
                               self._supervisor_watch, None))
        return out

    def _supervisor_stuck(self, problem: str) -> None:
        """From the supervisor's watcher: only what cannot block (the supervisor may be
        stuck holding anything): the log and systemd's status line."""
        log.error("watchdog: not pinging, %s", problem)
        self.watchdog_problem = problem
        self.notifier.status(f"WEDGED: {problem}")

    def stalled(self) -> str:
        """The first watched thread that died or stopped making progress, and why; or ''."""
        now = time.monotonic()
        for w in self.watched():
            if not w.worker.alive:
                why = next((d for name, d in self._thread_deaths.items()
                            if name.startswith(w.thread_name)), "no exception recorded")
                return f"{w.what} died ({why})"
            if w.stall_s is not None and w.silent_s(now) > w.stall_s:
                return (f"{w.what} made no progress for {w.silent_s(now):.1f} s "
                        f"(limit {w.stall_s:g} s)")
        return ""

    def _watch(self) -> None:
        """Stop (or resume) the pings, and say so in the log, the status and systemd's."""
        problem = self.stalled()
        if problem == self.watchdog_problem:
            return
        if problem:
            log.error("watchdog: not pinging, %s", problem)
        else:
            log.warning("watchdog: pinging again, %s is making progress",
                        self.watchdog_problem.split(" died")[0].split(" made no")[0])
        self.watchdog_problem = problem
        self.status_changed.set()
        self.notifier.status(self.summary())

    # --- reload -------------------------------------------------------------------------
    def reload(self) -> None:
        """Apply an edited config file: sessions, triggers and MQTT live; the rest on restart.

        The whole file is validated first (the files it names included) and the new parts
        are built before the running ones are swapped out; an invalid file, or a part that
        cannot be built, changes nothing: the daemon keeps running on the old config, with
        every trigger and command subscription, and says why in the log and in
        ``P/status`` (``config_error``). READY=1 always follows RELOADING=1.
        """
        if self.config_path is None:
            return
        self.notifier.reloading(time.monotonic_ns() // 1000)
        try:
            self._reload(self.config_path)
        except Exception as exc:  # a bug: still nothing half-applied is left unsaid
            self._refuse([f"the reload failed: {describe(exc)}"])
            log.exception("reload failed")
        finally:
            self.status_changed.set()
            self.notifier.ready(self.summary())

    def _refuse(self, problems: list[str]) -> None:
        self.config_error = "; ".join(problems)
        log.error("reload: %s is invalid, still running on the previous config: %s",
                  self.config_path, self.config_error)

    def _reload(self, path: Path) -> None:
        try:
            new, credentials = load_checked(path)
        except ConfigError as exc:
            self._refuse(exc.problems)
            return
        old = self.config
        fixed = [k for k in ("device_id", "sensors", "buffer", "storage", "emulation",
                             "delivery")
                 if getattr(new, k) != getattr(old, k)]
        applied = dataclasses.replace(new, device_id=old.device_id, sensors=old.sensors,
                                      buffer=old.buffer, storage=old.storage,
                                      emulation=old.emulation, delivery=old.delivery)
        new_link = self.link
        if applied.mqtt != old.mqtt:
            new_link = self._make_link(applied, credentials)  # built, not yet connected
        if new_link is not self.link or (applied.triggers, applied.status_led,
                                         applied.gpio_pin_factory) != \
                (old.triggers, old.status_led, old.gpio_pin_factory):
            problem = self._swap_triggers(applied, new_link)
            if problem:
                self._refuse([problem])
                return
        if new_link is not self.link:
            old_link, self.link = self.link, new_link
            self.publisher.use_link(new_link)
            new_link.start()
            old_link.close()
        self.config = applied
        journey = applied.session.journey_id
        changed = journey != old.session.journey_id
        self.recorder.submit(SettingsChanged(
            applied.session, journey_id=journey if changed and journey != "auto" else UNSET,
            new_auto_journey=changed and journey == "auto"))
        self.config_error = ""
        if fixed:
            log.warning("reload: changes to %s take effect after a restart "
                        "(systemctl restart edge-recorder); applied the rest", ", ".join(fixed))
        log.info("reload: applied %s", path)

    def _swap_triggers(self, new: Config, link: MqttLink) -> str:
        """Replace the triggers with ``new``'s on ``link``; if one cannot be built, put the
        old ones back and return why (else '')."""
        old, old_link = self.config, self.link
        self._stop_triggers()
        try:
            self._start_triggers(new, link)
            return ""
        except Exception as exc:
            problem = f"a trigger could not be set up: {describe(exc)}"
            self._stop_triggers()
            if link is not old_link:
                link.close()
            self._start_triggers(old, old_link)
            return problem

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
                offline = self.status().replace(online=False, recording=())
                self.link.publish(self.status_topic, offline.to_json(), qos=1,
                                  retain=True).wait(1.0)
            except Exception:
                log.exception("shutdown: could not publish the offline status")
        self.link.close()
        for sampler in self.samplers:
            sampler.close()
        for bus in self.buses:
            bus.close()
        threading.excepthook = self._previous_excepthook
        log.info("stopped; %d session(s) waiting in the outbox", len(self.store.pending()))
