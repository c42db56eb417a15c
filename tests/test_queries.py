"""Finding sessions: filters, journeys, the index staying in step, CSV and plots."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest

from edge_recorder.query.index import Filters, SessionIndex
from edge_recorder.query.times import parse_time
from edge_recorder.recording.events import StartRequested, StopRequested, Trigger
from tests.conftest import cli
from tests.rig import Rig, stored


def fake_store(root: Path, folder: str, manifests: list[dict]) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for m in manifests:
        (root / folder / f"{m['session_id']}.json").write_text(json.dumps(m))
        (root / folder / f"{m['session_id']}.mcap").write_bytes(b"")


def manifest(sid: str, started: str, labels: list[str], journey: str | None, device: str = "d1",
             stopped: str | None = None) -> dict:
    return {"session_id": sid, "device_id": device, "labels": labels, "journey_id": journey,
            "started_at": started, "stopped_at": stopped or started, "stop_reason": "command",
            "bytes": 0, "sha256": "0" * 64, "parts": 1}


SESSIONS = [
    manifest("s1", "2026-11-20T10:00:00.000000Z", ["login"], "j-1"),
    manifest("s2", "2026-11-21T10:00:00.000000Z", ["login", "bench"], "j-1", device="d2",
             stopped="2026-11-21T10:05:00.000000Z"),
    manifest("s3", "2026-11-22T10:00:00.000000Z", ["logout"], "j-2"),
    manifest("s4", "2026-11-23T10:00:00.000000Z", [], None),
]


def ids(entries) -> list[str]:
    return [e.manifest.session_id for e in entries]


def test_filters_combine_and_labels_must_all_match(tmp_path):
    fake_store(tmp_path, "sessions", SESSIONS)
    with SessionIndex(tmp_path) as index:
        assert ids(index.select()) == ["s1", "s2", "s3", "s4"]
        assert ids(index.select(Filters(labels=("login",)))) == ["s1", "s2"]
        assert ids(index.select(Filters(labels=("login", "bench")))) == ["s2"]
        assert ids(index.select(Filters(labels=("login", "logout")))) == []
        assert ids(index.select(Filters(journey="j-1", device="d2"))) == ["s2"]
        assert ids(index.select(Filters(since="2026-11-21", until="2026-11-23"))) == ["s2", "s3"]
        rows = index.journeys()
    assert rows == [
        {"journey_id": "j-1", "sessions": 2, "devices": ["d1", "d2"],
         "first_started_at": "2026-11-20T10:00:00.000000Z",
         "last_stopped_at": "2026-11-21T10:05:00.000000Z"},
        {"journey_id": "j-2", "sessions": 1, "devices": ["d1"],
         "first_started_at": "2026-11-22T10:00:00.000000Z",
         "last_stopped_at": "2026-11-22T10:00:00.000000Z"}]


def test_the_index_follows_the_manifests_and_can_be_rebuilt(tmp_path):
    fake_store(tmp_path, "outbox", SESSIONS[:2])
    with SessionIndex(tmp_path) as index:
        assert [e.published for e in index.select()] == [False, False]
    # s1 gets published (moves folder), s2 disappears (evicted), s3 arrives
    (tmp_path / "published").mkdir()
    (tmp_path / "outbox" / "s1.json").rename(tmp_path / "published" / "s1.json")
    (tmp_path / "outbox" / "s2.json").unlink()
    fake_store(tmp_path, "outbox", SESSIONS[2:3])
    with SessionIndex(tmp_path) as index:
        assert [(e.manifest.session_id, e.published) for e in index.select()] == \
            [("s1", True), ("s3", False)]
    (tmp_path / "index.sqlite").unlink()
    with SessionIndex(tmp_path) as index:
        assert ids(index.select()) == ["s1", "s3"]
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM labels").fetchone() == (2,)


def test_a_store_where_the_index_cannot_be_written_is_indexed_in_memory(tmp_path):
    fake_store(tmp_path, "published", SESSIONS[:1])
    (tmp_path / "index.sqlite").mkdir()  # unopenable as a database, even for root
    with SessionIndex(tmp_path) as index:
        assert ids(index.select()) == ["s1"]


def test_cli_lists_tables_json_and_journeys(tmp_path):
    fake_store(tmp_path, "sessions", SESSIONS)
    r = cli("sessions", "list", "--store", str(tmp_path), "--label", "login")
    assert r.returncode == 0 and "s1" in r.stdout and "s2" in r.stdout and "s3" not in r.stdout
    r = cli("journeys", "list", "--store", str(tmp_path), "--json")
    assert [json.loads(line)["journey_id"] for line in r.stdout.splitlines()] == ["j-1", "j-2"]
    r = cli("sessions", "list", "--store", str(tmp_path), "--since", "yesterday")
    assert r.returncode == 2 and "is not a time" in r.stderr


def test_time_arguments_accept_iso_and_ages():
    assert parse_time("2026-11-26") == "2026-11-26T00:00:00.000000Z"
    assert parse_time("2026-11-26T10:30Z") == "2026-11-26T10:30:00.000000Z"
    assert parse_time("2026-11-26 10:30:05.25") == "2026-11-26T10:30:05.250000Z"
    assert parse_time("2h", now_s=7200.0) == "1970-01-01T00:00:00.000000Z"
    assert parse_time("1d", now_s=86400 * 2) == "1970-01-02T00:00:00.000000Z"


def recorded_session(tmp_path: Path) -> Path:
    rig = Rig(tmp_path, driver_name="icm42688", rate_hz=200)
    sid = rig.ask(StartRequested, trigger=Trigger("mqtt"), labels=("plot",))["session_id"]
    rig.run(1.0)
    rig.ask(StopRequested, trigger=Trigger("mqtt"))
    rig.finish()
    return stored(rig, sid)[1]


def test_csv_export_rows_are_sorted_per_sensor_with_si_units(tmp_path):
    path = recorded_session(tmp_path)
    out = tmp_path / "out.csv"
    r = cli("export", str(path), "--format", "csv", "-o", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == pytest.approx(200, abs=2)
    t = [int(x["t_ns"]) for x in rows]
    assert t == sorted(t) and len(set(t)) == len(t)
    assert abs(float(rows[0]["az"]) - 9.80665) < 0.1 and abs(float(rows[0]["temp_c"]) - 25) < 1


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="plot is an optional extra (dev installs it)")
    path = recorded_session(tmp_path)
    out = tmp_path / "session.png"
    r = cli("plot", str(path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
