"""Delivered means stored: the device keeps a session until the collector's receipt comes.

The collector's side of the contract is stood in for here by :class:`ReceiptDesk`, a test
client that answers every manifest it sees with the receipt the contract fixes (or, when
told to, loses it); the end-to-end tests with the real collector are in
``test_receipts_e2e.py``. Everything talks to a real Mosquitto.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from typing import Any

import paho.mqtt.client as paho
import pytest

from edge_recorder.config import MqttConfig, parse_config
from edge_recorder.delivery.mqtt import MqttLink
from edge_recorder.delivery.publisher import Publisher
from edge_recorder.errors import ConfigError
from edge_recorder.recording.store import DeviceStore
from tests.conftest import Client, cli, wait_until

ROOT = "edge-recorder/dev1"
PART = 1024


def put_session(store: DeviceStore, sid: str, size: int = 3000, seed: int = 0) -> dict[str, Any]:
    """A finished session in the outbox, as the recorder leaves it."""
    data = bytes((i * 7 + seed) % 256 for i in range(size))
    manifest = {"session_id": sid, "device_id": "dev1", "bytes": size,
                "started_at": "2026-11-27T00:00:00.000000Z",
                "stopped_at": "2026-11-27T00:00:01.000000Z",
                "parts": max(1, math.ceil(size / PART)),
                "sha256": hashlib.sha256(data).hexdigest()}
    store.path("outbox", sid).write_bytes(data)
    store.path("outbox", sid, ".json").write_text(json.dumps(manifest))
    return manifest


class ReceiptDesk(Client):
    """Stands in for the collector: answers each manifest with a receipt, unless told to
    lose the next ``lose[session_id]`` of them. Records every session message it sees."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.lose: dict[str, int] = {}
        self.silent = False
        self.manifest_at: dict[str, list[float]] = {}  # monotonic arrival of each manifest
        self.c.on_message = self._answer
        self.subscribe(f"{ROOT}/sessions/+/#")

    def _answer(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(msg)
        if not msg.topic.endswith("/manifest"):
            return
        m = json.loads(msg.payload)
        sid = m["session_id"]
        self.manifest_at.setdefault(sid, []).append(time.monotonic())
        if self.silent or self.lose.get(sid, 0) > 0:
            self.lose[sid] = self.lose.get(sid, 0) - 1
            return
        receipt = {"session_id": sid, "device_id": "dev1", "sha256": m["sha256"],
                   "bytes": m["bytes"], "duplicate": False}
        self.c.publish(f"{ROOT}/sessions/{sid}/stored", json.dumps(receipt), qos=1)

    def manifests(self, sid: str) -> int:
        return len(self.received(f"{ROOT}/sessions/{sid}/manifest"))

    def parts(self, sid: str) -> list[bytes]:
        return [bytes(m.payload) for m in self.received(f"{ROOT}/sessions/{sid}/part/+")]


class Device:
    """A publisher on a store, as the daemon wires it (one link, receipts subscribed)."""

    def __init__(self, store: DeviceStore, port: int, **kw: Any) -> None:
        self.link = MqttLink(MqttConfig(host="127.0.0.1", port=port), f"dev1-{time.time_ns()}")
        self.publisher = Publisher(store, self.link, ROOT, part_bytes=PART, **kw)
        self.publisher.start()
        self.link.start()
        assert self.link.connected.wait(10)

    def close(self) -> None:
        self.publisher.close()
        self.link.close()


@pytest.fixture
def desk(broker):
    d = ReceiptDesk(broker.port)
    yield d
    d.close()


def state_of(store: DeviceStore, sid: str) -> str | None:
    return store.find(sid)


@pytest.mark.broker
def test_a_receipt_moves_a_session_to_stored_and_a_lost_one_means_a_full_resend(
        tmp_path, broker, desk):
    store = DeviceStore(tmp_path / "store", 1 << 30, part_bytes=PART)
    a = put_session(store, "20261127T000000000Z-aaaa", seed=1)
    b = put_session(store, "20261127T000001000Z-bbbb", seed=2)
    desk.lose[b["session_id"]] = 1  # the broker "lost" b's first receipt
    device = Device(store, broker.port, receipt_timeout_s=1.0)
    try:
        wait_until(lambda: state_of(store, a["session_id"]) == "stored", 10, "a stored")
        # b is published (the broker acknowledged all of it) but awaits its receipt ...
        wait_until(lambda: desk.manifests(b["session_id"]) == 1, 10, "b published")
        assert state_of(store, b["session_id"]) == "published"
        # ... until the timeout sends all of it again, same topics, same bytes
        wait_until(lambda: state_of(store, b["session_id"]) == "stored", 10, "b stored")
        assert desk.manifests(b["session_id"]) == 2
        parts = desk.parts(b["session_id"])
        assert len(parts) == 2 * b["parts"] and parts[:b["parts"]] == parts[b["parts"]:]
        assert hashlib.sha256(b"".join(parts[:b["parts"]])).hexdigest() == b["sha256"]
        assert desk.manifests(a["session_id"]) == 1  # a's receipt came: never sent again
        # the counters follow the move (another thread): wait for them, then exactly these
        wait_until(lambda: device.publisher.stored == 2, 5, "both receipts counted")
        assert device.publisher.resent == 1
    finally:
        device.close()


@pytest.mark.broker
def test_the_wait_for_a_receipt_backs_off(tmp_path, broker, desk):
    store = DeviceStore(tmp_path / "store", 1 << 30, part_bytes=PART)
    sid = put_session(store, "20261127T000000000Z-back")["session_id"]
    desk.silent = True  # no collector is answering
    # 3 s: above the publisher's 5 s hold-off between retransmissions only from the 2nd on
    device = Device(store, broker.port, receipt_timeout_s=3.0)
    try:
        wait_until(lambda: desk.manifests(sid) >= 4, 45, "three resends")
        # published at 0, then again after ~3 (the hold-off makes it 5), ~6 and ~12 s more
        at = desk.manifest_at[sid]
        waits = [b - a for a, b in zip(at, at[1:])]
        assert waits[0] < waits[1] < waits[2] and waits[2] > 1.6 * waits[1] > 8, waits
        assert state_of(store, sid) == "published"
        m = store.manifest(sid, "published")  # a receipt at last: no more resends
        desk.publish(f"{ROOT}/sessions/{sid}/stored", json.dumps(
            {"session_id": sid, "device_id": "dev1", "sha256": m["sha256"], "bytes": m["bytes"],
             "duplicate": True}))
        wait_until(lambda: state_of(store, sid) == "stored", 15, "stored once answered")
    finally:
        device.close()


@pytest.mark.broker
def test_receipts_that_do_not_match_change_nothing(tmp_path, broker, desk, caplog):
    caplog.set_level(logging.INFO)
    store = DeviceStore(tmp_path / "store", 1 << 30, part_bytes=PART)
    m = put_session(store, "20261127T000000000Z-mine")
    sid = m["session_id"]
    desk.silent = True
    device = Device(store, broker.port, receipt_timeout_s=60.0)
    try:
        wait_until(lambda: state_of(store, sid) == "published", 10, "published")
        good = {"session_id": sid, "device_id": "dev1", "sha256": m["sha256"],
                "bytes": m["bytes"], "duplicate": False}
        sender = Client(broker.port)
        for topic, doc in [
            (f"{ROOT}/sessions/20261127T000000000Z-gone/stored",  # a session we never had
             dict(good, session_id="20261127T000000000Z-gone")),
            (f"{ROOT}/sessions/{sid}/stored", dict(good, sha256="0" * 64)),  # other content
            (f"{ROOT}/sessions/{sid}/stored", dict(good, bytes=1)),
            (f"{ROOT}/sessions/{sid}/stored", dict(good, device_id="dev2")),  # not ours
            (f"{ROOT}/sessions/other/stored", good),  # topic and body disagree
            (f"{ROOT}/sessions/{sid}/stored", dict(good, bytes="3000")),  # wrong type
            (f"{ROOT}/sessions/{sid}/stored", "not json"),
            (f"{ROOT}/sessions/{sid}/stored", json.dumps(good) + " " * 5000),  # too big
        ]:
            sender.publish(topic, doc if isinstance(doc, str) else json.dumps(doc))
        sender.publish(f"{ROOT}/sessions/{sid}/stored", json.dumps(good))  # the real one
        wait_until(lambda: state_of(store, sid) == "stored", 10, "stored by the true receipt")
        sender.close()
        text = caplog.text
        assert "receipt for session 20261127T000000000Z-gone, which this device does not " \
               "hold (unknown here); ignored" in text
        assert text.count("receipt is for different content") == 2
        assert text.count("does not match its topic") == 2
        assert text.count("ignoring a malformed receipt") == 3
        assert sorted(p.name for p in (store.root / "stored").iterdir()) == \
            [f"{sid}.json", f"{sid}.mcap"]
    finally:
        device.close()


@pytest.mark.broker
def test_sessions_awaiting_receipts_survive_a_restart(tmp_path, broker, desk):
    store = DeviceStore(tmp_path / "store", 1 << 30, part_bytes=PART)
    sids = [put_session(store, f"20261127T00000{i}000Z-rest", seed=i)["session_id"]
            for i in range(3)]
    desk.silent = True
    device = Device(store, broker.port, receipt_timeout_s=30.0)
    wait_until(lambda: all(state_of(store, s) == "published" for s in sids), 10, "published")
    device.close()  # the daemon stops (or dies) with three sessions awaiting receipts
    desk.silent = False
    restarted = DeviceStore(tmp_path / "store", 1 << 30, part_bytes=PART)
    idle = Publisher(restarted, None, ROOT, part_bytes=PART)  # type: ignore[arg-type]
    assert idle.awaiting_receipt()["sessions"] == 3
    device = Device(restarted, broker.port, receipt_timeout_s=1.0)
    try:
        wait_until(lambda: all(state_of(restarted, s) == "stored" for s in sids), 15,
                   "all three stored after the restart")
        assert all(desk.manifests(s) == 2 for s in sids)
        assert device.publisher.awaiting_receipt() == {"sessions": 0, "oldest_s": 0.0}
    finally:
        device.close()


@pytest.mark.broker
def test_without_require_receipt_published_is_the_end(tmp_path, broker, desk):
    store = DeviceStore(tmp_path / "store", 1 << 30, part_bytes=PART, require_receipt=False)
    sid = put_session(store, "20261127T000000000Z-norc")["session_id"]
    device = Device(store, broker.port, require_receipt=False, receipt_timeout_s=1.0)
    try:
        wait_until(lambda: state_of(store, sid) == "published", 10, "published")
        time.sleep(3.0)
        assert state_of(store, sid) == "published" and desk.manifests(sid) == 1
        assert device.publisher.awaiting_receipt() == {"sessions": 0, "oldest_s": 0.0}
    finally:
        device.close()


@pytest.mark.broker
def test_damaged_outbox_sessions_are_quarantined_and_block_nothing(tmp_path, broker, desk):
    store = DeviceStore(tmp_path / "store", 1 << 30, part_bytes=PART)
    bad_json = put_session(store, "20261127T000000000Z-badj")["session_id"]
    store.path("outbox", bad_json, ".json").write_text('{"session_id": "20261127T0')
    no_file = put_session(store, "20261127T000001000Z-nofi")["session_id"]
    store.path("outbox", no_file).unlink()
    short = put_session(store, "20261127T000002000Z-shrt")["session_id"]
    with open(store.path("outbox", short), "r+b") as f:
        f.truncate(1000)
    good = put_session(store, "20261127T000003000Z-good")["session_id"]
    device = Device(store, broker.port, receipt_timeout_s=60.0)
    try:
        wait_until(lambda: state_of(store, good) == "stored", 10, "the good one stored")
        assert [state_of(store, s) for s in (bad_json, no_file, short)] == ["failed"] * 3
        assert store.count("failed") == 3 and store.pending() == []
        assert "manifest: not JSON" in store.failure_reason(bad_json)
        assert "is missing" in store.failure_reason(no_file)
        assert "has 1000 bytes, the manifest says 3000" in store.failure_reason(short)
        time.sleep(2.5)  # a few more publisher rounds: nothing is tried again
        assert desk.received(f"{ROOT}/sessions/{short}/#") == []
        assert device.publisher.published == 1
    finally:
        device.close()
    r = cli("sessions", "list", "--store", str(store.root), "--state", "failed", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(d["session_id"], d["state"]) for d in rows] == \
        [(bad_json, "failed"), (no_file, "failed"), (short, "failed")]
    assert "is missing" in rows[1]["reason"] and "truncated" in rows[2]["reason"]
    r = cli("sessions", "list", "--store", str(store.root))
    assert r.returncode == 0, r.stderr
    (header, row) = r.stdout.splitlines()
    assert header.split()[-1] == "STATE" and row.split()[0] == good and row.split()[-1] == "stored"
    r = cli("sessions", "list", "--store", str(store.root), "--state", "published")
    assert r.stdout.splitlines()[1:] == []


def test_room_goes_to_stored_sessions_first_and_warns_for_unconfirmed_ones(tmp_path, caplog):
    store = DeviceStore(tmp_path / "s", max_bytes=10_000)

    def fake(sid: str, state: str, size: int) -> None:
        store.path(state, sid).write_bytes(b"x" * size)
        store.path(state, sid, ".json").write_text(json.dumps({"session_id": sid}))

    fake("a-awaiting-old", "published", 2000)
    fake("b-stored-new", "stored", 2000)
    fake("c-stored-newer", "stored", 2000)
    fake("d-outbox", "outbox", 2000)
    caplog.set_level(logging.INFO)
    store.begin("e-new", {"session_id": "e-new"}, reserve_bytes=4500)
    # two stored sessions had to go; the older awaiting one stays, as does the outbox
    assert store.ids("stored") == [] and store.ids("published") == ["a-awaiting-old"]
    assert "deleted stored session b-stored-new to make room" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    store.begin("f-new", {"session_id": "f-new"}, reserve_bytes=6500)
    assert store.ids("published") == [] and store.ids("outbox") == ["d-outbox"]
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "a-awaiting-old" in warning.getMessage() and "no receipt" in warning.getMessage()


def test_store_ids_never_reach_a_path(tmp_path):
    store = DeviceStore(tmp_path / "s", max_bytes=10_000)
    for evil in ("..", ".", "../../etc/passwd", "a/b", "", "+", "#", "a.json", "x" * 129):
        assert store.find(evil) is None
        with pytest.raises(ValueError):
            store.path("outbox", evil)


def test_delivery_config_keys_and_their_errors():
    base = {"sensors": [{"name": "imu0", "driver": "mpu6050", "bus": "emulated"}]}
    config = parse_config(base)
    assert config.delivery.require_receipt is True and config.delivery.receipt_timeout_s == 60
    config = parse_config({**base, "delivery": {"require_receipt": False,
                                                "receipt_timeout_s": 5}})
    assert config.delivery.require_receipt is False and config.delivery.receipt_timeout_s == 5
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "delivery": {"require_receipts": True,
                                           "receipt_timeout_s": float("inf")}})
    assert e.value.problems == [
        "delivery.require_receipts: unknown key; did you mean 'require_receipt'?",
        "delivery.receipt_timeout_s: must be a finite number, got inf"]
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "delivery": {"require_receipt": "yes", "receipt_timeout_s": 0}})
    assert [p.split(":")[0] for p in e.value.problems] == [
        "delivery.require_receipt", "delivery.receipt_timeout_s"]


