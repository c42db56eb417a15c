"""Configuration: one loader from YAML to typed, frozen dataclasses.

Validation runs in two stages, as in ESPHome and mqtt-io: shape (types, ranges, unknown
keys) and then cross-references (duplicate sensor names, two sensors at one address,
a rate the chosen driver cannot do). Every problem is reported at once, each with its
YAML path and what to change. Nothing past :func:`load_config` sees a raw dict.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edge_recorder import documents
from edge_recorder.errors import ConfigError
from edge_recorder.sensors.registry import DRIVERS

DEFAULT_CONFIG_PATH = Path("/etc/edge-recorder/config.yaml")
# a device id is an id (documents.ID_RE: safe in topics and file names) of at most 64 characters
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MAX_JOURNEY_ID_CHARS = documents.MAX_JOURNEY_ID_CHARS

# Limits checked before the work they bound (a config is a few KiB of plain keys).
MAX_CONFIG_BYTES = 256 * 1024  # the file is refused unread beyond this
MAX_CONFIG_NODES = 10_000  # YAML nodes once aliases are expanded (stops "billion laughs")
MAX_PAYLOAD_BYTES = 268_435_455  # mqtt.max_payload_bytes at most: MQTT's largest packet
MAX_DURATION_S = 86_400.0  # any session duration: one day at most
MIN_INTERVAL_S = 1.0  # triggers.interval.every_s: at least this
MAX_INTERVAL_S = 7 * 86_400.0  # ... and at most a week
MAX_BOUNCE_S = 10.0
# The rings hold int64 time + 7 float32 channels (36 B) a sample, plus each block's share
# of Python object overhead (a block per FIFO drain): budget 64 B a sample.
RING_BYTES_PER_SAMPLE = 64
MAX_RING_BYTES = 128 << 20  # every sensor's ring together (buffer.seconds × rate_hz)


@dataclass(frozen=True)
class EmulationConfig:
    """Knobs of the in-process chip emulator (only with ``bus: emulated``)."""

    clock_error: float = 0.0  # fractional rate error of the chip's oscillator, e.g. 0.02
    bus_error_rate: float = 0.0  # fraction of I2C transactions failing with EIO
    motion: str = "rest"  # rest | rotation
    seed: int = 0
    hang_after_s: float | None = None  # the bus wedges this long after start (watchdog tests)
    chip: str | None = None  # a variant of the driver's family, e.g. "LSM6DS3"
    absent_s: tuple[tuple[float, float], ...] = ()  # windows (from, to) after start, s
    bus_hz: int = 400_000  # the emulated bus's SCL clock; transfers take that long


@dataclass(frozen=True)
class WorldEmulationConfig:
    """Top-level ``emulation``: the emulated world around the chips (only when every
    sensor is on ``bus: emulated``)."""

    wall_clock_steps: tuple[tuple[float, float], ...] = ()  # (after_s, step_s): at after_s
    # seconds after the daemon starts, the wall clock jumps by step_s (signed), as NTP does


@dataclass(frozen=True)
class SensorConfig:
    name: str
    driver: str
    bus: int | str  # an i2c-dev bus number, or "emulated"
    address: int
    rate_hz: float
    accel_range_g: int
    gyro_range_dps: int
    emulation: EmulationConfig | None = None

    @property
    def emulated(self) -> bool:
        return self.bus == "emulated"


@dataclass(frozen=True)
class BufferConfig:
    seconds: float = 30.0


@dataclass(frozen=True)
class SessionConfig:
    duration_s: float | None = 10.0  # None = until stopped
    max_duration_s: float = 600.0
    pre_trigger_s: float = 0.0
    labels: tuple[str, ...] = ()
    allowed_labels: tuple[str, ...] | None = None  # None = any
    journey_id: str | None = "auto"  # "auto" = generated once per daemon run
    max_concurrent: int = 4


@dataclass(frozen=True)
class GpioTriggerConfig:
    pin: int | str
    action: str = "toggle"  # start | stop | toggle
    labels: tuple[str, ...] = ()
    duration_s: float | None = None
    pre_trigger_s: float | None = None
    bounce_s: float = 0.05


@dataclass(frozen=True)
class IntervalTriggerConfig:
    every_s: float
    duration_s: float
    labels: tuple[str, ...] = ("periodic",)


@dataclass(frozen=True)
class TriggersConfig:
    mqtt: bool = True
    gpio: tuple[GpioTriggerConfig, ...] = ()
    interval: IntervalTriggerConfig | None = None


@dataclass(frozen=True)
class StatusLedConfig:
    pin: int | str


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    topic_prefix: str = "edge-recorder"
    client_id: str | None = None
    username: str | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    protocol: str = "5"  # "5" or "3.1.1"
    max_payload_bytes: int = 131072


@dataclass(frozen=True)
class StorageConfig:
    dir: Path = Path("/var/lib/edge-recorder")
    max_bytes: int = 1 << 30


@dataclass(frozen=True)
class DeliveryConfig:
    """When a published session counts as delivered."""

    require_receipt: bool = True  # wait for the collector's receipt; false: the broker's ack
    receipt_timeout_s: float = 60.0  # publish again when no receipt came this long (doubling)


@dataclass(frozen=True)
class Config:
    device_id: str
    sensors: tuple[SensorConfig, ...]
    buffer: BufferConfig
    session: SessionConfig
    triggers: TriggersConfig
    status_led: StatusLedConfig | None
    gpio_pin_factory: str | None
    mqtt: MqttConfig
    storage: StorageConfig
    emulation: WorldEmulationConfig = WorldEmulationConfig()
    delivery: DeliveryConfig = DeliveryConfig()

    @property
    def topic_root(self) -> str:
        """``P`` in docs/contract.md §3: ``{topic_prefix}/{device_id}``."""
        return f"{self.mqtt.topic_prefix}/{self.device_id}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edge-recorder-{self.device_id}"


# --- the validating reader ---------------------------------------------------------------

_MISSING = object()


SHOW_CHARS = 60


def _show(value: Any) -> str:
    """A value as the error message quotes it, cut to ``SHOW_CHARS``."""
    text = repr(value) if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)
    return text if len(text) <= SHOW_CHARS else f"{text[:SHOW_CHARS - 3]}..."


class _Reader:
    """Collects problems while reading a YAML tree; each is ``path: what, and the fix``."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def section(self, value: Any, path: str, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping of keys ({', '.join(known)}), got {_show(value)}")
            return {}
        for key in value:
            if key not in known:
                hint = difflib.get_close_matches(str(key), known, n=1)
                tip = f"; did you mean {hint[0]!r}?" if hint else \
                    f"; known keys: {', '.join(known)}"
                self.fail(_join(path, str(key)), f"unknown key{tip}")
        return value

    def get(
        self,
        data: dict[str, Any],
        key: str,
        path: str,
        kind: str,
        default: Any = _MISSING,
        *,
        nullable: bool = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """Read ``data[key]`` as ``kind`` (int, number, str, bool, labels); on error record
        it and return the default (or None)."""
        where = _join(path, key)
        if key not in data:
            if default is _MISSING:
                self.fail(where, f"is required ({_KIND_TEXT[kind]})")
                return None
            return default
        value = data[key]
        if value is None:
            if nullable:
                return None
            self.fail(where, f"must be {_KIND_TEXT[kind]}, not null")
            return None if default is _MISSING else default
        converted = _CONVERT[kind](value)
        if converted is _MISSING:
            self.fail(where, f"must be {_KIND_TEXT[kind]}, got {_show(value)}")
            return None if default is _MISSING else default
        if check is not None:
            message = check(converted)
            if message:
                self.fail(where, message)
                return None if default is _MISSING else default
        return converted


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _as_int(v: Any) -> Any:
    return v if isinstance(v, int) and not isinstance(v, bool) else _MISSING


def _as_number(v: Any) -> Any:
    """A finite float (``.inf``, ``.nan`` and 400-digit integers are not numbers of seconds)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return _MISSING
    try:
        f = float(v)
    except OverflowError:
        return _MISSING
    return f if math.isfinite(f) else _MISSING


def _as_str(v: Any) -> Any:
    return v if isinstance(v, str) else _MISSING


def _as_bool(v: Any) -> Any:
    return v if isinstance(v, bool) else _MISSING


def _as_labels(v: Any) -> Any:
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(v)
    return _MISSING


def _as_pin(v: Any) -> Any:
    return v if (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str) \
        else _MISSING


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "int": _as_int, "number": _as_number, "str": _as_str, "bool": _as_bool,
    "labels": _as_labels, "pin": _as_pin,
}
_KIND_TEXT = {
    "int": "a whole number", "number": "a finite number", "str": "a string",
    "bool": "true or false", "labels": "a list of strings",
    "pin": "a GPIO number (17) or a pin name (\"GPIO17\", \"BOARD11\")",
}


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be greater than 0, got {_show(v)}"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else f"must be 0 or more, got {_show(v)}"


def _duration(v: float) -> str | None:
    return None if 0 < v <= MAX_DURATION_S else \
        f"must be more than 0 and at most {MAX_DURATION_S:g} s (one day), got {_show(v)}"


def _at_most(limit: float) -> Callable[[float], str | None]:
    def check(v: float) -> str | None:
        return None if 0 <= v <= limit else f"must be from 0 to {limit:g}, got {_show(v)}"
    return check


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else \
            f"{_show(v)} is not one of {', '.join(repr(c) for c in choices)}"
    return check


def _label_list(v: tuple[str, ...]) -> str | None:
    from edge_recorder.recording.labels import label_problem

    for label in v:
        problem = label_problem(label)
        if problem:
            return problem
    return None


# --- sections -----------------------------------------------------------------------------

def _read_sensor(r: _Reader, raw: Any, path: str) -> SensorConfig | None:
    known = ("name", "driver", "bus", "address", "rate_hz", "accel_range_g",
             "gyro_range_dps", "emulation")
    d = r.section(raw, path, known)
    if not isinstance(raw, dict):
        return None
    name = r.get(d, "name", path, "str", check=lambda v: None if NAME_RE.match(v) else
                 f"{v!r} must be 1-32 characters of letters, digits, '_' or '-'")
    driver_name = r.get(d, "driver", path, "str", check=lambda v: None if v in DRIVERS else
                        f"{v!r} is not a supported driver (choose from "
                        f"{', '.join(sorted(DRIVERS))})")
    driver = DRIVERS.get(driver_name) if driver_name else None
    bus = d.get("bus", _MISSING)
    if bus is _MISSING:
        r.fail(_join(path, "bus"), "is required (an I2C bus number such as 1, or \"emulated\")")
        bus = None
    elif not (bus == "emulated" or (isinstance(bus, int) and not isinstance(bus, bool)
                                    and bus >= 0)):
        r.fail(_join(path, "bus"),
               f"must be an I2C bus number (1 for /dev/i2c-1) or \"emulated\", got {_show(bus)}")
        bus = None
    default_address = driver.default_address if driver else 0
    address = r.get(d, "address", path, "int", default_address,
                    check=lambda v: None if (not driver or v in driver.addresses) else
                    f"0x{v:02x} is not an address a {driver.name} can have (choose from "
                    f"{', '.join(f'0x{a:02x}' for a in driver.addresses)})")

    def _choice(key: str, choices: tuple[Any, ...], what: str, unit: str) -> Callable[[Any], Any]:
        def check(v: Any) -> str | None:
            if driver is None or v in choices:
                return None
            shown = ", ".join(f"{c:g}" for c in choices)
            return f"{v:g} is not {what} this {driver.name} supports (choose from {shown}) {unit}"
        return check

    rate = r.get(d, "rate_hz", path, "number", driver.default_rate_hz if driver else 200.0,
                 check=_choice("rate_hz", driver.rates_hz if driver else (), "a rate", "Hz"))
    accel = r.get(d, "accel_range_g", path, "int", driver.default_accel_range_g if driver else 4,
                  check=_choice("accel_range_g", driver.accel_ranges_g if driver else (),
                                "an accelerometer range", "g"))
    gyro = r.get(d, "gyro_range_dps", path, "int",
                 driver.default_gyro_range_dps if driver else 500,
                 check=_choice("gyro_range_dps", driver.gyro_ranges_dps if driver else (),
                               "a gyro range", "°/s"))
    emulation = None
    if "emulation" in d:
        epath = _join(path, "emulation")
        if bus != "emulated":
            r.fail(epath, "only applies with bus: emulated")
        e = r.section(d["emulation"], epath,
                      ("clock_error", "bus_error_rate", "motion", "seed", "hang_after_s",
                       "chip", "absent_s", "bus_hz"))
        emulation = EmulationConfig(
            clock_error=r.get(e, "clock_error", epath, "number", 0.0,
                              check=lambda v: None if abs(v) <= 0.2 else
                              "must be between -0.2 and 0.2 (a fraction, 0.02 = 2 %)"),
            bus_hz=r.get(e, "bus_hz", epath, "int", 400_000,
                         check=lambda v: None if 10_000 <= v <= 3_400_000 else
                         "must be an I2C clock from 10000 to 3400000 Hz"),
            bus_error_rate=r.get(e, "bus_error_rate", epath, "number", 0.0,
                                 check=lambda v: None if 0 <= v < 1 else
                                 "must be a fraction from 0 up to 1"),
            motion=r.get(e, "motion", epath, "str", "rest", check=_one_of("rest", "rotation")),
            seed=r.get(e, "seed", epath, "int", 0),
            hang_after_s=r.get(e, "hang_after_s", epath, "number", None, nullable=True,
                               check=_at_most(MAX_DURATION_S)),
            absent_s=_windows(r, e.get("absent_s"), f"{epath}.absent_s"),
            chip=r.get(e, "chip", epath, "str", None, nullable=True,
                       check=lambda v: None if driver is None or v in driver.chip_ids.values()
                       else f"{v!r} is not a {driver.name} variant (choose from "
                       f"{', '.join(driver.chip_ids.values())})"),
        )
    if None in (name, driver_name, bus, address, rate, accel, gyro):
        return None
    return SensorConfig(name, driver_name, bus, address, rate, accel, gyro, emulation)


def _windows(r: _Reader, raw: Any, path: str) -> tuple[tuple[float, float], ...]:
    """``[[from_s, to_s], ...]``: when an emulated chip stops answering."""
    if raw is None:
        return ()
    ok = isinstance(raw, list) and all(
        isinstance(w, list) and len(w) == 2 and all(_as_number(x) is not _MISSING for x in w)
        and 0 <= w[0] < w[1] <= MAX_DURATION_S for w in raw)
    if not ok:
        r.fail(path, f"must be a list of [from_s, to_s] pairs within {MAX_DURATION_S:g} s, "
               "e.g. [[10, 12]]")
        return ()
    return tuple((float(a), float(b)) for a, b in raw)


def _read_session(r: _Reader, raw: Any) -> SessionConfig:
    p = "session"
    d = r.section(raw, p, ("duration_s", "max_duration_s", "pre_trigger_s", "labels",
                           "allowed_labels", "journey_id", "max_concurrent"))
    dflt = SessionConfig()
    allowed = r.get(d, "allowed_labels", p, "labels", None, nullable=True, check=_label_list)
    return SessionConfig(
        duration_s=r.get(d, "duration_s", p, "number", dflt.duration_s, nullable=True,
                         check=_duration),
        max_duration_s=r.get(d, "max_duration_s", p, "number", dflt.max_duration_s,
                             check=_duration),
        pre_trigger_s=r.get(d, "pre_trigger_s", p, "number", 0.0, check=_non_negative),
        labels=r.get(d, "labels", p, "labels", (), check=_label_list),
        allowed_labels=allowed,
        journey_id=r.get(d, "journey_id", p, "str", "auto", nullable=True,
                         check=lambda v: None if 0 < len(v) <= MAX_JOURNEY_ID_CHARS
                         and v.isprintable() else
                         f"must be 1-{MAX_JOURNEY_ID_CHARS} printable characters"),
        max_concurrent=r.get(d, "max_concurrent", p, "int", dflt.max_concurrent,
                             check=lambda v: None if 1 <= v <= 64 else "must be 1 to 64"),
    )


def _read_triggers(r: _Reader, raw: Any) -> TriggersConfig:
    p = "triggers"
    d = r.section(raw, p, ("mqtt", "gpio", "interval"))
    gpio: list[GpioTriggerConfig] = []
    raw_gpio = d.get("gpio") or []
    if not isinstance(raw_gpio, list):
        r.fail("triggers.gpio", "must be a list of buttons, e.g. [{pin: 17, action: toggle}]")
        raw_gpio = []
    for i, item in enumerate(raw_gpio):
        gp = f"triggers.gpio[{i}]"
        g = r.section(item, gp, ("pin", "action", "labels", "duration_s", "pre_trigger_s",
                                 "bounce_s"))
        if not isinstance(item, dict):
            continue
        pin = r.get(g, "pin", gp, "pin")
        if pin is None:
            continue
        gpio.append(GpioTriggerConfig(
            pin=pin,
            action=r.get(g, "action", gp, "str", "toggle",
                         check=_one_of("start", "stop", "toggle")),
            labels=r.get(g, "labels", gp, "labels", (), check=_label_list),
            duration_s=r.get(g, "duration_s", gp, "number", None, nullable=True,
                             check=_duration),
            pre_trigger_s=r.get(g, "pre_trigger_s", gp, "number", None, nullable=True,
                                check=_non_negative),
            bounce_s=r.get(g, "bounce_s", gp, "number", 0.05, check=_at_most(MAX_BOUNCE_S)),
        ))
    interval = None
    if d.get("interval") is not None:
        ip = "triggers.interval"
        iv = r.section(d["interval"], ip, ("every_s", "duration_s", "labels"))
        every = r.get(iv, "every_s", ip, "number",
                      check=lambda v: None if MIN_INTERVAL_S <= v <= MAX_INTERVAL_S else
                      f"must be from {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} s, got {_show(v)}")
        duration = r.get(iv, "duration_s", ip, "number", check=_duration)
        labels = r.get(iv, "labels", ip, "labels", ("periodic",), check=_label_list)
        if every is not None and duration is not None:
            interval = IntervalTriggerConfig(every, duration, labels)
    return TriggersConfig(
        mqtt=r.get(d, "mqtt", p, "bool", True),
        gpio=tuple(gpio),
        interval=interval,
    )


def _read_mqtt(r: _Reader, raw: Any, base: Path) -> MqttConfig:
    p = "mqtt"
    d = r.section(raw, p, ("host", "port", "topic_prefix", "client_id", "username",
                           "password_file", "tls", "protocol", "max_payload_bytes"))
    dflt = MqttConfig()
    tls = None
    if d.get("tls") is not None:
        t = r.section(d["tls"], "mqtt.tls", ("ca_file", "cert_file", "key_file"))
        tls = TlsConfig(*(_path(r.get(t, k, "mqtt.tls", "str", None, nullable=True), base)
                          for k in ("ca_file", "cert_file", "key_file")))
        if (tls.cert_file is None) != (tls.key_file is None):
            r.fail("mqtt.tls", "cert_file and key_file go together: give both or neither")
    protocol = d.get("protocol", 5)
    if str(protocol) not in ("5", "3.1.1"):
        r.fail("mqtt.protocol", f"{_show(protocol)} is not a supported MQTT version "
               "(choose 5 or \"3.1.1\")")
        protocol = 5
    return MqttConfig(
        host=r.get(d, "host", p, "str", dflt.host),
        port=r.get(d, "port", p, "int", dflt.port,
                   check=lambda v: None if 0 < v < 65536 else "must be 1 to 65535"),
        topic_prefix=r.get(d, "topic_prefix", p, "str", dflt.topic_prefix,
                           check=lambda v: None if v and not set(v) & set("+#") and
                           not v.startswith("$") else
                           "must be non-empty, without '+', '#' or a leading '$'"),
        client_id=r.get(d, "client_id", p, "str", None, nullable=True),
        username=r.get(d, "username", p, "str", None, nullable=True),
        password_file=_path(r.get(d, "password_file", p, "str", None, nullable=True), base),
        tls=tls,
        protocol=str(protocol),
        max_payload_bytes=r.get(d, "max_payload_bytes", p, "int", dflt.max_payload_bytes,
                                check=lambda v: None if 1024 <= v <= MAX_PAYLOAD_BYTES else
                                f"must be between 1024 and {MAX_PAYLOAD_BYTES} bytes"),
    )


def _path(value: str | None, base: Path) -> Path | None:
    """A path from the config: ``~`` and ``$VARIABLES`` (e.g. ``$CREDENTIALS_DIRECTORY``)
    expanded, relative paths taken from the config file's directory."""
    if value is None:
        return None
    return base / Path(os.path.expandvars(value)).expanduser()


def _read_pin_section(r: _Reader, raw: Any, path: str) -> StatusLedConfig | None:
    if raw is None:
        return None
    d = r.section(raw, path, ("pin",))
    pin = r.get(d, "pin", path, "pin")
    return None if pin is None else StatusLedConfig(pin)


def default_device_id() -> str:
    """The hostname, with characters a device id cannot hold replaced by '-'."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()).lstrip("_-")[:64]
    return name or "edge-recorder"


TOP_KEYS = ("device_id", "sensors", "buffer", "session", "triggers", "status_led",
            "gpio_pin_factory", "mqtt", "storage", "emulation", "delivery")


def parse_config(data: Any, *, base_dir: Path = Path("."), source: str = "config") -> Config:
    """Validate a parsed YAML document; raise :class:`ConfigError` listing every problem.

    Relative paths (``storage.dir``, TLS and password files) are taken relative to
    ``base_dir``, the config file's directory.
    """
    r = _Reader()
    if data is None:
        data = {}
    top = r.section(data, "", TOP_KEYS) if isinstance(data, dict) else {}
    if not isinstance(data, dict):
        r.problems.append(f"the file must hold a mapping of keys ({', '.join(TOP_KEYS)})")
    device_id = r.get(top, "device_id", "", "str", None, nullable=True,
                      check=lambda v: None if DEVICE_ID_RE.match(v) else
                      f"{v!r} must be 1-64 characters of letters, digits, '_' or '-', "
                      "starting with a letter or digit")
    sensors: list[SensorConfig] = []
    raw_sensors = top.get("sensors", _MISSING)
    if raw_sensors is _MISSING or raw_sensors is None:
        r.fail("sensors", "is required: list at least one sensor, e.g. "
               "[{name: imu0, driver: mpu6050, bus: 1}]")
    elif not isinstance(raw_sensors, list) or not raw_sensors:
        r.fail("sensors", "must be a non-empty list of sensors")
    else:
        for i, raw in enumerate(raw_sensors):
            s = _read_sensor(r, raw, f"sensors[{i}]")
            if s is not None:
                sensors.append(s)
    b = r.section(top.get("buffer"), "buffer", ("seconds",))
    buffer = BufferConfig(r.get(b, "seconds", "buffer", "number", 30.0,
                                check=lambda v: None if 0 < v <= 3600 else
                                "must be more than 0 and at most 3600 seconds"))
    session = _read_session(r, top.get("session"))
    triggers = _read_triggers(r, top.get("triggers"))
    status_led = _read_pin_section(r, top.get("status_led"), "status_led")
    factory = r.get(top, "gpio_pin_factory", "", "str", None, nullable=True,
                    check=_one_of("mock", "lgpio", "rpigpio", "pigpio", "native"))
    mqtt = _read_mqtt(r, top.get("mqtt"), base_dir)
    st = r.section(top.get("storage"), "storage", ("dir", "max_bytes"))
    storage = StorageConfig(
        dir=_path(r.get(st, "dir", "storage", "str", str(StorageConfig.dir)), base_dir)
        or StorageConfig.dir,
        max_bytes=r.get(st, "max_bytes", "storage", "int", StorageConfig.max_bytes,
                        check=lambda v: None if v >= 1 << 20 else "must be at least 1048576"),
    )
    emulation = _read_world_emulation(r, top.get("emulation"), sensors)
    dv = r.section(top.get("delivery"), "delivery", ("require_receipt", "receipt_timeout_s"))
    delivery = DeliveryConfig(
        require_receipt=r.get(dv, "require_receipt", "delivery", "bool", True),
        receipt_timeout_s=r.get(dv, "receipt_timeout_s", "delivery", "number", 60.0,
                                check=lambda v: None if 1 <= v <= 86400 else
                                f"must be from 1 to 86400 seconds, got {_show(v)}"),
    )
    _cross_check(r, sensors, session, triggers, buffer, status_led)
    if r.problems:
        raise ConfigError(r.problems, source)
    return Config(
        device_id=device_id or default_device_id(),
        sensors=tuple(sensors),
        buffer=buffer,
        session=session,
        triggers=triggers,
        status_led=status_led,
        gpio_pin_factory=factory,
        mqtt=mqtt,
        storage=storage,
        emulation=emulation,
        delivery=delivery,
    )


BITS_PER_BYTE = 9  # NXP UM10204 §3.1.5-3.1.6: 8 data bits + ACK; a drain nears f_SCL / 9 B/s
ASSUMED_BUS_HZ = 400_000  # when the real clock cannot be read (not on a Pi)
BUS_BUDGET_FRACTION = 0.9  # leave room for status reads and addressing


def bus_clock_hz(bus: int | str, sensors: list[SensorConfig]) -> tuple[int, bool]:
    """The SCL clock of ``bus`` and whether it is known (read or configured) rather than
    assumed: an emulated bus's ``emulation.bus_hz``; a Pi's from its device tree."""
    if bus == "emulated":
        return min((s.emulation.bus_hz if s.emulation else ASSUMED_BUS_HZ)
                   for s in sensors), True
    from edge_recorder.sensors.smbus import read_bus_clock_hz

    hz = read_bus_clock_hz(int(bus))
    return (hz, True) if hz else (ASSUMED_BUS_HZ, False)


def _read_world_emulation(r: _Reader, raw: Any, sensors: list[SensorConfig]) \
        -> WorldEmulationConfig:
    e = r.section(raw, "emulation", ("wall_clock_steps",))
    path = "emulation.wall_clock_steps"
    steps = e.get("wall_clock_steps")
    if steps is None:
        return WorldEmulationConfig()
    ok = isinstance(steps, list) and all(
        isinstance(w, list) and len(w) == 2 and all(isinstance(x, int | float) and
                                                    not isinstance(x, bool) for x in w)
        and w[0] >= 0 and w[1] != 0 for w in steps)
    if not ok:
        r.fail(path, "must be a list of [after_s, step_s] pairs: after_s ≥ 0 seconds after the "
               "daemon starts, step_s a signed non-zero step in seconds, e.g. [[2, 3600]]")
        return WorldEmulationConfig()
    real = [f"sensors[{i}] is on bus {s.bus}" for i, s in enumerate(sensors) if not s.emulated]
    if real:
        r.fail(path, f"only applies when every sensor is on bus: emulated ({'; '.join(real)}); "
               "a real device's clock is stepped by its NTP client, not by the config")
    return WorldEmulationConfig(tuple((float(a), float(b)) for a, b in steps))



def _check_bus_budget(r: _Reader, sensors: list[SensorConfig]) -> None:
    """Sensors on one bus must fit in what its clock can carry (9 bit-times a byte)."""
    by_bus: dict[int | str, list[tuple[int, SensorConfig]]] = {}
    for i, s in enumerate(sensors):
        by_bus.setdefault(s.bus, []).append((i, s))
    for bus, users in by_bus.items():
        hz, known = bus_clock_hz(bus, [s for _, s in users])
        capacity = hz / BITS_PER_BYTE
        total = sum(s.rate_hz * DRIVERS[s.driver].frame_bytes for _, s in users)
        if total > BUS_BUDGET_FRACTION * capacity:
            last = users[-1][0]
            how = "runs at" if known else "is assumed to run at"
            r.fail(f"sensors[{last}].rate_hz", f"the sensors on bus {bus} need {total / 1000:.1f} "
                   f"kB/s of FIFO data, more than its clock carries (it {how} {hz / 1000:g} "
                   f"kHz: ~{capacity / 1000:.1f} kB/s); lower rate_hz, use another bus, or "
                   "raise the clock (dtparam=i2c_arm_baudrate=400000 in /boot/firmware/config.txt)")


def _cross_check(r: _Reader, sensors: list[SensorConfig], session: SessionConfig,
                 triggers: TriggersConfig, buffer: BufferConfig,
                 status_led: StatusLedConfig | None) -> None:
    _check_bus_budget(r, sensors)
    seen_names: dict[str, int] = {}
    seen_addr: dict[tuple[int | str, int], int] = {}
    for i, s in enumerate(sensors):
        if s.name in seen_names:
            r.fail(f"sensors[{i}].name", f"{s.name!r} is already used by "
                   f"sensors[{seen_names[s.name]}]; names must be unique")
        seen_names.setdefault(s.name, i)
        key = (s.bus, s.address)
        if key in seen_addr:
            r.fail(f"sensors[{i}].address", f"0x{s.address:02x} on bus {s.bus} is already "
                   f"used by sensors[{seen_addr[key]}]")
        seen_addr.setdefault(key, i)
    durations = [("session.duration_s", session.duration_s)] + [
        (f"triggers.gpio[{i}].duration_s", g.duration_s) for i, g in enumerate(triggers.gpio)] \
        + ([("triggers.interval.duration_s", triggers.interval.duration_s)]
           if triggers.interval else [])
    for path, duration in durations:
        if duration is not None and duration > session.max_duration_s:
            r.fail(path, f"{duration:g} is longer than session.max_duration_s "
                   f"({session.max_duration_s:g}); every session stops there")
    ring_bytes = sum(buffer.seconds * s.rate_hz * RING_BYTES_PER_SAMPLE for s in sensors)
    if ring_bytes > MAX_RING_BYTES:
        r.fail("buffer.seconds", f"{buffer.seconds:g} s of ring buffer for "
               f"{len(sensors)} sensor(s) at {', '.join(f'{s.rate_hz:g}' for s in sensors)} Hz "
               f"needs ~{ring_bytes / (1 << 20):.0f} MiB of memory, more than the "
               f"{MAX_RING_BYTES >> 20} MiB limit; lower buffer.seconds or rate_hz")
    pre_triggers = [("session.pre_trigger_s", session.pre_trigger_s)] + [
        (f"triggers.gpio[{i}].pre_trigger_s", g.pre_trigger_s)
        for i, g in enumerate(triggers.gpio) if g.pre_trigger_s is not None]
    for path, value in pre_triggers:
        if value > buffer.seconds:
            r.fail(path, f"{value:g} s reaches further back than the ring buffer holds "
                   f"(buffer.seconds = {buffer.seconds:g}); raise buffer.seconds or lower this")
    if session.allowed_labels is not None:
        allowed = set(session.allowed_labels)
        for path, labels in [("session.labels", session.labels)] + [
                (f"triggers.gpio[{i}].labels", g.labels) for i, g in enumerate(triggers.gpio)] + (
                [("triggers.interval.labels", triggers.interval.labels)]
                if triggers.interval else []):
            bad = [x for x in labels if x not in allowed]
            if bad:
                r.fail(path, f"{', '.join(bad)} not in session.allowed_labels "
                       f"({', '.join(session.allowed_labels)})")
    if triggers.gpio or status_led is not None:
        from edge_recorder.triggers.gpio import pin_problem  # the one gpiozero module

        for where, pin in [(f"triggers.gpio[{i}].pin", g.pin) for i, g in
                           enumerate(triggers.gpio)] + \
                ([("status_led.pin", status_led.pin)] if status_led is not None else []):
            problem = pin_problem(pin)
            if problem:
                r.fail(where, problem)
    pins: dict[str, str] = {}
    for i, g in enumerate(triggers.gpio):
        where = f"triggers.gpio[{i}].pin"
        if str(g.pin) in pins:
            r.fail(where, f"pin {g.pin} is already used by {pins[str(g.pin)]}")
        pins.setdefault(str(g.pin), where)
    if status_led is not None and str(status_led.pin) in pins:
        r.fail("status_led.pin", f"pin {status_led.pin} is already used by "
               f"{pins[str(status_led.pin)]}")


def load_config(path: Path | str) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    return parse_config(read_yaml(path), base_dir=path.parent.resolve(), source=str(path))


def read_yaml(path: Path) -> Any:
    """A YAML file as plain data, bounded before it is built: at most ``MAX_CONFIG_BYTES``
    of UTF-8, at most ``MAX_CONFIG_NODES`` nodes with aliases expanded, no duplicate keys."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read the config file: {exc.strerror or exc}"],
                          str(path)) from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"the file is larger than {MAX_CONFIG_BYTES} bytes, the limit for a "
                           "config file (MAX_CONFIG_BYTES); is it the right file?"], str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError([f"line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                           f"{exc.start}); save the file as UTF-8"], str(path)) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        problems = _node_problems(node)
        if problems:
            raise ConfigError(problems, str(path))
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}not valid YAML ({problem})"], str(path)) from None
    except RecursionError:
        raise ConfigError(["the YAML is nested too deeply to be a config"], str(path)) from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node) -> int | None:
    """How many nodes the document has once every alias is expanded (capped just past
    ``MAX_CONFIG_NODES``), counted without expanding anything; None if an alias refers
    to a node that contains it."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        kids = _children(node)
        if children_done:
            on_path.discard(id(node))
            size[id(node)] = min(MAX_CONFIG_NODES + 1, 1 + sum(size[id(k)] for k in kids))
            continue
        on_path.add(id(node))
        stack.append((node, True))
        for kid in kids:
            if id(kid) in on_path:
                return None
            if id(kid) not in size:
                stack.append((kid, False))
    return size[id(root)]


def _node_problems(root: yaml.Node) -> list[str]:
    """Refuse alias bombs and recursive aliases, then duplicate keys (with their path)."""
    expanded = _expanded_size(root)
    if expanded is None:
        return ["an alias (*name) refers to a node that contains it; configs cannot be "
                "recursive"]
    if expanded > MAX_CONFIG_NODES:
        return [f"the document expands to more than {MAX_CONFIG_NODES} YAML nodes "
                "(MAX_CONFIG_NODES) through its aliases (*name); write the values out"]
    problems: list[str] = []
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.SequenceNode):
            stack += [(kid, f"{path}[{i}]") for i, kid in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                if name == "<<":  # a merge: keys written here override the merged ones
                    continue
                line = key.start_mark.line + 1
                if name in first_line:
                    problems.append(f"{_join(path, name)}: duplicate key (lines "
                                    f"{first_line[name]} and {line}); keep one")
                first_line.setdefault(name, line)
                stack.append((value, _join(path, name)))
    return sorted(problems)
