"""Chaos run: a device recording a session every second while the broker, the collector
(and, if asked, the daemon itself) are SIGKILLed at random moments. Then the device is
restarted once (without its interval trigger, so nothing new is recorded) and given time
to settle. Every session recorded on the device must be stored exactly once at the
collector, intact.

    .venv/bin/python -m benchmarks.run --chaos 30                    # persistence on
    .venv/bin/python -m benchmarks.run --chaos 30 --broker-persistence off

Used by ``benchmarks/run.py`` (the figures) and ``tests/test_chaos.py`` (a short run that
must lose nothing). Real processes throughout: Mosquitto, ``edge-recorder run`` and
``edge-recorder collect``.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_recorder.devtools import Broker

REPO = Path(__file__).resolve().parent.parent
DEVICE = "chaos-pi"
STATES = ("recording", "outbox", "published", "stored", "failed")


@dataclass
class ChaosResult:
    """What a chaos run left behind, counted from the files on both sides."""

    seconds: float
    broker_kills: int
    collector_kills: int
    daemon_kills: int
    persistence: bool
    recorded: int = 0  # sessions on the device at the end (any state)
    stored: int = 0  # of those, stored at the collector with the device's sha256
    duplicated: int = 0  # sessions stored more than once at the collector (same content)
    lost: int = 0  # recorded on the device, not (intact) at the collector
    corrupt: int = 0  # at the collector, but its file does not match its sha256
    awaiting: int = 0  # still not confirmed on the device when the settle time ran out
    failed: int = 0  # quarantined on the device
    resends: int = 0  # receipt timeouts that published a session again
    recovered: int = 0  # sessions closed by recovery after a daemon kill
    recovered_with_crash_gap: int = 0  # ... listing every sensor with a ``crash`` gap
    settle_s: float = 0.0
    lost_ids: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"recorded {self.recorded} / stored {self.stored} / duplicated "
                f"{self.duplicated} / lost {self.lost} (corrupt {self.corrupt}, awaiting "
                f"{self.awaiting}, failed {self.failed}); {self.resends} resends after a "
                f"missing receipt; settled in {self.settle_s:.0f} s")


class _Proc:
    """An ``edge-recorder`` subprocess whose log is kept across restarts."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge_recorder", *self.args],
                                         stdout=subprocess.DEVNULL, stderr=log, cwd=REPO,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            self.proc.wait(30)
            self.proc = None


def _daemon_config(work: Path, port: int, interval: bool, receipt_timeout_s: float,
                   require_receipt: bool = True) -> Path:
    config: dict[str, Any] = {
        "device_id": DEVICE,
        "sensors": [{"name": "imu0", "driver": "mpu6050", "bus": "emulated", "rate_hz": 200}],
        "session": {"duration_s": None, "journey_id": "auto"},
        "triggers": {"mqtt": True},  # the collector's part-level resend requests
        "mqtt": {"host": "127.0.0.1", "port": port, "max_payload_bytes": 2048},
        "storage": {"dir": str(work / "device-store"), "max_bytes": 1 << 30},
        "delivery": {"receipt_timeout_s": receipt_timeout_s,
                     "require_receipt": require_receipt},
    }
    if interval:  # a 0.6 s session every second: ~3 parts of 2 KiB each
        config["triggers"]["interval"] = {"every_s": 1, "duration_s": 0.6, "labels": ["chaos"]}
    path = work / ("device.yaml" if interval else "device-quiet.yaml")
    path.write_text(yaml.safe_dump(config))
    return path


