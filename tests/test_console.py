"""The web console without a browser: what each route answers, and what it refuses.

The store is filled by the real session writer and stored through the real
CollectorStore (``edge_recorder.storefill``); the listing is compared with the
``sessions list`` command, the plot data with the samples decoded by ``sessionfile``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from edge_recorder.collector.collector import CollectorStore  # noqa: E402
from edge_recorder.console.series import envelope  # noqa: E402
from edge_recorder.console.web import Catalog, build_app, iso_ns  # noqa: E402
from edge_recorder.query.arrays import decode_session  # noqa: E402
from edge_recorder.query.index import Filters, SessionIndex  # noqa: E402
from edge_recorder.sessionfile import SessionFile  # noqa: E402
from edge_recorder.storefill import SensorSpec, fill, write_session  # noqa: E402
from tests.conftest import cli  # noqa: E402

TOKEN = "t0ken-for-the-tests-0123456789"
ROW_RE = re.compile(r'<tr data-session="([^"]+)"')


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("console") / "store"
    fill(root, 60, seed=5, end_ns=1_795_000_000 * 10**9, rate_hz=50)
    return root


@pytest.fixture
def app_client(store: Path):
    catalog = Catalog(SessionIndex(store, check_same_thread=False), store)
    with TestClient(build_app(catalog), base_url="http://127.0.0.1") as c:
        yield c
    catalog.close()


def cli_keys(store: Path, *args: str) -> list[str]:
    out = cli("sessions", "list", "--store", str(store), "--json", *args)
    assert out.returncode == 0, out.stderr
    return [f"{d['device_id']}/{d['session_id']}" for d in map(json.loads, out.stdout.splitlines())]


def page_keys(html: str) -> list[str]:
    return ROW_RE.findall(html)


def test_filters_mean_what_sessions_list_means(app_client: TestClient, store: Path) -> None:
    everything = cli_keys(store)
    label, journey = "walk", None
    with SessionIndex(store) as index:
        for e in index.select(Filters(labels=(label,))):
            journey_id = e.manifest.journey_id
            if journey_id and len(index.select(Filters(journey=journey_id))) > 1:
                journey = journey_id
                break
    assert journey is not None
    cases = [[("label", label)], [("journey", journey)], [("label", label), ("journey", journey)],
             [("label", "walk"), ("label", "run")], [("device", "pi-03")],
             [("since", "2026-11-18T00:00"), ("until", "2026-11-20")], [("label", "nothing")]]
    seen_sizes = set()
    for case in cases:
        args = [a for name, value in case for a in (f"--{name}", value)]
        expected = cli_keys(store, *args)
        r = app_client.get("/sessions", params=case + [("per", "200"), ("sort", "start"),
                                                       ("order", "asc")])
        assert r.status_code == 200, r.text
        assert page_keys(r.text) == expected, case
        assert f'data-total="{len(expected)}"' in r.text
        seen_sizes.add(len(expected))
    assert len(seen_sizes) > 3 and 0 in seen_sizes and len(everything) == 60


def test_the_postgresql_index_pages_the_same(app_client: TestClient, store: Path,
                                             postgres: str) -> None:
    pytest.importorskip("psycopg", reason="the [postgres] extra (psycopg) is not installed")
    from edge_recorder.query.index import open_index

    catalog = Catalog(open_index(store, postgres, check_same_thread=False), store)
    catalog.sync()
    with TestClient(build_app(catalog), base_url="http://127.0.0.1") as pg:
        device = cli_keys(store)[0].split("/")[0]
        for params in ({"label": "walk", "per": "25"}, {"per": "25", "page": "2"},
                       {"sort": "journey"}, {"sort": "device", "order": "desc"},
                       {"sort": "reason", "device": device}):
            lite_page, pg_page = app_client.get("/sessions", params=params), \
                pg.get("/sessions", params=params)
            assert pg_page.status_code == 200
            assert page_keys(pg_page.text) == page_keys(lite_page.text) != []
        key = page_keys(lite_page.text)[0]
        assert pg.get(f"/sessions/{key}").status_code == 200
    catalog.close()


def test_paging_shows_every_session_once_in_order(app_client: TestClient, store: Path) -> None:
    expected = cli_keys(store)[::-1]  # the console's default: latest first
    got: list[str] = []
    for page in range(1, 4):
        r = app_client.get("/sessions", params={"per": "25", "page": str(page)})
        assert r.status_code == 200
        got += page_keys(r.text)
    assert got == expected
    r = app_client.get("/sessions", params={"per": "25", "page": "9"})
    assert page_keys(r.text) == [] and "No session matches" in r.text
    by_device = page_keys(app_client.get("/sessions", params={"sort": "device", "per": "200"}).text)
    assert [k.split("/")[0] for k in by_device] == sorted(k.split("/")[0] for k in expected)


@pytest.mark.parametrize("target", [
    "/sessions?bogus=1",                      # unknown parameter
    "/sessions?label=" + "x" * 200,           # overlong value
    "/sessions?journey=%ff%fe",               # not UTF-8
    "/sessions?journey=a%00b",                # control character
    "/sessions?page=-1", "/sessions?page=1e9", "/sessions?per=7", "/sessions?sort=manifest",
    "/sessions?sort=start;DROP%20TABLE%20sessions", "/sessions?order=sideways",
    "/sessions?since=yesterday-ish", "/sessions?device=../../etc",
    "/sessions?" + "&".join(f"label=l{i}" for i in range(17)),  # more labels than a session has
    "/sessions?" + "&".join(["a=1"] * 100),   # too many fields
    "/sessions?page=1&page=2",                # given twice
    "/journeys?page=x", "/sessions/pi-01/%2e%2e", "/sessions/pi-01/a.b",
    "/sessions/..%2f..%2fetc/x",
    "/sessions/pi-01/abc/series?from=nan", "/sessions/pi-01/abc/series?points=99999",
])
def test_hostile_query_strings_get_a_400(app_client: TestClient, target: str) -> None:
    r = app_client.get(target)
    assert r.status_code in (400, 404), (target, r.status_code, r.text)
    assert r.headers["content-type"].startswith("text/plain")
    assert "Traceback" not in r.text and "root:" not in r.text
    if "?" in target and "/series" not in target:
        assert r.status_code == 400


def test_nothing_can_be_written(app_client: TestClient, store: Path) -> None:
    before = sorted(p.name for p in (store / "sessions").rglob("*"))
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/sessions", "/sessions/pi-01/x", "/static/console.css"):
            r = app_client.request(method, path)
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert sorted(p.name for p in (store / "sessions").rglob("*")) == before


def test_pages_and_files_have_their_content_types(app_client: TestClient, store: Path) -> None:
    key = cli_keys(store, "--label", "walk")[0]
    expect = {
        "/sessions": "text/html; charset=utf-8",
        "/journeys": "text/html; charset=utf-8",
        f"/sessions/{key}": "text/html; charset=utf-8",
        f"/sessions/{key}/series?points=100": "application/json",
        f"/sessions/{key}/download/mcap": "application/octet-stream",
        f"/sessions/{key}/download/csv": "text/csv; charset=utf-8",
        f"/sessions/{key}/download/edge-impulse": "application/zip",
        f"/sessions/{key}/download/ros2-imu": "application/octet-stream",
        "/static/uPlot.iife.min.js": "text/javascript; charset=utf-8",
        "/static/console.css": "text/css; charset=utf-8",
    }
    for path, ctype in expect.items():
        r = app_client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"] == ctype, path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in r.headers["content-security-policy"]
    disposition = app_client.get(f"/sessions/{key}/download/mcap").headers["content-disposition"]
    assert disposition == f'attachment; filename="{key.split("/")[1]}.mcap"'
    assert app_client.get("/sessions/pi-01/20261120T000000000Z-0000000000").status_code == 404


def test_downloads_are_the_file_and_the_cli_exports(app_client: TestClient, store: Path,
                                                    tmp_path: Path) -> None:
    key = cli_keys(store, "--label", "walk")[0]
    device, sid = key.split("/")
    session_file = store / "sessions" / device / f"{sid}.mcap"
    assert app_client.get(f"/sessions/{key}/download/mcap").content == session_file.read_bytes()
    for fmt, out in (("csv", tmp_path / "x.csv"), ("ros2-imu", tmp_path / "x.mcap"),
                     ("edge-impulse", tmp_path / "ei")):
        done = cli("export", str(session_file), "--format", fmt, "-o", str(out))
        assert done.returncode == 0, done.stderr
        got = app_client.get(f"/sessions/{key}/download/{fmt}")
        assert got.status_code == 200, got.text
        if fmt == "edge-impulse":  # the folder the command writes, as one ZIP
            with zipfile.ZipFile(io.BytesIO(got.content)) as z:
                assert sorted(z.namelist()) == sorted(p.name for p in out.iterdir())
                for p in out.iterdir():
                    assert z.read(p.name) == p.read_bytes()
        else:
            assert got.content == out.read_bytes(), fmt
    assert 'download/edge-impulse"' in app_client.get(f"/sessions/{key}").text


def test_a_file_outside_the_store_is_never_served(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = CollectorStore(root)
    m = write_session(store, device="pi-01", started_ns=1_795_000_000 * 10**9, duration_s=1,
                      labels=["x"], journey=None)
    store.index.close()
    secret = tmp_path / "secret.mcap"
    secret.write_bytes(b"not yours")
    mcap = root / "sessions" / "pi-01" / f"{m['session_id']}.mcap"
    mcap.unlink()
    mcap.symlink_to(secret)  # a store tampered with: the index points at a link to outside
    catalog = Catalog(SessionIndex(root, check_same_thread=False), root)
    with TestClient(build_app(catalog), base_url="http://127.0.0.1") as c:
        r = c.get(f"/sessions/pi-01/{m['session_id']}/download/mcap")
        assert r.status_code == 404 and b"not yours" not in r.content
        assert c.get(f"/sessions/pi-01/{m['session_id']}/series").status_code == 404
    catalog.close()


def test_the_token_guards_every_route_and_sets_a_cookie_once(store: Path) -> None:
    catalog = Catalog(SessionIndex(store, check_same_thread=False), store)
    with TestClient(build_app(catalog, token=TOKEN), base_url="http://127.0.0.1") as c:
        for path in ("/sessions", "/static/console.css", "/journeys"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/sessions", headers={"Authorization": "Bearer wrong-token-0123456789"}
                     ).status_code == 401
        assert c.get("/sessions", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        r = c.get(f"/sessions?label=walk&token={TOKEN}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/sessions?label=walk"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/journeys").status_code == 200  # the cookie now
    catalog.close()


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(tmp_path: Path,
                                                                 store: Path) -> None:
    out = cli("serve", "--store", str(store), "--bind", "0.0.0.0", "--port", "0")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--token" in out.stderr, out.stderr
    (tmp_path / "t").write_text("short\n")
    out = cli("serve", "--store", str(store), "--bind", "0.0.0.0", "--token-file",
              str(tmp_path / "t"))
    assert out.returncode == 2 and "16-256 characters" in out.stderr
    out = cli("serve", "--store", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "no such directory" in out.stderr


def test_serve_starts_on_loopback_and_answers(store: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "edge_recorder", "serve", "--store",
                             str(store), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        import urllib.request

        with urllib.request.urlopen(url.group(0) + "sessions?label=walk", timeout=10) as r:
            assert r.status == 200 and b"data-total=" in r.read()
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why
        assert proc.wait(timeout=10) in (0, -signal.SIGTERM)


# --- the plot data ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spiky(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 60 s session at 200 Hz with a gap at 20-23 s."""
    root = tmp_path_factory.mktemp("spiky")
    store = CollectorStore(root)
    m = write_session(store, device="pi-01", started_ns=1_795_000_000 * 10**9, duration_s=60,
                      labels=["x"], journey=None, gap_s=(20, 3),
                      sensors=(SensorSpec("imu0", "mpu6050", 200, True),
                               SensorSpec("imu1", "lsm6dsox", 200, False)))
    store.index.close()
    return root / "sessions" / "pi-01" / f"{m['session_id']}.mcap", m


