"""Triggers: GPIO buttons through gpiozero's MockFactory, the interval schedule, the
command protocol (including property-based fuzzing: one reply per payload, always)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_recorder.app import Daemon
from edge_recorder.config import (
    GpioTriggerConfig,
    IntervalTriggerConfig,
    SessionConfig,
    parse_config,
)
from edge_recorder.delivery.mqtt import Message
from edge_recorder.recording.events import JourneyRequested, Rejected, StartRequested, Trigger
from edge_recorder.triggers.commands import parse_command
from edge_recorder.triggers.gpio import GpioButton, StatusLed
from edge_recorder.triggers.interval import IntervalTrigger, next_aligned_ns
from edge_recorder.triggers.mqtt_commands import MqttCommands
from tests.conftest import wait_until
from tests.rig import Rig, stored


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.reset()
    Device.pin_factory = None


class SyncRig(Rig):
    """The rig, with events handled under a lock (gpiozero calls back from its threads)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lock = threading.Lock()

    def submit(self, event) -> None:
        with self.lock:
            self.recorder.handle(event)

    def is_open(self, sid: str) -> bool:
        return sid in self.recorder.sessions

    def run(self, seconds: float) -> None:
        with self.lock:
            super().run(seconds)


def test_button_toggle_starts_and_stops_a_session_with_its_labels(tmp_path, factory):
    rig = SyncRig(tmp_path)
    button = GpioButton(GpioTriggerConfig(pin=17, action="toggle", labels=("button", "door"),
                                          bounce_s=0), rig.submit, rig.is_open, factory)
    pin = factory.pin(17)
    pin.drive_low()
    wait_until(lambda: rig.recorder.sessions, 2, "a session from the press")
    pin.drive_high()
    rig.run(1.0)
    (sid,) = rig.recorder.sessions
    pin.drive_low()
    pin.drive_high()
    wait_until(lambda: rig.recorder.sessions[sid].stop_ns is not None, 2, "stop on 2nd press")
    rig.finish()
    manifest, _ = stored(rig, sid)
    assert manifest["labels"] == ["button", "door"]
    assert manifest["trigger"] == {"source": "gpio", "detail": "pin 17 toggle"}
    assert manifest["stop_reason"] == "button"
    assert manifest["sensors"][0]["samples"] == pytest.approx(200, abs=5)
    button.close()


def test_holding_a_button_stops_every_open_session(tmp_path, factory):
    rig = SyncRig(tmp_path)
    rig.submit(StartRequested(Trigger("mqtt")))
    rig.submit(StartRequested(Trigger("mqtt")))
    button = GpioButton(GpioTriggerConfig(pin=22, action="start", bounce_s=0), rig.submit,
                        rig.is_open, factory)
    factory.pin(22).drive_low()  # a press starts a third ...
    wait_until(lambda: len(rig.recorder.sessions) == 3, 2, "third session")
    time.sleep(1.3)  # ... and holding it past 1 s stops all three
    factory.pin(22).drive_high()
    assert all(s.stop_reason == "button" for s in rig.recorder.sessions.values())
    button.close()


def test_status_led_is_on_while_recording_and_blinks_on_error(factory):
    led = StatusLed(27, factory)
    pin = factory.pin(27)
    led.show(recording=True, error=False)
    assert pin.state
    led.show(recording=False, error=False)
    assert not pin.state
    led.show(recording=False, error=True)
    states = set()
    for _ in range(20):
        states.add(bool(pin.state))
        time.sleep(0.05)
    assert states == {True, False}
    # a receipt overdue: a 0.1 s flash every 2 s (recording and faults still take precedence)
    led.show(recording=False, error=False, waiting=True)
    lit = []
    for _ in range(50):  # 2.5 s
        lit.append(bool(pin.state))
        time.sleep(0.05)
    assert 1 <= sum(lit) <= 6 and not all(lit[i] and lit[i + 3] for i in range(len(lit) - 3))
    led.show(recording=True, error=False, waiting=True)
    assert pin.state
    led.close()


def test_interval_sessions_are_clock_aligned_and_skip_while_one_is_open(tmp_path):
    assert next_aligned_ns(1_000_000_000_123, 300) == 1_200_000_000_000
    rig = SyncRig(tmp_path)
    trigger = IntervalTrigger(IntervalTriggerConfig(every_s=10, duration_s=15,
                                                    labels=("periodic",)),
                              rig.submit, rig.is_open, clock=rig.clock.clock)
    trigger.fire(rig.clock.now)
    rig.run(10)
    trigger.fire(rig.clock.now)  # the first is still open: skipped
    assert trigger.skipped == 1 and len(rig.recorder.sessions) == 1
    rig.finish(7)
    trigger.fire(rig.clock.now)
    assert len(rig.recorder.sessions) == 1
    assert rig.completed[0]["labels"] == ["periodic"]
    assert rig.completed[0]["trigger"]["source"] == "interval"


