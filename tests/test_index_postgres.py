"""The PostgreSQL index gives the SQLite index's answers, and stays right with writers racing.

Runs against a real PostgreSQL started by the ``postgres`` fixture (Debian's package,
``initdb`` + ``pg_ctl`` on a free port).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

pytest.importorskip("psycopg", reason="the [postgres] extra (psycopg) is not installed")

from edge_recorder.errors import UsageError  # noqa: E402
from edge_recorder.query.index import Filters, SessionIndex, open_index  # noqa: E402
from edge_recorder.query.pg_index import PostgresIndex  # noqa: E402
from tests.conftest import cli  # noqa: E402
from tests.test_queries import SESSIONS, manifest  # noqa: E402


def collector_store(root: Path, manifests: list[dict]) -> None:
    """Manifests laid out as the collector stores them: sessions/{device}/{id}.json."""
    for m in manifests:
        folder = root / "sessions" / m["device_id"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{m['session_id']}.json").write_text(json.dumps(m))
        (folder / f"{m['session_id']}.mcap").write_bytes(b"")


QUERIES = [
    Filters(), Filters(labels=("login",)), Filters(labels=("login", "bench")),
    Filters(labels=("login", "logout")), Filters(journey="j-1", device="d2"),
    Filters(since="2026-11-21", until="2026-11-23"), Filters(device="nobody"),
]


PAGES = [  # the console's paged, sorted queries
    (Filters(), {"sort": "device_id", "limit": 2}),
    (Filters(), {"sort": "started_at", "descending": True, "limit": 2, "offset": 1}),
    (Filters(labels=("login",)), {"sort": "stop_reason", "limit": 10}),
    (Filters(), {"sort": "journey_id"}),
]


def answers(index) -> list:
    return ([[e.as_json() for e in index.select(f, **page)]
             for f, page in [(f, {}) for f in QUERIES] + PAGES],
            [index.count(f) for f in QUERIES], index.journeys(),
            index.distinct("labels"), index.distinct("devices"),
            index.find("s2", "d2").as_json(), index.version()[0])


def test_same_answers_as_sqlite(tmp_path: Path, postgres: str) -> None:
    collector_store(tmp_path, SESSIONS)
    with SessionIndex(tmp_path) as lite, open_index(tmp_path, postgres) as pg:
        assert isinstance(pg, PostgresIndex)
        pg.sync()
        assert answers(pg) == answers(lite)
        login = pg.select(Filters(labels=("login",)))
        assert [e.manifest.session_id for e in login] == ["s1", "s2"]
        before = pg.version()
        collector_store(tmp_path, [manifest("s9", "2026-11-24T10:00:00.000000Z", [], None)])
        pg.sync()
        assert pg.version() != before and pg.count() == len(SESSIONS) + 1


def test_cli_lists_the_same_with_index_url(tmp_path: Path, postgres: str) -> None:
    collector_store(tmp_path, SESSIONS)
    for args in (["sessions", "list", "--label", "login", "--json"],
                 ["sessions", "list", "--journey", "j-1"], ["journeys", "list", "--json"]):
        lite = cli(*args, "--store", str(tmp_path))
        pg = cli(*args, "--store", str(tmp_path), "--index", postgres)
        assert lite.returncode == pg.returncode == 0, pg.stderr
        assert pg.stdout == lite.stdout and pg.stdout.strip()


def test_sync_follows_the_store_and_keeps_one_row_per_device_and_id(tmp_path: Path,
                                                                    postgres: str) -> None:
    collector_store(tmp_path, SESSIONS)
    with open_index(tmp_path, postgres) as pg:
        pg.sync()
        (tmp_path / "sessions" / "d1" / "s3.json").unlink()
        # the same session id from another device is another session
        collector_store(tmp_path, [manifest("s1", "2026-11-24T10:00:00.000000Z", ["x"], None,
                                            device="d9")])
        pg.sync()
        pg.sync()
        rows = [(e.manifest.device_id, e.manifest.session_id) for e in pg.select()]
    assert rows == [("d1", "s1"), ("d2", "s2"), ("d1", "s4"), ("d9", "s1")]


def test_concurrent_writers_leave_one_row_each(tmp_path: Path, postgres: str) -> None:
    """Several collectors indexing the same sessions at once (upserts, no read-then-write)."""
    many = [manifest(f"s{i:03d}", f"2026-11-20T10:{i // 60:02d}:{i % 60:02d}.000000Z",
                     ["a", f"l{i % 7}"], f"j{i % 5}") for i in range(120)]
    collector_store(tmp_path, many)
    indexes = [PostgresIndex(postgres, tmp_path, sync=False) for _ in range(4)]
    errors: list[BaseException] = []

    def write(index: PostgresIndex) -> None:
        try:
            for m in many:
                index.add(tmp_path / "sessions" / m["device_id"] / f"{m['session_id']}.json",
                          None)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(ix,)) for ix in indexes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(indexes[0].select()) == 120
    a_l3 = Filters(labels=("a", "l3"))
    assert len(indexes[0].select(a_l3)) == len([i for i in range(120) if i % 7 == 3])
    for ix in indexes:
        ix.close()


def test_damaged_manifest_is_reported_not_fatal(tmp_path: Path, postgres: str) -> None:
    collector_store(tmp_path, SESSIONS)
    bad = tmp_path / "sessions" / "d1" / "bad.json"
    bad.write_text(json.dumps({**manifest("bad", "2026-11-20T10:00:00.000000Z", [], None),
                               "labels": 5}))
    seen: list[Path] = []
    with open_index(tmp_path, postgres, on_damaged=lambda p, why: seen.append(p)) as pg:
        assert len(pg.select()) == 4
    assert seen == [bad]


def test_bad_index_urls_are_usage_errors(tmp_path: Path, postgres: str) -> None:
    collector_store(tmp_path, SESSIONS)
    with pytest.raises(UsageError, match="only postgresql"):
        open_index(tmp_path, "mysql://x")
    unreachable = postgres.rsplit(":", 1)[0] + ":1/edge"
    with pytest.raises(UsageError, match="cannot open the index"):
        open_index(tmp_path, unreachable)
    out = cli("sessions", "list", "--store", str(tmp_path), "--index", unreachable)
    assert out.returncode == 2 and "cannot open the index" in out.stderr
    assert "Traceback" not in out.stderr
