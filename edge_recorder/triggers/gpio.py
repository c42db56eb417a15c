"""GPIO buttons and the status LED: the only module that imports gpiozero.

Each ``triggers.gpio`` entry is a gpiozero ``Button``: pressing it starts, stops or
toggles a session with that button's labels; holding it (1 s) stops every open session.
The status LED is on while a session records and blinks while something is wrong.
The pin factory comes from ``gpio_pin_factory`` ("mock" on a machine without GPIO).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable

from gpiozero import LED, Button
from gpiozero.pins import Factory

from edge_recorder.config import GpioTriggerConfig
from edge_recorder.recording.events import (
    UNSET,
    Event,
    Reply,
    StartRequested,
    StopRequested,
    Trigger,
)

log = logging.getLogger(__name__)

HOLD_TIME_S = 1.0
MAX_GPIO = 53  # BCM283x and the Pi 5's RP1 have GPIO0-GPIO53
HEADER_BOARD_REVISION = 0xA02082  # a 40-pin header (every Pi since the B+ has the same one)
_NUMBERED = re.compile(r"^(?:GPIO|BCM|WPI)?(\d+)$")


def pin_problem(pin: int | str) -> str | None:
    """Why gpiozero would refuse ``pin`` as a GPIO (so check-config can say so), or None.

    Numbers (``17``, ``"GPIO17"``, ``"BCM17"``, ``"WPI0"``) must be GPIO 0-53; header pins
    (``"BOARD11"``, ``"J8:11"``) must be GPIO pins of the 40-pin header, as gpiozero's own
    board table has them."""
    number = pin if isinstance(pin, int) else None
    if isinstance(pin, str) and (m := _NUMBERED.match(pin)):
        number = int(m.group(1))
    if number is not None:
        return None if 0 <= number <= MAX_GPIO else \
            f"{pin!r} is not a GPIO (GPIO0 to GPIO{MAX_GPIO})"
    from gpiozero.pins.pi import PiBoardInfo

    try:
        PiBoardInfo.from_revision(HEADER_BOARD_REVISION).to_gpio(pin)
    except ValueError as exc:  # PinInvalidPin
        return f"{exc} (use a GPIO number such as 17, or \"GPIO17\", \"BOARD11\", \"J8:11\")"
    return None


def make_pin_factory(name: str | None) -> Factory | None:
    """gpiozero's factory by name; None = gpiozero's default choice."""
    if name is None:
        return None
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    module, cls = {
        "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
        "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
        "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
        "native": ("gpiozero.pins.native", "NativeFactory"),
    }[name]
    import importlib

    factory: Factory = getattr(importlib.import_module(module), cls)()
    return factory


class GpioButton:
    """One configured button."""

    def __init__(self, settings: GpioTriggerConfig, submit: Callable[[Event], None],
                 is_open: Callable[[str], bool], factory: Factory | None) -> None:
        self.settings = settings
        self.submit = submit
        self.is_open = is_open
        self.detail = f"pin {settings.pin} {settings.action}"
        self._session: str | None = None
        self._lock = threading.Lock()
        self.button = Button(settings.pin, pull_up=True, bounce_time=settings.bounce_s or None,
                             hold_time=HOLD_TIME_S, pin_factory=factory)
        self.button.when_pressed = self.pressed
        self.button.when_held = self.held

    def _start(self) -> None:
        def remember(reply: Reply) -> None:
            with self._lock:
                self._session = reply.session_id if reply.ok else None
            if not reply.ok:
                log.warning("button %s: session not started: %s", self.settings.pin,
                            reply.error.message if reply.error else "")

        s = self.settings
        self.submit(StartRequested(
            Trigger("gpio", self.detail), labels=s.labels,
            duration_s=s.duration_s if s.duration_s is not None else UNSET,
            pre_trigger_s=s.pre_trigger_s, reply=remember))

    def _stop(self, session_id: str | None) -> None:
        self.submit(StopRequested(Trigger("gpio", self.detail), session_id=session_id,
                                  reason="button"))

    def pressed(self) -> None:
        action = self.settings.action
        if action == "start":
            self._start()
        elif action == "stop":
            self._stop(None)
        else:
            with self._lock:
                current = self._session
            if current is not None and self.is_open(current):
                with self._lock:
                    self._session = None
                self._stop(current)
            else:
                self._start()

    def held(self) -> None:
        log.info("button %s held: stopping every open session", self.settings.pin)
        self._stop(None)

    def close(self) -> None:
        self.button.close()


class StatusLed:
    """On while recording, blinking fast on error, a short flash every 2 s while a published
    session's receipt is overdue (the collector is not confirming), off when idle."""

    def __init__(self, pin: int | str, factory: Factory | None) -> None:
        self.led = LED(pin, pin_factory=factory)
        self._state = "off"

    def show(self, recording: bool, error: bool, waiting: bool = False) -> None:
        state = "blink" if error else "on" if recording else "waiting" if waiting else "off"
        if state == self._state:
            return
        self._state = state
        if state == "blink":
            self.led.blink(on_time=0.2, off_time=0.2)
        elif state == "waiting":
            self.led.blink(on_time=0.1, off_time=1.9)
        elif state == "on":
            self.led.on()
        else:
            self.led.off()

    def close(self) -> None:
        self.led.close()