def test_the_daemon_wires_a_mock_button_to_a_session(tmp_path, factory):
    config = parse_config({
        "device_id": "gpio-pi",
        "sensors": [{"name": "imu0", "driver": "mpu6050", "bus": "emulated"}],
        "session": {"duration_s": 0.5},
        "triggers": {"mqtt": False, "gpio": [{"pin": 5, "action": "start",
                                              "labels": ["pressed"]}]},
        "status_led": {"pin": 6},
        "mqtt": {"host": "127.0.0.1", "port": 1},  # no broker: sessions stay on disk
        "storage": {"dir": str(tmp_path / "store")},
    })
    daemon = Daemon(config, pin_factory=factory)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: daemon.channels[0].counters.state == "up", 5, "sensor up")
        # the sensors come up before the triggers are wired: a press before is not seen
        wait_until(lambda: daemon.led is not None, 5, "the button and the LED wired")
        factory.pin(5).drive_low()
        wait_until(lambda: factory.pin(6).state, 3, "the LED on while recording")
        factory.pin(5).drive_high()
        wait_until(lambda: daemon.store.pending(), 5, "the session in the outbox")
        manifest = daemon.store.manifest(daemon.store.pending()[0])
        assert manifest["labels"] == ["pressed"] and manifest["trigger"]["source"] == "gpio"
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()


def test_journey_command_sets_clears_and_renews_the_journey(tmp_path):
    rig = SyncRig(tmp_path, settings=SessionConfig(duration_s=0.1))

    def ask(payload: dict) -> dict:
        replies: list[dict] = []
        try:
            rig.submit(parse_command(json.dumps(payload).encode(), source="t",
                                     reply=replies.append))
        except Rejected as exc:
            return {"ok": False, "error": {"code": exc.code}}
        return replies[0].to_dict()

    assert ask({"cmd": "journey", "journey_id": "visit-7"})["journey_id"] == "visit-7"
    assert ask({"cmd": "start"})["journey_id"] == "visit-7"
    renewed = ask({"cmd": "journey", "new": True})
    assert renewed["previous_journey_id"] == "visit-7"
    assert renewed["journey_id"].startswith("rig-")
    assert ask({"cmd": "journey", "journey_id": None})["journey_id"] is None
    assert ask({"cmd": "start"})["journey_id"] is None
    assert ask({"cmd": "journey"})["error"]["code"] == "invalid_journey"
    assert ask({"cmd": "journey", "journey_id": "x" * 129})["error"]["code"] == "invalid_field"
    assert isinstance(parse_command(b'{"cmd":"journey","new":true}', source="t"),
                      JourneyRequested)


class ReplyCollector:
    """The outbound side of MqttCommands: records what would be published."""

    def __init__(self) -> None:
        self.replies: list[tuple[str, dict]] = []

    def reply(self, request: Message, default_topic: str, payload: bytes) -> None:
        self.replies.append((request.response_topic or default_topic, json.loads(payload)))

    def subscribe(self, *a: object, **k: object) -> None:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=15), inner,
                                                                max_size=6),
    max_leaves=30)
commands = st.fixed_dictionaries(
    {"cmd": st.sampled_from(["start", "stop", "status", "journey", "other", 5])},
    optional={"labels": json_values | st.lists(st.text(max_size=70), max_size=20),
              "journey_id": json_values, "duration_s": json_values,
              "pre_trigger_s": json_values, "session_id": json_values, "new": json_values,
              "request_id": json_values, "extra": json_values})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=300), json_values.map(
    lambda v: json.dumps(v).encode()), commands.map(lambda v: json.dumps(v).encode())))
def test_every_payload_gets_exactly_one_reply_and_nothing_breaks(tmp_path_factory, payload):
    rig = fuzz_rig(tmp_path_factory)
    out = ReplyCollector()
    commands_trigger = MqttCommands(out, "edge-recorder/rig", rig.submit)  # type: ignore[arg-type]
    commands_trigger.on_message(Message("edge-recorder/rig/cmd", payload))
    assert len(out.replies) == 1
    topic, reply = out.replies[0]
    assert topic == "edge-recorder/rig/cmd/reply"
    assert reply["ok"] in (True, False)
    if not reply["ok"]:
        assert reply["error"]["code"] != "internal_error" and reply["error"]["message"]
    rig.submit(JourneyRequested(journey_id="j-auto"))
    with rig.lock:
        for sid in list(rig.recorder.sessions):  # keep the rig small between examples
            rig.recorder.sessions.pop(sid).writer.abort()


_FUZZ_RIG: dict[str, SyncRig] = {}


def fuzz_rig(tmp_path_factory) -> SyncRig:
    if "rig" not in _FUZZ_RIG:
        _FUZZ_RIG["rig"] = SyncRig(tmp_path_factory.mktemp("fuzz"),
                                   settings=SessionConfig(duration_s=None, max_concurrent=64))
    return _FUZZ_RIG["rig"]


@pytest.mark.broker
def test_random_payloads_through_the_broker_each_get_one_reply(tmp_path, broker, client, spawn):
    import random

    from tests.conftest import base_config, wait_online, write_config

    cfg = write_config(tmp_path / "device.yaml", base_config(
        tmp_path, broker.port, session={"duration_s": 0.2, "max_concurrent": 64}))
    daemon = spawn("run", "-c", str(cfg), name="daemon")
    wait_online(client)
    client.subscribe("edge-recorder/test-pi/cmd/reply")
    rng = random.Random(3)
    pieces = [b"{", b"}", b'"cmd"', b":", b'"start"', b'"stop"', b'"status"', b'"journey"',
              b",", b'"labels"', b"[", b"]", b'"x"', b"null", b"1e999", b"-1", b'"\\u0000"']
    sent = 300
    for i in range(sent):
        if i % 3 == 0:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        else:
            payload = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12)))
        client.publish("edge-recorder/test-pi/cmd", payload)
    wait_until(lambda: len(client.received("edge-recorder/test-pi/cmd/reply")) >= sent, 30,
               "a reply to every payload")
    time.sleep(0.5)
    assert len(client.received("edge-recorder/test-pi/cmd/reply")) == sent
    assert daemon.alive()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()