def test_a_crash_is_a_gap_in_every_sensor_of_the_recovered_session(tmp_path):
    from edge_recorder.recording.events import StartRequested, Trigger
    from edge_recorder.recording.recovery import recover
    from tests.rig import Rig

    for crash_after_s, salvaged in ((0.3, False), (1.3, True)):
        rig = Rig(tmp_path / f"after-{crash_after_s}", rate_hz=200)
        rig.run(1.0)
        start = rig.clock.wall()
        sid = rig.ask(StartRequested, trigger=Trigger("mqtt"), labels=(), journey_id=None,
                      duration_s=None)["session_id"]
        rig.run(crash_after_s)
        crashed_at = rig.clock.wall()
        # SIGKILL: the recorder is gone, its open file as the last flush left it
        (manifest,) = recover(rig.store)
        assert manifest["session_id"] == sid and manifest["stop_reason"] == "recovered"
        (sensor,) = manifest["sensors"]
        assert sensor["name"] == "imu0" and sensor["rate_hz"] == 200
        (gap,) = sensor["gaps"]
        assert gap["reason"] == "crash" and gap["end_ns"] == pytest.approx(crashed_at, abs=0.1e9)
        # every sample of the session's span is either salvaged or counted as lost
        expected = crash_after_s * 200
        assert sensor["samples"] + gap["lost"] == pytest.approx(expected, abs=25)
        assert sensor["dropped"] == gap["lost"]
        assert manifest["duration_s"] == pytest.approx(crash_after_s, abs=0.1)
        assert (sensor["samples"] > 0) == salvaged
        if not salvaged:
            assert gap["start_ns"] == start and gap["lost"] == pytest.approx(expected, abs=25)


