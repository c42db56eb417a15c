"""Two checkouts of the daemon under the same CPU quota, in alternating sessions.

A host's speed moves by tens of percent within an hour (a quota counts the time the host
takes from a VM as used), so two versions are compared session by session, alternating
which goes first: each session is the CPU-budget section's step (a fresh daemon with 2 ×
1 kHz emulated sensors, moved into a cgroup quota with a 40 ms period, one session started
by MQTT). Prints per session: dropped, accounted (samples + dropped over rate × duration),
the samples in its file stamped outside its window (``[started_at, stopped_at)``: none
belong there), the start command's reply time, when the manifest arrived, and the time
throttled; then a summary per checkout. Needs root and a writable cgroup cpu controller,
like section 9.

    .venv/bin/python -m benchmarks.paired_quota PCT PAIRS CHECKOUT [CHECKOUT ...]

e.g. ``... paired_quota 3 4 . /tmp/edge-recorder-afc5df7`` (a ``git worktree`` of another
commit). Each checkout's daemon runs from its own tree with this interpreter.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import run as bench
from edge_recorder.devtools import Broker, CpuQuota, wait_until
from edge_recorder.recording.restamp import iso_ns
from edge_recorder.sessionfile import iter_batches

SESSION_S = 10


def one_session(tmp: Path, port: int, checkout: Path, pct: float, name: str) -> dict[str, float]:
    bench.REPO = checkout  # start_daemon runs ``python -m edge_recorder`` from there
    proc, sub = bench.start_daemon(tmp, port, name)
    with CpuQuota(bench.QUOTA_PERIOD_US) as quota:
        try:
            quota.add(proc.pid)
            quota.set_share(pct / 100)
            time.sleep(2.0)  # the daemon follows the quota within a second
            t0 = time.monotonic()
            started = bench.command(sub, port, {"cmd": "start", "duration_s": SESSION_S},
                                    bench.REPLY_UNDER_QUOTA_S)
            reply_s = time.monotonic() - t0
            topic = f"edge-recorder/bench/sessions/{started['session_id']}/manifest"
            wait_until(lambda: topic in sub.got, 300, "the manifest", 0.05)
            done_s = time.monotonic() - t0
            throttled_s = quota.throttled_us() / 1e6
        finally:
            quota.set_share(None)
            bench.stop_daemon(proc, sub)
    manifest = json.loads(sub.payloads[topic])
    sensors = manifest["sensors"]
    expected = sum(s["rate_hz"] for s in sensors) * manifest["duration_s"]
    (path,) = (tmp / name).rglob(f"{started['session_id']}.mcap")
    return {"dropped": sum(s["dropped"] for s in sensors),
            "accounted": sum(s["samples"] + s["dropped"] for s in sensors) / expected,
            "outside": outside_window(path, manifest),
            "reply_s": reply_s, "done_s": done_s, "throttled_s": throttled_s}


def outside_window(path: Path, manifest: dict[str, Any]) -> int:
    """Samples in the session file stamped before ``started_at`` or at/after ``stopped_at``."""
    begin, end = iso_ns(manifest["started_at"]), iso_ns(manifest["stopped_at"])
    outside = 0
    for _sensor, batch in iter_batches(path):
        outside += sum(1 for t in batch["t_ns"] if t < begin or t >= end)
    return outside


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m benchmarks.paired_quota PCT PAIRS CHECKOUT [CHECKOUT ...]",
              file=sys.stderr)
        return 2
    why = CpuQuota.unavailable()
    if why:
        print(f"skipped: {why}", file=sys.stderr)
        return 2
    pct, pairs = float(argv[0]), int(argv[1])
    checkouts = [Path(c).resolve() for c in argv[2:]]
    tmp = Path(tempfile.mkdtemp())
    broker = Broker(tmp / "broker")
    broker.start()
    results: dict[Path, list[dict[str, float]]] = {c: [] for c in checkouts}
    try:
        for pair in range(pairs):
            for checkout in checkouts if pair % 2 == 0 else checkouts[::-1]:
                r = one_session(tmp, broker.port, checkout, pct, f"p{pair}-{checkout.name}")
                results[checkout].append(r)
                print(f"pair {pair} {checkout}: dropped {r['dropped']}, accounted "
                      f"{r['accounted']:.2%}, {r['outside']} outside the window, start reply "
                      f"{r['reply_s']:.2f} s, manifest after {r['done_s']:.1f} s, throttled "
                      f"{r['throttled_s']:.1f} s",
                      flush=True)
    finally:
        broker.stop()
    for checkout, rows in results.items():
        accounted = ", ".join(f"{r['accounted']:.2%}" for r in rows)
        replies = ", ".join(f"{r['reply_s']:.1f}" for r in rows)
        outside = sum(r["outside"] for r in rows)
        print(f"{checkout}: {sum(r['dropped'] == 0 for r in rows)} of {len(rows)} drop-free; "
              f"accounted {accounted}; {outside} samples outside their window; start replies "
              f"{replies} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
