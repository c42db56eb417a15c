"""The sampling hot path: raw frames in the ring, decoded in batches when a session writes.

Drivers hand over their FIFO's bytes and a :class:`FrameLayout`; the values are decoded
only when a session writes them, once per flush. These tests hold the two decoders (plain
Python and numpy) to the same bits, the DSOX driver's C-speed check of a burst to the
word-by-word pairing it short-cuts, and the recorder to writing what it must, when it must.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_recorder.recording.events import StartRequested, StopRequested, Trigger
from edge_recorder.sampling.ring import Block
from edge_recorder.sensors import base
from edge_recorder.sensors import icm42688 as icm
from edge_recorder.sensors import lsm6ds as lsm
from edge_recorder.sensors import mpu6050 as mpu
from edge_recorder.sensors.emulation import EmulatedBus, EmulatedLsm6dsox
from edge_recorder.sensors.lsm6ds import Lsm6ds
from edge_recorder.sessionfile import iter_batches
from tests.rig import FakeClock, Rig, stored

np = pytest.importorskip("numpy")

MQTT = Trigger("mqtt", "test")

LAYOUTS = {
    "mpu6050": mpu.frame_layout(mpu.MPU6050, 4, 500),
    "mpu9250": mpu.frame_layout(mpu.MPU6500_FAMILY, 16, 2000),
    "icm42688": icm.frame_layout(2, 250),
    **{f"lsm-{k}": v for k, v in lsm.frame_layouts(8, 125).items()},
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_both_decoders_give_the_same_bits(name: str, data: st.DataObject) -> None:
    layout = LAYOUTS[name]
    frames = data.draw(st.integers(0, 80))
    raw = bytearray(data.draw(st.binary(min_size=frames * layout.frame_bytes,
                                        max_size=frames * layout.frame_bytes)))
    if name == "icm42688" and frames:  # the chip's "invalid temperature" (int8 -128)
        raw[13] = 0x80
    python = layout.decode_python(bytes(raw))
    numpy = layout.decode_numpy(bytes(raw))
    assert [c.tobytes() for c in python] == [c.tobytes() for c in numpy]
    assert all(len(c) == frames for c in python)


def test_the_icm_invalid_temperature_decodes_to_nan_both_ways() -> None:
    packet = bytes([0x68]) + struct.pack(">3h3hbH", 0, 0, 8192, 0, 0, 0, icm.INVALID_TEMP, 0)
    for decode in (LAYOUTS["icm42688"].decode_python, LAYOUTS["icm42688"].decode_numpy):
        temp = decode(packet * 2)[6]
        assert all(t != t for t in temp)  # NaN


def started_dsox() -> Lsm6ds:
    clock = FakeClock()
    bus = EmulatedBus({0x6A: EmulatedLsm6dsox(clock=clock)}, clock=clock)
    driver = Lsm6ds(bus, 0x6A, rate_hz=833, accel_range_g=2, gyro_range_dps=250,
                    sleep=clock.advance)
    driver.start()
    return driver


def word(kind: str, counter: int, x: int, rng: random.Random) -> bytes:
    tag = {"G": lsm.TAG_GYRO, "A": lsm.TAG_ACCEL, "T": 0x03}[kind]  # 0x03: temperature
    return bytes([tag << 3 | counter << 1]) + struct.pack("<3h", x, rng.randint(-3000, 3000),
                                                           rng.randint(-3000, 3000))


@st.composite
def tagged_bursts(draw: st.DrawFn) -> list[bytes]:
    """Bursts of DSOX words: mostly whole pairs (so the fast path runs), with the faults
    the chip has — a lost word, a foreign word, a bootstrap sample, a burst ending
    mid-pair — drawn in."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    words: list[bytes] = []
    counter = 0
    for _ in range(draw(st.integers(1, 60))):
        order = draw(st.sampled_from(["GA", "AG"]))
        fault = draw(st.sampled_from(["none"] * 6 + ["lose", "foreign", "bootstrap"]))
        pair = [word(k, counter, rng.randint(-3000, 3000), rng) for k in order]
        if fault == "lose":
            del pair[draw(st.integers(0, 1))]
        elif fault == "foreign":
            pair.insert(1, word("T", counter, 25, rng))
        elif fault == "bootstrap":
            pair[0] = word(order[0], counter, draw(st.sampled_from([0x7FFD, 0x7FFE, 0x7FFF])),
                           rng)
        words += pair
        counter = (counter + 1) % 4
    cuts = sorted(draw(st.lists(st.integers(0, len(words)), max_size=6)))
    return [b"".join(words[a:b]) for a, b in zip([0, *cuts], [*cuts, len(words)])]