def test_the_envelope_holds_every_sample_between_its_min_and_max(spiky) -> None:
    path, m = spiky
    t0 = iso_ns(m["started_at"])
    samples = decode_session(SessionFile(path))  # the export's decoder: every sample
    out = envelope(path, t0, t0 + 60 * 10**9, 300, t0)
    assert sorted(out) == ["imu0", "imu1"] and "temp_c" in out["imu0"]
    assert "temp_c" not in out["imu1"]
    for sensor, cols in samples.items():
        t = (np.asarray(cols["t_ns"]) - t0) / 1e9
        env = out[sensor]
        assert len(env["x"]) <= 2 * 300 + 10
        for k in ("ax", "gz"):
            v = np.asarray(cols[k], np.float32)
            pairs, i = [], 0
            while i < len(env["x"]):  # (first t, last t, min, max) per bucket; None: a break
                if env[k][i] is None:
                    i += 1
                    continue
                pairs.append((env["x"][i], env["x"][i + 1], env[k][i], env[k][i + 1]))
                i += 2
            # recompute the bucket of each pair from the reference samples
            for a, b, lo, hi in pairs[::7]:
                inside = v[(t >= a - 1e-7) & (t <= b + 1e-7)]
                assert lo == pytest.approx(float(inside.min()), rel=1e-5, abs=1e-6)
                assert hi == pytest.approx(float(inside.max()), rel=1e-5, abs=1e-6)
            assert min(x for x in env[k] if x is not None) == pytest.approx(float(v.min()), 1e-5)
            assert max(x for x in env[k] if x is not None) == pytest.approx(float(v.max()), 1e-5)
        # the gap is a break in the line, not a bridge: one None between 20 s and 23 s
        nones = [env["x"][i] for i, y in enumerate(env["ax"]) if y is None]
        assert len(nones) == 1 and 20 <= nones[0] <= 23