def test_store_state_moves_survive_a_crash_between_file_and_manifest(tmp_path):
    store = DeviceStore(tmp_path / "s", max_bytes=1 << 30)
    store.path("published", "a1").write_bytes(b"x")  # the file moved to published ...
    store.path("outbox", "a1", ".json").write_text("{}")  # ... its manifest did not yet
    store.path("stored", "b1").write_bytes(b"y")
    store.path("published", "b1", ".json").write_text("{}")
    store.finish_moves()
    assert store.find("a1") == "published" and store.path("published", "a1").exists()
    assert store.find("b1") == "stored" and store.path("stored", "b1").exists()


@pytest.mark.broker
def test_a_wedged_publisher_stops_its_heartbeat(tmp_path, broker):
    """The watchdog (Daemon.stalled) stops pinging when the publisher's heartbeat goes
    stale; a publisher stuck inside one session must let it go stale, not fake progress."""
    store = DeviceStore(tmp_path / "store", 1 << 30, part_bytes=PART)
    put_session(store, "20261127T000000000Z-stuk")
    release = threading.Event()
    real = store.checked_manifest

    def stuck(session_id: str, state: str = "outbox") -> dict[str, Any]:
        release.wait(30)  # a read that hangs (a dying SD card, say)
        return real(session_id, state)

    store.checked_manifest = stuck  # type: ignore[method-assign]
    device = Device(store, broker.port)
    try:
        time.sleep(1.5)
        beat = device.publisher.last_loop_s
        time.sleep(2.0)
        assert device.publisher.last_loop_s == beat and device.publisher.alive
    finally:
        release.set()
        device.close()


