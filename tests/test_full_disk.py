"""A full device disk (issue 12, item 9): ``store_full``, room made, sessions closed, exit 0.

The daemon test runs on a real, tiny tmpfs (needs root to mount; skipped otherwise). The
in-process tests inject ENOSPC into the session writer, so the recorder's handling is
tested on any machine.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_recorder.config import MqttConfig, SessionConfig
from edge_recorder.delivery.mqtt import MqttLink
from edge_recorder.delivery.publisher import PUBLISH_BACKOFF_MAX_S, Publisher
from edge_recorder.recording.events import StartRequested, Trigger
from edge_recorder.recording.recorder import Recorder
from edge_recorder.recording.restamp import restamp_if_synced
from edge_recorder.recording.store import FAILED, OUTBOX, STORED, DeviceStore, file_digest
from edge_recorder.sessionfile import SessionWriter, read_manifest
from tests.conftest import base_config, wait_online, wait_until, write_config
from tests.rig import Rig
from tests.test_receipts import PART, ROOT, ReceiptDesk, put_session

MQTT = Trigger("mqtt")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a file system that really runs out of space."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the injected-ENOSPC "
                    "tests below cover the recorder's side")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, leave_bytes: int) -> None:
    """Fill the file system ``path`` is on until only ``leave_bytes`` are free."""
    free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
    with open(path, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
        f.flush()
        os.fsync(f.fileno())


def _send(client, payload: dict) -> dict:
    rid = f"r{time.monotonic_ns()}"
    client.subscribe("edge-recorder/test-pi/cmd/reply")
    client.publish("edge-recorder/test-pi/cmd", json.dumps({**payload, "request_id": rid}))
    return wait_until(lambda: next((r for r in client.json_on("edge-recorder/test-pi/cmd/reply")
                                    if r.get("request_id") == rid), None), 15, "reply")


@pytest.mark.broker
def test_a_full_disk_closes_the_session_makes_room_and_refuses_cleanly(
        tmp_path, tiny_disk, broker, client, spawn):
    store = tiny_disk / "store"
    for state in ("recording", "outbox", "published", "stored", "failed"):
        (store / state).mkdir(parents=True)
    for i in range(2):  # two sessions the collector confirmed: the first to go
        sid = f"20261127T00000{i}000Z-old{i}"
        (store / "stored" / f"{sid}.mcap").write_bytes(os.urandom(3 << 20))
        (store / "stored" / f"{sid}.json").write_text(json.dumps({"session_id": sid}))
    fill(tiny_disk / "filler-1", leave_bytes=150_000)
    config = base_config(tmp_path, broker.port, storage={"dir": str(store),
                                                          "max_bytes": 1 << 30})
    config["sensors"][0]["rate_hz"] = 1000
    cfg = write_config(tmp_path / "device.yaml", config)
    daemon = spawn("run", "-c", str(cfg), name="daemon")
    wait_online(client)
    sid = _send(client, {"cmd": "start", "duration_s": 20})["session_id"]
    # ~150 kB fill up within seconds at 1 kHz: the session is closed with what was written
    wait_until(lambda: next(store.glob(f"*/{sid}.json"), None) if not
               (store / "recording" / f"{sid}.json").exists() else None, 30,
               "the session closed on the full disk")
    # read it where it stays (the publisher moves it out of the outbox meanwhile: reading
    # it there raced that move)
    manifest_path = store / "published" / f"{sid}.json"
    wait_until(manifest_path.exists, 20, "published")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["stop_reason"] == "store_full"
    (sensor,) = manifest["sensors"]
    assert sensor["samples"] > 0 and [g["reason"] for g in sensor["gaps"]] == ["store_full"]
    assert read_manifest(manifest_path.with_suffix(".mcap"))["stop_reason"] == "store_full"
    assert list((store / "stored").iterdir()) == []  # room was made from stored sessions
    log = daemon.log()
    assert "deleted stored session 20261127T000000000Z-old0 to make room" in log
    # now the disk is full with nothing left to delete but what awaits a receipt
    fill(tiny_disk / "filler-2", leave_bytes=0)
    reply = _send(client, {"cmd": "start", "duration_s": 1})
    assert reply["ok"] is False and reply["error"]["code"] == "store_full", reply
    assert "disk is full" in reply["error"]["message"]
    log = daemon.log()
    assert f"deleted session {sid} to make room although the collector has not confirmed" in log
    assert "internal_error" not in log and "Traceback" not in log
    assert log.count("pump failed") <= 1
    assert daemon.alive() and daemon.stop() == 0


class FullDiskWriter(SessionWriter):
    """A session writer on a disk that fills up after ``room`` more messages."""

    room = 5

    def write(self, sensor: str, t0_ns: int, data: bytes) -> None:
        if FullDiskWriter.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        FullDiskWriter.room -= 1
        super().write(sensor, t0_ns, data)


def test_an_injected_full_disk_closes_open_sessions_as_store_full(tmp_path, monkeypatch,
                                                                  caplog):
    monkeypatch.setattr("edge_recorder.recording.recorder.SessionWriter", FullDiskWriter)
    FullDiskWriter.room = 10**9
    rig = Rig(tmp_path)
    rig.run(1.0)
    FullDiskWriter.room = 2  # ~1 s of messages (one per 0.5 s flush), then the disk is full
    sid = rig.ask(StartRequested, trigger=MQTT, duration_s=None)["session_id"]
    caplog.set_level(logging.INFO)
    rig.run(3.0)
    assert rig.recorder.sessions == {}
    (manifest,) = rig.completed
    assert manifest["session_id"] == sid and manifest["stop_reason"] == "store_full"
    (sensor,) = manifest["sensors"]
    assert sensor["samples"] > 0 and sensor["gaps"][0]["reason"] == "store_full"
    assert rig.store.find(sid) == "outbox"
    assert caplog.text.count("the disk is full") == 1
    # the next start is refused with store_full, not internal_error, when no room is left
    monkeypatch.setattr(rig.store, "begin", _raise_enospc)
    reply = rig.ask(StartRequested, trigger=MQTT, duration_s=None)
    assert reply["ok"] is False and reply["error"]["code"] == "store_full"


def _raise_enospc(*args: object, **kw: object) -> Path:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_pump_failing_every_round_is_logged_once_and_stops_the_heartbeat(tmp_path, caplog):
    rig = Rig(tmp_path)
    rig.run(0.5)
    recorder: Recorder = rig.recorder
    assert rig.ask(StartRequested, trigger=MQTT)["ok"]  # idle, it would not pump at all

    def broken_pump() -> None:
        raise RuntimeError("ring cursor corrupt")

    recorder.pump = broken_pump  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    recorder.start()
    try:
        time.sleep(0.2)
        beat = recorder.last_loop_s
        time.sleep(1.0)  # ten failing rounds
        assert recorder.last_loop_s == beat, "a failing pump must not count as progress"
        failures = [r for r in caplog.records if "pump failed" in r.getMessage()]
        assert len(failures) == 1 and "RuntimeError: ring cursor corrupt" in caplog.text
    finally:
        recorder._stop.set()
        recorder._thread.join(2)


@pytest.mark.broker
@pytest.mark.parametrize("room_to_make", [True, False], ids=["room-made", "no-room"])
def test_a_full_disk_never_quarantines_a_good_session_it_could_not_restamp(
        tiny_disk, broker, caplog, room_to_make):
    """Re-stamping a session recorded before clock sync writes a full copy of it; on a full
    disk that fails with ENOSPC. That says nothing about the session: room is made and the
    copy made after all, or, with nothing left to delete, the session goes out as it was
    recorded (``clock.synced: false``). Never quarantined (review item 1)."""
    rig = Rig(tiny_disk, settings=SessionConfig(duration_s=1))
    rig.clock.synced = False  # booted on a stale clock
    sid = rig.ask(StartRequested, trigger=MQTT)["session_id"]
    rig.finish(1.5)
    store = rig.store
    size = store.manifest(sid)["bytes"]
    rig.clock.step(3600)  # NTP's first sync
    rig.clock.synced = True
    if room_to_make:  # a session the collector confirmed, the first to go
        old = "20261127T000000000Z-old0"
        store.path(STORED, old).write_bytes(os.urandom(6 << 20))
        store.path(STORED, old, ".json").write_text(json.dumps({"session_id": old}))
    fill(tiny_disk / "filler", leave_bytes=size // 2)  # no room for the re-stamped copy
    desk = ReceiptDesk(broker.port)
    link = MqttLink(MqttConfig(host="127.0.0.1", port=broker.port), f"dev1-{time.time_ns()}")
    publisher = Publisher(store, link, ROOT, part_bytes=store.part_bytes,
                          prepare=lambda s: restamp_if_synced(store, rig.clock.clock, s))
    caplog.set_level(logging.INFO)
    publisher.start()
    link.start()
    try:
        wait_until(lambda: store.find(sid) in (STORED, FAILED), 20, "stored or quarantined")
        assert store.find(sid) == STORED and store.count(FAILED) == 0, \
            store.failure_reason(sid)
        manifest = store.manifest(sid, STORED)
        (sent,) = desk.received(f"{ROOT}/sessions/{sid}/manifest")
        assert json.loads(sent.payload) == manifest
        assert manifest["clock"]["synced"] is room_to_make
        assert (manifest["bytes"], manifest["sha256"]) == file_digest(store.path(STORED, sid))
        assert not store.replacement_path(sid).exists()
        if room_to_make:
            assert store.ids(STORED) == [sid]  # the confirmed one made room
            assert "deleted stored session 20261127T000000000Z-old0 to make room" in caplog.text
        else:
            assert f"session {sid}: cannot be re-stamped" in caplog.text
            assert "ENOSPC" in caplog.text or "No space left" in caplog.text
        assert "quarantined" not in caplog.text
    finally:
        publisher.close()
        link.close()
        desk.close()


def test_only_unreadable_files_count_towards_quarantine(tmp_path, caplog):
    """A full or read-only disk is tried again with a growing wait, never quarantined; an
    unreadable file (EIO) is quarantined after three attempts in a row (contract §3)."""
    store = DeviceStore(tmp_path / "s", 1 << 30, part_bytes=PART)
    full = put_session(store, "20261127T000000000Z-full")["session_id"]
    ro = put_session(store, "20261127T000001000Z-rofs")["session_id"]
    bad = put_session(store, "20261127T000002000Z-eiox")["session_id"]
    now = [100.0]
    errors = {full: errno.ENOSPC, ro: errno.EROFS, bad: errno.EIO}
    tries: dict[str, int] = {}

    class Link:
        connected = threading.Event()

    Link.connected.set()
    publisher = Publisher(store, Link(), ROOT, part_bytes=PART,  # type: ignore[arg-type]
                          clock=lambda: now[0])

    def failing(session_id: str) -> bool:
        tries[session_id] = tries.get(session_id, 0) + 1
        raise OSError(errors[session_id], os.strerror(errors[session_id]))

    publisher.publish_session = failing  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    for _ in range(10):
        publisher.drain()
        now[0] += 1.0
    assert store.find(bad) == FAILED and "Input/output error" in store.failure_reason(bad)
    assert tries[bad] == 3
    assert store.find(full) == OUTBOX and store.find(ro) == OUTBOX
    # backing off 2 s, 4 s, 8 s: in 10 s three tries, not ten
    assert tries[full] == tries[ro] == 3, tries
    now[0] += PUBLISH_BACKOFF_MAX_S
    publisher.drain()
    assert tries[full] == tries[ro] == 4 and store.count(FAILED) == 1


ZERO_FILL_NOTE = "cannot extend it with zeros ahead of its data"


@pytest.mark.parametrize("how", ["enospc", "short-write"])
def test_a_zero_fill_without_room_is_given_back_and_the_session_records_on(
        tmp_path, monkeypatch, caplog, how):
    """The writer's zeros ahead of its data (issue 15) can hit ENOSPC where the data itself
    would still fit: the zeros are given back, the note is logged once at info, and the file
    grows with its data as it did before the fill; the session is neither lost nor closed
    early. Injected as the tests above inject ENOSPC; a short write is what the kernel
    returns when part of a write found room (write(2): "the number of bytes written may be
    less than count if, for example, there is insufficient space")."""
    import edge_recorder.sessionfile as sessionfile

    real = os.pwrite
    fills: list[int] = []

    def full(fd: int, data: bytes, offset: int) -> int:
        fills.append(len(data))
        if how == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data[:len(data) // 3], offset)

    monkeypatch.setattr(sessionfile.os, "pwrite", full)
    caplog.set_level(logging.DEBUG)
    rig = Rig(tmp_path, settings=SessionConfig(duration_s=3))
    rig.run(0.5)
    sid = rig.ask(StartRequested, trigger=MQTT)["session_id"]
    path = rig.store.path("recording", sid)
    sizes = []
    for _ in range(5):
        rig.run(0.5)
        salvaged = sessionfile.salvage(path)
        sizes.append(path.stat().st_size)
        # no zeros left behind: the file ends where its last flushed chunk does
        assert sizes[-1] == salvaged.data_end and salvaged.end == "the end of the file"
    assert sizes == sorted(sizes) and len(set(sizes)) == 5  # it grows with its data
    rig.finish(2.0)
    (manifest,) = rig.completed
    assert manifest["session_id"] == sid and manifest["stop_reason"] == "duration"
    (sensor,) = manifest["sensors"]
    assert sensor["dropped"] == 0 and sensor["samples"] == pytest.approx(3 * 200, abs=2)
    assert len(fills) == 1, "one attempt, then the fill is off for this file"
    notes = [r for r in caplog.records if ZERO_FILL_NOTE in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert "No space left on device" in notes[0].getMessage() or "zero bytes written" in \
        notes[0].getMessage()
    assert "disk is full" not in caplog.text and "store_full" not in caplog.text


def test_on_a_real_full_disk_the_zero_fill_gives_its_room_back_to_the_data(tiny_disk, caplog):
    """On a tmpfs with 160 KiB free, the zeros ahead (growing with the file) find no room
    once they would pass it: the write gets part of the way (a short write), gives that room
    back, and the session's ~140 KB of chunks still fit and finish."""
    import random

    from edge_recorder.sessionfile import SessionFile, verify
    from tests.test_zero_fill import SENSORS, manifest_for, record

    fill(tiny_disk / "filler", leave_bytes=160 << 10)
    caplog.set_level(logging.INFO)
    writer = SessionWriter(tiny_disk / "s.mcap", SENSORS)
    fd = writer._file.fileno()  # type: ignore[union-attr]
    written = record(writer, 6, seed=random.randrange(1 << 30))
    notes = [r for r in caplog.records if ZERO_FILL_NOTE in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert "zero bytes written" in notes[0].getMessage()  # the kernel's short write
    assert os.fstat(fd).st_size == writer._file.tell() > 130_000  # type: ignore[union-attr]
    writer.finish(manifest_for())
    assert verify(writer.path) is True
    assert sum(n for _s, _t, n in written) == 6 * (500 + 416)
    assert sum(len(b["t_ns"]) for _, b in SessionFile(writer.path).batches()) == 6 * 916