@settings(max_examples=150, deadline=None)
@given(bursts=tagged_bursts())
def test_the_dsox_fast_check_agrees_with_pairing_word_by_word(bursts: list[bytes]) -> None:
    # Linux st_lsm6dsx_buffer.c st_lsm6dsx_read_tagged_fifo() pairs words by tag; the
    # word-by-word path does the same, and the fast path must give what it would have
    fast, slow = started_dsox(), started_dsox()
    for burst in bursts:
        a, b = fast.tagged_words(burst), slow._read_tagged_word_by_word(burst)
        assert (a.frames, a.lost_frames) == (b.frames, b.lost_frames)
        assert [list(c) for c in a.columns] == [list(c) for c in b.columns]
        assert fast._pending == slow._pending and fast._last_cnt == slow._last_cnt


def test_a_regular_dsox_burst_is_not_paired_word_by_word(monkeypatch) -> None:
    driver = started_dsox()
    monkeypatch.setattr(driver, "_read_tagged_word_by_word",
                        lambda data: pytest.fail("took the slow path"))
    rng = random.Random(1)
    for order in ("GA", "AG"):
        burst = b"".join(word(k, c % 4, 100 * c, rng) for c in range(20) for k in order)
        read = driver.tagged_words(burst)
        assert read.frames == 20 and read.lost_frames == 0
        assert [round(v / (0.061e-3 * base.STANDARD_GRAVITY_MPS2)) for v in read.columns[0]] \
            == [100 * c for c in range(20)]  # ax: 0.061 mg/LSB at ±2 g (Linux
        # st_lsm6dsx_core.c st_lsm6dsx_sensor_settings: fs_avl[0] = { IIO_G_TO_M_S_2(61000), 0x0 })


def test_blocks_of_different_layouts_join_into_the_right_columns() -> None:
    rng = random.Random(2)
    ga = b"".join(word(k, 0, 10, rng) for k in "GA") * 3
    ag = b"".join(word(k, 0, 20, rng) for k in "AG") * 2
    from array import array
    layouts = lsm.frame_layouts(2, 250)
    first = Block(0, array("q", [1, 2, 3]), raw=ga, layout=layouts["GA"])
    second = Block(3, array("q", [4, 5]), raw=ag, layout=layouts["AG"])
    joined = Block.join([first, second])
    assert list(joined.t_ns) == [1, 2, 3, 4, 5]
    assert [list(c) for c in joined.columns] == [
        list(a) + list(b) for a, b in zip(first.columns, second.columns)]
    assert [round(v / layouts["GA"].channels[0].scale) for v in joined.columns[0]] == \
        [10, 10, 10, 20, 20]  # ax whichever word came first


class DecodeCount:
    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        for name in ("decode_python", "decode_numpy"):
            real = getattr(base.FrameLayout, name)

            def counted(layout, raw, real=real):
                self.calls += 1
                return real(layout, raw)
            monkeypatch.setattr(base.FrameLayout, name, counted)


def test_no_sample_is_decoded_while_no_session_records(tmp_path, monkeypatch) -> None:
    rig = Rig(tmp_path, rate_hz=1000, poll_s=None)
    count = DecodeCount(monkeypatch)
    rig.run(3.0)  # ~130 polls of the MPU's FIFO
    assert rig.channel.counters.samples >= 2900
    assert count.calls == 0
    rig.recorder.handle(StartRequested(MQTT))
    rig.run(3.0)
    # one decode per flush (every 0.5 s), not one per poll
    assert 5 <= count.calls <= 8, count.calls