@pytest.mark.broker
def test_two_hundred_resend_requests_make_one_retransmission(tmp_path, broker, desk):
    store = DeviceStore(tmp_path / "store", 1 << 30, part_bytes=PART)
    sid = put_session(store, "20261127T000000000Z-many")["session_id"]
    desk.silent = True
    link = MqttLink(MqttConfig(host="127.0.0.1", port=broker.port), "dev1-resends")
    link.start()
    try:
        assert link.connected.wait(10)
        publisher = Publisher(store, link, ROOT, part_bytes=PART)  # not started: we drive it
        publisher.drain()
        assert store.find(sid) == "published"
        for i in range(200):  # the collector (or an attacker) asks again and again
            assert publisher.resend(sid, [i % 3]) is None
        for evil in ("..", "../../etc/passwd", "20261127T000000000Z-none"):
            assert "not on this device" in str(publisher.resend(evil, None))
        publisher._do_resends()
        wait_until(lambda: desk.manifests(sid) == 2, 10, "the one retransmission")
        time.sleep(0.5)
        assert desk.manifests(sid) == 2 and len(desk.parts(sid)) == 3 + 3
        assert publisher.resent == 1
    finally:
        link.close()


def test_a_new_part_size_recuts_queued_sessions_instead_of_quarantining_them(tmp_path):
    old = DeviceStore(tmp_path / "s", 1 << 30, part_bytes=PART)
    sid = put_session(old, "20261127T000000000Z-cut1", size=3000)["session_id"]
    assert old.checked_manifest(sid)["parts"] == 3
    new = DeviceStore(tmp_path / "s", 1 << 30, part_bytes=2048)  # mqtt.max_payload_bytes
    assert new.checked_manifest(sid)["parts"] == 2
    assert json.loads(new.path("outbox", sid, ".json").read_text())["parts"] == 2
    assert new.find(sid) == "outbox"