def test_a_small_window_is_sent_sample_for_sample(spiky) -> None:
    path, m = spiky
    t0 = iso_ns(m["started_at"])
    samples = decode_session(SessionFile(path))["imu1"]
    out = envelope(path, t0 + 10 * 10**9, t0 + 12 * 10**9, 1000, t0)["imu1"]
    t = np.asarray(samples["t_ns"])
    keep = (t >= t0 + 10 * 10**9) & (t < t0 + 12 * 10**9)
    assert out["x"] == [round(v, 6) for v in ((t[keep] - t0) / 1e9).tolist()]
    assert out["gy"] == pytest.approx(np.asarray(samples["gy"], np.float32)[keep].tolist(),
                                      rel=1e-5)


def test_a_damaged_chunk_is_an_error_not_a_wrong_plot(spiky, tmp_path: Path) -> None:
    path, m = spiky
    bad = tmp_path / "bad.mcap"
    data = bytearray(path.read_bytes())
    from edge_recorder.console.series import _summary

    _, chunks = _summary(memoryview(bytes(data)), path)
    data[chunks[len(chunks) // 2][2] + 120] ^= 0x40  # a byte of samples inside a chunk
    bad.write_bytes(bytes(data))
    from edge_recorder.errors import SessionFileError

    t0 = iso_ns(m["started_at"])
    with pytest.raises(SessionFileError, match="damaged"):
        envelope(bad, t0, t0 + 60 * 10**9, 100, t0)


def test_series_route_zooms_into_a_window(app_client: TestClient, store: Path) -> None:
    key = cli_keys(store, "--label", "walk")[0]
    full = app_client.get(f"/sessions/{key}/series", params={"points": "50"}).json()
    zoom = app_client.get(f"/sessions/{key}/series", params={"from": "0.5", "to": "1.5",
                                                             "points": "500"}).json()
    assert full["from"] == 0 and zoom["from"] == 0.5 and zoom["to"] == 1.5
    xs = zoom["sensors"]["imu0"]["x"]
    assert xs and 0.5 <= min(x for x in xs if x is not None) and max(xs) < 1.5
    assert len(xs) == 50  # 1 s at 50 Hz: every sample


def test_csv_download_rows_match_the_manifest(app_client: TestClient, store: Path) -> None:
    key = cli_keys(store, "--label", "run")[0]
    page = app_client.get(f"/sessions/{key}").text
    rows = list(csv.reader(io.StringIO(app_client.get(f"/sessions/{key}/download/csv").text)))
    samples = int(re.search(r"([\d,]+) kept", page).group(1).replace(",", ""))
    assert rows[0][:2] == ["sensor", "t_ns"] and len(rows) - 1 == samples


def test_live_answers_204_until_a_session_arrives(app_client: TestClient, store: Path) -> None:
    r = app_client.get("/sessions", params={"label": "live-test"})
    version = re.search(r'data-version="([^"]+)"', r.text).group(1)
    assert app_client.get("/sessions/live", params={"label": "live-test", "v": version}
                          ).status_code == 204
    collector = CollectorStore(store)  # as the running collector would store one
    m = write_session(collector, device="pi-09", started_ns=time.time_ns(), duration_s=1,
                      labels=["live-test"], journey=None)
    collector.index.close()
    r = app_client.get("/sessions/live", params={"label": "live-test", "v": version})
    assert r.status_code == 200
    assert page_keys(r.json()["rows"]) == [f"pi-09/{m['session_id']}"]
    assert r.json()["total"] == 1


# --- the Host header (DNS rebinding) and the bound on exports --------------------------------
@pytest.mark.parametrize("host", [
    "attacker.example:8080", "attacker.example", "127.0.0.1.attacker.example",
    "localhost.attacker.example:8080", "0.0.0.0:8080", "127.0.0.2", "[::2]:8080",
    "127.0.0.1@attacker.example", "[::1", "", "localhost:8080:9",
])
def test_a_foreign_host_header_gets_a_400_on_every_route(app_client: TestClient, store: Path,
                                                         host: str) -> None:
    """A page from another site that rebinds its name to 127.0.0.1 sends its own name as
    Host: the console must answer nothing but a 400, token or not (RFC 9110 §7.2: Host is the
    name the client used)."""
    key = cli_keys(store, "--label", "walk")[0]
    for path in ("/sessions", "/sessions/live", "/journeys", f"/sessions/{key}",
                 f"/sessions/{key}/series", f"/sessions/{key}/download/mcap",
                 f"/sessions/{key}/download/csv", "/static/console.css", "/"):
        r = app_client.get(path, headers={"Host": host})
        assert r.status_code == 400, (host, path, r.status_code)
        assert r.headers["content-type"].startswith("text/plain") and "Host" in r.text
        assert "data-session" not in r.text and r.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8080", "localhost:1",
                                  "LocalHost:8080", "[::1]:8080", "[::1]"])
