"""Running as a systemd service: notify + watchdog, SIGHUP reload, SIGTERM, the unit file."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edge_recorder.systemd import Notifier
from tests.conftest import REPO, base_config, wait_online, wait_until, write_config


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> list[str]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                pass
        return [m for _, m in self.messages]

    def pings_after(self, t: float) -> int:
        return sum(1 for when, m in self.messages if when > t and "WATCHDOG=1" in m)


def test_notifier_speaks_the_sd_notify_datagram_protocol(tmp_path):
    ns = NotifySocket(tmp_path / "n.sock")
    n = Notifier({"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_s == 2.0
    n.ready("fine")
    n.watchdog()
    assert ns.collect(0.3) == ["READY=1\nSTATUS=fine", "WATCHDOG=1"]
    assert Notifier({}).enabled is False
    assert Notifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"


@pytest.mark.broker
def test_ready_then_watchdog_pings_which_stop_when_the_bus_wedges(tmp_path, broker, spawn):
    ns = NotifySocket(tmp_path / "notify.sock")
    config = base_config(tmp_path, broker.port)
    config["sensors"][0]["emulation"] = {"hang_after_s": 3}
    cfg = write_config(tmp_path / "device.yaml", config)
    daemon = spawn("run", "-c", str(cfg), name="daemon",
                   env={"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "900000"})
    end = time.monotonic() + 20  # start-up (imports) may be slow on a loaded machine
    while not ns.messages and time.monotonic() < end:
        ns.collect(0.2)
    assert ns.messages and ns.messages[0][1].startswith("READY=1\nSTATUS=")
    ready_at = ns.messages[0][0]
    ns.collect(1.5)
    assert ns.pings_after(ready_at) >= 3  # every 0.3 s (WATCHDOG_USEC / 3)
    # the emulated bus hangs 3 s after start; 5 s later the sampler counts as wedged
    ns.collect(9.0)
    pings_late = ns.pings_after(time.monotonic() - 1.5)
    assert pings_late == 0, ns.messages[-5:]
    assert "watchdog: not pinging, the sampler of bus emulated made no progress" in daemon.log()


@pytest.mark.broker
def test_sighup_applies_a_good_config_and_keeps_running_on_a_bad_one(tmp_path, broker, client,
                                                                     spawn):
    config = base_config(tmp_path, broker.port, session={"duration_s": 0.5, "labels": ["v1"]})
    cfg = write_config(tmp_path / "device.yaml", config)
    daemon = spawn("run", "-c", str(cfg), name="daemon")
    wait_online(client)
    reply_topic = "edge-recorder/test-pi/cmd/reply"
    client.subscribe(reply_topic)

    def start(rid: str) -> dict:
        client.publish("edge-recorder/test-pi/cmd", json.dumps({"cmd": "start", "request_id": rid}))
        return wait_until(lambda: next((r for r in client.json_on(reply_topic)
                                        if r.get("request_id") == rid), None), 10, rid)

    assert start("a")["labels"] == ["v1"]
    config["session"]["labels"] = ["v2"]
    write_config(cfg, config)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload: applied" in daemon.log(), 10, "reload")
    assert start("b")["labels"] == ["v2"]

    cfg.write_text(yaml.safe_dump({**config, "session": {"labels": "not-a-list"}}))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "still running on the previous config" in daemon.log(), 10, "refusal")
    assert "session.labels: must be a list of strings" in daemon.log()
    status = wait_until(lambda: next((s for s in reversed(
        client.json_on("edge-recorder/test-pi/status")) if s.get("config_error")), None),
        10, "config_error in status")
    assert "session.labels" in status["config_error"]
    assert daemon.alive() and start("c")["labels"] == ["v2"]
    assert daemon.stop() == 0


@pytest.mark.broker
def test_sigterm_mid_session_exits_0_with_the_session_finalised(tmp_path, broker, client, spawn):
    cfg = write_config(tmp_path / "device.yaml", base_config(tmp_path, broker.port))
    daemon = spawn("run", "-c", str(cfg), name="daemon")
    wait_online(client)
    client.subscribe("edge-recorder/test-pi/cmd/reply")
    client.publish("edge-recorder/test-pi/cmd", json.dumps({"cmd": "start", "request_id": "s"}))
    reply = wait_until(lambda: client.json_on("edge-recorder/test-pi/cmd/reply"), 10, "reply")
    sid = reply[0]["session_id"]
    time.sleep(1.5)
    assert daemon.stop(signal.SIGTERM) == 0
    store = tmp_path / "device-store"
    manifests = list(store.glob(f"*/{sid}.json"))
    assert [p.parent.name for p in manifests] in (["outbox"], ["published"])
    manifest = json.loads(manifests[0].read_text())
    assert manifest["stop_reason"] == "shutdown"
    assert manifest["sensors"][0]["samples"] == pytest.approx(200 * manifest["duration_s"], abs=5)
    assert not list((store / "recording").iterdir())
    offline = client.json_on("edge-recorder/test-pi/status")[-1]
    assert offline["online"] is False


def test_the_unit_file_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (CI installs it)")
    unit = (REPO / "systemd" / "edge-recorder.service").read_text()
    exe = Path(sys.executable).parent / "edge-recorder"
    unit_path = tmp_path / "edge-recorder.service"
    unit_path.write_text(unit.replace("/opt/edge-recorder/bin/edge-recorder", str(exe)))
    r = subprocess.run([analyze, "verify", str(unit_path)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = subprocess.run([analyze, "security", "--offline=true", str(unit_path)],
                       capture_output=True, text=True)
    exposure = float(r.stdout.split("Overall exposure level for edge-recorder.service:")[1]
                     .split()[0])
    assert exposure <= 2.0, r.stdout[-2000:]


def test_the_unit_lets_through_the_calls_the_daemon_makes_that_its_groups_deny():
    """``~@privileged @resources`` denies three calls the daemon makes: adjtimex (reading
    the sync state, clock.py; in @clock), setpriority (nice 10 for every thread but the
    samplers, app.py) and sched_setaffinity (one CPU for every thread under a quota below a
    core, cpu.py), both in @resources (systemd.exec(5) "System Call Filtering"). With
    SystemCallErrorNumber=EPERM a denied call fails quietly, so the unit must allow them
    back after the deny line, as systemd applies the lines in order."""
    lines = [line.split("=", 1)[1].split() for line in
             (REPO / "systemd" / "edge-recorder.service").read_text().splitlines()
             if line.startswith("SystemCallFilter=")]
    deny_at = next(i for i, words in enumerate(lines) if words[0].startswith("~"))
    allowed_after = {w for words in lines[deny_at + 1:] for w in words if not w.startswith("~")}
    assert {"adjtimex", "setpriority", "sched_setaffinity"} <= allowed_after