def test_overdue_receipts_are_resent_a_few_at_a_time(tmp_path):
    """A collector offline for days leaves many sessions awaiting receipts: they go out
    again a batch at a time, the next batch only once the last one went, oldest first."""
    from edge_recorder.delivery.publisher import RECEIPT_RESEND_BATCH

    store = DeviceStore(tmp_path / "s", 1 << 30, part_bytes=PART)
    sids = [put_session(store, f"20261127T0000{i:02d}000Z-wait", seed=i)["session_id"]
            for i in range(10)]
    for sid in sids:
        store.mark_published(sid)
    now = [1000.0]
    publisher = Publisher(store, link=None, topic_root=ROOT, part_bytes=PART,  # type: ignore
                          receipt_timeout_s=60, clock=lambda: now[0])
    publisher._check_receipts_due()  # published before this run: due a timeout from now
    assert publisher._resends == {}
    now[0] += 61
    publisher._check_receipts_due()
    assert list(publisher._resends) == sids[:RECEIPT_RESEND_BATCH]
    now[0] += 1
    publisher._check_receipts_due()  # the first batch has not gone yet: nothing more
    assert list(publisher._resends) == sids[:RECEIPT_RESEND_BATCH]
    publisher._resends.clear()  # (sent)
    now[0] += 1
    publisher._check_receipts_due()
    assert list(publisher._resends) == sids[RECEIPT_RESEND_BATCH:2 * RECEIPT_RESEND_BATCH]