def test_the_loopback_names_are_accepted_with_any_port(app_client: TestClient,
                                                       host: str) -> None:
    assert app_client.get("/sessions", headers={"Host": host}).status_code == 200


def test_allowed_hosts_and_the_token_both_apply(store: Path) -> None:
    catalog = Catalog(SessionIndex(store, check_same_thread=False), store)
    app = build_app(catalog, token=TOKEN, hosts=["Console.LAN", "192.168.1.20"])
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(app, base_url="http://127.0.0.1") as c:
        for host in ("console.lan:8080", "192.168.1.20:8080", "127.0.0.1"):
            assert c.get("/sessions", headers={**bearer, "Host": host}).status_code == 200
            assert c.get("/sessions", headers={"Host": host}).status_code == 401
        for host in ("other.lan:8080", "192.168.1.21"):  # the token does not excuse the Host
            assert c.get("/sessions", headers={**bearer, "Host": host}).status_code == 400
    catalog.close()
    with pytest.raises(ValueError, match="not a host name"):
        build_app(catalog, hosts=["console.lan:8080"])


def test_a_request_without_a_host_header_gets_a_400(store: Path) -> None:
    import asyncio

    catalog = Catalog(SessionIndex(store, check_same_thread=False), store)
    app = build_app(catalog)
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/sessions", "raw_path": b"/sessions",
             "query_string": b"", "headers": [], "http_version": "1.0", "scheme": "http",
             "root_path": "", "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 5000),
             "asgi": {"version": "3.0", "spec_version": "2.4"}}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400
    catalog.close()


