"""Receiving-side data benchmark: a long session into pandas and out as CSV.

``python -m benchmarks.data [--minutes 60] [--rate-hz 1000]`` writes a session file shaped
like the recorder's (one message per 0.1 s pump, a chunk closed every 0.5 s, one sensor
with temperature), then measures, each in a fresh process so peak memory is its own:

- ``edge_recorder.load_session`` (ours) against the ``mcap-ros2-support`` route a user
  would write without our code (decode every message, collect columns, build a DataFrame):
  wall time and peak RSS, and our peak over the decoded DataFrame's size;
- ``edge-recorder export --format csv`` (streaming): wall time and peak RSS.

Prints a markdown table (or writes it with ``--table``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

SAMPLES_PER_MESSAGE_S = 0.1  # the recorder's pump interval
FLUSH_EVERY_MESSAGES = 5  # a chunk closed every 0.5 s, as the recorder does


def make_session(path: Path, minutes: float, rate_hz: float) -> int:
    """A finished session file of ``minutes`` at ``rate_hz``; returns the samples."""
    import random

    from edge_recorder.sampling.ring import Block
    from edge_recorder.sessionfile import ChannelInfo, SessionWriter, encode_block

    rng = random.Random(1)
    t0 = 1_800_000_000_000_000_000
    step_ns = int(1e9 / rate_hz)
    per_message = max(1, int(rate_hz * SAMPLES_PER_MESSAGE_S))
    total = int(minutes * 60 * rate_hz)
    noise = [rng.gauss(0, 0.02) for _ in range(4096)]
    writer = SessionWriter(path, [ChannelInfo("imu0", "mpu6050", rate_hz)])
    written = 0
    messages = 0
    while written < total:
        n = min(per_message, total - written)
        t = array("q", range(t0 + written * step_ns, t0 + (written + n) * step_ns, step_ns))
        base = written % 4000
        cols = tuple(array("f", [offset + noise[(base + i * 7 + k) % 4096] for i in range(n)])
                     for k, offset in enumerate((0.0, 0.0, 9.80665, 0.0, 0.0, 0.0, 25.0)))
        writer.write("imu0", t[0], encode_block(Block(written, t, cols)))
        written += n
        messages += 1
        if messages % FLUSH_EVERY_MESSAGES == 0:
            writer._writer.flush()  # close the chunk, as flush() does, without an fsync each
    end_ns = t0 + total * step_ns
    writer.finish({
        "session_id": "20270115T080000000Z-bench00000", "device_id": "bench", "labels": ["bench"],
        "journey_id": "j-bench", "started_at": "2027-01-15T08:00:00.000000Z",
        "stopped_at": "2027-01-15T09:00:00.000000Z", "duration_s": (end_ns - t0) / 1e9,
        "stop_reason": "duration", "trigger": {"source": "mqtt", "detail": ""},
        "pre_trigger_s": 0.0, "format": "mcap",
        "sensors": [{"name": "imu0", "driver": "mpu6050", "rate_hz": rate_hz, "samples": total,
                     "dropped": 0, "gaps": []}]})
    return total


OURS = """
import resource, sys, time
import edge_recorder, pandas  # imports first: their memory is not the load's
from edge_recorder.query import frames  # noqa
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
df = edge_recorder.load_session(sys.argv[1])
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(df), dt, base, peak, int(df.memory_usage(deep=True).sum()))
"""

MCAP_ROS2 = """
import resource, sys, time
import pandas as pd
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
cols = {k: [] for k in ("t_ns", "ax", "ay", "az", "gx", "gy", "gz", "temp_c")}
sensor = []
with open(sys.argv[1], "rb") as f:
    reader = make_reader(f, decoder_factories=[DecoderFactory()])
    for _s, channel, _m, msg in reader.iter_decoded_messages():
        for k, v in cols.items():
            v.extend(getattr(msg, k))
        sensor.extend([channel.topic] * len(msg.t_ns))
df = pd.DataFrame({"sensor": sensor, **cols})
df["time"] = pd.to_datetime(df["t_ns"], unit="ns", utc=True)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(df), dt, base, peak, int(df.memory_usage(deep=True).sum()))
"""


def run_script(script: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True, check=True).stdout.split()
    rows, seconds, base_kb, peak_kb, frame_bytes = out
    return {"rows": int(rows), "s": float(seconds), "base_mb": int(base_kb) / 1024,
            "peak_mb": int(peak_kb) / 1024, "frame_mb": int(frame_bytes) / 2**20}


def run_export(path: Path, out: Path) -> dict[str, float]:
    """``edge-recorder export`` as its own process; peak RSS from wait4's rusage."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edge_recorder", "export", str(path),
                             "--format", "csv", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "export failed")
    return {"s": seconds, "peak_mb": usage.ru_maxrss / 1024,
            "bytes_mb": out.stat().st_size / 2**20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60, help="session length (default 60)")
    p.add_argument("--rate-hz", type=float, default=1000, help="sample rate (default 1000)")
    p.add_argument("--skip-baseline", action="store_true",
                   help="leave out the (slow) mcap-ros2-support route")
    p.add_argument("--table", type=Path, help="write the markdown table here too")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        path = Path(tmp) / "session.mcap"
        t = time.perf_counter()
        samples = make_session(path, args.minutes, args.rate_hz)
        made_s = time.perf_counter() - t
        size_mb = path.stat().st_size / 2**20
        ours = run_script(OURS, path)
        theirs = None if args.skip_baseline else run_script(MCAP_ROS2, path)
        csv = run_export(path, Path(tmp) / "out.csv")
    lines = [
        f"Session: {args.minutes:g} min at {args.rate_hz:g} Hz, one sensor with temperature: "
        f"{samples:,} samples, {size_mb:.0f} MB file (made in {made_s:.0f} s). "
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| what | ours | baseline | ratio |",
        "|---|---|---|---|",
    ]

    def cmp(label: str, a: float, b: float | None, unit: str) -> str:
        if b is None:
            return f"| {label} | {a:.1f} {unit} | (skipped) | |"
        return f"| {label} | {a:.1f} {unit} | {b:.1f} {unit} | {b / a:.1f}× less |"

    base = theirs
    lines.append(cmp("load_session vs mcap-ros2-support → DataFrame: time", ours["s"],
                     base["s"] if base else None, "s"))
    lines.append(cmp("… peak RSS (whole process)", ours["peak_mb"],
                     base["peak_mb"] if base else None, "MB"))
    lines.append(cmp("… peak RSS above the imports", ours["peak_mb"] - ours["base_mb"],
                     base["peak_mb"] - base["base_mb"] if base else None, "MB"))
    lines.append(f"| load_session: memory over the decoded DataFrame ({ours['frame_mb']:.0f} MB) "
                 f"| {(ours['peak_mb'] - ours['base_mb']) / ours['frame_mb']:.2f}× | target "
                 f"≤ 2× | |")
    lines.append(f"| export --format csv ({csv['bytes_mb']:.0f} MB written): peak RSS "
                 f"| {csv['peak_mb']:.0f} MB | target < 150 MB | time {csv['s']:.0f} s |")
    text = "\n".join(lines)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    return 0




if __name__ == "__main__":
    sys.exit(main())