@pytest.mark.broker
def test_a_session_that_keeps_failing_to_send_is_quarantined_after_three_tries(
        tmp_path, broker, desk):
    """Not visibly damaged, but preparing it fails every time (a re-stamp of an unreadable
    file, say): three tries, then quarantine; the session after it goes out meanwhile."""
    from edge_recorder.errors import SessionFileError

    store = DeviceStore(tmp_path / "store", 1 << 30, part_bytes=PART)
    bad = put_session(store, "20261127T000000000Z-prep")["session_id"]
    good = put_session(store, "20261127T000001000Z-fine")["session_id"]

    def prepare(session_id: str) -> None:
        if session_id == bad:
            raise SessionFileError(f"{session_id}.mcap: damaged session file (bad CRC)")

    device = Device(store, broker.port, prepare=prepare)
    try:
        wait_until(lambda: state_of(store, good) == "stored", 10, "the next one stored")
        wait_until(lambda: state_of(store, bad) == "failed", 15, "quarantined after 3 tries")
        assert "could not be sent 3 times: SessionFileError" in store.failure_reason(bad)
    finally:
        device.close()


class AckingLink:
    """A link whose broker acknowledges every message at once (no network)."""

    class Acked:
        error = None

        def wait(self, timeout_s: float) -> bool:
            return True

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.connected.set()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> AckingLink.Acked:
        return AckingLink.Acked()