def test_a_session_is_written_once_per_flush_and_whole(tmp_path) -> None:
    rig = Rig(tmp_path, rate_hz=1000, poll_s=None)
    rig.run(1.0)
    replies: list = []
    rig.recorder.handle(StartRequested(MQTT, duration_s=3.0, reply=replies.append))
    rig.finish(4.5)
    manifest, path = stored(rig, replies[0].to_dict()["session_id"])
    batches = [b for _, b in iter_batches(path)]
    assert 5 <= len(batches) <= 8  # a message per 0.5 s flush, not per 0.1 s pump (30)
    assert sum(len(b["t_ns"]) for b in batches) == manifest["sensors"][0]["samples"]
    assert manifest["sensors"][0]["samples"] == pytest.approx(3000, abs=2)
    assert manifest["sensors"][0]["dropped"] == 0


def test_a_ring_shorter_than_a_flush_is_written_before_it_evicts(tmp_path) -> None:
    rig = Rig(tmp_path, rate_hz=1000, poll_s=None, buffer_s=0.3)
    rig.run(1.0)
    replies: list = []
    rig.recorder.handle(StartRequested(MQTT, duration_s=3.0, reply=replies.append))
    rig.finish(4.5)
    manifest, _ = stored(rig, replies[0].to_dict()["session_id"])
    assert manifest["sensors"][0]["samples"] == pytest.approx(3000, abs=2)
    assert manifest["sensors"][0]["dropped"] == 0


def test_stop_requested_still_finalises(tmp_path) -> None:
    rig = Rig(tmp_path, rate_hz=1000, poll_s=None)
    replies: list = []
    rig.recorder.handle(StartRequested(MQTT, reply=replies.append))
    rig.run(1.2)
    rig.recorder.handle(StopRequested(MQTT))
    rig.finish(1.5)
    manifest, _ = stored(rig, replies[0].to_dict()["session_id"])
    assert manifest["sensors"][0]["samples"] == pytest.approx(1200, abs=30)


@settings(max_examples=200, deadline=None)
@given(t0=st.integers(0, 2**60), step=st.integers(1, 10**8), n=st.integers(0, 50),
       start=st.integers(-5, 55), cut_lo=st.integers(-2, 60), cut_hi=st.integers(-2, 60),
       offset=st.integers(-(2**40), 2**40))
