"""The session file's zero-filled steps (issue 15): a recording file is kept ahead of its
data with zeros (as much as it holds, up to a step), so a flush overwrites in place and the
file's size does not change; ``finish`` trims it; a crash leaves zeros after the last
flushed chunk, and salvage and recovery read up to them, exactly.

Why the size matters, fdatasync(2) (Linux man-pages): fdatasync "does not flush modified
metadata unless that metadata is needed in order to allow a subsequent data retrieval to be
correctly handled ... a change to the file size (st_size, as made by say ftruncate(2)),
would require a metadata flush" — on ext4 a journal commit at every flush that appends.
"""

from __future__ import annotations

import builtins
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from array import array
from pathlib import Path
from typing import Any

import pytest

from edge_recorder import sessionfile
from edge_recorder.recording.recovery import recover
from edge_recorder.recording.store import OUTBOX, RECORDING, DeviceStore
from edge_recorder.sampling.ring import Block
from edge_recorder.sessionfile import (
    ZERO_FILL_FIRST_BYTES,
    ZERO_FILL_STEP_BYTES,
    ChannelInfo,
    SessionFile,
    SessionWriter,
    encode_block,
    salvage,
    verify,
)

REPO = Path(__file__).resolve().parents[1]
MAGIC = b"\x89MCAP0\r\n"  # MCAP spec (foxglove/mcap docs/specification/README.md, "Magic")
SENSORS = [ChannelInfo("imu0", "mpu6050", 1000.0), ChannelInfo("imu1", "lsm6dsox", 833.0)]
T0 = 1_800_000_000_000_000_000


def block(first: int, n: int, rate_hz: float, rng: random.Random) -> Block:
    """``n`` samples from ``first`` on, pure noise: zstd leaves ~23 KB a flush of both
    sensors (recorded motion compresses to about a third of that)."""
    period = round(1e9 / rate_hz)
    t_ns = array("q", (T0 + (first + i) * period for i in range(n)))
    columns = tuple(array("f", (rng.gauss(0, 3) for _ in range(n))) for _ in range(6))
    return Block(first, t_ns, columns)


def record(writer: SessionWriter, flushes: int, seed: int = 1) -> list[tuple[str, int, int]]:
    """Half a second per sensor between flushes, as the recorder writes; the messages
    written as (sensor, first t_ns, samples)."""
    rng = random.Random(seed)
    written = []
    for k in range(flushes):
        for s in SENSORS:
            n = int(s.rate_hz / 2)
            b = block(k * n, n, s.rate_hz, rng)
            writer.write(s.name, b.t_ns[0], encode_block(b))
            written.append((s.name, b.t_ns[0], n))
        writer.flush()
    return written


def manifest_for(session_id: str = "20270115T000000000Z-zero") -> dict[str, Any]:
    return {"session_id": session_id, "device_id": "pi", "labels": [], "journey_id": None,
            "started_at": "2027-01-15T00:00:00Z", "stopped_at": "2027-01-15T00:00:05Z",
            "duration_s": 5.0, "stop_reason": "command", "sensors": [], "format": "mcap"}


def test_flushes_within_the_zeros_ahead_leave_the_file_size_unchanged(tmp_path):
    # fdatasync(2): a change of st_size "would require a metadata flush"; overwriting zeros
    # in place does not change it, so these flushes commit data only
    writer = SessionWriter(tmp_path / "s.mcap", SENSORS)
    fd = writer._file.fileno()  # type: ignore[union-attr]
    size = os.fstat(fd).st_size
    while not (writer._file.tell() > ZERO_FILL_STEP_BYTES  # type: ignore[union-attr]
               and os.fstat(fd).st_size != size):  # a full step was just filled
        size = os.fstat(fd).st_size
        record(writer, 1)
    sizes, ends = [], []
    for k in range(6):
        record(writer, 1, seed=k)
        sizes.append(os.fstat(fd).st_size)
        ends.append(writer._file.tell())  # type: ignore[union-attr]
    assert ends[-1] - ends[0] > 5 * 20_000, "each flush adds a chunk of ~23 KB"
    assert sizes == [sizes[0]] * 6 and sizes[0] > ends[-1], (sizes, ends)
    with open(writer.path, "rb") as f:  # past the data: zeros
        f.seek(ends[-1])
        assert f.read() == bytes(sizes[0] - ends[-1])