def test_serve_checks_allow_host_and_answers_only_its_names(store: Path) -> None:
    out = cli("serve", "--store", str(store), "--allow-host", "evil.example:80", "--port", "0")
    assert out.returncode == 2 and "--allow-host" in out.stderr and "Traceback" not in out.stderr
    proc = subprocess.Popen([sys.executable, "-m", "edge_recorder", "serve", "--store",
                             str(store), "--port", "0", "--allow-host", "console.lan"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stdout.readline()).group(1))
        import http.client

        for host, status in (("attacker.example:8080", 400), (f"127.0.0.1:{port}", 200),
                             ("console.lan", 200), ("localhost", 200)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/sessions", headers={"Host": host})
            r = conn.getresponse()
            body = r.read()
            conn.close()
            assert r.status == status, (host, body)
            assert (b"data-session" in body) == (status == 200)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) in (0, -signal.SIGTERM)


def test_exports_are_bounded_and_a_busy_console_says_when_to_retry(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fifty downloads of a long session's CSV must not fill /tmp or take every worker:
    while MAX_EXPORTS exports are being written, another is a 503 with Retry-After and no
    temporary file; the stored file is still served; a slot frees when its file is sent."""
    import threading

    from edge_recorder.console.web import EXPORTERS, MAX_EXPORTS, Exporter

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the exports are written
    gate, started = threading.Event(), threading.Semaphore(0)
    real = EXPORTERS["csv"]

    def held_write(session_file: Path, out: Path) -> None:
        started.release()
        gate.wait(timeout=20)
        assert real.write is not None
        real.write(session_file, out)

    formats = dict(EXPORTERS, csv=Exporter(real.media_type, real.suffix, held_write))
    key = cli_keys(store, "--label", "walk")[0]
    catalog = Catalog(SessionIndex(store, check_same_thread=False), store)
    with TestClient(build_app(catalog, exporters=formats), base_url="http://127.0.0.1") as c:
        expected = c.get(f"/sessions/{key}/download/edge-impulse")  # warms the path
        assert expected.status_code == 200
        results: list = []
        workers = [threading.Thread(target=lambda: results.append(
            c.get(f"/sessions/{key}/download/csv"))) for _ in range(MAX_EXPORTS)]
        for w in workers:
            w.start()
        for _ in range(MAX_EXPORTS):
            assert started.acquire(timeout=20)
        busy = c.get(f"/sessions/{key}/download/csv")
        assert busy.status_code == 503 and busy.headers["retry-after"].isdigit()
        assert "try again" in busy.text
        assert len(list(tmp_path.glob("edge-recorder-console-*"))) == MAX_EXPORTS
        assert c.get(f"/sessions/{key}/download/mcap").status_code == 200  # no export
        gate.set()
        for w in workers:
            w.join(timeout=30)
        assert [r.status_code for r in results] == [200] * MAX_EXPORTS
        assert results[0].content == results[1].content != b""
        again = c.get(f"/sessions/{key}/download/csv")
        assert again.status_code == 200 and again.content == results[0].content
    catalog.close()
    assert list(tmp_path.glob("edge-recorder-console-*")) == []


def test_an_export_abandoned_mid_send_is_deleted_and_frees_its_slot(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    key = cli_keys(store, "--label", "walk")[0]
    catalog = Catalog(SessionIndex(store, check_same_thread=False), store)
    app = build_app(catalog, max_exports=1)
    path = f"/sessions/{key}/download/csv"

    async def get(fail_on_body: bool) -> int:
        status = 0

        async def receive() -> dict:
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif fail_on_body:
                raise OSError("the client went away")

        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "headers": [(b"host", b"127.0.0.1:8080")],
                 "http_version": "1.1", "scheme": "http", "root_path": "",
                 "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 5000),
                 "asgi": {"version": "3.0", "spec_version": "2.4"}}
        try:
            await app(scope, receive, send)
        except OSError:
            pass
        return status

    async def scenario() -> list[int]:
        return [await get(True), await get(True), await get(False)]

    assert asyncio.run(scenario()) == [200, 200, 200]  # a leaked slot would make these 503
    assert list(tmp_path.glob("edge-recorder-console-*")) == []
    catalog.close()
