"""A collector store filled with synthetic sessions, for tests, benchmarks, demos and screenshots.

Every session is written by the real :class:`~edge_recorder.sessionfile.SessionWriter` (one
message per sensor per 0.1 s, as the recorder pumps) and handed to the real
:class:`~edge_recorder.collector.collector.CollectorStore` as parts and a manifest, exactly as
the collector receives them — so the store, its layout and its index are the product's own.
The signal is a walk-like oscillation with noise; a few sessions carry a gap with its lost
samples counted in the manifest, as the recorder counts them.

    python -m edge_recorder.storefill DIR [--sessions 1000] [--hour]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import tempfile
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_recorder.collector.collector import CollectorStore
from edge_recorder.recording.ids import iso_utc, new_session_id
from edge_recorder.sampling.ring import Block
from edge_recorder.sessionfile import ChannelInfo, SessionWriter, encode_block

LABELS = ("walk", "run", "stairs", "bench-test", "login", "drop", "idle")
DEVICES = tuple(f"pi-{n:02d}" for n in range(1, 9))
STOP_REASONS = ("duration", "duration", "duration", "command", "button", "max_duration")
PUMP_S = 0.1  # the recorder writes one message per sensor per pump
FLUSH_S = 0.5  # and closes a chunk (flush + fsync) this often
G = 9.80665
PART_BYTES = 1 << 20


@dataclass(frozen=True)
class SensorSpec:
    name: str
    driver: str
    rate_hz: float
    has_temp: bool


SENSORS = (SensorSpec("imu0", "mpu6050", 100, True), SensorSpec("imu1", "lsm6dsox", 100, False))


def _columns(t_s: list[float], seed: float, has_temp: bool, rng: random.Random
             ) -> tuple[array[float], ...]:
    """Accel (m/s²), gyro (rad/s) and temperature (°C) of someone walking at ~1.8 steps/s."""
    step = 2 * math.pi * 1.8
    cols: list[array[float]] = [array("f") for _ in range(7 if has_temp else 6)]
    for t in t_s:
        phase = step * t + seed
        values = (0.8 * math.sin(phase), 0.4 * math.sin(phase / 2), G + 2.5 * math.sin(2 * phase),
                  0.3 * math.sin(phase + 1), 0.6 * math.cos(phase / 2), 0.2 * math.sin(phase))
        for col, v in zip(cols, values, strict=False):
            col.append(v + rng.gauss(0, 0.05))
        if has_temp:
            cols[6].append(31.5 + 0.002 * t)
    return tuple(cols)


def _blocks(start_ns: int, duration_s: float, spec: SensorSpec, rng: random.Random,
            gap: tuple[int, int] | None) -> Iterator[Block]:
    """One block per pump; samples inside ``gap`` (ns, ns) are missing."""
    period_ns = round(1e9 / spec.rate_hz)
    total = int(duration_s * spec.rate_hz)
    per_block = max(1, int(PUMP_S * spec.rate_hz))
    seed = rng.uniform(0, 2 * math.pi)
    for first in range(0, total, per_block):
        seqs = range(first, min(total, first + per_block))
        t_ns = [start_ns + i * period_ns for i in seqs]
        if gap is not None:
            t_ns = [t for t in t_ns if not gap[0] <= t < gap[1]]
        if not t_ns:
            continue
        cols = _columns([(t - start_ns) / 1e9 for t in t_ns], seed, spec.has_temp, rng)
        yield Block(first, array("q", t_ns), cols)


def write_session(store: CollectorStore, *, device: str, started_ns: int, duration_s: float,
                  labels: list[str], journey: str | None, stop_reason: str = "duration",
                  sensors: tuple[SensorSpec, ...] = SENSORS, gap_s: tuple[float, float] | None
                  = None, pre_trigger_s: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """Record one synthetic session and store it as the collector would; return its manifest.

    ``gap_s`` = (offset, length) in seconds: samples missing from every sensor, counted as
    dropped and listed as a gap, as the recorder does for a bus outage.
    """
    rng = random.Random(seed)
    session_id = new_session_id(started_ns)
    stop_ns = started_ns + round(duration_s * 1e9)
    gap = None if gap_s is None else (started_ns + round(gap_s[0] * 1e9),
                                      started_ns + round((gap_s[0] + gap_s[1]) * 1e9))
    with tempfile.TemporaryDirectory(prefix="storefill-") as tmp:
        path = Path(tmp) / f"{session_id}.mcap"
        writer = SessionWriter(path, [ChannelInfo(s.name, s.driver, s.rate_hz) for s in sensors])
        written = {s.name: 0 for s in sensors}
        streams = {s.name: _blocks(started_ns, duration_s, s, rng, gap) for s in sensors}
        pumps = 0
        while streams:
            pumps += 1
            if pumps % round(FLUSH_S / PUMP_S) == 0:
                writer.flush()
            for name in list(streams):
                block = next(streams[name], None)
                if block is None:
                    del streams[name]
                    continue
                writer.write(name, block.t_ns[0], encode_block(block))
                written[name] += len(block)
        sensors_doc = []
        for s in sensors:
            expected = int(duration_s * s.rate_hz)
            lost = expected - written[s.name]
            gaps = [] if gap is None else [{"start_ns": gap[0], "end_ns": gap[1], "lost": lost,
                                            "reason": "bus_error"}]
            sensors_doc.append({"name": s.name, "driver": s.driver, "rate_hz": s.rate_hz,
                                "samples": written[s.name], "dropped": lost, "gaps": gaps})
        manifest: dict[str, Any] = {
            "session_id": session_id, "device_id": device, "labels": labels,
            "journey_id": journey, "started_at": iso_utc(started_ns),
            "stopped_at": iso_utc(stop_ns), "duration_s": round(duration_s, 6),
            "stop_reason": stop_reason,
            "trigger": {"source": "mqtt", "detail": "storefill"},
            "pre_trigger_s": pre_trigger_s, "sensors": sensors_doc, "format": "mcap",
            "recorder_version": "storefill",
        }
        writer.finish(manifest)
        data = path.read_bytes()
    parts = [data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)]
    manifest.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), parts=len(parts))
    for n, part in enumerate(parts):
        store.add_part(device, session_id, n, part)
    store.add_manifest(device, session_id, json.dumps(manifest).encode())
    return manifest


def fill(root: Path, sessions: int, *, seed: int = 1, end_ns: int | None = None,
         rate_hz: float = 100) -> list[dict[str, Any]]:
    """``sessions`` short sessions from :data:`DEVICES` over the week before ``end_ns``.

    Sessions come in journeys of 2-6 consecutive sessions of one device; every 25th has a
    gap. Returns the manifests in the order written.
    """
    rng = random.Random(seed)
    end_ns = time.time_ns() if end_ns is None else end_ns
    store = CollectorStore(root)
    sensors = tuple(SensorSpec(s.name, s.driver, rate_hz, s.has_temp) for s in SENSORS)
    out: list[dict[str, Any]] = []
    try:
        t_ns = end_ns - 7 * 86400 * 10**9
        step_ns = (end_ns - t_ns) // max(1, sessions)
        while len(out) < sessions:
            device = rng.choice(DEVICES)
            journey = f"{device}-trip-{len(out):05d}" if rng.random() < 0.8 else None
            for _ in range(min(rng.randint(2, 6), sessions - len(out))):
                duration_s = rng.choice((2.0, 3.0, 5.0, 8.0))
                labels = rng.sample(LABELS, rng.choice((1, 1, 2, 3)))
                gap = (duration_s / 3, 0.5) if len(out) % 25 == 7 else None
                out.append(write_session(store, device=device, started_ns=t_ns,
                                         duration_s=duration_s, labels=labels, journey=journey,
                                         stop_reason=rng.choice(STOP_REASONS), sensors=sensors,
                                         gap_s=gap, pre_trigger_s=rng.choice((0.0, 0.5, 1.0)),
                                         seed=rng.randrange(1 << 30)))
                t_ns += step_ns
    finally:
        store.index.close()
    return out


def fill_hour(root: Path, *, rate_hz: float = 1000, duration_s: float = 3600,
              started_ns: int | None = None) -> dict[str, Any]:
    """One long session at ``rate_hz`` on two sensors (default: 1 hour at 1 kHz)."""
    store = CollectorStore(root)
    sensors = tuple(SensorSpec(s.name, s.driver, rate_hz, s.has_temp) for s in SENSORS)
    started_ns = time.time_ns() - round(duration_s * 1e9) if started_ns is None else started_ns
    try:
        return write_session(store, device="pi-long", started_ns=started_ns,
                             duration_s=duration_s, labels=["soak", "walk"],
                             journey="pi-long-soak", stop_reason="duration", sensors=sensors,
                             gap_s=(duration_s / 2, 2.0), pre_trigger_s=1.0, seed=7)
    finally:
        store.index.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m edge_recorder.storefill", description=__doc__)
    p.add_argument("store", type=Path)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--hour", action="store_true", help="add one 1-hour 2 × 1 kHz session")
    args = p.parse_args()
    t0 = time.monotonic()
    fill(args.store, args.sessions)
    if args.hour:
        fill_hour(args.store)
    print(f"{args.store}: {args.sessions} session(s){' + 1 hour' if args.hour else ''} in "
          f"{time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
