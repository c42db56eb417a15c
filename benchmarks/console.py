"""The console's figures: a 1-hour 2 × 1 kHz session's page in a real browser, and paging.

    .venv/bin/python -m benchmarks.console            # about 2 minutes
    .venv/bin/python -m benchmarks.console --quick    # a 10-minute session, no 10⁵ store

1. Session page: a fresh ``edge-recorder serve`` (nothing cached) over a store holding one
   1-hour session at 2 × 1 kHz (written by the real session writer, chunks closed every
   0.5 s as the recorder does); headless Chromium opens the page; the figure is
   ``performance.now()`` when every plot has drawn (navigation start → plots on screen).
   Baseline, same run, same file: decoding it with ``sessionfile.iter_batches``, what a
   plot without the console's reader would need before drawing anything.
2. Sessions page at 10⁵ sessions: the first and the 1,000th page, and a label filter, served
   by the console; baseline: ``sessions list --label`` over the same index (every row).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1400,1000")


def start_console(store: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "edge_recorder", "serve", "--store",
                             str(store), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    found = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline())
    if not found:
        proc.kill()
        raise RuntimeError("edge-recorder serve did not start")
    return proc, found.group(0)


def browser(profile: Path):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or
                                            "/usr/bin/chromedriver"), options=options)


def bench_session_page(tmp: Path, duration_s: float, runs: int) -> list[str]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from edge_recorder.sessionfile import iter_batches
    from edge_recorder.storefill import fill_hour

    store = tmp / "hour"
    started = time.monotonic()
    m = fill_hour(store, rate_hz=1000, duration_s=duration_s)
    print(f"  wrote a {duration_s:.0f} s 2 × 1 kHz session ({m['bytes'] / 1e6:.0f} MB) in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    path = store / "sessions" / m["device_id"] / f"{m['session_id']}.mcap"
    opened = []
    for run in range(runs):
        proc, url = start_console(store)  # a fresh server each time: nothing cached
        driver = browser(tmp / f"profile-{run}")
        try:
            driver.get(f"{url}/sessions/{m['device_id']}/{m['session_id']}")
            body = WebDriverWait(driver, 60).until(
                lambda d: d.find_element(By.CSS_SELECTOR, "body[data-plots-ready]"))
            opened.append(float(body.get_attribute("data-plots-ms")) / 1000)
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(timeout=10)
        print(f"  run {run + 1}: page open, plots drawn after {opened[-1]:.2f} s", flush=True)
    started = time.monotonic()
    samples = sum(len(batch["t_ns"]) for _, batch in iter_batches(path))
    naive_s = time.monotonic() - started
    assert samples == sum(s["samples"] for s in m["sensors"])
    return [
        f"| session page, {duration_s / 3600:g} h 2 × 1 kHz ({samples:,} samples), first "
        f"open (cold server) | {opened[0]:.2f} s | {naive_s:.2f} s (decode with "
        f"sessionfile.iter_batches) | {naive_s / opened[0]:.1f}× | < 2 s "
        f"{'✔' if opened[0] < 2 else '✘'} |",
        f"| session page, same, median of {runs} cold servers | "
        f"{statistics.median(opened):.2f} s | {naive_s:.2f} s | "
        f"{naive_s / statistics.median(opened):.1f}× | < 2 s "
        f"{'✔' if statistics.median(opened) < 2 else '✘'} |",
    ]


def big_store(root: Path, sessions: int) -> None:
    """``sessions`` manifests (copies of one real session's, with their own ids, devices,
    labels and times) indexed the way the collector indexes: SessionIndex.add."""
    import random

    from edge_recorder.collector.collector import CollectorStore
    from edge_recorder.documents import Manifest
    from edge_recorder.recording.ids import iso_utc, new_session_id
    from edge_recorder.storefill import DEVICES, LABELS, write_session

    store = CollectorStore(root)
    base = write_session(store, device="pi-01", started_ns=time.time_ns(), duration_s=1,
                         labels=["walk"], journey=None)
    rng = random.Random(3)
    t_ns = time.time_ns() - 30 * 86400 * 10**9
    db = store.index.db  # type: ignore[attr-defined]
    db.execute("PRAGMA synchronous = OFF")  # a benchmark fixture: durability not needed
    for n in range(sessions):
        t_ns += rng.randrange(5, 40) * 10**9
        device = rng.choice(DEVICES)
        m = Manifest.from_dict(dict(base, session_id=new_session_id(t_ns), device_id=device,
                                    labels=rng.sample(LABELS, rng.choice((1, 2, 3))),
                                    journey_id=f"{device}-j{n // 5:06d}",
                                    started_at=iso_utc(t_ns), stopped_at=iso_utc(t_ns + 10**9)))
        folder = root / "sessions" / device
        folder.mkdir(exist_ok=True)
        path = folder / f"{m.session_id}.json"
        path.write_bytes(m.to_json())
        store.index.add(path, None, m)
    store.index.close()


def bench_paging(tmp: Path, sessions: int) -> list[str]:
    root = tmp / "big"
    started = time.monotonic()
    big_store(root, sessions)
    print(f"  indexed {sessions:,} sessions in {time.monotonic() - started:.0f} s", flush=True)
    proc, url = start_console(root)
    try:
        def fetch(path: str) -> float:
            best = float("inf")
            for _ in range(3):
                t = time.monotonic()
                with urllib.request.urlopen(url + path, timeout=60) as r:
                    assert r.status == 200
                    r.read()
                best = min(best, time.monotonic() - t)
            return best

        first, deep = fetch("/sessions"), fetch("/sessions?page=1000")
        label = fetch("/sessions?label=walk&label=run")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "edge_recorder", "sessions", "list", "--store",
                          str(root), "--label", "walk", "--label", "run"],
                         capture_output=True, text=True, check=True)
    cli_s = time.monotonic() - t
    rows = len(out.stdout.splitlines()) - 1
    return [f"| sessions page 1 of {sessions:,} (50 rows) | {first * 1000:.0f} ms | "
            f"{cli_s * 1000:.0f} ms (sessions list --label walk --label run: {rows:,} rows) | "
            f"{cli_s / first:.1f}× | |",
            f"| sessions page 1,000 of {sessions:,} | {deep * 1000:.0f} ms | {cli_s * 1000:.0f} ms"
            f" | {cli_s / deep:.1f}× | |",
            f"| sessions page, label walk + run | {label * 1000:.0f} ms | {cli_s * 1000:.0f} ms |"
            f" {cli_s / label:.1f}× | |"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    lines = ["| measure | figure | baseline (same run) | ratio | target |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        print("session page in headless Chromium:", flush=True)
        lines += bench_session_page(Path(tmp), 600 if args.quick else 3600, args.runs)
        if not args.quick:
            print("paging over 10⁵ sessions:", flush=True)
            lines += bench_paging(Path(tmp), 100_000)
    print("\n".join(lines))
    print(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