def _device_sessions(store: Path) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Session id → (state, manifest or None) for every session on the device."""
    out: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for state in STATES:
        for path in (store / state).glob("*.json"):
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError):
                manifest = None
            out[path.stem] = (state, manifest)
    return out


def _unsettled(store: Path, require_receipt: bool = True) -> int:
    waiting = ("recording", "outbox", "published") if require_receipt else ("recording", "outbox")
    return sum(1 for state, _ in _device_sessions(store).values() if state in waiting)


def run_chaos(work: Path, *, broker_kills: int, collector_kills: int | None = None,
              daemon_kills: int = 0, seconds: float | None = None, persistence: bool = True,
              seed: int = 1, receipt_timeout_s: float = 10.0, settle_s: float = 90.0,
              require_receipt: bool = True, say: Any = print) -> ChaosResult:
    """Run the chaos scenario in ``work``; ``seconds`` defaults to 6 s per broker kill.
    ``require_receipt=False`` is the baseline: delivery as it was before receipts."""
    rng = random.Random(seed)
    collector_kills = broker_kills // 6 if collector_kills is None else collector_kills
    seconds = seconds if seconds is not None else max(20.0, 6.0 * broker_kills)
    work.mkdir(parents=True, exist_ok=True)
    broker = Broker(work / "broker", persistence=persistence)
    broker.start()
    collector = _Proc(["collect", "--host", "127.0.0.1", "--port", str(broker.port),
                       "--store", str(work / "collected")], work / "collector.log")
    noisy = _daemon_config(work, broker.port, True, receipt_timeout_s, require_receipt)
    daemon = _Proc(["run", "-c", str(noisy)], work / "daemon.log")
    result = ChaosResult(seconds, broker_kills, collector_kills, daemon_kills, persistence)
    events: list[tuple[float, str]] = []
    margin = min(5.0, seconds / 5)
    for kind, count in (("broker_kill", broker_kills), ("collector_kill", collector_kills),
                        ("daemon_kill", daemon_kills)):
        events += [(rng.uniform(margin, seconds - margin), kind) for _ in range(count)]
    heapq.heapify(events)
    try:
        collector.start()
        daemon.start()
        t0 = time.monotonic()
        while events:
            at, kind = heapq.heappop(events)
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if kind == "broker_kill" and broker.proc is not None:
                broker.stop(signal.SIGKILL)
                heapq.heappush(events, (at + rng.uniform(0.2, 2.0), "broker_up"))
            elif kind == "broker_up" and broker.proc is None:
                broker.start()
            elif kind == "collector_kill" and collector.up:
                collector.kill()
                heapq.heappush(events, (at + rng.uniform(1.0, 5.0), "collector_up"))
            elif kind == "collector_up" and not collector.up:
                collector.start()
            elif kind == "daemon_kill" and daemon.up:
                daemon.kill()
                daemon.start()
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        if broker.proc is None:
            broker.start()
        if not collector.up:
            collector.start()
        # the device restarted once, recording nothing new from here on
        daemon.kill(signal.SIGTERM)
        daemon.args = ["run", "-c", str(_daemon_config(work, broker.port, False,
                                                       receipt_timeout_s, require_receipt))]
        daemon.start()
        settle_from = time.monotonic()
        store = work / "device-store"
        while _unsettled(store, require_receipt) and \
                time.monotonic() - settle_from < settle_s:
            time.sleep(1.0)
        result.settle_s = time.monotonic() - settle_from
        time.sleep(1.0)  # the last receipts' stored copies are durable; let files settle
    finally:
        daemon.kill(signal.SIGTERM)
        collector.kill(signal.SIGTERM)
        broker.stop()
    _count(work, result)
    say(f"  chaos ({'persistence on' if persistence else 'persistence off'}, "
        f"{'receipts' if require_receipt else 'NO receipts (baseline)'}, seed {seed}, "
        f"{seconds:.0f} s, {broker_kills} broker / {collector_kills} collector / "
        f"{daemon_kills} daemon kills): {result.line()}")
    return result


def _count(work: Path, result: ChaosResult) -> None:
    device = _device_sessions(work / "device-store")
    collected: dict[str, dict[str, Any]] = {}
    contents: dict[str, int] = {}
    for path in (work / "collected" / "sessions" / DEVICE).glob("*.json"):
        manifest = json.loads(path.read_text())
        data = path.with_suffix(".mcap").read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != manifest["sha256"] or len(data) != manifest["bytes"]:
            result.corrupt += 1
            continue
        collected[path.stem] = manifest
        contents[actual] = contents.get(actual, 0) + 1
    result.duplicated = sum(n - 1 for n in contents.values() if n > 1)
    result.recorded = len(device)
    for sid, (state, manifest) in sorted(device.items()):
        ok = sid in collected and manifest is not None and \
            collected[sid]["sha256"] == manifest.get("sha256")
        result.stored += ok
        if not ok:
            result.lost += 1
            result.lost_ids.append(f"{sid} ({state})")
        result.awaiting += state in ("recording", "outbox", "published") and not ok
        result.failed += state == "failed"
    for manifest in collected.values():
        if manifest.get("stop_reason") == "recovered":
            result.recovered += 1
            sensors = manifest.get("sensors") or []
            result.recovered_with_crash_gap += bool(sensors) and all(
                any(g.get("reason") == "crash" for g in s.get("gaps", [])) for s in sensors)
    log = (work / "daemon.log").read_text(errors="replace")
    result.resends = log.count("no receipt from the collector; publishing it again")
