"""Fleet-scale benchmarks (issue 14): the index at 10⁴–10⁶ sessions, collector ingest, and
collectors in a shared-subscription group.

    .venv/bin/python -m benchmarks.run --only fleet [--quick]

Every figure has a same-run baseline: the index query against a naive scan of the same
rows; the collector's ingest against ``mosquitto_sub`` writing the same queued messages to
one file; a group of N collectors against one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge_recorder.devtools import Broker, Postgres, find_postgres_bin, wait_until
from edge_recorder.documents import Manifest
from edge_recorder.query.index import Filters, Index, SessionIndex

RARE_EVERY = 10_000  # one session in this many has the label "rare"
RARE, RARE_WALK = Filters(labels=("rare",)), Filters(labels=("rare", "walk"))  # the queries
QUERIES = 15  # latency = median of this many queries


def synthetic_manifests(n: int) -> Iterator[Manifest]:
    """``n`` valid manifests of 2-sensor sessions across 50 devices and n/10 journeys."""
    base = 1_795_000_000  # 2026-11-18
    for i in range(n):
        t = base + i * 7
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
        labels = ["walk" if i % 3 else "run", f"site-{i % 20}"]
        if i % RARE_EVERY == RARE_EVERY // 2:
            labels.append("rare")
        yield Manifest.from_dict({
            "session_id": f"{start.replace('-', '').replace(':', '')}000Z-{i:010x}",
            "device_id": f"pi-{i % 50:03d}", "labels": labels, "journey_id": f"j-{i // 10}",
            "started_at": f"{start}.000000Z", "stopped_at": f"{start}.500000Z",
            "duration_s": 5.0, "stop_reason": "duration",
            "trigger": {"source": "mqtt", "detail": "bench"},
            "sensors": [{"name": "imu0", "driver": "mpu6050", "rate_hz": 1000.0,
                         "samples": 5000, "dropped": 0, "gaps": []},
                        {"name": "imu1", "driver": "icm42688", "rate_hz": 1000.0,
                         "samples": 5000, "dropped": 0, "gaps": []}],
            "bytes": 160_000, "sha256": f"{i:064x}", "parts": 2})


def fill(index: Index, store: Path, n: int, batch: int = 5000) -> float:
    """Bulk-index ``n`` synthetic manifests; seconds taken."""
    t0 = time.perf_counter()
    chunk: list[tuple[Path, bool | None, Manifest]] = []
    for m in synthetic_manifests(n):
        chunk.append((store / "sessions" / m.device_id / f"{m.session_id}.json", None, m))
        if len(chunk) == batch:
            index.add_many(chunk)
            chunk = []
    if chunk:
        index.add_many(chunk)
    return time.perf_counter() - t0


def median_s(fn: Callable[[], Any], repeats: int = QUERIES) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def naive_label_scan(rows: Callable[[], list[str]], label: str) -> int:
    """What a store without a label index does: read every manifest, keep the labelled."""
    return sum(1 for text in rows() if label in json.loads(text)["labels"])


def bench_index(tmp: Path, row: Callable[..., None], sizes: tuple[int, ...]) -> None:
    print("\n[fleet] sessions list --label latency, SQLite and PostgreSQL", flush=True)
    pg: Postgres | None = None
    if find_postgres_bin() is not None:
        pg = Postgres()
        pg.start()
    else:
        print("  PostgreSQL not installed (apt-get install postgresql): SQLite only")
    try:
        for n in sizes:
            store = tmp / f"index-{n}"
            (store / "sessions").mkdir(parents=True)
            backends: list[tuple[str, Index, Callable[[], list[str]]]] = []
            lite = SessionIndex(store)
            backends.append(("SQLite", lite, lambda lite=lite: [  # type: ignore[misc]
                r[0] for r in lite.db.execute("SELECT manifest FROM sessions")]))
            if pg is not None:
                from edge_recorder.query.pg_index import PostgresIndex

                db = f"bench_{n}"
                subprocess.run([str(pg.bindir / "createdb"), "-h", "127.0.0.1", "-p",
                                str(pg.port), "-U", "edge", db], check=True)
                url = pg.url.rsplit("/", 1)[0] + "/" + db
                pgi = PostgresIndex(url, store, sync=False)
                backends.append(("PostgreSQL", pgi, lambda pgi=pgi: [  # type: ignore[misc]
                    r[0] for r in pgi.conn.execute("SELECT manifest FROM edge_sessions")]))
            for name, index, scan in backends:
                load_s = fill(index, store, n)
                if name == "PostgreSQL":
                    index.conn.execute("ANALYZE edge_sessions")  # type: ignore[attr-defined]
                expected = len([i for i in range(n) if i % RARE_EVERY == RARE_EVERY // 2])
                found = len(index.select(RARE))
                assert found == expected, (name, found, expected)
                ours = median_s(lambda index=index: index.select(RARE))
                both = median_s(lambda index=index: index.select(RARE_WALK))
                naive = median_s(lambda scan=scan: naive_label_scan(scan, "rare"),
                                 repeats=1 if n >= 100_000 else 3)
                print(f"  {name} {n:,} sessions: bulk index {n / load_s:,.0f} sessions/s",
                      flush=True)
                row("fleet", f"--label at {n:,} sessions, {name} ({found} hits)", ours * 1e3,
                    "ms", naive * 1e3, "reading every manifest", True, "target < 100 ms",
                    ours < 0.1)
                row("fleet", f"--label rare --label walk at {n:,}, {name}", both * 1e3, "ms",
                    naive * 1e3, "reading every manifest", True)
                index.close()
            shutil.rmtree(store, ignore_errors=True)
    finally:
        if pg is not None:
            pg.close()


# --- collector ingest and scale-out -------------------------------------------------------

def _collector(store: Path, port: int, name: str, log_dir: Path, *, share: str | None = None,
               index: str | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "edge_recorder", "collect", "--host", "127.0.0.1",
            "--port", str(port), "--store", str(store), "--client-id", name]
    if share:
        args += ["--share", share]
    if index:
        args += ["--index", index]
    log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(args, stdout=log, stderr=log)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def _stored(store: Path) -> int:
    return sum(1 for _ in (store / "sessions").glob("*/*.json"))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_ingest(tmp: Path, broker: Broker, row: Callable[..., None], *, devices: int,
                 sessions_each: int, session_s: float) -> None:
    """A fleet's sessions, recorded on the devices first, then published all at once: how
    fast 1 collector stores and indexes them, against ``mosquitto_sub`` writing the same
    messages to one file, and how a ``--share`` group of 2 and 3 scales."""
    from edge_recorder.fleet import Fleet

    tool = shutil.which("mosquitto_sub")
    print(f"\n[fleet] collector ingest: {devices} devices × {sessions_each} sessions of "
          f"{session_s:g} s at 2 × 1 kHz, published at once", flush=True)
    logs = tmp / "ingest-logs"
    logs.mkdir(exist_ok=True)
    count = devices * sessions_each
    walls: dict[int, float] = {}
    for members in (1, 2, 3):
        store = tmp / f"ingest-{members}"
        group = f"bench{members}" if members > 1 else None
        names = [f"ingest-{members}-{k}" for k in range(members)]
        procs = [_collector(store, broker.port, n, logs, share=group) for n in names]
        fleet = Fleet(tmp / f"fleet-{members}", broker.port, devices=devices, prefix=f"m{members}",
                      require_receipt=False, start=False)
        try:
            wait_until(lambda names=names: all("connected" in (logs / f"{n}.log").read_text()
                                               for n in names), 30, "collectors connected")
            nbytes = fleet.record(sessions_each, session_s)
            cpu0 = sum(_cpu_s(p.pid) for p in procs)
            t0 = time.perf_counter()
            fleet.start()
            wait_until(lambda store=store: _stored(store) >= count, 600,
                       "all sessions stored", poll_s=0.05)
            wall = walls[members] = time.perf_counter() - t0
            cpu = sum(_cpu_s(p.pid) for p in procs) - cpu0
        finally:
            fleet.close()
            _stop(procs)
        print(f"  {members} collector(s): {count} sessions, {nbytes / 1e6:.1f} MB stored and "
              f"indexed in {wall:.2f} s; {cpu / count * 1e3:.1f} ms CPU per session", flush=True)
        if members == 1:
            row("fleet", f"collector CPU per {session_s:g} s 2 × 1 kHz session stored + indexed",
                cpu / count * 1e3, "ms", session_s * 1e3, "the session's own duration", True)
            if tool is None:
                print("  mosquitto_sub not found (apt-get install mosquitto-clients): no "
                      "baseline")
                continue
            fleet = Fleet(tmp / "fleet-baseline", broker.port, devices=devices, prefix="base",
                          require_receipt=False, start=False)
            try:
                fleet.record(sessions_each, session_s)
                out = tmp / "baseline.bin"
                with open(out, "wb") as f:
                    sub = subprocess.Popen([tool, "-p", str(broker.port), "-q", "1", "-t",
                                            "edge-recorder/+/sessions/#", "-N", "-C",
                                            str(fleet.messages)], stdout=f)
                    time.sleep(0.5)  # subscribed
                    t0 = time.perf_counter()
                    fleet.start()
                    sub.wait(600)
                    f.flush()
                    os.fsync(f.fileno())
                    theirs = time.perf_counter() - t0
            finally:
                fleet.close()
            row("fleet", "collector ingest (stored, verified, indexed)", count / wall,
                "sessions/s", count / theirs, "mosquitto_sub → one file", False)
            row("fleet", "collector ingest volume", nbytes / 1e6 / wall, "MB/s",
                nbytes / 1e6 / theirs, "mosquitto_sub → one file", False)
    for members in (2, 3):
        row("fleet", f"{members} collectors in a --share group on one store",
            count / walls[members], "sessions/s", count / walls[1], "1 collector", False)


def run(tmp: Path, broker: Broker, row: Callable[..., None], quick: bool) -> None:
    """The fleet section: ``--only fleet`` (``--quick``: 10⁴ and 10⁵ sessions indexed)."""
    bench_index(tmp, row, (10_000, 100_000) if quick else (10_000, 1_000_000))
    bench_ingest(tmp, broker, row, devices=10, sessions_each=3 if quick else 6,
                 session_s=5.0)