def test_the_zeros_ahead_grow_with_the_file_up_to_a_step(tmp_path):
    writer = SessionWriter(tmp_path / "s.mcap", SENSORS)
    fd = writer._file.fileno()  # type: ignore[union-attr]
    # a new file gets a few pages of zeros: a short session writes few
    assert os.fstat(fd).st_size <= ZERO_FILL_FIRST_BYTES + 4096
    sizes, ends = [os.fstat(fd).st_size], [writer._file.tell()]  # type: ignore[union-attr]
    for k in range(60):  # 30 s of two sensors, ~1.4 MB
        record(writer, 1, seed=k)
        sizes.append(os.fstat(fd).st_size)
        ends.append(writer._file.tell())  # type: ignore[union-attr]
    changes = sum(a != b for a, b in zip(sizes, sizes[1:], strict=False))
    assert changes <= 12, (changes, sizes)  # against 60 without the fill
    assert all(size % 4096 == 0 and size >= end for size, end in zip(sizes, ends, strict=True))
    assert max(size - end for size, end in zip(sizes, ends, strict=True)) \
        <= ZERO_FILL_STEP_BYTES + 4096


def test_finish_trims_the_fill_byte_for_byte_what_the_writer_wrote_without_it(tmp_path):
    files = []
    for step in (0, 64 << 10, ZERO_FILL_STEP_BYTES):
        writer = SessionWriter(tmp_path / f"s{step}.mcap", SENSORS, zero_fill_step_bytes=step)
        record(writer, 30)  # ~180 KB: across several 64 KiB steps
        writer.finish(manifest_for())
        files.append(writer.path)
    plain = files[0].read_bytes()
    for path in files[1:]:
        # os.pwrite left the buffered file's and mcap's position alone: every offset in
        # the index and every byte is where the writer without the fill put it
        assert path.read_bytes() == plain, path.name
    assert plain.endswith(MAGIC) and len(plain) > 64 << 10


def test_a_finished_file_ends_with_the_mcap_magic_and_nothing_after_it(tmp_path):
    writer = SessionWriter(tmp_path / "s.mcap", SENSORS)
    record(writer, 3)
    assert os.path.getsize(writer.path) > writer._file.tell()  # type: ignore[union-attr]
    writer.finish(manifest_for())
    data = writer.path.read_bytes()
    # MCAP spec: a file ends <Footer><Magic>; the footer is opcode 0x02, length 20
    assert data.endswith(MAGIC)
    assert data[-8 - 29] == 0x02 and data[-8 - 28:-8 - 20] == (20).to_bytes(8, "little")
    assert verify(writer.path) is True
    assert sum(len(b["t_ns"]) for _, b in SessionFile(writer.path).batches()) == 3 * (500 + 416)


def crashed(writer: SessionWriter) -> Path:
    """A copy of the file as a SIGKILL would leave it now: as the last write put it (the
    writer's open chunk is in its memory only, lost with the process)."""
    copy = writer.path.with_name("crashed.mcap")
    shutil.copyfile(writer.path, copy)
    writer.abort()
    return copy


def test_salvage_after_a_crash_reads_exactly_the_flushed_chunks_and_stops_at_the_zeros(
        tmp_path):
    writer = SessionWriter(tmp_path / "s.mcap", SENSORS)
    flushed = record(writer, 4)
    durable_end = writer._file.tell()  # type: ignore[union-attr]
    # written after the last flush: in the writer's open chunk only, lost in the crash
    rng = random.Random(9)
    writer.write("imu0", T0, encode_block(block(10_000, 500, 1000.0, rng)))
    path = crashed(writer)
    tail = path.read_bytes()[durable_end:]
    assert tail and tail == bytes(len(tail)), "the crash left zeros after the last flush"
    found = salvage(path)
    assert found.data_end == durable_end and found.end.startswith("zeros")
    assert [(s, t0, len(sessionfile.decode_samples(d)["t_ns"])) for s, t0, d in
            found.messages] == flushed
    assert found.samples == {"imu0": 4 * 500, "imu1": 4 * 416}
    assert found.last_t_ns_by_sensor == {"imu0": T0 + (4 * 500 - 1) * 1_000_000,
                                         "imu1": T0 + (4 * 416 - 1) * round(1e9 / 833)}


