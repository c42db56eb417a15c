"""The daemon on bad days and against hostile input (issue 12, items 8, 10 and the
watchdog), with a real Mosquitto and the real collector. After each hostile case a normal
session must still reach the collector."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Client, base_config, cli, wait_online, wait_until, write_config
from tests.test_service import NotifySocket

pytestmark = pytest.mark.broker

DEVICE = "test-pi"
CMD = f"edge-recorder/{DEVICE}/cmd"
REPLY = f"edge-recorder/{DEVICE}/cmd/reply"
STATUS = f"edge-recorder/{DEVICE}/status"


def ask(client: Client, command: dict[str, Any], timeout_s: float = 10, **kw: Any) -> dict:
    """Send a command and wait for the reply carrying its request_id."""
    rid = command["request_id"]
    client.publish(CMD, json.dumps(command), **kw)
    return wait_until(lambda: next((r for r in client.json_on(REPLY)
                                    if r.get("request_id") == rid), None), timeout_s,
                      f"the reply to {rid}")


def collected(store: Path) -> list[dict]:
    r = cli("sessions", "list", "--store", str(store), "--json")
    return [json.loads(line) for line in r.stdout.splitlines()] if r.returncode == 0 else []


def a_normal_session_reaches_the_collector(client: Client, store: Path, tag: str) -> str:
    """Start a short session by command; it must be stored by the collector within 20 s."""
    reply = ask(client, {"cmd": "start", "duration_s": 0.5, "labels": ["after"],
                         "request_id": f"normal-{tag}"})
    assert reply["ok"] is True, reply
    sid = reply["session_id"]
    wait_until(lambda: any(m["session_id"] == sid for m in collected(store)), 20,
               f"session {sid} at the collector")
    return sid


def every_document_parses(client: Client) -> None:
    """Every reply and every status the daemon sent is a valid typed document, and parsing it
    loses nothing."""
    from edge_recorder.documents import CommandReply, StatusDocument

    replies, statuses = client.received(REPLY), client.received(STATUS)
    assert replies and statuses
    for m in replies:
        assert CommandReply.from_json(m.payload).to_dict() == json.loads(m.payload)
    for m in statuses:
        assert StatusDocument.from_json(m.payload).to_dict() == json.loads(m.payload)


def latest_status(client: Client) -> dict:
    return client.json_on(STATUS)[-1]


# --- item 8: a reload validates everything and changes nothing when it fails ------------

def test_a_refused_reload_changes_nothing_and_a_later_good_one_applies(tmp_path, broker,
                                                                       client, spawn):
    ns = NotifySocket(tmp_path / "notify.sock")
    store = tmp_path / "collected"
    spawn("collect", "--host", "127.0.0.1", "--port", str(broker.port), "--store", str(store),
          name="collector")
    config = base_config(tmp_path, broker.port, session={"duration_s": 0.3, "labels": ["v1"]},
                         triggers={"mqtt": True,
                                   "interval": {"every_s": 1, "duration_s": 0.3}})
    cfg = write_config(tmp_path / "device.yaml", config)
    daemon = spawn("run", "-c", str(cfg), name="daemon", env={"NOTIFY_SOCKET": str(ns.path)})
    wait_online(client)
    client.subscribe(REPLY)
    assert ask(client, {"cmd": "start", "request_id": "a"})["labels"] == ["v1"]

    # a password file that does not exist: check-config refuses it, so must a reload
    bad = {**config, "mqtt": {**config["mqtt"], "username": "pi",
                              "password_file": str(tmp_path / "no-such-password")}}
    write_config(cfg, bad)
    check = cli("check-config", "-c", str(cfg))
    assert check.returncode == 2 and "mqtt.password_file: cannot read" in check.stderr
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "still running on the previous config" in daemon.log(), 10, "refusal")
    status = wait_until(lambda: next((s for s in reversed(client.json_on(STATUS))
                                      if s.get("config_error")), None), 10, "config_error")
    assert "mqtt.password_file: cannot read" in status["config_error"]
    ns.collect(1.0)
    notes = [m for _, m in ns.messages]
    reloading = next(i for i, m in enumerate(notes) if m.startswith("RELOADING=1"))
    assert any(m.startswith("READY=1") for m in notes[reloading + 1:]), notes

    # every trigger still works: commands (subscription kept) and the interval schedule
    assert ask(client, {"cmd": "start", "request_id": "b"})["labels"] == ["v1"]
    published = tmp_path / "device-store"
    interval_before = _interval_sessions(published)
    wait_until(lambda: _interval_sessions(published) >= interval_before + 2, 10,
               "interval sessions after the refused reload")

    # a later good reload applies, and clears config_error
    config["session"]["labels"] = ["v2"]
    write_config(cfg, config)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload: applied" in daemon.log(), 10, "reload applied")
    assert ask(client, {"cmd": "start", "request_id": "c"})["labels"] == ["v2"]
    wait_until(lambda: latest_status(client).get("config_error") == "", 10,
               "config_error cleared")
    a_normal_session_reaches_the_collector(client, store, "reload")
    every_document_parses(client)
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()


def _interval_sessions(device_store: Path) -> int:
    count = 0
    for path in device_store.glob("*/*.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        count += doc.get("trigger", {}).get("source") == "interval"
    return count


def test_check_config_and_reload_agree_on_files(tmp_path):
    """Whatever check-config calls valid, a running daemon can load, and vice versa: both go
    through one loader (config and the files it names)."""
    from edge_recorder.app import load_checked
    from edge_recorder.errors import ConfigError

    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    big = tmp_path / "pw"
    big.write_bytes(b"x" * 10_000)
    cases = {
        "missing password file": ({"username": "pi", "password_file": "nope"},
                                  "mqtt.password_file: cannot read"),
        "password file that is not one": ({"username": "pi", "password_file": str(big)},
                                           "mqtt.password_file:"),
        "missing CA": ({"tls": {"ca_file": "missing.crt"}}, "mqtt.tls.ca_file:"),
        "CA that is not a certificate": ({"tls": {"ca_file": str(garbage)}},
                                         "mqtt.tls.ca_file:"),
    }
    for name, (mqtt, expected) in cases.items():
        path = write_config(tmp_path / "c.yaml", base_config(tmp_path, 1883, mqtt=mqtt))
        r = cli("check-config", "-c", str(path))
        assert r.returncode == 2 and expected in r.stderr, (name, r.stderr)
        with pytest.raises(ConfigError) as info:
            load_checked(path)
        assert expected in info.value.problems[0], name


# --- every long-lived thread is watched ---------------------------------------------------

def _in_process_daemon(tmp_path: Path, port: int, ns: NotifySocket, **overrides: Any):
    import threading

    from edge_recorder.app import Daemon
    from edge_recorder.config import parse_config
    from edge_recorder.systemd import Notifier

    config = parse_config(base_config(tmp_path, port, **overrides))
    notifier = Notifier({"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "600000"})
    before = set(threading.enumerate())
    daemon = Daemon(config, notifier=notifier)
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,), name="test-supervisor")
    runner.start()
    return daemon, stop, runner, before


@pytest.mark.parametrize("fault", ["dies", "wedges"])
def test_a_dead_or_wedged_interval_thread_stops_the_pings_and_says_why(tmp_path, broker, client,
                                                                      spawn, fault):
    import threading

    ns = NotifySocket(tmp_path / "notify.sock")
    threading.Thread(target=ns.collect, args=(90,), daemon=True).start()  # as systemd reads
    store = tmp_path / "collected"
    spawn("collect", "--host", "127.0.0.1", "--port", str(broker.port), "--store", str(store),
          name="collector")
    daemon, stop, runner, before = _in_process_daemon(
        tmp_path, broker.port, ns, session={"duration_s": 0.3},
        triggers={"mqtt": True, "interval": {"every_s": 1, "duration_s": 0.3}})
    try:
        wait_online(client)
        client.subscribe(REPLY)
        time.sleep(1.0)
        assert ns.pings_after(0) >= 2, ns.messages
        # every thread the daemon started is one the watchdog watches
        ours = {t.name for t in set(threading.enumerate()) - before
                if t.name != "test-supervisor" and not t.name.startswith("Thread-")}
        watched = [w.thread_name for w in daemon.watched()]
        assert ours and all(any(name.startswith(w) for w in watched) for name in ours), \
            (ours, watched)

        interval = next(t for t in daemon.triggers if type(t).__name__ == "IntervalTrigger")
        release = threading.Event()
        if fault == "dies":
            def submit(event: Any) -> None:
                raise OSError(28, "No space left on device")
        else:
            def submit(event: Any) -> None:
                release.wait(60)
        interval.submit = submit
        why = "the interval trigger died (OSError: [Errno 28] No space left on device)" \
            if fault == "dies" else "the interval trigger made no progress for"
        wait_until(lambda: why in daemon.watchdog_problem, 12, "the watchdog to notice")
        time.sleep(1.5)
        assert ns.pings_after(time.monotonic() - 1.0) == 0, ns.messages[-4:]
        assert any(why in m and m.startswith("STATUS=WEDGED: ") for _, m in ns.messages)
        status = wait_until(lambda: next((s for s in reversed(client.json_on(STATUS))
                                          if not s.get("watchdog", {}).get("ok", True)), None),
                            10, "the problem in the retained status")
        assert why in status["watchdog"]["problem"]
        # the rest still works until systemd restarts it
        a_normal_session_reaches_the_collector(client, store, fault)
        release.set()
    finally:
        stop.set()
        runner.join(20)
    assert not runner.is_alive()


# --- item 10: hostile commands --------------------------------------------------------------

def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_hostile_commands_get_clear_replies_and_change_nothing(tmp_path, broker, client, spawn):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from edge_recorder.triggers.commands import MAX_COMMAND_BYTES

    store = tmp_path / "collected"
    spawn("collect", "--host", "127.0.0.1", "--port", str(broker.port), "--store", str(store),
          name="collector")
    cfg = write_config(tmp_path / "device.yaml", base_config(tmp_path, broker.port))
    daemon = spawn("run", "-c", str(cfg), name="daemon")
    wait_online(client)
    client.subscribe(REPLY)
    client.subscribe("edge-recorder/#")

    # just over the command limit: a reply that says so, and no parsing
    big = json.dumps({"cmd": "status", "request_id": "big", "pad": "x" * MAX_COMMAND_BYTES})
    client.publish(CMD, big)
    reply = wait_until(lambda: next((r for r in client.json_on(REPLY)
                                     if r.get("error", {}).get("code") == "payload_too_large"),
                                    None), 10, "payload_too_large")
    assert f"the limit is {MAX_COMMAND_BYTES}" in reply["error"]["message"]

    # 40 MB of JSON never reaches the daemon's memory (it would be ~300 MB parsed)
    rss_before = _peak_rss_kib(daemon.proc.pid)
    client.publish(CMD, b"[" + b"0," * (20 << 20) + b"0]")
    assert ask(client, {"cmd": "status", "request_id": "after-40mb"})["ok"] is True
    assert _peak_rss_kib(daemon.proc.pid) - rss_before < 30 << 10  # KiB: < 30 MB

    # a 400-digit duration is a clear error, not an OverflowError with no reply
    reply = ask(client, {"cmd": "start", "duration_s": 10 ** 400, "request_id": "huge"})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_field"
    assert reply["error"]["message"].startswith("duration_s must be a number of seconds")

    # a response topic outside P/cmd/reply/# is not published to: the reply comes on P/cmd/reply
    for target in ("edge-recorder/other-pi/cmd", f"edge-recorder/{DEVICE}/status",
                   f"edge-recorder/{DEVICE}/sessions/x/manifest", "elsewhere/entirely"):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = target
        props.CorrelationData = b"c-" + target.encode()
        rid = f"rt-{target}"
        reply = ask(client, {"cmd": "status", "request_id": rid}, properties=props)
        assert reply["ok"] is True
        msg = next(m for m in client.received(REPLY)
                   if json.loads(m.payload).get("request_id") == rid)
        assert msg.properties.CorrelationData == b"c-" + target.encode()
        assert not any(b'"request_id"' in m.payload for m in client.received(target)), target

    # resend: only ids of the one pattern; nothing else reaches a path, nothing is revealed
    replies = []
    for i, sid in enumerate(["../../../etc/passwd", "../../../etc/no-such-file", "..", ".",
                             "a/b", "x" * 129, "-leading-dash", ""]):
        reply = ask(client, {"cmd": "resend", "session_id": sid, "request_id": f"rs{i}"})
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_field", (sid, reply)
        replies.append(reply["error"]["message"])
    assert len(set(replies)) == 1  # an existing file and a missing one get the same answer
    reply = ask(client, {"cmd": "resend", "session_id": "20200101T000000000Z-0000000000",
                         "request_id": "rs-unknown"})
    assert reply["error"]["code"] == "no_such_session"
    assert not any(".." in m.topic or "passwd" in m.topic
                   for m in client.received("edge-recorder/#"))
    reply = ask(client, {"cmd": "stop", "session_id": "../x", "request_id": "stop-path"})
    assert reply["error"]["code"] == "invalid_field"

    a_normal_session_reaches_the_collector(client, store, "commands")
    every_document_parses(client)
    assert daemon.alive() and daemon.stop() == 0
    assert "Traceback" not in daemon.log()


def test_200_resends_of_one_session_are_coalesced(tmp_path, broker, client, spawn):
    from edge_recorder.delivery.publisher import RESEND_HOLDOFF_S

    store = tmp_path / "collected"
    spawn("collect", "--host", "127.0.0.1", "--port", str(broker.port), "--store", str(store),
          name="collector")
    cfg = write_config(tmp_path / "device.yaml", base_config(tmp_path, broker.port))
    daemon = spawn("run", "-c", str(cfg), name="daemon")
    wait_online(client)
    client.subscribe(REPLY)
    sid = a_normal_session_reaches_the_collector(client, store, "first")
    manifests = f"edge-recorder/{DEVICE}/sessions/{sid}/manifest"
    client.subscribe(manifests)
    requests = 200
    for i in range(requests):
        client.publish(CMD, json.dumps({"cmd": "resend", "session_id": sid,
                                        "request_id": f"r{i}"}))
    wait_until(lambda: len([r for r in client.json_on(REPLY)
                            if str(r.get("request_id", "")).startswith("r")]) >= requests,
               20, "a reply to every resend")
    # the first request goes out at once; the other 199 merge into one more, after the
    # hold-off (RESEND_HOLDOFF_S); then nothing
    wait_until(lambda: len(client.received(manifests)) >= 2, RESEND_HOLDOFF_S + 10,
               "the merged retransmission")
    time.sleep(RESEND_HOLDOFF_S + 1.0)
    assert len(client.received(manifests)) == 2
    # part numbers the session does not have are dropped as they arrive (nothing is held for
    # them, nothing is sent): 1500 absurd ones (as many as 16 KiB holds), 50 times
    absurd = list(range(900_000, 901_500))
    for i in range(50):
        client.publish(CMD, json.dumps({"cmd": "resend", "session_id": sid, "parts": absurd,
                                        "request_id": f"absurd{i}"}))
    wait_until(lambda: len([r for r in client.json_on(REPLY)
                            if str(r.get("request_id", "")).startswith("absurd")]) >= 50,
               20, "a reply to every absurd resend")
    time.sleep(RESEND_HOLDOFF_S + 1.0)
    assert len(client.received(manifests)) == 2
    a_normal_session_reaches_the_collector(client, store, "after-resends")
    assert daemon.stop() == 0


@pytest.mark.parametrize("bad_pin", [40, 7])
def test_a_trigger_that_cannot_be_built_rolls_the_reload_back(tmp_path, bad_pin):
    """The new triggers are built before the reload counts as applied; one that fails (a GPIO
    this board does not have — 40 exists on a Compute Module, not on the mock's Pi 3 — or a
    pin another program holds) puts the old ones back and changes nothing."""
    import threading

    import yaml
    from gpiozero import Button, Device
    from gpiozero.pins.mock import MockFactory

    from edge_recorder.app import Daemon
    from edge_recorder.config import load_config

    # upper bounds, not speeds (a pass takes ~2.5 s): a loaded CI machine may be 5× slower
    WAIT_S = 30  # noqa: N806
    factory = MockFactory()
    doc = {"device_id": "gpio-pi",
           "sensors": [{"name": "imu0", "driver": "mpu6050", "bus": "emulated"}],
           "session": {"duration_s": 0.3, "labels": ["v1"]},
           "triggers": {"mqtt": False, "gpio": [{"pin": 5, "action": "start"}]},
           "mqtt": {"host": "127.0.0.1", "port": 1},
           "storage": {"dir": str(tmp_path / "store")}}
    path = tmp_path / "device.yaml"
    path.write_text(yaml.safe_dump(doc))
    daemon = Daemon(load_config(path), pin_factory=factory, config_path=path)
    stop, reload = threading.Event(), threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop, reload))
    runner.start()

    def press(pin: int) -> list[str]:
        before = set(daemon.store.pending())
        factory.pin(pin).drive_low()
        factory.pin(pin).drive_high()
        new = wait_until(lambda: set(daemon.store.pending()) - before, WAIT_S, f"a session ({pin})")
        return daemon.store.manifest(new.pop())["labels"]

    try:
        wait_until(lambda: daemon.channels[0].counters.state == "up", WAIT_S, "sensor up")
        # the sensors come up before the triggers are wired: a press before is not seen
        wait_until(lambda: daemon.triggers, WAIT_S, "the buttons wired")
        assert press(5) == ["v1"]
        bad = {**doc, "session": {"duration_s": 0.3, "labels": ["v2"]},
               "triggers": {"mqtt": False, "gpio": [{"pin": 6, "action": "start"},
                                                    {"pin": bad_pin, "action": "start"}]}}
        if bad_pin == 7:  # valid, but another program holds it
            held = Button(7, pin_factory=factory)
        path.write_text(yaml.safe_dump(bad))
        reload.set()
        wait_until(lambda: daemon.config_error, WAIT_S, "the refusal")
        assert "a trigger could not be set up" in daemon.config_error
        assert press(5) == ["v1"]  # the old button, the old session settings
        if bad_pin == 7:
            held.close()
        path.write_text(yaml.safe_dump({**bad, "triggers": {
            "mqtt": False, "gpio": [{"pin": 6, "action": "start"}]}}))
        reload.set()
        wait_until(lambda: not daemon.config_error and daemon.config.session.labels == ("v2",),
                   WAIT_S, "the good reload")
        assert press(6) == ["v2"]
    finally:
        stop.set()
        runner.join(20)
        factory.reset()
        Device.pin_factory = None
    assert not runner.is_alive()


def test_a_wedged_supervisor_stops_the_pings_and_its_watcher_says_where(tmp_path, broker,
                                                                        client):
    import threading

    ns = NotifySocket(tmp_path / "notify.sock")
    threading.Thread(target=ns.collect, args=(60,), daemon=True).start()
    daemon, stop, runner, _before = _in_process_daemon(tmp_path, broker.port, ns)
    release = threading.Event()
    try:
        wait_online(client)
        assert "supervisor-watch" in [w.thread_name for w in daemon.watched()]

        def publish_status_wedged() -> None:
            release.wait(60)

        daemon.publish_status = publish_status_wedged  # type: ignore[method-assign]
        daemon.status_changed.set()
        wedged = wait_until(lambda: next((m for _, m in ns.messages
                                          if m.startswith("STATUS=WEDGED: the supervisor")),
                                         None), 15, "the watcher's report")
        assert "made no progress for" in wedged
        # the innermost line (the wait in threading.py), and the daemon's own line that
        # called into it: the supervisor's call of publish_status
        line = int(wedged.split("from app.py:")[1].split()[0])
        import edge_recorder.app

        source = Path(edge_recorder.app.__file__).read_text().splitlines()[line - 1]
        assert "stuck at threading.py:" in wedged and "self.publish_status()" in source, wedged
        time.sleep(1.0)
        assert ns.pings_after(time.monotonic() - 1.0) == 0
        release.set()
        wait_until(lambda: ns.pings_after(time.monotonic() - 1.0) > 0, 10, "pings again")
        assert daemon.watchdog_problem == ""
    finally:
        release.set()
        stop.set()
        runner.join(20)
    assert not runner.is_alive()