def test_the_age_of_an_awaited_receipt_ignores_wall_clock_steps(tmp_path, monkeypatch):
    """NTP stepping the wall clock by an hour must not make the collector look an hour late
    (LED, systemd STATUS): ages are on the monotonic clock, and a session published before
    this run counts from the run's start."""
    store = DeviceStore(tmp_path / "s", 1 << 30, part_bytes=PART)
    before = put_session(store, "20261127T000000000Z-befr")["session_id"]
    store.mark_published(before)  # by the previous run
    mono = [500.0]
    publisher = Publisher(store, AckingLink(), ROOT, part_bytes=PART,  # type: ignore[arg-type]
                          receipt_timeout_s=60, clock=lambda: mono[0])
    mono[0] += 10
    assert publisher.awaiting_receipt() == {"sessions": 1, "oldest_s": 10.0}
    now = put_session(store, "20261127T000001000Z-now0", seed=1)["session_id"]
    publisher.drain()
    assert store.find(now) == "published"
    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + 3600)  # NTP's step
    mono[0] += 5
    assert publisher.awaiting_receipt() == {"sessions": 2, "oldest_s": 15.0}
    store.mark_stored(before)
    assert publisher.awaiting_receipt() == {"sessions": 1, "oldest_s": 5.0}
    publisher.require_receipt = False
    assert publisher.awaiting_receipt() == {"sessions": 0, "oldest_s": 0.0}


@pytest.mark.parametrize("gone_before", ["manifest", "mark_stored"])
def test_a_receipt_for_a_session_deleted_to_make_room_meanwhile_is_ignored(
        tmp_path, monkeypatch, gone_before):
    """The recorder's thread makes room with a published session between the publisher's
    look at it and its move to stored/: the receipt is ignored, the publisher goes on.
    (Review, 2026-11-28: a ValueError or FileNotFoundError escaped to the publisher's loop
    and skipped the rest of its turn.)"""
    from edge_recorder.documents import Receipt

    store = DeviceStore(tmp_path / "s", 1 << 30, part_bytes=PART)
    m = put_session(store, "20261127T000000000Z-gone")
    sid = m["session_id"]
    store.mark_published(sid)
    publisher = Publisher(store, AckingLink(), ROOT, part_bytes=PART,  # type: ignore[arg-type]
                          receipt_timeout_s=60)
    real = getattr(store, gone_before)

    def deleted_first(*args, **kw):  # type: ignore[no-untyped-def]
        store.max_bytes = 1
        store.make_room(0)  # takes the published session (the only one)
        return real(*args, **kw)

    monkeypatch.setattr(store, gone_before, deleted_first)
    publisher._receipts.append(Receipt(session_id=sid, device_id="dev1", sha256=m["sha256"],
                                       bytes=m["bytes"], duplicate=False))
    publisher._take_receipts()  # no exception
    assert store.find(sid) is None and publisher.stored == 0


def test_a_parts_count_rewrite_does_not_bring_back_a_session_deleted_meanwhile(tmp_path,
                                                                               monkeypatch):
    """mqtt.max_payload_bytes changed, so a resend rewrites the manifest's part count; the
    recorder's thread makes room with the session just before: no manifest comes back
    without its file (review, 2026-11-28: it did, and the session was then quarantined as
    damaged)."""
    import edge_recorder.recording.store as store_mod

    store = DeviceStore(tmp_path / "s", 1 << 30, part_bytes=PART)
    sid = put_session(store, "20261127T000000000Z-prts")["session_id"]
    store.mark_published(sid)
    smaller = DeviceStore(tmp_path / "s", 1 << 30, part_bytes=PART // 2)  # a restart
    real_warning = store_mod.log.warning

    def deleted_then_warned(*args, **kw):  # type: ignore[no-untyped-def]
        smaller.max_bytes = 1
        smaller.make_room(0)
        real_warning(*args, **kw)

    monkeypatch.setattr(store_mod.log, "warning", deleted_then_warned)
    with pytest.raises(FileNotFoundError):
        smaller.checked_manifest(sid, "published")
    assert smaller.find(sid) is None
    assert list((smaller.root / "published").iterdir()) == []
