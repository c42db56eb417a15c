"""The collector against hostile input and bad days (issue 12, collector items 1-6), and its
receipts (issue 17). Unit tests drive the store and the message handler directly; the
MQTT ones run against a real Mosquitto."""

from __future__ import annotations

import errno
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_recorder.collector import collector as collector_module
from edge_recorder.collector.collector import Collector, CollectorStore
from edge_recorder.config import MqttConfig
from edge_recorder.delivery.mqtt import Message, NotTaken
from edge_recorder.devtools import wait_until
from tests.conftest import cli

PREFIX = "edge-recorder"


def session(sid: str = "20261126T100000123Z-3f9a1c07b2", device: str = "trel",
            size: int = 5000, part: int = 1024, **changes: Any) -> tuple[dict, list[bytes]]:
    """A manifest and its parts for ``size`` bytes of data unique to (device, sid)."""
    seed = hashlib.sha256(f"{device}/{sid}".encode()).digest()
    data = (seed * (size // len(seed) + 1))[:size]
    parts = [data[i:i + part] for i in range(0, size, part)] or [b""]
    manifest = {"session_id": sid, "device_id": device, "labels": ["login"],
                "journey_id": "j-1", "started_at": "2026-11-26T10:00:00.000000Z",
                "stopped_at": "2026-11-26T10:00:05.000000Z", "duration_s": 5.0,
                "stop_reason": "command", "bytes": size, "parts": len(parts),
                "sha256": hashlib.sha256(data).hexdigest(), **changes}
    return manifest, parts


def deliver(handle: Any, manifest: dict, parts: list[bytes], device: str | None = None,
            sid: str | None = None) -> Any:
    """Feed a session to ``handle(topic, payload)`` as the publisher would send it."""
    device = device or manifest["device_id"]
    sid = sid or manifest["session_id"]
    for n, p in enumerate(parts):
        handle(f"{PREFIX}/{device}/sessions/{sid}/part/{n}", p)
    return handle(f"{PREFIX}/{device}/sessions/{sid}/manifest", json.dumps(manifest).encode())


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[Collector]:
    """A collector whose handler is driven directly (its MQTT link is never started)."""
    c = Collector(MqttConfig(host="127.0.0.1", port=1), tmp_path / "store")
    yield c
    c.store.index.close()


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- receipts (issue 17) ------------------------------------------------------------------
@pytest.mark.broker
def test_a_stored_session_gets_a_receipt_and_so_does_each_duplicate(tmp_path, broker, client):
    stop = threading.Event()
    collector = Collector(MqttConfig(host="127.0.0.1", port=broker.port), tmp_path / "store")
    worker = threading.Thread(target=collector.run, args=(stop,))
    worker.start()
    try:
        wait_until(collector.link.connected.is_set, 10, "collector connected")
        client.subscribe(f"{PREFIX}/+/sessions/+/stored")
        manifest, parts = session()
        sid = manifest["session_id"]
        deliver(client.publish, manifest, parts)
        stored = tmp_path / "store" / "sessions" / "trel" / f"{sid}.json"
        (receipt,) = wait_until(lambda: client.json_on(f"{PREFIX}/trel/sessions/{sid}/stored"),
                                10, "the receipt")
        assert stored.exists()  # the receipt comes after the store
        assert receipt == {"session_id": sid, "device_id": "trel", "sha256": manifest["sha256"],
                           "bytes": manifest["bytes"], "duplicate": False}
        (msg,) = client.received(f"{PREFIX}/trel/sessions/{sid}/stored")
        assert msg.qos == 1 and not msg.retain
        deliver(client.publish, manifest, parts)  # the device publishes it again
        receipts = wait_until(lambda: len(r := client.json_on(
            f"{PREFIX}/trel/sessions/{sid}/stored")) == 2 and r, 10, "the duplicate's receipt")
        assert receipts[1] == {**receipt, "duplicate": True}
        assert collector.store.stored == 1
        # its own receipts (and anything else under a device) are not session input
        client.publish(f"{PREFIX}/trel/sessions/{sid}/stored", b"{}")
        client.publish(f"{PREFIX}/trel/sessions/{sid}/part/x/y", b"{}")
        time.sleep(0.5)
        assert collector.store.refused == 0
    finally:
        stop.set()
        worker.join(10)


# --- issue 12, collector items 1-6 (hostile and unlucky) ----------------------------------
def on(c: Collector, topic: str, payload: bytes) -> None:
    """One message through the collector's MQTT handler, as paho would deliver it."""
    c.on_message(Message(topic, payload))


def send(c: Collector, manifest: dict, parts: list[bytes], device: str | None = None,
         sid: str | None = None) -> None:
    deliver(lambda t, p: on(c, t, p), manifest, parts, device, sid)


def stored_ok(store: Path, device: str, manifest: dict) -> bool:
    mcap = store / "sessions" / device / f"{manifest['session_id']}.mcap"
    return mcap.exists() and hashlib.sha256(mcap.read_bytes()).hexdigest() == manifest["sha256"]


def listed(store: Path, *args: str) -> list[dict]:
    r = cli("sessions", "list", "--store", str(store), "--json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.mark.parametrize("evil_id", ["..", "."])
def test_a_dot_id_touches_nothing(tmp_path, offline, evil_id):
    """Item 1: ``..`` deleted the whole store, ``.`` every half-received session."""
    store = tmp_path / "store"
    good, good_parts = session()
    send(offline, good, good_parts)
    half, half_parts = session(sid="20261126T110000000Z-half", device="other")
    send(offline, half, half_parts[:2])  # another device's half-received session
    before = tree(store)
    evil, evil_parts = session(sid=evil_id, device="evil", size=17, part=17)
    send(offline, evil, evil_parts, sid=evil_id)
    assert tree(store) == before
    assert offline.store.refused == 2
    assert stored_ok(store, "trel", good)
    assert [m["session_id"] for m in listed(store)] == [good["session_id"]]
    send(offline, half, half_parts)  # the half-received one still completes
    assert stored_ok(store, "other", half)


def test_a_device_cannot_replace_another_devices_session(tmp_path, offline, caplog):
    """Item 2: a fake under evil/ naming trel was stored as trel's, the real one dropped."""
    real, real_parts = session(device="trel", size=5000)
    fake, fake_parts = session(device="trel", size=17, part=17)
    send(offline, fake, fake_parts, device="evil")  # same id, claims to be trel
    assert "names device 'trel', not the device it was published by" in caplog.text
    send(offline, real, real_parts)
    assert stored_ok(tmp_path / "store", "trel", real)
    assert not (tmp_path / "store" / "sessions" / "evil").exists()
    # the same id from two devices are two sessions
    own, own_parts = session(device="evil", size=100, part=50)
    send(offline, own, own_parts)
    assert stored_ok(tmp_path / "store", "evil", own)
    assert sorted((m["device_id"], m["session_id"]) for m in listed(tmp_path / "store")) == \
        [("evil", real["session_id"]), ("trel", real["session_id"])]
    assert listed(tmp_path / "store", "--device", "trel")[0]["sha256"] == real["sha256"]


def test_absurd_part_counts_are_refused_before_any_work(tmp_path, offline):
    """Item 3: ``parts: 2000000`` took 632 MB, 100 % CPU and a resend of 1,999,999 parts."""
    manifest, parts = session(size=4_000_000, part=1_000_000)
    sid = manifest["session_id"]
    on(offline, f"{PREFIX}/trel/sessions/{sid}/part/0", parts[0])
    t0 = time.process_time()
    on(offline, f"{PREFIX}/trel/sessions/{sid}/manifest",
       json.dumps({**manifest, "parts": 2_000_000}).encode())
    on(offline, f"{PREFIX}/trel/sessions/{sid}/part/1999999", b"x")
    on(offline, f"{PREFIX}/trel/sessions/{sid}/part/{'9' * 400}", b"x")
    assert time.process_time() - t0 < 0.5
    assert offline.store.refused == 3
    # nothing asks the device for two million parts: the manifest never came
    assert offline.store.incomplete(quiet_for_s=-1) == [("trel", sid, None)]


def test_part_bookkeeping_does_not_rescan_per_arrival(tmp_path, offline, monkeypatch):
    """Item 3: part lists were rebuilt on every arrival (quadratic for honest sessions)."""
    manifest, parts = session(size=3000, part=1)  # 3,000 parts
    stats = 0
    real_exists = Path.exists

    def counting_exists(self: Path, *a: Any, **k: Any) -> bool:
        nonlocal stats
        stats += 1
        return real_exists(self, *a, **k)

    monkeypatch.setattr(Path, "exists", counting_exists)
    on(offline, f"{PREFIX}/trel/sessions/{manifest['session_id']}/manifest",
       json.dumps(manifest).encode())
    for n, p in enumerate(parts):
        on(offline, f"{PREFIX}/trel/sessions/{manifest['session_id']}/part/{n}", p)
    assert stored_ok(tmp_path / "store", "trel", manifest)
    assert stats < 5 * len(parts)  # a few per part, not a scan of all parts per part


@pytest.mark.parametrize("damage", [{"labels": 5}, {"started_at": None, "stopped_at": None},
                                    "not json", {"session_id": ".."}])
def test_one_bad_stored_manifest_never_breaks_a_listing(tmp_path, offline, damage):
    """Item 4: one manifest with ``"labels": 5`` made sessions list / --json / journeys
    list fail for the whole store."""
    store = tmp_path / "store"
    good, parts = session()
    send(offline, good, parts)
    other, other_parts = session(sid="20261126T120000000Z-bad", device="trel")
    send(offline, other, other_parts)
    offline.store.index.close()
    bad = store / "sessions" / "trel" / f"{other['session_id']}.json"
    bad.write_text(damage if isinstance(damage, str) else json.dumps({**other, **damage}))
    (store / "index.sqlite").unlink()  # as on a copied store: the index is rebuilt
    assert [m["session_id"] for m in listed(store)] == [good["session_id"]]
    for args in (["sessions", "list"], ["journeys", "list"], ["journeys", "list", "--json"]):
        r = cli(*args, "--store", str(store))
        assert r.returncode == 0 and "1 damaged manifest(s) left out" in r.stderr, r.stderr
    assert "j-1" in cli("journeys", "list", "--store", str(store)).stdout
    # the collector quarantines it when it starts, counts it, and lists it as failed
    again = CollectorStore(store)
    assert again.quarantined == 1 and not bad.exists()
    (failed,) = listed(store, "--state", "failed")
    assert failed["session_id"] == other["session_id"] and failed["device_id"] == "trel"
    assert "stored manifest" in failed["reason"]
    assert Path(failed["path"], f"{other['session_id']}.mcap").exists()  # kept, not deleted
    r = cli("sessions", "list", "--store", str(store))
    assert r.returncode == 0 and "damaged" not in r.stderr


def test_a_part_that_cannot_be_written_is_not_acknowledged(tmp_path, offline, monkeypatch,
                                                           caplog):
    """Item 5: handler errors were swallowed, so paho acknowledged parts never written."""
    manifest, parts = session()

    def full(*a: Any, **k: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(collector_module, "write_atomic", full)
    with pytest.raises(NotTaken, match="No space left on device"):
        on(offline, f"{PREFIX}/trel/sessions/{manifest['session_id']}/part/0", parts[0])
    assert offline.store_errors == 1


@pytest.mark.broker
def test_a_full_disk_loses_nothing_the_broker_redelivers(tmp_path, broker, client, monkeypatch,
                                                         caplog):
    """Item 5: a full collector disk lost 6 of 9 sessions for good."""
    real_write = collector_module.write_atomic
    disk_full = threading.Event()
    disk_full.set()
    failures = 0

    def write(path: Path, data: bytes) -> None:
        nonlocal failures
        if disk_full.is_set() and path.name.startswith("part-"):
            failures += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(collector_module, "write_atomic", write)
    stop = threading.Event()
    collector = Collector(MqttConfig(host="127.0.0.1", port=broker.port), tmp_path / "store")
    worker = threading.Thread(target=collector.run, args=(stop,))
    worker.start()
    try:
        wait_until(collector.link.connected.is_set, 10, "collector connected")
        sessions = [session(sid=f"20261126T10000{i}000Z-full", size=3000) for i in range(3)]
        for manifest, parts in sessions:
            deliver(client.publish, manifest, parts)
        wait_until(lambda: failures >= 3, 10, "parts refused by the full disk")
        assert not any((tmp_path / "store" / "sessions").rglob("*.mcap"))
        disk_full.clear()  # room again: the broker delivers what was not acknowledged
        wait_until(lambda: collector.store.stored == 3, 20,
                   "every session after the disk has room again")
        assert all(stored_ok(tmp_path / "store", "trel", m) for m, _ in sessions)
        assert "not acknowledged, the broker will deliver it again" in caplog.text
        assert "OSError: [Errno 28] No space left on device" in caplog.text
        assert collector.status()["not_acknowledged"] >= 1
    finally:
        stop.set()
        worker.join(10)


def test_resends_go_to_the_device_of_the_folder(tmp_path):
    """Item 5: the ``device`` file was written non-atomically; an empty one sent resends to
    ``edge-recorder//cmd``. The device is now the folder the parts are in."""
    store = CollectorStore(tmp_path / "store")
    manifest, parts = session()
    store.add_part("trel", manifest["session_id"], 0, parts[0])
    store.index.close()
    (store.incoming / "trel" / manifest["session_id"] / "first_seen").write_text("")  # torn
    again = CollectorStore(tmp_path / "store")  # a restart
    assert again.incomplete(quiet_for_s=-1) == [("trel", manifest["session_id"], None)]


def test_a_flat_store_from_before_is_migrated(tmp_path):
    root = tmp_path / "store"
    manifest, parts = session()
    (root / "sessions").mkdir(parents=True)
    (root / "sessions" / f"{manifest['session_id']}.json").write_text(json.dumps(manifest))
    (root / "sessions" / f"{manifest['session_id']}.mcap").write_bytes(b"".join(parts))
    half, half_parts = session(sid="20261126T110000000Z-half", device="other")
    old = root / "incoming" / half["session_id"]
    old.mkdir(parents=True)
    (old / "device").write_text("other")
    (old / "part-000000").write_bytes(half_parts[0])
    with sqlite3.connect(root / "index.sqlite") as db:  # the index of before: keyed by id alone
        db.execute("CREATE TABLE sessions (session_id TEXT PRIMARY KEY, manifest_path TEXT)")
        db.execute("INSERT INTO sessions VALUES ('gone', 'sessions/gone.json')")
    store = CollectorStore(root)
    assert stored_ok(root, "trel", manifest)
    for n, p in enumerate(half_parts[1:], 1):
        store.add_part("other", half["session_id"], n, p)
    store.add_manifest("other", half["session_id"], json.dumps(half).encode())
    assert stored_ok(root, "other", half)
    assert sorted((m["device_id"], m["session_id"]) for m in listed(root)) == \
        [("other", half["session_id"]), ("trel", manifest["session_id"])]


def test_a_truncated_stream_is_quarantined_not_asked_for_forever(tmp_path, offline):
    """Item 6: a truncated outbox file was published with the manifest's size, then
    re-requested every 30 s forever."""
    manifest, parts = session(size=5000, part=1024)
    parts[-1] = parts[-1][:100]  # the device's file lost its tail
    send(offline, manifest, parts)
    store = offline.store
    assert not store.has("trel", manifest["session_id"])
    assert store.due_for_resend(quiet_for_s=-1) == []  # nothing left to ask for
    (rejected,) = store.rejected()
    assert "truncated" in rejected.reason and rejected.session_id == manifest["session_id"]
    assert listed(tmp_path / "store", "--state", "failed")[0]["session_id"] == \
        manifest["session_id"]


def test_incomplete_sessions_expire_from_their_first_part(tmp_path, offline, monkeypatch):
    """Item 6: each attempt refreshed the folder, so the 24 h expiry never fired."""
    manifest, parts = session()
    sid = manifest["session_id"]
    clock = [1_800_000_000.0]
    monkeypatch.setattr(collector_module.time, "monotonic", lambda: clock[0])
    on(offline, f"{PREFIX}/trel/sessions/{sid}/manifest", json.dumps(manifest).encode())
    for hour in range(1, 26):  # a part (or a resent one) arrives every hour, never the last
        clock[0] += 3600
        on(offline, f"{PREFIX}/trel/sessions/{sid}/part/{hour % 3}", parts[hour % 3])
        offline.store.expire()
    assert not (tmp_path / "store" / "incoming" / "trel" / sid).exists()
    (rejected,) = offline.store.rejected()
    assert "incomplete 24.0 h after its first message" in rejected.reason


def test_resend_requests_back_off(tmp_path, offline, monkeypatch):
    manifest, parts = session()
    send(offline, manifest, parts[:-1])
    start = time.monotonic()  # the clock the session was received by, from here on faked
    now = [start]
    monkeypatch.setattr(collector_module.time, "monotonic", lambda: now[0])
    asked = []
    for _ in range(600):  # ten minutes, a check every second
        asked += [now[0] for _ in offline.store.due_for_resend(quiet_for_s=-1)]
        now[0] += 1
    assert [a - start for a in asked] == [0, 30, 90, 210, 450]


def _hostile(case: str, publish: Any) -> None:
    """Publish one hostile or unlucky case, as a device or attacker would."""
    m, parts = session(sid="20261126T130000000Z-case", device="evil", size=3000)
    if case in ("..", "."):
        deliver(publish, {**m, "session_id": case}, parts, sid=case)
    elif case == "spoofed device":
        deliver(publish, {**m, "device_id": "trel"}, parts, device="evil")
    elif case == "absurd parts":
        deliver(publish, {**m, "parts": 2_000_000}, parts)
        publish(f"{PREFIX}/evil/sessions/{m['session_id']}/part/1999999", b"x")
    elif case == "wrong types":
        deliver(publish, {**m, "labels": 5, "started_at": None}, parts)
    elif case == "truncated":
        deliver(publish, m, [*parts[:-1], parts[-1][:10]])
    elif case == "garbage":
        for topic in (f"{PREFIX}/evil/sessions", f"{PREFIX}/evil/sessions/x/part/-1",
                      f"{PREFIX}/evil/sessions/x/part/1e3", f"{PREFIX}/evil/sessions/x/manifest"):
            publish(topic, b"\xff\x00garbage")


@pytest.mark.broker
@pytest.mark.parametrize("case", ["..", ".", "spoofed device", "absurd parts", "wrong types",
                                  "truncated", "garbage"])
def test_after_each_hostile_case_the_store_is_intact_and_a_normal_session_arrives(
        tmp_path, broker, client, case):
    """Issue 12's Done-when, per case, through a real Mosquitto and a running collector."""
    root = tmp_path / "store"
    stop = threading.Event()
    collector = Collector(MqttConfig(host="127.0.0.1", port=broker.port), root)
    worker = threading.Thread(target=collector.run, args=(stop,))
    worker.start()
    try:
        wait_until(collector.link.connected.is_set, 10, "collector connected")
        client.subscribe(f"{PREFIX}/+/sessions/+/stored")
        earlier, earlier_parts = session(device="trel")
        deliver(client.publish, earlier, earlier_parts)
        wait_until(lambda: collector.store.stored == 1, 10, "the earlier session")
        _hostile(case, client.publish)
        after, after_parts = session(sid="20261126T140000000Z-after", device="trel")
        t0 = time.monotonic()
        deliver(client.publish, after, after_parts)
        topic = f"{PREFIX}/trel/sessions/{after['session_id']}/stored"
        wait_until(lambda: client.json_on(topic), 10, "the normal session after the case")
        assert time.monotonic() - t0 < 10
        assert collector.store.stored == 2  # once each; the hostile one was never stored
        assert collector.store.refused + collector.store.quarantined >= 1  # and it was seen
        for m in (earlier, after):
            assert stored_ok(root, "trel", m)
        assert sorted(m["session_id"] for m in listed(root)) == \
            sorted([earlier["session_id"], after["session_id"]])
        assert {p.name for p in root.iterdir()} >= {"sessions", "incoming", "rejected",
                                                    "index.sqlite"}
    finally:
        stop.set()
        worker.join(10)


def test_a_flood_of_refused_messages_does_not_flood_the_log(offline, monkeypatch, caplog):
    now = [5000.0]
    monkeypatch.setattr(collector_module.time, "monotonic", lambda: now[0])
    offline._refusals_window_start = now[0]
    for i in range(500):
        on(offline, f"{PREFIX}/evil/sessions/../part/{i}", b"x")
    now[0] += 61
    on(offline, f"{PREFIX}/evil/sessions/../part/0", b"x")
    lines = [r.getMessage() for r in caplog.records]
    assert offline.store.refused == 501
    assert sum("collector: refused" in line for line in lines) == 21
    assert "480 more message(s) refused in the last minute" in caplog.text


def test_a_quarantined_mismatch_delivered_again_is_refused_not_stored_again(tmp_path, offline):
    """A device that publishes a damaged session again (no receipt came) must not fill
    rejected/ with copies; a different file under the same id is still taken."""
    manifest, parts = session()
    short = [*parts[:-1], parts[-1][:10]]
    send(offline, manifest, short)
    assert len(offline.store.rejected()) == 1
    refused = offline.store.refused
    send(offline, manifest, short)  # again, and after a restart
    again = Collector(MqttConfig(host="127.0.0.1", port=1), tmp_path / "store")
    send(again, manifest, short)
    assert len(again.store.rejected()) == 1 and offline.store.refused > refused
    assert list((tmp_path / "store" / "incoming").rglob("part-*")) == []
    good, good_parts = session(size=4000)  # same id, a different (complete) file
    send(again, good, good_parts)  # parts refused (quarantined id), the manifest taken...
    send(again, good, good_parts)  # ...so the resend it asks for is stored
    assert stored_ok(tmp_path / "store", "trel", good)
    again.store.index.close()


def test_a_bug_on_one_message_is_logged_and_does_not_block_the_rest(tmp_path, offline,
                                                                    monkeypatch, caplog):
    manifest, parts = session()
    calls = []

    def broken_add(*a: Any, **k: Any) -> None:
        calls.append(a)
        raise RuntimeError("index exploded")

    monkeypatch.setattr(offline.store.index, "add", broken_add)
    send(offline, manifest, parts)  # no NotTaken: acknowledged, never redelivered forever
    assert calls and offline.handler_errors == 1
    assert "failed (RuntimeError: index exploded); acknowledged" in caplog.text
    assert offline.store.stored == 1 and offline.store.incomplete(quiet_for_s=-1) == []
    assert list((tmp_path / "store" / "incoming").rglob("part-*")) == []
    # the session's file and manifest were durable before the index failed: a re-sync lists it
    monkeypatch.undo()
    offline.store.resync()
    assert [m["session_id"] for m in listed(tmp_path / "store")] == [manifest["session_id"]]


# --- review: parts before a manifest had no bound; wall-clock steps ---------------------
def held(store: Path, device: str) -> int:
    """Bytes of parts in ``incoming/{device}/`` on disk (what the cap must bound)."""
    return sum(p.stat().st_size for p in (store / "incoming" / device).glob("*/part-*"))


def test_one_device_cannot_fill_the_disk_with_parts_before_a_manifest(tmp_path, offline,
                                                                      monkeypatch, caplog):
    """Parts arriving before their manifest were written without any size limit: 256
    sessions x MAX_PARTS x the broker's message size under one device's own id."""
    cap = 64 * 1024
    monkeypatch.setattr(collector_module, "MAX_INCOMING_BYTES_PER_DEVICE", cap)
    store = tmp_path / "store"
    chunk = b"x" * 4096
    for s in range(8):  # 8 sessions x 8 parts x 4 KiB = 256 KiB, never a manifest
        for n in range(8):
            on(offline, f"{PREFIX}/evil/sessions/20261126T1000000{s:02d}Z-flood/part/{n}", chunk)
    assert held(store, "evil") == cap  # the parts that fit, not one byte more
    assert offline.store.refused == 8 * 8 - cap // len(chunk)
    assert offline.store.status()["incoming_bytes"] == cap
    assert "bytes of parts held in incoming/" in caplog.text
    # another device is not affected, and a duplicate part is not counted twice
    good, good_parts = session(device="trel", size=5000)
    send(offline, good, good_parts[:1])
    send(offline, good, good_parts)
    assert stored_ok(store, "trel", good)
    # the count survives a restart: rebuilt from incoming/, the next part is refused at once
    offline.store.index.close()
    again = Collector(MqttConfig(host="127.0.0.1", port=1), store)
    try:
        refused = again.store.refused
        on(again, f"{PREFIX}/evil/sessions/20261126T100000000Z-late/part/0", b"y")
        assert again.store.refused == refused + 1 and held(store, "evil") == cap
        # what expires frees its share: the device may deliver again
        again.store.expire(older_than_s=-1)
        assert again.store.status()["incoming_bytes"] == 0
        on(again, f"{PREFIX}/evil/sessions/20261126T100000000Z-late/part/0", b"y")
        assert held(store, "evil") == 1
    finally:
        again.store.index.close()


def test_an_honest_session_as_large_as_the_cap_is_stored_and_frees_its_share(tmp_path, offline,
                                                                              monkeypatch):
    monkeypatch.setattr(collector_module, "MAX_INCOMING_BYTES_PER_DEVICE", 20_000)
    for sid in ("20261126T100000000Z-one", "20261126T110000000Z-two"):
        manifest, parts = session(sid=sid, device="trel", size=20_000, part=3000)
        send(offline, manifest, parts)
        assert stored_ok(tmp_path / "store", "trel", manifest)
        assert offline.store.status()["incoming_bytes"] == 0
    assert offline.store.refused == 0


def test_the_total_held_for_all_devices_is_capped(tmp_path, offline, monkeypatch):
    monkeypatch.setattr(collector_module, "MAX_INCOMING_BYTES_TOTAL", 10_000)
    for device in ("d1", "d2", "d3"):
        for n in range(2):
            on(offline, f"{PREFIX}/{device}/sessions/20261126T100000000Z-s/part/{n}", b"z" * 2000)
    assert sum(held(tmp_path / "store", d) for d in ("d1", "d2", "d3")) == 10_000
    assert offline.store.refused == 1


def test_a_part_larger_than_any_allowed_payload_is_refused_unwritten(tmp_path, offline,
                                                                     monkeypatch):
    monkeypatch.setattr(collector_module, "MAX_PART_BYTES", 4096)
    sid = "20261126T100000000Z-big"
    on(offline, f"{PREFIX}/evil/sessions/{sid}/part/0", b"b" * 4097)
    assert offline.store.refused == 1
    assert not (tmp_path / "store" / "incoming" / "evil").exists()
    on(offline, f"{PREFIX}/evil/sessions/{sid}/part/0", b"b" * 4096)
    assert held(tmp_path / "store", "evil") == 4096


def test_a_wall_clock_step_neither_expires_nor_hurries_an_arriving_session(tmp_path, offline,
                                                                           monkeypatch):
    """A Pi without an RTC steps its wall clock when NTP syncs: a session that has just
    begun must not look 2 days old (expired) nor quiet (asked for again at once)."""
    manifest, parts = session()
    send(offline, manifest, parts[:-1])
    real = time.time
    monkeypatch.setattr(collector_module.time, "time", lambda: real() + 2 * 86400)
    assert offline.store.due_for_resend(quiet_for_s=RESEND_AFTER) == []
    offline.store.expire()
    assert offline.store.rejected() == []
    on(offline, f"{PREFIX}/trel/sessions/{manifest['session_id']}/part/{len(parts) - 1}",
       parts[-1])
    assert stored_ok(tmp_path / "store", "trel", manifest)


RESEND_AFTER = collector_module.RESEND_AFTER_S


def test_the_persisted_first_seen_still_expires_a_session_after_a_restart(tmp_path, offline):
    old, old_parts = session(sid="20261126T100000000Z-old")
    new, new_parts = session(sid="20261126T110000000Z-future")
    send(offline, old, old_parts[:1])
    send(offline, new, new_parts[:1])
    store = tmp_path / "store"
    (store / "incoming" / "trel" / old["session_id"] / "first_seen").write_text(
        f"{time.time() - 25 * 3600:.3f}\n")  # wall time, from before the restart
    (store / "incoming" / "trel" / new["session_id"] / "first_seen").write_text(
        f"{time.time() + 10 * 3600:.3f}\n")  # a clock that was ahead: counts as just now
    offline.store.index.close()
    again = CollectorStore(store)
    try:
        again.expire()
        assert [r.session_id for r in again.rejected()] == [old["session_id"]]
        again.expire(older_than_s=3600)
        assert len(again.rejected()) == 1
    finally:
        again.index.close()
