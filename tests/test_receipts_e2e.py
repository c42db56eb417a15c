"""Receipts end to end: the daemon and the real collector, through a real Mosquitto that
loses what it acknowledged. The device keeps each session until the collector's receipt
says it is stored, and publishes it again when none comes."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import pytest

from edge_recorder.devtools import Broker
from tests.conftest import Client, base_config, wait_online, wait_until, write_config
from tests.test_service import NotifySocket

DEVICE = "test-pi"


def _send(client: Client, payload: dict) -> dict:
    rid = f"r{time.monotonic_ns()}"
    client.subscribe(f"edge-recorder/{DEVICE}/cmd/reply")
    client.publish(f"edge-recorder/{DEVICE}/cmd", json.dumps({**payload, "request_id": rid}))
    return wait_until(lambda: next((r for r in client.json_on(
        f"edge-recorder/{DEVICE}/cmd/reply") if r.get("request_id") == rid), None), 15, "reply")


def _state(tmp_path: Path, sid: str) -> str | None:
    found = list((tmp_path / "device-store").glob(f"*/{sid}.json"))
    return found[0].parent.name if found else None


def _stored_once_intact(store_dir: Path, sid: str) -> None:
    copies = list((store_dir / "sessions").rglob(f"{sid}.json"))
    assert len(copies) == 1, copies
    manifest = json.loads(copies[0].read_text())
    data = copies[0].with_suffix(".mcap").read_bytes()
    assert len(data) == manifest["bytes"]
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"]


def _collector(spawn, port: int, store_dir: Path, name: str):
    return spawn("collect", "--host", "127.0.0.1", "--port", str(port), "--store",
                 str(store_dir), name=name)


@pytest.mark.broker
@pytest.mark.parametrize("persistence", [False, True])
def test_a_broker_killed_between_puback_and_delivery_loses_nothing(tmp_path, spawn,
                                                                    persistence):
    """The collector is frozen (SIGSTOP) and the broker sends a client one message at a
    time, so it holds the acknowledged session's other parts and manifest for the
    collector; it is SIGKILLed before it delivers them (with persistence off they are gone;
    with it on, what the last autosave kept comes back)."""
    broker = Broker(tmp_path / "broker", persistence=persistence)
    broker.conf.write_text(broker.conf.read_text() + "max_inflight_messages 1\n")
    broker.start()
    client = Client(broker.port)
    store_dir = tmp_path / "collected"
    try:
        collector = _collector(spawn, broker.port, store_dir, "collector")
        wait_until(lambda: "connected" in collector.log(), 15, "collector connected")
        time.sleep(0.5)  # subscribed
        cfg = write_config(tmp_path / "device.yaml", base_config(
            tmp_path, broker.port, session={"duration_s": 0.5},
            mqtt={"host": "127.0.0.1", "port": broker.port, "max_payload_bytes": 1024},
            delivery={"receipt_timeout_s": 2}))
        daemon = spawn("run", "-c", str(cfg), name="daemon")
        wait_online(client)
        collector.proc.send_signal(signal.SIGSTOP)  # connected, but not reading
        sid = _send(client, {"cmd": "start"})["session_id"]
        wait_until(lambda: _state(tmp_path, sid) == "published", 20,
                   "the broker acknowledged every part and the manifest")
        client.close()
        broker.stop(signal.SIGKILL)  # ... before it could deliver them
        collector.proc.send_signal(signal.SIGCONT)
        broker.start()
        client = Client(broker.port)
        wait_until(lambda: _state(tmp_path, sid) == "stored", 45,
                   "the session stored at the collector and its receipt back")
        _stored_once_intact(store_dir, sid)
        assert daemon.stop() == 0 and collector.stop() == 0
        log = daemon.log()
        assert f"session {sid} stored by the collector" in log
        if not persistence:  # the broker lost the rest: only a resend could bring it
            assert f"session {sid}: sent" in log and "and the manifest again" in log
    finally:
        client.close()
        broker.stop()


@pytest.mark.broker
def test_the_collector_offline_while_the_broker_restarts(tmp_path, spawn):
    """The collector is down; the broker (persistence off) restarts and forgets the
    collector's persistent session and the messages queued for it."""
    broker = Broker(tmp_path / "broker", persistence=False)
    broker.start()
    client = Client(broker.port)
    store_dir = tmp_path / "collected"
    try:
        collector = _collector(spawn, broker.port, store_dir, "collector")
        wait_until(lambda: "connected" in collector.log(), 15, "collector connected")
        time.sleep(0.5)
        assert collector.stop(signal.SIGKILL) != 0  # the broker queues for it ...
        cfg = write_config(tmp_path / "device.yaml", base_config(
            tmp_path, broker.port, session={"duration_s": 0.5},
            delivery={"receipt_timeout_s": 2}))
        notify = NotifySocket(tmp_path / "notify.sock")
        daemon = spawn("run", "-c", str(cfg), name="daemon",
                       env={"NOTIFY_SOCKET": str(notify.path)})
        wait_online(client)
        sids = [_send(client, {"cmd": "start"})["session_id"] for _ in range(3)]
        wait_until(lambda: all(_state(tmp_path, s) == "published" for s in sids), 20,
                   "all three acknowledged by the broker")
        client.close()
        broker.stop(signal.SIGKILL)  # ... until it restarts and forgets
        broker.start()
        client = Client(broker.port)
        status = wait_online(client)  # retained again once the daemon reconnects
        assert status["delivery"]["awaiting_receipt"] == 3
        assert status["delivery"]["oldest_awaiting_s"] > 0
        notify.collect(0.5)  # systemd's view: the STATUS= line says so too
        assert any("STATUS=0 recording, 0 to publish, 3 awaiting receipt (oldest" in m
                   for _, m in notify.messages), notify.messages[-3:]
        collector = _collector(spawn, broker.port, store_dir, "collector-again")
        wait_until(lambda: all(_state(tmp_path, s) == "stored" for s in sids), 60,
                   "all three stored after resends")
        for sid in sids:
            _stored_once_intact(store_dir, sid)
        assert daemon.stop() == 0 and collector.stop() == 0
    finally:
        client.close()
        broker.stop()