def test_evenly_spaced_times_slice_as_listed_ones(t0, step, n, start, cut_lo, cut_hi,
                                                  offset) -> None:
    from array import array

    layout = LAYOUTS["mpu6050"]
    raw = bytes(range(256)) * (n * layout.frame_bytes // 256 + 1)
    raw = raw[:n * layout.frame_bytes]
    listed = array("q", [t0 + i * step for i in range(n)])
    even = Block(100, raw=raw, layout=layout, segments=((t0, step, n),))
    explicit = Block(100, listed, raw=raw, layout=layout)
    start_ns, stop_ns = t0 + cut_lo * step - 1, t0 + cut_hi * step
    a = even.slice(100 + start, start_ns, stop_ns)
    b = explicit.slice(100 + start, start_ns, stop_ns)
    assert (a.first_seq, list(a.t_ns), a.raw) == (b.first_seq, list(b.t_ns), b.raw)
    was = base.numpy_in_use() is not None
    try:
        for use in (True, False):
            base.use_numpy(use)
            assert list(even.times(offset)) == [t + offset for t in listed]
    finally:
        base.use_numpy(was)
    other = Block(100 + n, raw=raw, layout=layout, segments=((t0 + 7, step + 1, n),))
    expected = [t + offset for t in listed] + [t0 + 7 + i * (step + 1) + offset for i in range(n)]
    was = base.numpy_in_use() is not None
    try:
        for use in (True, False):
            base.use_numpy(use)
            assert list(Block.join([even, even]).times(offset)) == [t + offset for t in listed] * 2
            assert list(Block.join([even, other]).times(offset)) == expected
    finally:
        base.use_numpy(was)


def test_chunks_are_compressed_as_one_fresh_context_would() -> None:
    import threading

    import mcap.writer
    import zstandard

    import edge_recorder.sessionfile  # installs the kept context

    rng = random.Random(3)
    chunks = [bytes(rng.getrandbits(8) for _ in range(n)) + b"\x00" * n for n in (0, 7, 5000)]
    got: list[bytes] = []
    worker = threading.Thread(target=lambda: got.extend(
        mcap.writer.zstandard.compress(c) for c in chunks))
    worker.start()
    worker.join()
    level = edge_recorder.sessionfile.CHUNK_ZSTD_LEVEL
    assert got == [zstandard.compress(c, level) for c in chunks]
    assert [zstandard.decompress(c) for c in got] == chunks
    assert [mcap.writer.zstandard.compress(c) for c in chunks] == got
    assert mcap.writer.zstandard.ZstdDecompressor is zstandard.ZstdDecompressor


def test_a_deep_fifo_beside_a_shallow_one_is_read_at_its_own_pace() -> None:
    """MPU-6050 (1 KiB FIFO: 73 ms at 1 kHz) and ICM-42688-P (2 KiB: 128 ms) on one bus: the
    bus ticks at the MPU's third (24 ms); the ICM is read every other tick, and nothing is
    lost. FIFO sizes: Linux inv_mpu6050 (hw->fifo_size 1024), inv_icm42600 (2048)."""
    from edge_recorder.sampling.ring import SampleRing
    from edge_recorder.sampling.sampler import BusSampler, SensorChannel
    from edge_recorder.sensors.emulation import EmulatedIcm42688, EmulatedMpu6050
    from edge_recorder.sensors.icm42688 import Icm42688
    from edge_recorder.sensors.mpu6050 import Mpu6050

    clock = FakeClock()
    mpu_chip, icm_chip = EmulatedMpu6050(clock=clock), EmulatedIcm42688(clock=clock)
    bus = EmulatedBus({0x68: mpu_chip, 0x69: icm_chip}, clock=clock,
                      wait_until=clock.advance_to)
    reads = {0x68: 0, 0x69: 0}
    real_read = bus.read

    def counting_read(address: int, register: int, length: int) -> bytes:
        if length > 16:  # a FIFO burst
            reads[address] += 1
        return real_read(address, register, length)

    bus.read = counting_read  # type: ignore[method-assign]
    channels = [SensorChannel(name, cls(bus, address, rate_hz=1000, accel_range_g=4,
                                        gyro_range_dps=500, sleep=clock.advance),
                              SampleRing(20_000))
                for name, cls, address in (("mpu", Mpu6050, 0x68), ("icm", Icm42688, 0x69))]
    sampler = BusSampler("emulated", channels, clock=clock)
    sampler.poll_once()  # brings both up
    assert sampler.interval_s == pytest.approx(1024 // 14 / 1000 / 3)
    sampler.poll_once()  # start-up's resets (100 ms) overflowed the MPU's FIFO: drained now
    start = [(c.counters.samples, c.counters.dropped) for c in channels]
    reads.update({0x68: 0, 0x69: 0})
    t0 = next_tick = clock.now
    for _ in range(120):  # ~2.9 s on the sampler's fixed grid (bus time is part of a tick)
        next_tick = max(next_tick + int(sampler.interval_s * 1e9), clock.now)
        clock.advance_to(next_tick)
        sampler.poll_once()
    assert reads[0x68] >= 115 and 55 <= reads[0x69] <= 65  # every tick / every other tick
    for c, (samples, dropped) in zip(channels, start):
        got = c.counters.samples - samples
        assert got == pytest.approx((clock.now - t0) / 1e6, abs=130)  # within one FIFO
        assert c.counters.dropped == dropped


def test_a_broken_numpy_falls_back_to_plain_python(monkeypatch, caplog) -> None:
    def broken() -> object:
        raise RuntimeError("illegal instruction in a wheel for another CPU")

    was = base.numpy_in_use() is not None
    monkeypatch.setattr(base, "_import_numpy", broken)
    try:
        assert base.use_numpy() is False and base.numpy_in_use() is None
        assert "RuntimeError: illegal instruction" in caplog.text
        layout = LAYOUTS["mpu6050"]
        assert len(layout.decode(bytes(layout.frame_bytes * 3))[0]) == 3
    finally:
        monkeypatch.undo()
        base.use_numpy(was)