def test_salvage_does_not_read_through_megabytes_of_zeros(tmp_path, monkeypatch):
    # mcap's StreamReader reads a zero byte as opcode 0 with length 0, an unknown record it
    # skips, and goes on 9 bytes at a time to the end of the file (~1 s per 4 MiB here),
    # ending in struct.error on the last partial header; MCAP has no opcode 0 (spec,
    # "Records": 0x01-0x7F reserved for MCAP, 0x80-0xFF for extensions), so it ends the data
    writer = SessionWriter(tmp_path / "s.mcap", SENSORS)
    record(writer, 2)
    durable_end = writer._file.tell()  # type: ignore[union-attr]
    path = crashed(writer)
    os.truncate(path, 4 << 20)  # a long zero tail
    read = [0]
    real_open = builtins.open

    class Counting:
        def __init__(self, f: Any) -> None:
            self.f = f

        def read(self, n: int = -1) -> bytes:
            data = self.f.read(n)
            read[0] += len(data)
            return bytes(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    monkeypatch.setattr(sessionfile, "open", lambda *a, **k: Counting(real_open(*a, **k)),
                        raising=False)
    found = salvage(path)
    assert found.data_end == durable_end and found.samples == {"imu0": 1000, "imu1": 832}
    assert read[0] <= durable_end + 9, read[0]  # one record header of zeros, no more


def test_abort_gives_the_zeros_back_and_keeps_every_flushed_byte(tmp_path):
    writer = SessionWriter(tmp_path / "s.mcap", SENSORS)
    flushed = record(writer, 2)
    end = writer._file.tell()  # type: ignore[union-attr]
    assert os.path.getsize(writer.path) > end  # zeros ahead before the abort
    writer.abort()
    assert os.path.getsize(writer.path) == end
    found = salvage(writer.path)
    assert found.end == "the end of the file" and len(found.messages) == len(flushed)


# --- a real crash: a child process recording on the in-process rig, killed ----------------

CHILD = r"""
import json, os, signal, sys
from pathlib import Path
from edge_recorder.recording.events import StartRequested, Trigger
from edge_recorder.sessionfile import SessionWriter, decode_samples
from tests.rig import Rig

root, how = Path(sys.argv[1]), sys.argv[2]
log = os.open(root / "written.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
write, end_chunk, sync = SessionWriter.write, SessionWriter.end_chunk, SessionWriter.sync
chunks = [0]

def logged_write(self, sensor, t0_ns, data):
    t = decode_samples(data)["t_ns"]
    os.write(log, (json.dumps(["w", sensor, t0_ns, len(t), t[-1]]) + "\n").encode())
    write(self, sensor, t0_ns, data)

def aborting_end_chunk(self):  # a flush's first step (the recorder paces its steps)
    chunks[0] += 1
    if how == "abort-before-a-flush" and chunks[0] == 4:
        os.abort()  # messages written to the writer, their chunk not yet closed: lost
    end_chunk(self)

def logged_sync(self):  # a flush's last step
    sync(self)
    os.write(log, b'["flushed"]\n')

SessionWriter.write = logged_write
SessionWriter.end_chunk, SessionWriter.sync = aborting_end_chunk, logged_sync
rig = Rig(root / "rig", rate_hz=200)
rig.run(0.5)
sid = rig.ask(StartRequested, trigger=Trigger("mqtt"), duration_s=None)["session_id"]
(root / "sid").write_text(sid)
rig.run(2.37)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["sigkill-after-a-flush", "abort-before-a-flush"])
def test_a_killed_recorder_is_recovered_to_exactly_its_flushed_samples(tmp_path, how):
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), how], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                       text=True, timeout=120)
    want = -signal.SIGABRT if how.startswith("abort") else -signal.SIGKILL
    assert r.returncode == want, r.stderr
    sid = (tmp_path / "sid").read_text()
    lines = [json.loads(x) for x in (tmp_path / "written.log").read_text().splitlines()]
    last_flush = max(i for i, x in enumerate(lines) if x == ["flushed"])
    durable = [x for x in lines[:last_flush] if x[0] == "w"]
    lost = [x for x in lines[last_flush:] if x[0] == "w"]
    assert durable and (lost or how.startswith("sigkill"))
    store = DeviceStore(tmp_path / "rig" / "store", 1 << 30)
    torn = store.path(RECORDING, sid).read_bytes()
    data_end = salvage(store.path(RECORDING, sid)).data_end
    assert torn[data_end:] == bytes(len(torn) - data_end) and len(torn) > data_end, \
        "the crash left the zero fill after the last flushed chunk"
    alive_ns = store.last_alive_ns(sid)

    (manifest,) = recover(store)
    assert manifest["session_id"] == sid and manifest["stop_reason"] == "recovered"
    (sensor,) = manifest["sensors"]
    assert sensor["samples"] == sum(x[3] for x in durable)
    (gap,) = sensor["gaps"]
    # from just after the last flushed sample to the last instant the recorder was known
    # alive (or that sample, when its timestamp is later: the timebase may run ahead)
    start = max(x[4] for x in durable) + round(1e9 / 200)
    end = max(start, alive_ns)
    assert gap == {"start_ns": start, "end_ns": end, "lost": round((end - start) * 200 / 1e9),
                   "reason": "crash"}
    assert sensor["dropped"] == gap["lost"]
    # the recovered file: finished, valid, the flushed samples exactly, no zeros after it
    path = store.path(OUTBOX, sid)
    data = path.read_bytes()
    assert data.endswith(MAGIC) and verify(path) is True
    assert len(data) == manifest["bytes"]
    got = [(name, b["t_ns"][0], len(b["t_ns"]), b["t_ns"][-1])
           for name, b in SessionFile(path).batches()]
    assert got == [tuple(x[1:]) for x in durable]