@pytest.mark.broker
def test_a_device_restart_while_sessions_await_receipts(tmp_path, broker, client, spawn):
    """Sessions published while no collector listens; the daemon restarts; the collector
    comes (the broker had queued them for it, so it stores them and sends receipts no one
    hears); the restarted daemon publishes them again and gets duplicate receipts."""
    store_dir = tmp_path / "collected"
    collector = _collector(spawn, broker.port, store_dir, "collector")
    wait_until(lambda: "connected" in collector.log(), 15, "collector connected")
    time.sleep(0.5)
    assert collector.stop() == 0  # its persistent session stays: the broker queues
    cfg = write_config(tmp_path / "device.yaml", base_config(
        tmp_path, broker.port, session={"duration_s": 0.5}, delivery={"receipt_timeout_s": 3}))
    daemon = spawn("run", "-c", str(cfg), name="daemon")
    wait_online(client)
    sids = [_send(client, {"cmd": "start"})["session_id"] for _ in range(2)]
    wait_until(lambda: all(_state(tmp_path, s) == "published" for s in sids), 20, "published")
    assert daemon.stop() == 0  # restart 1/2: the sessions await receipts on disk
    collector = _collector(spawn, broker.port, store_dir, "collector-again")
    wait_until(lambda: all(list((store_dir / "sessions").rglob(f"{s}.json")) for s in sids),
               20, "the queued sessions stored (their receipts reach no one)")
    assert all(_state(tmp_path, s) == "published" for s in sids)
    # and an outbox session damaged meanwhile (a bad manifest): quarantined, blocks nothing
    outbox = tmp_path / "device-store" / "outbox"
    (outbox / "20261127T000000000Z-dmgd.mcap").write_bytes(b"\0" * 100)
    (outbox / "20261127T000000000Z-dmgd.json").write_text('{"session_id": ')
    daemon = spawn("run", "-c", str(cfg), name="daemon-again")  # restart 2/2
    wait_until(lambda: all(_state(tmp_path, s) == "stored" for s in sids), 30,
               "stored after the restart, through duplicate receipts")
    assert _state(tmp_path, "20261127T000000000Z-dmgd") == "failed"
    status = _send(client, {"cmd": "status"})["status"]
    assert status["storage"]["failed"] == 1 and status["delivery"]["awaiting_receipt"] == 0
    assert status["delivery"]["stored"] == 2
    for sid in sids:
        _stored_once_intact(store_dir, sid)
    assert daemon.stop() == 0 and collector.stop() == 0
    assert "(it already had it)" in daemon.log()
